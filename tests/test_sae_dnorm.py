"""The decoder-norm L1 SAE's recipe (Anthropic's April 2024 update): its initialisation, the L1
weight's warm-up, its loss against a float64 computation by hand, and the per-run gradient clip on
hand-built gradients."""

import pytest
import torch
from interrupted_training import stop_then_resume

from encoder_study.models.config import RunConfig
from encoder_study.models.kinds.sae_dnorm import DECODER_INIT_NORM, GRAD_CLIP, SAEDecoderNormKind
from encoder_study.models.model import build_run_model
from encoder_study.models.stacking import gather
from encoder_study.training.engine import RunStack, train_group

D, K = 12, 7


def config(**changes) -> RunConfig:
    base = {"model": "sae_dnorm", "hidden_dim": K, "epochs": 10, "batch_size": 8, "device": "cpu", "l1": 0.3}
    return RunConfig(**{**base, **changes})


@pytest.fixture
def X() -> torch.Tensor:
    return torch.randn(64, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_decoder_columns_start_at_the_set_norm_and_the_encoder_at_their_transpose():
    model = build_run_model(config(), D, seed=3)
    W_dec = model.decoder.weight.detach()  # (D, K)
    assert W_dec.norm(dim=0).tolist() == pytest.approx([DECODER_INIT_NORM] * K, rel=1e-6)  # float32
    assert torch.equal(model.encoder.weight, W_dec.T)
    assert not model.encoder.bias.any() and not model.decoder.bias.any()
    # directions differ between seeds (drawn, not fixed)
    other = build_run_model(config(), D, seed=4).decoder.weight.detach()
    assert (W_dec - other).abs().max() > 1e-3


def test_the_l1_weight_rises_over_the_first_twentieth_of_the_steps_and_the_loss_is_the_formula(X):
    # 64 rows in minibatches of 8, 10 epochs: 80 steps, warm-up round(0.05 x 80) = 4 steps
    stack = RunStack([config(seed=1), config(seed=2, l1=0.1)], D, torch.device("cpu"), torch.float64)
    stack.kind.prepare(stack.tensors, X)
    assert stack.kind.warmup_steps == 4 and stack.kind.max_grad_norm == GRAD_CLIP / D
    idx = torch.stack([torch.arange(8), torch.arange(8, 16)])
    x = gather(X, idx)  # (S, B, D): one data order per seed
    p = {n: t.detach() for n, t in stack.tensors.items()}
    for step, ramp in [(0, 0.25), (1, 0.5), (2, 0.75), (3, 1.0), (50, 1.0)]:
        stack.kind.steps.fill_(step)
        out, _ = stack.kind.loss_and_grads(stack.tensors, x)
        for r, l1 in enumerate((0.3, 0.1)):
            xr = x[r]
            a = torch.relu(xr @ p["encoder.weight"][r].T + p["encoder.bias"][r])
            x_hat = a @ p["decoder.weight"][r].T + p["decoder.bias"][r]
            mse = ((x_hat - xr) ** 2).mean()
            weighted = (a * p["decoder.weight"][r].norm(dim=0)).sum(1).mean() / K
            expected = mse + l1 * ramp * weighted
            assert out["total"][r].item() == pytest.approx(expected.item(), rel=1e-12)
            assert out["l1"][r].item() == pytest.approx(weighted.item(), rel=1e-12)  # logged unweighted


def test_each_runs_gradient_is_clipped_to_the_bound_over_all_its_parameters_together():
    kind = SAEDecoderNormKind([config(seed=1), config(seed=2)], None, torch.device("cpu"), torch.float64)
    kind.max_grad_norm = 1.0

    # run 0: entries 3 and 4 (norm 5) -> scaled by 1/5; run 1: norm 0.5 -> untouched
    def f64(values: list) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64)

    grads = [f64([[3.0, 0.0], [0.3, 0.0]]), f64([[[0.0, 4.0]], [[0.0, 0.4]]])]
    kind.before_step(grads)
    # 3 x (1 / 5) rounds twice: within a few units in the last place of 0.6
    assert torch.allclose(grads[0], f64([[0.6, 0.0], [0.3, 0.0]]), rtol=4e-16, atol=0)
    assert torch.allclose(grads[1], f64([[[0.0, 0.8]], [[0.0, 0.4]]]), rtol=4e-16, atol=0)
    zero = [torch.zeros(2, 3)]
    kind.before_step(zero)  # no division by zero leaks a NaN
    assert not zero[0].any() and not zero[0].isnan().any()


def test_the_clip_changes_training_where_it_binds(X, monkeypatch):
    import encoder_study.models.kinds.sae_dnorm as module

    (clipped,) = train_group([config(seed=1, epochs=2)], X, progress=False)
    monkeypatch.setattr(module, "GRAD_CLIP", float("inf"))
    (free,) = train_group([config(seed=1, epochs=2)], X, progress=False)
    # the bound 1/D binds on these unit-variance inputs, so the runs part; without it, the first step
    # is the same up to Adam's (scale-invariant) update, not bit-for-bit
    assert max((clipped.state[n] - free.state[n]).abs().max().item() for n in free.state) > 1e-6


def test_the_gradient_during_the_warm_up_is_autograds_of_the_warmed_loss_float64(X):
    # at step 0 of a 4-step warm-up the L1 weight is l1 / 4: the hand-derived gradient must carry
    # the ramp (both sides float64; they sum in other orders: rounding ~1e-16 relative)
    stack = RunStack([config(seed=1), config(seed=2, l1=0.1)], D, torch.device("cpu"), torch.float64)
    stack.kind.prepare(stack.tensors, X)
    x = gather(X, torch.stack([torch.arange(8), torch.arange(8, 16)]))
    _, grads = stack.kind.loss_and_grads(stack.tensors, x)
    for r, l1 in enumerate((0.3, 0.1)):
        p = {n: t.detach()[r].clone().requires_grad_(True) for n, t in stack.tensors.items()}
        a = torch.relu(x[r] @ p["encoder.weight"].T + p["encoder.bias"])
        x_hat = a @ p["decoder.weight"].T + p["decoder.bias"]
        loss = ((x_hat - x[r]) ** 2).mean() + l1 * 0.25 * (a * p["decoder.weight"].norm(dim=0)).sum(
            1
        ).mean() / K
        expected = dict(zip(p, torch.autograd.grad(loss, list(p.values()))))
        for n, g in expected.items():
            assert torch.allclose(grads[n][r], g, rtol=1e-10, atol=1e-14 * g.abs().max().item()), n


def test_each_step_counts_and_a_run_resumed_inside_the_warm_up_ends_as_one_never_stopped(
    X, tmp_path, monkeypatch
):
    import encoder_study.training.engine as E

    # 60 rows in minibatches of 8: 8 steps an epoch, the last one short
    stack = RunStack([config(seed=1)], D, torch.device("cpu"), torch.float64)
    opt = E.StackedOptimizer(list(stack.params.values()), [("adam", 1e-3)])
    E._train_epoch(stack, opt, X[:60], 0, 8)
    assert int(stack.kind.steps) == 8

    # 40 epochs of 8 steps: a 16-step warm-up; the interruption after epoch 1 (step 8) falls inside it
    configs = [config(seed=s, epochs=40) for s in (1, 2)]
    straight = train_group(configs, X, progress=False)
    resumed = stop_then_resume(configs, X, tmp_path / "group.partial.safetensors", 1, monkeypatch)
    for a, b in zip(straight, resumed):
        assert all(torch.equal(a.state[n], b.state[n]) for n in a.state)
