"""The JumpReLU SAE's own rules: the straight-through pseudo-derivatives of its thresholds, against
the paper's formula computed by hand in float64; its inference rule; its decoder constraint."""

import math

import pytest
import torch
from sklearn.datasets import load_digits

import encoder_study as es
from encoder_study.models.config import RunConfig
from encoder_study.models.model import build_run_model
from encoder_study.models.stacking import gather
from encoder_study.training.engine import RunStack


@pytest.fixture(scope="module")
def X():
    return torch.from_numpy(load_digits().data[:256] / 16.0)  # float64, (256, 64)


def test_threshold_gradient_is_the_papers_pseudo_derivative_float64(X):
    sparsity, eps = 0.05, 0.2
    cfg = RunConfig(
        model="jumprelu", hidden_dim=12, device="cpu", knobs={"sparsity": sparsity, "bandwidth": eps}
    )
    stack = RunStack([cfg], X.shape[1], torch.device("cpu"), torch.float64)
    stack.kind.prepare(stack.tensors, X)
    with torch.no_grad():  # thresholds spread over the pre-activations, so the kernel sees some of them
        stack.tensors["log_threshold"].copy_(torch.linspace(0.02, 0.6, 12).log()[None])
    x = gather(X, torch.arange(64)[None])
    _, grads = stack.kind.loss_and_grads(stack.tensors, x)
    p = {n: t[0].detach() for n, t in stack.tensors.items()}
    xb = x[0]
    z = xb @ p["encoder.weight"].T + p["encoder.bias"]
    theta = p["log_threshold"].exp()
    a = z * (z > theta)
    x_hat = a @ p["decoder.weight"].T + p["decoder.bias"]
    B, D = xb.shape
    g_a = 2.0 / (B * D) * (x_hat - xb) @ p["decoder.weight"]  # d mse / d a
    near = ((z - theta).abs() < eps / 2).double()  # the rectangle kernel K((z - theta) / eps)
    d_theta = (g_a * (-theta / eps) * near).sum(0) + sparsity / B * (-1.0 / eps) * near.sum(0)
    expected = d_theta * theta  # through theta = exp(log_threshold)
    assert near.sum() > 0  # the test exercises the kernel
    torch.testing.assert_close(grads["log_threshold"][0], expected, rtol=1e-10, atol=1e-14)


def test_inference_keeps_pre_activations_above_each_latents_threshold(X, tmp_path):
    d = es.fit(
        X.float().numpy(),
        kind="jumprelu",
        hidden_dim=8,
        epochs=2,
        batch_size=64,
        progress=False,
        cache=str(tmp_path),
    )
    m = d.model()
    with torch.no_grad():
        z = m.encoder(X.float())
        A = m.encode(X.float())
    theta = m.threshold.detach()
    assert torch.equal(A, torch.where(z > theta, z, torch.zeros_like(z)))
    assert (theta > 0).all() and not torch.allclose(theta, torch.full_like(theta, 1e-3))  # thresholds learned
    assert torch.allclose(m.decoder.weight.norm(dim=0), torch.ones(8), atol=1e-5)  # unit-norm columns


def test_a_larger_sparsity_weight_gives_a_sparser_code(X, tmp_path):
    l0 = []
    # a kernel and a rate large enough that 30 epochs of 4 steps move the thresholds (Adam moves
    # log theta by about lr a step; at the paper's 1e-3 they would hardly leave their start)
    for sparsity in (1e-4, 1.0):
        d = es.fit(
            X.float().numpy(),
            kind="jumprelu",
            sparsity=sparsity,
            bandwidth=0.1,
            lr=0.03,
            hidden_dim=16,
            epochs=30,
            batch_size=64,
            progress=False,
            cache=tmp_path,
        )
        l0.append(float((d.encode(X.float().numpy()) > 0).sum(1).mean()))
    assert l0[1] < l0[0], l0


def test_bandwidth_and_threshold_init_must_be_positive():
    with pytest.raises(ValueError, match="bandwidth=0.0 must be > 0"):
        RunConfig(model="jumprelu", knobs={"bandwidth": 0.0})
    with pytest.raises(ValueError, match="threshold_init=0.0 must be > 0"):
        RunConfig(model="jumprelu", knobs={"threshold_init": 0.0})
    defaults = dict(RunConfig(model="jumprelu").knobs)
    assert math.isclose(defaults["bandwidth"], 1e-3) and math.isclose(defaults["threshold_init"], 1e-3)


def test_thresholds_start_at_threshold_init_and_a_higher_start_is_sparser(X, tmp_path):
    for start in (1e-3, 0.37):
        model = build_run_model(
            RunConfig(model="jumprelu", hidden_dim=16, knobs={"threshold_init": start}), 64, 1
        )
        assert torch.allclose(model.threshold, torch.full((16,), start), rtol=1e-6)
    # with the same short budget and rate, where the thresholds start decides where they end
    l0 = [
        float((fit.encode(X.float().numpy()) > 0).sum(1).mean())
        for fit in (
            es.fit(
                X.float().numpy(),
                kind="jumprelu",
                threshold_init=start,
                lr=1e-3,
                hidden_dim=16,
                epochs=3,
                batch_size=64,
                progress=False,
                cache=tmp_path,
            )
            for start in (1e-3, 3.0)
        )
    ]
    assert l0[1] < l0[0], l0


def test_saelens_files_give_back_the_exact_thresholds(X, tmp_path):
    d = es.fit(
        X.float().numpy(),
        kind="jumprelu",
        hidden_dim=64,
        epochs=1,
        batch_size=64,
        progress=False,
        cache=str(tmp_path),
    )
    with torch.no_grad():  # thresholds everywhere on the float32 line, as a trained dictionary may have them
        d.state["log_threshold"].copy_(torch.linspace(-9, 1, 64))
    back = es.load(d.save(tmp_path / "s", format="saelens"))
    assert torch.equal(back.model().threshold, d.model().threshold)
