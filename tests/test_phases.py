"""Training in phases: a run that starts from a given (partial) state, with a fresh optimizer,
cached under that state (``run_experiments(..., init=...)``, ``engine.initial_state``)."""

import pytest
import torch

from encoder_study.models.config import ADAM_EPS, RunConfig
from encoder_study.models.losses import sae_loss
from encoder_study.models.model import build_run_model
from encoder_study.training.engine import initial_state
from encoder_study.training.runs import run_experiments


@pytest.fixture(scope="module")
def X(mnist):
    return mnist["train_x"][:256].double()


def test_init_replaces_the_given_entries_and_keeps_the_seeds_others():
    cfg = RunConfig(model="sae", seed=3, hidden_dim=8)
    seeded = initial_state(cfg, 20)
    state = initial_state(cfg, 20, {"encoder.weight": torch.ones(8, 20)})
    assert torch.equal(state["encoder.weight"], torch.ones(8, 20))
    assert all(torch.equal(state[n], seeded[n]) for n in ("encoder.bias", "decoder.weight", "decoder.bias"))
    with pytest.raises(ValueError, match="'linear.weight', which a 'sae' model does not have"):
        initial_state(cfg, 20, {"linear.weight": torch.ones(8, 20)})
    with pytest.raises(ValueError, match=r"init\['encoder.bias'\] has shape \(9,\)"):
        initial_state(cfg, 20, {"encoder.bias": torch.ones(9)})


def test_a_phase_takes_a_fresh_adam_step_from_its_starting_state(X, tmp_path):
    # One minibatch per epoch, one epoch: the run is one Adam step from the given state. A fresh
    # Adam's first step is lr g / (|g| + eps) (both moments bias-corrected to g and g^2); the
    # gradient g of the SAE's loss at the starting state comes from autograd here, in float64.
    cfg = RunConfig(model="sae", seed=5, hidden_dim=8, epochs=1, batch_size=len(X), l1=0.01, lr=1e-3)
    start = {n: v.double() * 0.5 for n, v in initial_state(cfg, X.shape[1]).items()}
    (res,) = run_experiments([cfg], X, init=[start], cache=tmp_path, progress=False)
    model = build_run_model(cfg, X.shape[1]).double()
    model.load_state_dict(start)
    x_hat, a = model(X)
    loss = sae_loss(X, x_hat, a, l1=cfg.l1)["total"]
    grads = dict(zip(start, torch.autograd.grad(loss, list(model.parameters()))))
    for n, g in grads.items():
        expected = start[n] - cfg.lr * g / (g.abs() + ADAM_EPS)
        assert torch.allclose(res.state[n].double(), expected, rtol=0, atol=1e-12), n


def test_the_starting_state_is_part_of_the_cache_key(X, tmp_path):
    cfg = RunConfig(model="encoder", seed=1, hidden_dim=8, epochs=1, batch_size=64)
    a = initial_state(cfg, X.shape[1])
    b = {n: v * 0.9 for n, v in a.items()}
    first = run_experiments([cfg, cfg], X, init=[a, b], cache=tmp_path, progress=False)  # one stack
    assert not torch.equal(first[0].state["linear.weight"], first[1].state["linear.weight"])
    (alone,) = run_experiments([cfg], X, cache=tmp_path, progress=False)  # no init = the seed's = a
    assert torch.allclose(alone.state["linear.weight"], first[0].state["linear.weight"], atol=1e-9)
    again = run_experiments([cfg, cfg], X, init=[a, b], cache=tmp_path, progress=False)
    assert all(torch.equal(p.state["linear.weight"], q.state["linear.weight"]) for p, q in zip(first, again))


def test_bad_init_is_named(X, tmp_path):
    cfg = RunConfig(model="encoder", seed=1, hidden_dim=8, epochs=1, batch_size=64)
    state = initial_state(cfg, X.shape[1])
    with pytest.raises(ValueError, match="one entry .* per config"):
        run_experiments([cfg], X, init=[state, state], cache=tmp_path, progress=False)
    with pytest.raises(TypeError, match=r"init\[0\] must be None or a dict of tensors"):
        run_experiments([cfg], X, init=["weights.pt"], cache=tmp_path, progress=False)
    with pytest.raises(ValueError, match="configs 0 and 1 are the same run"):
        run_experiments([cfg, cfg], X, init=[state, state], cache=tmp_path, progress=False)


def test_a_phase_that_starts_far_from_its_kinds_bound_is_not_called_diverged(X, tmp_path):
    # an SAE whose decoder is 3000 times too large starts with a loss far above the kind's bound
    # (a thousand times the data's mean square); it trains down from there, as an SAE phase after
    # an encoder-only phase does (notebook 8), and must not be stopped at its first epoch
    cfg = RunConfig(model="sae", seed=2, hidden_dim=8, epochs=2, batch_size=64)
    start = initial_state(cfg, X.shape[1])
    start["decoder.weight"] = start["decoder.weight"] * 3000.0
    (res,) = run_experiments([cfg], X, init=[start], cache=tmp_path, progress=False)
    first_loss = res.history[0]["total"]
    assert first_loss > 1e3 * float(X.square().mean())  # above the kind's own bound
    assert res.diverged_epoch is None and res.history[-1]["total"] < first_loss
