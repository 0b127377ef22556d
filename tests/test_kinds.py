"""Every registered model kind, through the engine: its gradient against finite differences, its
stack against each run alone, its stacked encode against its module's, and resuming; and every
kind a user names, through fit, the command and both disk formats. Kinds added for the test (one
file each and the registry lines below; l2_encoder_kind.py with a knob of its own) run through
all of it."""

import numpy as np
import pytest
import torch
from ema_encoder_kind import EmaEncoderKind
from interrupted_training import stop_then_resume
from l2_encoder_kind import L2EncoderKind
from sklearn.datasets import load_digits
from tanh_encoder_kind import TanhEncoderKind

import encoder_study as es
from encoder_study.evaluation.scoring import training_gflop
from encoder_study.interface import cli
from encoder_study.models import kinds
from encoder_study.models.config import RunConfig
from encoder_study.models.kinds.topk import AUXK_COEF
from encoder_study.models.model import build_run_model
from encoder_study.models.stacking import gather
from encoder_study.training.engine import RunStack, train_group

kinds.register(TanhEncoderKind)  # the one registry line a new kind needs
kinds.register(EmaEncoderKind)  # a kind with a buffer (state the optimizer never touches)
kinds.register(L2EncoderKind)  # a kind users name, with a knob RunConfig has no field for
ALL_KINDS = sorted(kinds.KINDS)
USER_KINDS = sorted(kinds.user_kinds())


def differentiated(out: dict) -> torch.Tensor:
    """The part of a kind's total whose derivative its gradient is. AuxK (TopK) treats the
    reconstruction's residual as a fixed target, so its logged value moves with the parameters
    where its gradient does not; with no dead latent (as here, before any training) its gradient
    is zero, and the total less AUXK_COEF x AuxK is what the gradient differentiates."""
    return out["total"] - AUXK_COEF * out["auxk"] if "auxk" in out else out["total"]


def config(kind: str, **changes) -> RunConfig:
    """A small run of ``kind`` (a TopK-like kind gets k = 4)."""
    own = {k.name: 3 if k.type is int else 0.3 for k in kinds.KINDS[kind].knobs if not k.field}  # switched on
    base = {"model": kind, "hidden_dim": 16, "epochs": 2, "batch_size": 32, "device": "cpu", "knobs": own}
    base.update(changes)
    try:
        return RunConfig(**base)
    except ValueError:
        return RunConfig(k=4, **base)


def _max_diff(a: dict, b: dict) -> float:
    return max((a[n] - b[n]).abs().max().item() for n in a)


@pytest.fixture(scope="module")
def X(mnist):
    return mnist["train_x"][: 32 * 8].double()


def test_the_registry_refuses_a_second_kind_under_a_taken_name():
    class Impostor(TanhEncoderKind):
        pass

    with pytest.raises(ValueError, match="'tanh_encoder' is already registered"):
        kinds.register(Impostor)
    assert "tanh_encoder" in ALL_KINDS and {"encoder", "sae", "topk"} <= set(ALL_KINDS)


@pytest.mark.parametrize(
    "kind,activation", [(k, "relu") for k in ALL_KINDS] + [("encoder", "neg_relu"), ("sae", "neg_relu")]
)
def test_gradient_matches_finite_differences_float64(kind, activation, X):
    # Directional derivative of the runs' summed loss along a random unit direction V, by central
    # differences, against <grad, V>. The step eps = 1e-6 moves a pre-activation by about 1e-5:
    # truncation ~eps^2; rounding ~1e-16 |L| / eps; and a TopK selection (whose loss jumps where
    # two latents swap ranks) crosses a tie only if two of them lie that close. Decoder columns
    # that a kind keeps at unit norm get V along the sphere (no component along the column): the
    # step the kind takes there is the tangent part.
    configs = [
        config(kind, seed=s, **({"activation": activation} if activation != "relu" else {}))
        for s in (1, 2, 3)
    ]
    stack = RunStack(configs, X.shape[1], torch.device("cpu"), torch.float64)
    stack.kind.prepare(stack.tensors, X)
    idx = torch.stack(
        [
            torch.randperm(len(X), generator=torch.Generator().manual_seed(s))[:32]
            for s in stack.layout.data_seeds
        ]
    )
    x = gather(X, idx)
    g = torch.Generator().manual_seed(0)
    V = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in stack.params.items()}
    for name in stack.kind.surrogate_gradients:  # a pseudo-derivative: checked by the kind's own test
        V[name].zero_()
    if "decoder.weight" in V:
        w = stack.params["decoder.weight"].detach()
        w_unit = w / w.norm(dim=1, keepdim=True)
        V["decoder.weight"] -= (V["decoder.weight"] * w_unit).sum(1, keepdim=True) * w_unit
    norm = sum(v.square().sum() for v in V.values()).sqrt()
    V = {n: v / norm for n, v in V.items()}
    out, grads = stack.kind.loss_and_grads(stack.tensors, x)
    assert set(grads) == set(stack.params)  # a gradient for every parameter, none for a buffer
    if "auxk" in stack.kind.terms:  # no latent dead yet: AuxK has no gradient here
        assert not bool((stack.kind.idle >= stack.kind.dead_after).any())
    along = sum((grads[n] * V[n]).sum() for n in V).item()

    def loss_at(step: float) -> float:
        moved = {n: (p.detach() + step * V[n]).requires_grad_(True) for n, p in stack.params.items()}
        moved.update(stack.buffers)
        return differentiated(stack.kind.loss_and_grads(moved, x)[0]).sum().item()

    eps = 1e-6
    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    rounding = 100 * torch.finfo(torch.float64).eps * abs(differentiated(out).sum().item()) / eps
    assert along == pytest.approx(numeric, rel=1e-5, abs=rounding), kind


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_a_stack_trains_each_run_as_it_would_alone_float64(kind, X):
    # three runs (two sharing a seed, their lrs differ) in one stack against each in its own; the
    # stacked and single GEMMs sum in other orders: float64 rounding ~1e-16, amplified over these
    # 16 steps far less than the 1e-9 asked for; a mixed-up run or minibatch moves weights by ~1e-3
    configs = [config(kind, seed=1), config(kind, seed=1, lr=3e-3), config(kind, seed=2)]
    together = train_group(configs, X, progress=False)
    for cfg, res in zip(configs, together):
        (alone,) = train_group([cfg], X, progress=False)
        assert _max_diff(alone.state, res.state) < 1e-9, cfg
        assert [h["total"] for h in alone.history] == pytest.approx(
            [h["total"] for h in res.history], rel=1e-9
        )


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_the_stacked_encode_is_the_modules_encode(kind, X):
    configs = [config(kind, seed=s) for s in (1, 2)]
    results = train_group(configs, X, progress=False)
    stack = RunStack(configs, X.shape[1], torch.device("cpu"), torch.float64)
    with torch.no_grad():
        for name, p in stack.tensors.items():
            p.copy_(torch.stack([r.state[name] for r in results]))
    x = X[:100]
    A = stack.encode(x)
    for r, res in enumerate(results):
        model = build_run_model(res.config, x.shape[1]).double()  # float64 weights, not a float32 copy
        model.load_state_dict(res.state)
        with torch.no_grad():
            expected = model.encode(x)
            # the same float64 products summed in other orders: per unit at most D eps sum_i |w_i x_i|
            # (+ |b|), and an activation (ReLU, tanh, a top-k of these) does not enlarge the error
            bound = x.shape[1] * torch.finfo(torch.float64).eps * (x.abs() @ model.W.abs().T + model.b.abs())
        assert ((A[r] - expected).abs() <= bound + 1e-300).all(), kind


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_an_interrupted_stack_resumes_to_the_same_numbers(kind, X, tmp_path, monkeypatch):
    configs = [config(kind, seed=s, epochs=4) for s in (1, 2)]
    straight = train_group(configs, X, progress=False)
    resumed = stop_then_resume(configs, X, tmp_path / "group.partial.safetensors", 2, monkeypatch)
    for a, b in zip(straight, resumed):
        assert _max_diff(a.state, b.state) == 0.0
        assert [h["total"] for h in a.history] == [h["total"] for h in b.history]


def test_a_buffer_is_stacked_updated_by_its_kind_and_returned_but_never_trained(X):
    configs = [config("ema_encoder", seed=s, epochs=1) for s in (1, 2)]
    stack = RunStack(configs, X.shape[1], torch.device("cpu"), torch.float64)
    assert set(stack.buffers) == {"activation_ema"} and "activation_ema" not in stack.params
    assert not stack.buffers["activation_ema"].requires_grad
    (result, _) = train_group(configs, X, progress=False)
    ema = result.state["activation_ema"]
    # from 0, eight steps of ema <- 0.9 ema + 0.1 (batch mean of a >= 0): non-negative, not all 0
    assert ema.shape == (16,) and bool((ema >= 0).all()) and float(ema.sum()) > 0
    assert torch.allclose(result.model().activation_ema.double(), ema, rtol=1e-6, atol=0)  # float32 copy


def knob_values(kind: type[kinds.ModelKind]) -> dict:
    """A value for each of a kind's knobs, away from its default where it has one (an int: 3)."""
    return {k.name: 3 if k.type is int else (k.default or 0.0) * 0.5 + 0.25 for k in kind.knobs}


@pytest.mark.parametrize("name", USER_KINDS)
def test_every_kind_users_name_works_through_fit_the_command_and_both_formats(name, tmp_path):
    """Nothing outside a kind's file says what its knobs or its SAELens form are: a kind left out
    anywhere (fit's keywords, the command's flags, the export or the import) fails here."""
    X = (load_digits().data[:256] / 16.0).astype(np.float32)
    kind, knobs = kinds.user_kinds()[name], knob_values(kinds.user_kinds()[name])
    settings = {"hidden_dim": 8, "epochs": 1, "batch_size": 64, "cache": tmp_path / "runs", "progress": False}
    d = es.fit(X, kind=name, **settings, **knobs)
    assert d.kind == name and kind.knob_values(d.config) == knobs
    A = d.encode(X)
    assert np.isfinite(A).all() and A.shape == (256, 8)
    assert np.array_equal(es.load(d.save(tmp_path / "own")).encode(X), A)
    back = es.load(d.save(tmp_path / "saelens", format="saelens", readout_x=X))
    assert back.kind == name and kind.knob_values(back.config) == knobs
    assert np.array_equal(back.encode(X), A)
    np.save(tmp_path / "x.npy", X)
    argv = ["--activations", str(tmp_path / "x.npy"), "--kind", name, "--out", str(tmp_path / "cmd")]
    argv += ["--hidden-dim", "8", "--epochs", "1", "--batch-size", "64", "--cache", str(tmp_path / "runs")]
    for knob in kind.knobs:
        argv += [knob.flag, str(knobs[knob.name])]
    assert cli.main(argv) == 0
    assert kind.knob_values(es.load(tmp_path / "cmd").config) == knobs


def test_a_kinds_own_knob_changes_its_training_and_is_refused_by_name_elsewhere(tmp_path):
    X = (load_digits().data[:256] / 16.0).astype(np.float32)
    settings = {"hidden_dim": 8, "epochs": 1, "batch_size": 64, "cache": tmp_path, "progress": False}
    plain, l2 = (es.fit(X, kind="ours_l2", lambda_l2=w, **settings) for w in (0.0, 5.0))
    assert dict(l2.config.knobs) == {"lambda_l2": 5.0}
    assert not torch.equal(plain.state["linear.weight"], l2.state["linear.weight"])
    with pytest.raises(TypeError, match="kind='ours' does not take lambda_l2"):
        es.fit(X, kind="ours", lambda_l2=1.0, **settings)
    with pytest.raises(ValueError, match=r"model='encoder' has no knob \['lambda_l2'\]"):
        RunConfig(knobs={"lambda_l2": 1.0})
    with pytest.raises(ValueError, match=r"lambda_l2=-1\.0 must be >= 0"):
        RunConfig(model="l2_encoder", knobs={"lambda_l2": -1.0})


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_every_module_keeps_one_contract_encode_decode_dictionary(kind, X):
    """encode, decode (the forward's reconstruction, or a refusal for a decoder-free kind) and
    dictionary (hidden_dim x input_dim), whatever the kind: no reader asks which kind it holds."""
    cfg = config(kind)
    model = build_run_model(cfg, X.shape[1], seed=1).double().eval()
    x = X[:64]
    with torch.no_grad():
        codes = model.encode(x)
        assert codes.shape == (64, cfg.hidden_dim)
        assert model.dictionary.shape == (cfg.hidden_dim, X.shape[1]) and not model.dictionary.requires_grad
        assert torch.equal(model.W, model.W) and model.b.shape == (cfg.hidden_dim,)
        if kinds.KINDS[kind].has_decoder:
            x_hat, a = model(x)
            assert torch.equal(a, codes) and torch.allclose(model.decode(codes), x_hat, rtol=0, atol=1e-12)
        else:
            with pytest.raises(NotImplementedError, match="has no decoder"):
                model.decode(codes)


def test_training_budget_counts_the_matrix_products_from_the_shapes():
    """Hand counts at MNIST's shape (784 -> 64), 2 flops per multiply-add: ours' layer forward and
    weight gradient 4 x 784 x 64 = 200,704, its decorrelation 4 x 64^2 = 16,384 more; a kind with
    a decoder five products of 784 x 64 = 501,760; 50 epochs of 50,000 images of ours 542.72 GFLOP."""
    ours = RunConfig(model="encoder", hidden_dim=64, epochs=50)
    assert kinds.KINDS["encoder"].gemm_flops_per_sample(784, ours) == 217_088
    plain = RunConfig(model="encoder", hidden_dim=64, loss={"lse": 1.0, "var": 1.0, "tc": 0.0})
    assert kinds.KINDS["encoder"].gemm_flops_per_sample(784, plain) == 200_704
    for name in ("sae", "topk", "jumprelu"):
        config = RunConfig(model=name, hidden_dim=64, k=8 if name == "topk" else 0)
        assert kinds.KINDS[name].gemm_flops_per_sample(784, config) == 501_760
    assert training_gflop(ours, 784, 50_000) == pytest.approx(542.72, rel=1e-12)
