"""Notebook 10's kinds and measures, each against an independent computation: the generalised EM
(``encoder_em``), the unit-norm-rows and scale-free-variance variants, the share of responsibility
on silent units, the explicit-EM mixture and the bootstrap interval."""

import math

import numpy as np
import pytest
import torch

from encoder_study.evaluation.agreement import bootstrap_interval, fit_pca_mixture, soft_nmi
from encoder_study.evaluation.metrics import silent_responsibility_share
from encoder_study.models.config import RunConfig
from encoder_study.models.losses import correlation_loss, scale_free_variance_loss, variance_loss
from encoder_study.models.stacking import gather
from encoder_study.training.engine import RunStack, train_group

F64_EPS = torch.finfo(torch.float64).eps


@pytest.fixture(scope="module")
def X(mnist):
    return mnist["train_x"][: 32 * 8].double()


def cfg(model: str, **changes) -> RunConfig:
    base = {"model": model, "hidden_dim": 16, "epochs": 3, "batch_size": 32, "device": "cpu"}
    return RunConfig(**{**base, **changes})


def test_em_with_an_estep_before_every_step_is_gradient_descent_float64(X):
    # the implicit-EM identity, operationally: same start, same minibatches, 24 steps; the two
    # paths compute the same gradient by different arithmetic (q from its own softmax), so they
    # agree to float64 rounding (~1e-16 per step, grown over 24 Adam steps far below 1e-9)
    (gd,) = train_group([cfg("encoder", seed=3)], X, progress=False)
    (em,) = train_group([cfg("encoder_em", seed=3, knobs={"estep_every": 1})], X, progress=False)
    for name in ("linear.weight", "linear.bias"):
        assert torch.allclose(em.state[name], gd.state[name], rtol=1e-9, atol=1e-12), name
    assert [h["lse"] for h in em.history] == pytest.approx([h["lse"] for h in gd.history], rel=1e-9)
    assert max(abs(h["em_gap"]) for h in em.history) < 1e-9  # q is r after every E-step


def test_stale_responsibilities_change_training(X):
    (gd,) = train_group([cfg("encoder", seed=3)], X, progress=False)
    (em,) = train_group([cfg("encoder_em", seed=3, knobs={"estep_every": 8})], X, progress=False)
    assert (em.state["linear.weight"] - gd.state["linear.weight"]).abs().max() > 1e-6
    assert min(h["em_gap"] for h in em.history) > 0  # KL(q || r) >= 0, > 0 between E-steps


def test_the_m_step_gradient_is_autograd_of_the_auxiliary_function_away_from_the_estep(X):
    stack = RunStack(
        [cfg("encoder_em", seed=s) for s in (1, 2)], X.shape[1], torch.device("cpu"), torch.float64
    )
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # the E-step's parameters somewhere else than the current ones
        for name in ("estep_weight", "estep_bias"):
            stack.buffers[name].add_(
                0.05 * torch.randn(stack.buffers[name].shape, generator=g, dtype=torch.float64)
            )
    idx = torch.stack(
        [torch.randperm(len(X), generator=torch.Generator().manual_seed(s))[:32] for s in (1, 2)]
    )
    x = gather(X, idx)
    out, grads = stack.kind.loss_and_grads(stack.tensors, x)
    W = stack.params["linear.weight"].detach().clone().requires_grad_(True)
    b = stack.params["linear.bias"].detach().clone().requires_grad_(True)
    xr = X[idx]  # (runs, batch, inputs): each run's own minibatch
    a = torch.relu(xr @ W.transpose(1, 2) + b[:, None])
    q = torch.softmax(
        -torch.relu(
            xr @ stack.buffers["estep_weight"].transpose(1, 2) + stack.buffers["estep_bias"][:, None]
        ),
        -1,
    )
    U = (q * a).sum((1, 2)) + (q * q.log()).sum((1, 2))
    lse = -torch.logsumexp(-a, -1).sum(-1)
    total = U + variance_loss(a) + correlation_loss(a)
    gW, gb = torch.autograd.grad(total.sum(), (W, b))
    assert torch.allclose(grads["linear.weight"], gW, rtol=1e-10, atol=1e-12)
    assert torch.allclose(grads["linear.bias"], gb, rtol=1e-10, atol=1e-12)
    assert torch.allclose(out["total"], total.detach(), rtol=1e-12)
    kl = (q * (q.log() - torch.log_softmax(-a, -1))).sum((1, 2))  # U - L_lse = KL(q || r)
    assert torch.allclose(out["em_gap"], kl.detach(), rtol=1e-9, atol=1e-9)
    assert torch.allclose(out["lse"], lse.detach(), rtol=1e-12)
    assert bool((out["em_gap"] > 0).all())


@pytest.mark.parametrize("steps_per_epoch,epochs,every", [(8, 3, 3), (8, 2, 3)])
def test_the_estep_comes_every_estep_every_steps(X, steps_per_epoch, epochs, every):
    (em,) = train_group([cfg("encoder_em", epochs=epochs, knobs={"estep_every": every})], X, progress=False)
    steps = steps_per_epoch * epochs
    assert float(em.state["steps_since_estep"]) == steps % every
    same = torch.equal(em.state["estep_weight"], em.state["linear.weight"])
    assert same == (steps % every == 0)


def test_unit_rows_stay_on_the_sphere_from_the_first_step(X):
    (res,) = train_group([cfg("encoder_unit_rows")], X, progress=False)
    norms = res.state["linear.weight"].norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=64 * F64_EPS)


def test_the_paper_variance_term_falls_by_2k_log_c_and_the_scale_free_one_does_not_move():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 50, 7, generator=g, dtype=torch.float64)
    c, K = 3.7, a.shape[-1]
    assert torch.allclose(
        variance_loss(c * a, eps=0.0), variance_loss(a, eps=0.0) - 2 * K * math.log(c), rtol=1e-13
    )
    assert torch.allclose(
        scale_free_variance_loss(c * a, eps=0.0), scale_free_variance_loss(a, eps=0.0), rtol=1e-12
    )
    v = a.var(dim=1).numpy()  # K log(arithmetic mean / geometric mean) of the variances
    expected = K * (np.log(v.mean(-1)) - np.log(v).mean(-1))
    assert np.allclose(scale_free_variance_loss(a, eps=0.0).numpy(), expected, rtol=1e-12)


def test_silent_share_by_hand():
    A = torch.tensor([[0.0, 0.0, 1.0, 2.0], [1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    share = silent_responsibility_share(A)
    assert share == pytest.approx([2 / (2 + math.exp(-1) + math.exp(-2)), 0.0, 1.0], rel=1e-12)


def test_the_pca_mixture_finds_well_separated_clusters():
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 10
    X = np.concatenate([c + rng.normal(size=(200, 3)) for c in centres])
    truth = np.repeat(np.eye(3), 200, axis=0)
    m = fit_pca_mixture(X, components=3, pca_dims=2, seed=0)
    R = m.responsibilities(X)
    assert R.shape == (600, 3) and np.allclose(R.sum(1), 1)
    assert soft_nmi(R, truth) > 0.99
    assert m.n_parameters == 3 * 2 + 3 * 2 + 3 + 2 * 3 + 3
    with pytest.raises(ValueError, match="pca_dims"):
        fit_pca_mixture(X, components=3, pca_dims=0, seed=0)


def test_bootstrap_interval_of_a_mean_matches_the_normal_interval():
    x = np.random.default_rng(1).normal(size=4000)
    lo, hi = bootstrap_interval(lambda idx: float(x[idx].mean()), len(x), resamples=2000, seed=2)
    half = 1.96 * x.std() / math.sqrt(len(x))  # 0.031; the percentile interval's own noise ~5%
    assert lo == pytest.approx(x.mean() - half, abs=0.2 * half)
    assert hi == pytest.approx(x.mean() + half, abs=0.2 * half)
    lo_b, hi_b = bootstrap_interval(
        lambda idx: float(x[idx].mean()), len(x), resamples=2000, seed=2, method="basic"
    )
    assert lo_b == pytest.approx(2 * x.mean() - hi) and hi_b == pytest.approx(2 * x.mean() - lo)
    with pytest.raises(ValueError, match="method"):
        bootstrap_interval(lambda idx: 0.0, 10, method="bca")
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval(lambda idx: 0.0, 10, level=1.5)


def test_the_scale_free_kind_logs_and_differentiates_the_scale_free_term(X):
    # its hand-derived gradient is held to finite differences by test_kinds; here its terms are
    # held to the plain formulas (losses.py) on the same activations, and its total to autograd
    stack = RunStack(
        [cfg("encoder_scale_free", seed=s) for s in (1, 2)], X.shape[1], torch.device("cpu"), torch.float64
    )
    idx = torch.stack(
        [torch.randperm(len(X), generator=torch.Generator().manual_seed(s))[:32] for s in (1, 2)]
    )
    out, grads = stack.kind.loss_and_grads(stack.tensors, gather(X, idx))
    W = stack.params["linear.weight"].detach().clone().requires_grad_(True)
    b = stack.params["linear.bias"].detach().clone().requires_grad_(True)
    a = torch.relu(X[idx] @ W.transpose(1, 2) + b[:, None])
    lse = -torch.logsumexp(-a, -1).sum(-1)
    total = lse + scale_free_variance_loss(a) + correlation_loss(a)
    gW, gb = torch.autograd.grad(total.sum(), (W, b))
    assert torch.allclose(out["var"], scale_free_variance_loss(a).detach(), rtol=1e-12)
    assert torch.allclose(out["total"], total.detach(), rtol=1e-12)
    assert torch.allclose(grads["linear.weight"], gW, rtol=1e-9, atol=1e-12)
    assert torch.allclose(grads["linear.bias"], gb, rtol=1e-9, atol=1e-12)


def test_weighted_nmi_equals_the_nmi_of_the_repeated_rows():
    rng = np.random.default_rng(3)
    R1, R2 = rng.dirichlet(np.ones(5), 40), rng.dirichlet(np.ones(4), 40)
    idx = rng.integers(0, 40, 40)
    counts = np.bincount(idx, minlength=40)
    assert soft_nmi(R1, R2, weights=counts) == pytest.approx(soft_nmi(R1[idx], R2[idx]), rel=1e-12)
    assert soft_nmi(R1, R2, weights=np.ones(40)) == pytest.approx(soft_nmi(R1, R2), rel=1e-12)
    with pytest.raises(ValueError, match="weights"):
        soft_nmi(R1, R2, weights=np.zeros(40))
