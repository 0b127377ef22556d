"""The ground-truth generator and the recovery and stability measures, against hand-built cases
with known answers and brute force."""

import itertools

import numpy as np
import pytest
import torch

from encoder_study.evaluation.ground_truth import (
    MAGNITUDE_RANGE,
    matched_cosines,
    mcc,
    mean_best_cosine,
    sparse_superposition,
)


def test_generator_follows_its_model():
    n, D, K, active = 20000, 16, 40, 3.0
    data = sparse_superposition(n, D, K, active, noise=0.0, seed=5)
    assert data.x.shape == (n, D) and data.components.shape == (K, D) and data.codes.shape == (n, K)
    assert torch.allclose(data.components.norm(dim=1), torch.ones(K), atol=1e-6)
    on = data.codes > 0
    # each of n*K switches is on with p = active / K: the count's standard deviation is sqrt(n K p (1-p))
    p = active / K
    assert abs(on.sum().item() - n * K * p) < 5 * np.sqrt(n * K * p * (1 - p))
    lo, hi = MAGNITUDE_RANGE
    assert data.codes[on].min() >= lo and data.codes[on].max() <= hi
    # no noise: x is exactly the codes times the directions (float32 rounding of a float64 product)
    rebuilt = data.codes.double() @ data.components.double()
    assert torch.allclose(data.x.double(), rebuilt, atol=1e-5)


def test_noise_has_the_asked_ratio():
    clean = sparse_superposition(20000, 16, 8, 2.0, noise=0.0, seed=3)
    noisy = sparse_superposition(20000, 16, 8, 2.0, noise=0.5, seed=3)
    assert torch.equal(clean.codes, noisy.codes)  # noise is drawn after the codes
    ratio = (noisy.x - clean.x).double().square().mean().sqrt() / clean.x.double().square().mean().sqrt()
    # the noise's RMS over 320,000 draws: relative standard error about 1 / sqrt(2 * 320,000)
    assert abs(ratio.item() - 0.5) < 0.5 * 5 / np.sqrt(2 * 320000)


def test_same_seed_same_data_other_seed_other_data():
    a = sparse_superposition(100, 8, 4, 1.0, 0.1, seed=1)
    b = sparse_superposition(100, 8, 4, 1.0, 0.1, seed=1)
    c = sparse_superposition(100, 8, 4, 1.0, 0.1, seed=2)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_samples": 0}, "n_samples=0"),
        ({"mean_active": 0.0}, "mean_active=0.0"),
        ({"mean_active": 9.0}, "mean_active=9.0 must be at most n_components=8"),
        ({"noise": -1.0}, "noise=-1.0"),
        ({"seed": 1.5}, "seed=1.5"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    args = {"n_samples": 10, "input_dim": 4, "n_components": 8, "mean_active": 2.0, "noise": 0.0, "seed": 0}
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(")):
        sparse_superposition(**{**args, **kwargs})


def test_recovery_is_judged_up_to_order_scale_and_sign():
    rng = np.random.default_rng(0)
    true = rng.standard_normal((6, 10))
    learned = -3.0 * true[[4, 2, 0, 5, 1, 3]]  # permuted, scaled, sign-flipped
    assert mean_best_cosine(learned, true) == pytest.approx(1.0, abs=1e-12)
    codes = np.abs(rng.standard_normal((500, 6)))
    assert mcc(codes[:, [3, 1, 0, 5, 4, 2]] * 7.0 + 2.0, codes) == pytest.approx(1.0, abs=1e-12)
    assert mcc(-codes, codes) == pytest.approx(1.0, abs=1e-12)


def test_mean_best_cosine_hand_case():
    true = np.eye(3)
    learned = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    # e1 and e2 each have cosine 1/sqrt(2) with the first learned vector; e3 is matched exactly
    assert mean_best_cosine(learned, true) == pytest.approx((2 / np.sqrt(2) + 1) / 3, abs=1e-12)


def test_mcc_matches_brute_force_and_ignores_constant_units():
    rng = np.random.default_rng(1)
    true = rng.standard_normal((200, 4))
    learned = true @ rng.standard_normal((4, 4)) + 0.5 * rng.standard_normal((200, 4))
    learned[:, 2] = 1.0  # a dead unit: correlation 0 with everything
    with np.errstate(invalid="ignore"):  # the constant column's correlations are 0/0
        C = np.corrcoef(learned.T, true.T)[:4, 4:]
    C[2] = 0.0
    best = max(np.mean([abs(C[i, p[i]]) for i in range(4)]) for p in itertools.permutations(range(4)))
    assert mcc(learned, true) == pytest.approx(best, abs=1e-12)


def test_matched_cosines_is_the_best_one_to_one_pairing():
    rng = np.random.default_rng(2)
    A, B = rng.standard_normal((5, 7)), rng.standard_normal((5, 7))
    cos = (A / np.linalg.norm(A, axis=1, keepdims=True)) @ (B / np.linalg.norm(B, axis=1, keepdims=True)).T
    best = max(sum(cos[i, p[i]] for i in range(5)) for p in itertools.permutations(range(5)))
    assert matched_cosines(A, B).sum() == pytest.approx(best, abs=1e-12)
    assert np.allclose(np.sort(matched_cosines(A, A[::-1] * 2.0)), 1.0)


def test_shapes_that_cannot_be_compared_are_named():
    with pytest.raises(ValueError, match="same width"):
        mean_best_cosine(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="same N samples"):
        mcc(np.ones((5, 2)), np.ones((6, 2)))
    with pytest.raises(ValueError, match="2-d"):
        matched_cosines(np.ones(3), np.ones((2, 3)))
