"""The theorem and each loss against independent float64 computations."""

import math

import numpy as np
import pytest
import torch

from encoder_study.models.losses import (
    LossConfig,
    combined_loss,
    correlation_loss,
    lse_loss,
    sae_loss,
    uniform_lse_value,
    variance_loss,
    weight_redundancy_loss,
)


def _grad_and_resp(a):
    a = a.clone().requires_grad_(True)
    loss, r = lse_loss(a)
    (g,) = torch.autograd.grad(loss, a)
    return g, r


INPUTS = {
    "random": lambda dt: torch.randn(128, 64, dtype=dt) * 3,
    "relu_like": lambda dt: torch.relu(torch.randn(128, 64, dtype=dt) * 5),
    "large": lambda dt: torch.rand(128, 64, dtype=dt) * 1e4,
    "tiny": lambda dt: torch.rand(128, 64, dtype=dt) * 1e-7,
    "all_equal": lambda dt: torch.full((128, 64), 2.5, dtype=dt),
    "one_winner": lambda dt: torch.cat(
        [torch.zeros(128, 1, dtype=dt), torch.full((128, 63), 800.0, dtype=dt)], 1
    ),
}


@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_lse_gradient_equals_responsibility(kind, dtype, tol):
    a = INPUTS[kind](dtype)
    g, _ = _grad_and_resp(a)
    # independent reference: softmax(-a) in float64 with numpy, max-shifted
    x = -a.double().numpy()
    e = np.exp(x - x.max(axis=1, keepdims=True))
    ref = e / e.sum(axis=1, keepdims=True)
    assert np.abs(g.double().numpy() - ref).max() < tol
    assert torch.isfinite(g).all()


def test_lse_value_and_reductions():
    a = torch.zeros(128, 64, dtype=torch.float64)
    loss, r = lse_loss(a)
    assert loss.item() == pytest.approx(-128 * math.log(64), abs=1e-9)
    assert uniform_lse_value(128, 64) == pytest.approx(-532.3, abs=0.05)
    assert torch.allclose(r, torch.full_like(r, 1 / 64))
    mean, _ = lse_loss(a, reduction="mean")
    assert mean.item() == pytest.approx(-math.log(64), abs=1e-12)
    b = torch.randn(5, 7, dtype=torch.float64)
    ref = -np.log(np.exp(-b.numpy()).sum(1)).sum()
    assert lse_loss(b)[0].item() == pytest.approx(ref, abs=1e-12)


def test_stacked_runs_give_per_run_losses():
    a = torch.randn(3, 32, 8, dtype=torch.float64)
    stacked = combined_loss(a, torch.randn(3, 8, 16, dtype=torch.float64), LossConfig(wr=1.0))
    for r in range(3):
        assert lse_loss(a[r])[0].item() == pytest.approx(stacked["lse"][r].item(), abs=1e-10)
        assert variance_loss(a[r]).item() == pytest.approx(stacked["var"][r].item(), abs=1e-10)
        assert correlation_loss(a[r]).item() == pytest.approx(stacked["tc"][r].item(), abs=1e-10)


def test_variance_loss_matches_numpy():
    a = torch.rand(50, 6, dtype=torch.float64) * 4
    ref = -np.log(a.numpy().var(axis=0, ddof=1) + 1e-6).sum()
    assert variance_loss(a).item() == pytest.approx(ref, rel=1e-12)


def test_correlation_loss_matches_numpy_and_hand_cases():
    a = torch.randn(200, 5, dtype=torch.float64)
    c = np.corrcoef(a.numpy(), rowvar=False)
    ref = (c**2).sum() - (np.diag(c) ** 2).sum()
    assert correlation_loss(a).item() == pytest.approx(ref, rel=1e-6)
    x = torch.randn(100, 1, dtype=torch.float64)
    assert correlation_loss(torch.cat([x, x], 1)).item() == pytest.approx(2.0, abs=1e-6)  # identical units
    assert correlation_loss(torch.cat([x, -x], 1)).item() == pytest.approx(2.0, abs=1e-6)
    assert correlation_loss(torch.cat([x, torch.zeros_like(x)], 1)).item() == 0.0  # a constant unit


def test_weight_redundancy_hand_cases():
    assert weight_redundancy_loss(torch.eye(4, 6, dtype=torch.float64) * 3).item() == pytest.approx(0.0)
    w = torch.tensor([[1.0, 0.0], [2.0, 0.0]], dtype=torch.float64)  # parallel rows: cos = 1 twice
    assert weight_redundancy_loss(w).item() == pytest.approx(2.0)


def test_zero_lambda_term_is_not_computed(monkeypatch):
    import encoder_study.models.losses as L

    def boom(*args, **kwargs):
        raise AssertionError("computed a term whose lambda is 0")

    monkeypatch.setattr(L, "correlation_loss", boom)
    monkeypatch.setattr(L, "weight_redundancy_loss", boom)
    a = torch.rand(16, 4, requires_grad=True)
    out = L.combined_loss(a, torch.randn(4, 3), LossConfig(tc=0.0, wr=0.0))
    assert out["tc"].item() == 0 and out["wr"].item() == 0
    ref = lse_loss(a)[0] + variance_loss(a)
    assert out["total"].item() == pytest.approx(ref.item(), rel=1e-6)


def test_combined_total_is_weighted_sum():
    a = torch.rand(32, 8, dtype=torch.float64)
    W = torch.randn(8, 10, dtype=torch.float64)
    cfg = LossConfig(lse=0.5, var=2.0, tc=3.0, wr=0.25)
    out = combined_loss(a, W, cfg)
    ref = (
        0.5 * lse_loss(a)[0]
        + 2 * variance_loss(a)
        + 3 * correlation_loss(a)
        + 0.25 * weight_redundancy_loss(W)
    )
    assert out["total"].item() == pytest.approx(ref.item(), rel=1e-12)


def test_sae_loss_matches_definition():
    x, xh, a = torch.rand(10, 6), torch.rand(10, 6), torch.randn(10, 4)
    out = sae_loss(x, xh, a, l1=0.01)
    ref = torch.nn.functional.mse_loss(xh, x) + 0.01 * a.abs().mean()
    assert out["total"].item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize(
    "field,value,exc",
    [
        ("lse", -1.0, ValueError),
        ("var", "1", TypeError),
        ("tc", float("nan"), ValueError),
        ("wr", None, TypeError),
    ],
)
def test_bad_lambdas_are_named(field, value, exc):
    with pytest.raises(exc, match=f"lambda_{field}"):
        LossConfig(**{field: value})


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="reduction='max'"):
        lse_loss(torch.zeros(2, 3), reduction="max")
    with pytest.raises(ValueError, match="shape"):
        lse_loss(torch.zeros(3))
    with pytest.raises(ValueError, match="at least 2"):
        variance_loss(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="l1=-1"):
        sae_loss(torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2, 2), l1=-1)


def test_lse_backward_against_finite_differences_and_autograd():
    a = (torch.randn(6, 5, dtype=torch.float64) * 2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: lse_loss(t)[0], (a,))
    (mine,) = torch.autograd.grad(lse_loss(a)[0], a)
    (plain,) = torch.autograd.grad(-torch.logsumexp(-a, dim=1).sum(), a)  # torch's own derivation
    assert torch.allclose(mine, plain, atol=1e-14)


def test_correlation_gradient_is_finite_with_a_silent_unit():
    a = torch.rand(16, 3, dtype=torch.float64)
    a[:, 1] = 0.0  # a ReLU unit that fires on no sample of the batch
    a.requires_grad_(True)
    (g,) = torch.autograd.grad(correlation_loss(a) + variance_loss(a), a)
    assert torch.isfinite(g).all()
