"""The C passes (encoder_study/fused.c) against float64 autograd of the plain losses, known answers,
the theorem on hard inputs, layouts, and bad input."""

import hashlib
import math
import shutil
import subprocess

import numpy as np
import pytest
import torch

from encoder_study import fused
from encoder_study.losses import VARIANCE_EPS, LossConfig, combined_loss, sae_loss

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the fused library")


@pytest.fixture(autouse=True)
def _engine_uses_the_c_kernels(monkeypatch):
    """These tests are about the C kernels: the engine takes them whatever ``auto`` would choose
    on this processor (tests/test_training.py runs the engine both ways)."""
    monkeypatch.setenv(fused.KERNELS_ENV, "c")


def test_library_builds_here():
    # gcc is on every machine this project targets: the fused path must be the one that runs
    assert fused.available(), "the fused library did not build or load"
    assert all(p.exists() for p in fused.build())


def _runs_layout(z: torch.Tensor, m: int) -> torch.Tensor:
    """(S, B, m*K) -> (R, B, K): run r = s*m + j owns columns j*K..(j+1)*K-1 of row s."""
    S, B, mK = z.shape
    return z.view(S, B, m, mK // m).transpose(1, 2).reshape(S * m, B, mK // m)


def _encoder_reference(z: torch.Tensor, m: int, lam: dict, reduction: str):
    """Float64 autograd through losses.combined_loss on relu(z), per run."""
    zr = _runs_layout(z.double(), m).requires_grad_(True)
    R = zr.shape[0]
    w = {t: lam[t].double() for t in ("lse", "var", "tc")} | {"wr": torch.zeros(R, dtype=torch.float64)}
    ref = combined_loss(torch.relu(zr), torch.zeros(R, zr.shape[2], 3, dtype=torch.float64),
                        LossConfig(reduction=reduction), weights=w)
    (grad,) = torch.autograd.grad(ref["total"].sum(), zr)
    return {t: ref[t].detach() for t in fused.TERM_ROWS}, grad


def _encoder_case(dtype, m=3):
    g = torch.Generator().manual_seed(1)
    S, B, K = 2, 32, 8
    z = torch.randn(S, B, m * K, generator=g, dtype=dtype) * 3
    z[0, :, 4] = -1.0  # run 0's unit 4 silent on the whole batch: zero gradient from L_tc, not NaN
    R = S * m
    lam = {"lse": torch.linspace(0.0, 2.0, R, dtype=dtype), "var": torch.linspace(1.0, 0.0, R, dtype=dtype),
           "tc": torch.tensor([0.0, 1.0, 2.0, 1.0, 0.5, 3.0], dtype=dtype)[:R]}
    return z, lam


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("m", [1, 3])
def test_encoder_pass_float64_equals_autograd(reduction, m):
    z, lam = _encoder_case(torch.float64, m)
    terms, grad_z, grad_bias = fused.relu_infomax_loss_and_grad(z, m, lam, reduction)
    ref, grad = _encoder_reference(z, m, lam, reduction)
    for i, t in enumerate(fused.TERM_ROWS):
        assert torch.allclose(terms[i], ref[t], rtol=1e-12, atol=1e-10), t
    assert torch.isfinite(grad_z).all()
    assert torch.allclose(_runs_layout(grad_z, m), grad, rtol=1e-10, atol=1e-12)
    assert torch.allclose(grad_bias, grad.sum(1), rtol=1e-10, atol=1e-12)


def test_encoder_pass_float32_is_float32_accurate():
    z, lam = _encoder_case(torch.float32, 3)
    terms, grad_z, grad_bias = fused.relu_infomax_loss_and_grad(z, 3, lam)
    ref, grad = _encoder_reference(z, 3, lam, "sum")
    for i, t in enumerate(fused.TERM_ROWS):
        assert torch.allclose(terms[i].double(), ref[t], rtol=1e-5, atol=1e-4), t
    scale = grad.abs().max()
    assert (_runs_layout(grad_z, 3).double() - grad).abs().max() < 1e-5 * scale
    assert (grad_bias.double() - grad.sum(1)).abs().max() < 1e-5 * grad.sum(1).abs().max()


def test_encoder_pass_known_answer_all_silent():
    # a = relu(z) = 0 everywhere: L_lse = -B ln K, L_var = -K ln(eps), L_tc = 0, and no gradient
    # reaches z (ReLU's mask is closed), whatever the lambdas
    B, K = 16, 5
    z = -torch.rand(1, B, K) - 0.1
    lam = {t: torch.ones(1) for t in ("lse", "var", "tc")}
    terms, grad_z, grad_bias = fused.relu_infomax_loss_and_grad(z, 1, lam)
    lse, var = -B * math.log(K), -K * math.log(VARIANCE_EPS)
    expected = [lse + var, lse, var, 0.0, 0.0]
    assert terms[:, 0].tolist() == pytest.approx(expected, rel=1e-6)
    assert (grad_z == 0).all() and (grad_bias == 0).all()


HARD_INPUTS = {  # non-negative activations, as after ReLU
    "relu_like": lambda: torch.relu(torch.randn(128, 64) * 5),
    "large": lambda: torch.rand(128, 64) * 1e4 + 1e-3,
    "tiny": lambda: torch.rand(128, 64) * 1e-7 + 1e-9,
    "all_equal": lambda: torch.full((128, 64), 2.5),
    "one_winner": lambda: torch.cat([torch.full((128, 1), 1e-3), torch.full((128, 63), 800.0)], 1),
    "spread": lambda: torch.linspace(1e-3, 120.0, 64).expand(128, 64).contiguous(),  # exp down to e^-120
}


@pytest.mark.parametrize("kind", HARD_INPUTS)
def test_encoder_pass_lse_gradient_is_the_responsibility(kind):
    # The theorem through the float32 C path (its own exp polynomial, underflow cut at e^-87):
    # with only L_lse, dL/da_j = softmax(-a)_j for every sample, against numpy in float64
    # (here z = a, so dL/dz is that where z > 0 and 0 elsewhere).
    a = HARD_INPUTS[kind]()
    lam = {"lse": torch.ones(1), "var": torch.zeros(1), "tc": torch.zeros(1)}
    terms, grad_z, _ = fused.relu_infomax_loss_and_grad(a.unsqueeze(0), 1, lam)
    x = -a.double().numpy()
    shifted = x - x.max(axis=1, keepdims=True)
    ref = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    ref = ref * (a.numpy() > 0)  # dL/dz: ReLU passes the responsibility where z > 0
    assert np.abs(grad_z[0].double().numpy() - ref).max() < 1e-6
    lse = -(x.max(axis=1) + np.log(np.exp(shifted).sum(axis=1))).sum()
    assert float(terms[1, 0]) == pytest.approx(lse, rel=1e-6, abs=1e-3)


def test_encoder_pass_nan_reaches_the_terms():
    # the engine spots a diverged run by its loss: a NaN activation must not be hidden by ReLU
    z, lam = _encoder_case(torch.float32, 1)
    z[1, 3, 2] = float("nan")
    terms, _, _ = fused.relu_infomax_loss_and_grad(z, 1, lam)
    assert torch.isfinite(terms[:, 0]).all() and not torch.isfinite(terms[0, 1])


def test_workspace_reuse_gives_the_same_numbers():
    z, lam = _encoder_case(torch.float32, 3)
    fresh = fused.relu_infomax_loss_and_grad(z, 3, lam)
    ws: dict = {}
    fused.relu_infomax_loss_and_grad(z * 2, 3, lam, workspace=ws)  # leaves other numbers in the buffers
    again = fused.relu_infomax_loss_and_grad(z, 3, lam, workspace=ws)
    assert all(torch.equal(a, b) for a, b in zip(fresh, again))
    assert again[1].data_ptr() == ws["grad_z"].data_ptr()


def _first_layer_case(dtype, R, S, B, K, D, n=50):
    g = torch.Generator().manual_seed(3)
    data = torch.randn(n, D, generator=g, dtype=dtype)
    orders = torch.stack([torch.randperm(n, generator=g) for _ in range(S)])
    idx = orders[:, 5:5 + B]  # a slice of the epoch orders, as the engine passes it: row stride n
    weight = torch.randn(R, K, D, generator=g, dtype=dtype) / D ** 0.5
    bias = torch.randn(R, K, generator=g, dtype=dtype)
    return data, idx, weight, bias


def _first_layer_reference(data, idx, weight, bias):
    """Float64 gather and batched matmul: x (S, B, D) and z (S, B, N), N = the row's runs' units."""
    S, (R, K, D) = idx.shape[0], weight.shape
    x = data.double()[idx]
    z = bias.double().view(S, 1, -1) + x @ weight.double().view(S, R // S * K, D).transpose(1, 2)
    return x, z


# sizes off the C blocks (tiles of 6 samples x 4 vectors of units, vectors of 8 in float64; slices of
# 112 inputs; 8 x 8 transposes) and on them: several unit panels and input slices, short last tiles,
# one data order split over the threads' rows; one run per data order (the engine's case) and three
@pytest.mark.parametrize("R, S, B, K, D", [(3, 3, 7, 5, 37), (6, 2, 9, 3, 16), (2, 2, 8, 8, 64), (1, 1, 1, 1, 1),
                                          (3, 1, 29, 25, 250), (2, 2, 13, 40, 130), (2, 2, 12, 32, 224)])
def test_first_layer_float64_equals_gather_and_matmul(R, S, B, K, D):
    data, idx, weight, bias = _first_layer_case(torch.float64, R, S, B, K, D)
    x, z = fused.first_layer(data, idx, weight, bias)
    ref_x, ref_z = _first_layer_reference(data, idx, weight, bias)
    assert torch.equal(x, ref_x)  # a copy: bit for bit
    assert torch.allclose(z, ref_z, rtol=1e-13, atol=1e-13)


def test_first_layer_float32_is_float32_accurate():
    # the book's sizes: 24 runs on their own data orders, 128 x 784 -> 64
    data, idx, weight, bias = _first_layer_case(torch.float32, 24, 24, 128, 64, 784, n=600)
    x, z = fused.first_layer(data, idx, weight, bias)
    ref_x, ref_z = _first_layer_reference(data, idx, weight, bias)
    assert torch.equal(x.double(), ref_x)
    scale = (ref_x.abs() @ weight.double().abs().transpose(1, 2)).max()  # bound of the sum's magnitude
    assert (z.double() - ref_z).abs().max() < 1e-6 * scale


def test_first_layer_does_not_depend_on_the_thread_count():
    # with 3 data orders on 2 threads each order's rows are split over the threads; on 1 thread not:
    # every output is still summed in the same order, so the float32 results are bit for bit equal
    data, idx, weight, bias = _first_layer_case(torch.float32, 3, 3, 40, 64, 300)
    threads = torch.get_num_threads()
    try:
        out = {}
        for t in (1, 2):
            torch.set_num_threads(t)
            out[t] = fused.first_layer(data, idx, weight, bias)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(out[1][0], out[2][0]) and torch.equal(out[1][1], out[2][1])


def test_first_layer_workspace_and_bad_indices():
    data, idx, weight, bias = _first_layer_case(torch.float32, 3, 3, 7, 5, 37)
    ws: dict = {}
    x, z = fused.first_layer(data, idx, weight, bias, ws)
    assert z.data_ptr() == ws["z"].data_ptr() and x.data_ptr() == ws["x"].data_ptr()
    bad = idx.clone()
    bad[1, 3] = len(data)  # one past the end: refused before anything is read or written
    with pytest.raises(ValueError, match=r"idx must hold sample indices in \[0, 50\); got min 0, max 50"):
        fused.first_layer(data, bad, weight, bias, ws)
    assert torch.equal(ws["z"], z)


@pytest.mark.parametrize("change, match", [
    (lambda d, i, w, b: (d, i.int(), w, b), "idx must be an int64"),
    (lambda d, i, w, b: (d, i.t(), w, b), "unit stride"),
    (lambda d, i, w, b: (d[:, :30], i, w, b), "data must be a contiguous"),
    (lambda d, i, w, b: (d, i, w[:, :, :30].contiguous(), b), r"weight must be a contiguous .* shape \(3, 5, 37\)"),
    (lambda d, i, w, b: (d, i, w[0], b), r"weight must be the stacked first-layer weight \(R, K, D\)"),
    (lambda d, i, w, b: (d, i[:2], w, b), "the runs R=3 must split evenly over the data orders S=2"),
    (lambda d, i, w, b: (d, i, w, b[:, :4].contiguous()), "bias must be"),
])
def test_first_layer_bad_input_is_named(change, match):
    args = change(*_first_layer_case(torch.float32, 3, 3, 7, 5, 37))
    with pytest.raises(ValueError, match=match):
        fused.first_layer(*args)


@pytest.mark.parametrize("m", [1, 2])
def test_sae_pass_float64_equals_autograd(m):
    g = torch.Generator().manual_seed(2)
    S, B, D, K = 2, 16, 12, 6
    R = S * m
    x = torch.rand(S, B, D, generator=g, dtype=torch.float64)
    z = torch.randn(R, B, K, generator=g, dtype=torch.float64)
    z[1, :, 0] = -0.5  # a dead latent
    Wd = torch.randn(R, D, K, generator=g, dtype=torch.float64) * 0.3
    bd = torch.randn(R, D, generator=g, dtype=torch.float64) * 0.1
    l1 = torch.tensor([0.01, 0.5, 0.0, 2.0], dtype=torch.float64)[:R]
    terms, (g_z, g_b, g_wd, g_bd) = fused.sae_loss_and_grad(z, x, Wd, bd, l1)

    leaves = [t.clone().requires_grad_(True) for t in (z, Wd, bd)]
    a = torch.relu(leaves[0])
    x_runs = x.repeat_interleave(m, dim=0)
    ref = sae_loss(x_runs, a @ leaves[1].transpose(1, 2) + leaves[2].unsqueeze(1), a, l1)
    grads = torch.autograd.grad(ref["total"].sum(), leaves)
    for i, t in enumerate(fused.SAE_TERM_ROWS):
        assert torch.allclose(terms[i], ref[t].detach(), rtol=1e-12, atol=1e-14), t
    for mine, theirs in ((g_z, grads[0]), (g_b, grads[0].sum(1)), (g_wd, grads[1]), (g_bd, grads[2])):
        assert torch.allclose(mine, theirs, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("call,match", [
    (lambda z, lam: fused.relu_infomax_loss_and_grad(z, 5, lam), "per_seed=5"),
    (lambda z, lam: fused.relu_infomax_loss_and_grad(z.double(), 3, lam),
     r"weights\['lse'\] must be a contiguous torch.float64"),
    (lambda z, lam: fused.relu_infomax_loss_and_grad(z.transpose(1, 2), 3, lam), "contiguous"),
    (lambda z, lam: fused.relu_infomax_loss_and_grad(z[:, :1].contiguous(), 3, lam), "at least 2 samples"),
    (lambda z, lam: fused.relu_infomax_loss_and_grad(z, 3, lam, "max"), "reduction"),
    (lambda z, lam: fused.sae_loss_and_grad(z[:1, :, :8].contiguous(), z[:, :, :4].contiguous(),
                                            torch.zeros(1, 4, 8), torch.zeros(1, 4), torch.zeros(1)), "runs R=1"),
    (lambda z, lam: fused.sae_loss_and_grad(z[:2, :, :8].contiguous(), z[:2, :, :4].contiguous(),
                                            torch.zeros(2, 5, 8), torch.zeros(2, 4), torch.zeros(2)), "decoder_weight"),
])
def test_bad_input_is_named(call, match):
    z, lam = _encoder_case(torch.float32, 3)
    with pytest.raises(ValueError, match=match):
        call(z, lam)


def test_engine_takes_the_fused_path_where_it_applies():
    # so that the engine tests (float64, against the plain autograd loop at 1e-9) run through fused.c
    from encoder_study.engine import RunStack
    from encoder_study.training import RunConfig

    cpu = torch.device("cpu")
    stack = lambda cfgs, dtype=torch.float32: RunStack(cfgs, 20, cpu, dtype)  # noqa: E731
    assert stack([RunConfig(seed=1), RunConfig(seed=1, loss=LossConfig(tc=0))]).fused
    assert stack([RunConfig(seed=1)], torch.float64).fused
    assert stack([RunConfig(model="sae", seed=2)], torch.float64).fused
    # the C passes fill their terms in the rows the engine sums: ("total", *terms)
    assert fused.TERM_ROWS == ("total", *stack([RunConfig(seed=1)]).terms)
    assert fused.SAE_TERM_ROWS == ("total", *stack([RunConfig(model="sae", seed=2)]).terms)
    assert not stack([RunConfig(seed=1, loss=LossConfig(wr=0.5))]).fused  # weight redundancy: autograd
    assert not stack([RunConfig(seed=1, activation="softplus")]).fused
    assert not stack([RunConfig(model="topk", k=4, seed=1)]).fused


@pytest.mark.parametrize("seeds", [(1, 2), (1, 1, 1, 1)])
def test_engine_folds_the_gather_into_its_first_layer_with_one_run_per_data_order(seeds, monkeypatch):
    from encoder_study.engine import RunStack
    from encoder_study.training import RunConfig

    calls = []
    real = fused.first_layer
    monkeypatch.setattr(fused, "first_layer", lambda *a, **k: calls.append(1) or real(*a, **k))
    stack = RunStack([RunConfig(seed=s, lr=1e-3 * (i + 1)) for i, s in enumerate(seeds)], 20, torch.device("cpu"))
    data = torch.randn(64, 20)
    terms, grads = stack.loss_and_grads(data, torch.stack([torch.randperm(64)[:16] for _ in stack.data_seeds]))
    if len(set(seeds)) == len(seeds):  # (one seed: its runs split over rows by the thread count)
        assert stack.per_seed == 1
    assert bool(calls) == (stack.per_seed == 1)
    assert terms.shape == (5, len(seeds)) and torch.isfinite(terms).all() and grads[0].shape == (len(seeds), 64, 20)


@pytest.mark.parametrize("path", ["fused", "torch"])
@pytest.mark.parametrize("kind", ["encoder", "sae"])
def test_engine_runs_on_one_seed_match_alone_float64(mnist, kind, path, monkeypatch):
    # One data order for all runs (S = 1): the runs' first-layer outputs come as a strided view,
    # which the fused path must read like any other (the paper-scale notebook 5 hit this). The
    # torch path (CUDA, no compiler, a processor without AVX-512) must agree as well.
    from encoder_study.engine import RunStack, train_group
    from encoder_study.training import RunConfig, train_run

    if path == "torch":
        monkeypatch.setenv(fused.KERNELS_ENV, "torch")

    X = mnist["train_x"][:128 * 12].double()
    base = RunConfig(model=kind, epochs=2, device="cpu", seed=7)
    # (SGD at 1e-3 on the summed objective amplifies float64 rounding to ~1e-8 within 24 steps on
    # the torch path as well; 1e-4 keeps the comparison about the code, not the dynamics)
    group = [base, base.with_(lr=3e-3), base.with_(optimizer="sgd", lr=1e-4)]
    assert RunStack(group, 784, torch.device("cpu"), torch.float64).fused == (path == "fused")
    for cfg, res in zip(group, train_group(group, X, progress=False)):
        model, hist = train_run(cfg, X)
        diff = max((model.state_dict()[k] - res.state[k]).abs().max().item() for k in res.state)
        assert diff < 1e-9, cfg
        assert [h["total"] for h in hist] == pytest.approx([h["total"] for h in res.history], rel=1e-9)


def test_run_cache_identity_names_the_binaries_not_the_comments(tmp_path):
    # identity() keys the run cache by the built libraries, so that a comment edit to fused.c keeps
    # the finished runs; that rests on gcc giving the same bytes for the same code (no -g, the same
    # file name), and different bytes for different code
    assert fused.identity() == "fused-" + hashlib.sha256(
        b"".join(fused.library_path(dt).read_bytes() for dt in fused.PRECISIONS)).hexdigest()[:16]
    source = fused.SOURCE.read_text()
    variants = {"same": source, "commented": "/* a new first line */\n" + source.replace("Pass 3.", "Pass three."),
                "changed": source.replace("#define DEPTH 112", "#define DEPTH 96")}
    assert variants["changed"] != source
    built = {}
    for name, text in variants.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "fused.c").write_text(text)
        subprocess.run(["gcc", *fused.CFLAGS, str(folder / "fused.c"), "-o", str(folder / "lib.so"), "-lm"],
                       check=True, cwd=folder)
        built[name] = (folder / "lib.so").read_bytes()
    assert built["same"] == built["commented"]
    assert built["same"] != built["changed"]


def _adam_reference(p, g, m, v, lr, step, betas=(0.9, 0.999), eps=1e-8):
    """torch's own Adam update (the plain loop's), on copies: the new (p, m, v)."""
    p, m, v = p.clone(), m.clone(), v.clone()
    torch._fused_adam_([p], [g.contiguous()], [m], [v], [], [torch.tensor(float(step), dtype=torch.float32)], lr=lr,
                       beta1=betas[0], beta2=betas[1], weight_decay=0.0, eps=eps, amsgrad=False, maximize=False)
    return p, m, v


# sizes off every block of the C step: units (K) and inputs (D) not multiples of the tiles (6) or
# the panels (32 or 64 wide), batches not a multiple of 6; R = 4 and 2 runs
@pytest.mark.parametrize("R, B, K, D", [(4, 13, 10, 70), (2, 20, 64, 130), (2, 7, 37, 33)])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_encoder_step_float64_equals_its_parts(R, B, K, D, reduction):
    # one C step against the stage-by-stage path it replaces: first layer, the objective's C passes
    # (themselves held to autograd above), the weight gradient as a float64 matmul, torch's Adam or SGD
    data, idx, weight, bias = _first_layer_case(torch.float64, R, R, B, K, D)
    g = torch.Generator().manual_seed(5)
    lam = {t: torch.rand(R, generator=g, dtype=torch.float64) + 0.5 for t in ("lse", "var", "tc")}
    adam = torch.tensor([r % 2 == 0 for r in range(R)], dtype=torch.int32)  # Adam and SGD side by side
    lr = torch.rand(R, generator=g, dtype=torch.float64) * 1e-2
    moments = [torch.rand(R, K, D, generator=g, dtype=torch.float64) * 1e-3, torch.rand(R, K, D, generator=g, dtype=torch.float64) * 1e-6,
               torch.rand(R, K, generator=g, dtype=torch.float64) * 1e-3, torch.rand(R, K, generator=g, dtype=torch.float64) * 1e-6]
    step = 7
    x, z = fused.first_layer(data, idx, weight, bias)
    terms_ref, grad_z, grad_b = fused.relu_infomax_loss_and_grad(z, 1, lam, reduction)
    grad_w = grad_z.transpose(1, 2) @ x
    expected = []
    for r in range(R):
        if adam[r]:
            w_r, mw, vw = _adam_reference(weight[r], grad_w[r], moments[0][r], moments[1][r], float(lr[r]), step)
            b_r, mb, vb = _adam_reference(bias[r], grad_b[r], moments[2][r], moments[3][r], float(lr[r]), step)
        else:
            w_r, b_r = weight[r] - lr[r] * grad_w[r], bias[r] - lr[r] * grad_b[r]
            mw, vw, mb, vb = moments[0][r], moments[1][r], moments[2][r], moments[3][r]
        expected.append((w_r, b_r, mw, vw, mb, vb))
    terms_ref = terms_ref.clone()
    moments_before = [t.clone() for t in moments]
    terms = fused.relu_infomax_stepper(data, weight, bias, lam, reduction, adam, lr, moments, (0.9, 0.999), 1e-8,
                                       batch_size=B + 3)(idx, step)  # (a shorter batch than the most, as an epoch's last)
    assert torch.allclose(terms, terms_ref, rtol=1e-12, atol=1e-12)
    for r in range(R):
        got = (weight[r], bias[r], moments[0][r], moments[1][r], moments[2][r], moments[3][r])
        for name, a, b in zip(("weight", "bias", "m_w", "v_w", "m_b", "v_b"), got, expected[r]):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-15), (r, name)
        if not adam[r]:  # SGD runs leave the moments alone
            assert all(torch.equal(m[r], m0[r]) for m, m0 in zip(moments, moments_before))


def test_encoder_step_float32_adam_within_float32_rounding_of_torch():
    # the float32 build's Adam uses refined hardware reciprocals instead of a square root and a
    # division: the step's new weights and moments against float64 parts and torch's Adam
    R, B, K, D = 2, 32, 64, 100
    data, idx, weight, bias = _first_layer_case(torch.float64, R, R, B, K, D)
    g = torch.Generator().manual_seed(6)
    lam = {t: torch.rand(R, generator=g, dtype=torch.float64) + 0.5 for t in ("lse", "var", "tc")}
    lr = torch.tensor([1e-3, 3e-3], dtype=torch.float64)
    # moments large against this step's gradient, so that its float32 rounding hardly moves the
    # update and the comparison sees the update's own arithmetic; and some at zero (units that
    # have had no gradient yet: the update is then g's sign, times lr / bc1 / (sqrt(1 - beta2) / bc2))
    shape_w, shape_b = (R, K, D), (R, K)
    moments = [torch.rand(shape_w, generator=g, dtype=torch.float64) * 2 - 1, torch.rand(shape_w, generator=g, dtype=torch.float64) + 0.5,
               torch.rand(shape_b, generator=g, dtype=torch.float64) * 2 - 1, torch.rand(shape_b, generator=g, dtype=torch.float64) + 0.5]
    moments[0][0, :3] = moments[1][0, :3] = 0.0
    x, z = fused.first_layer(data, idx, weight, bias)
    _, grad_z, grad_b = fused.relu_infomax_loss_and_grad(z, 1, lam, "sum")
    grad_w = grad_z.transpose(1, 2) @ x
    ref = [_adam_reference(p_, g_, m_, v_, float(lr[r]), 7)
           for r in range(R) for p_, g_, m_, v_ in ((weight[r], grad_w[r], moments[0][r], moments[1][r]),
                                                   (bias[r], grad_b[r], moments[2][r], moments[3][r]))]
    f32 = lambda t: t.float().contiguous()  # noqa: E731
    w32, b32, mom32 = f32(weight), f32(bias), [f32(t) for t in moments]
    fused.relu_infomax_stepper(f32(data), w32, b32, {k: f32(v) for k, v in lam.items()}, "sum",
                               torch.ones(R, dtype=torch.int32), f32(lr), mom32, (0.9, 0.999), 1e-8, B)(idx, 7)
    for r in range(R):
        (w_ref, mw, vw), (b_ref, mb, vb) = ref[2 * r], ref[2 * r + 1]
        # the updates to 1e-5, beyond the weights' own float32 rounding (2 ulp)
        for got, want, before in ((w32[r], w_ref, weight[r]), (b32[r], b_ref, bias[r])):
            assert ((got.double() - want).abs() <= 1e-5 * (want - before).abs() + 2.4e-7 * want.abs()).all()
        for got, want in ((mom32[0][r], mw), (mom32[1][r], vw), (mom32[2][r], mb), (mom32[3][r], vb)):
            assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5)  # (0.1 x the float32 gradient)


def test_encoder_step_bad_input_is_named():
    data, idx, weight, bias = _first_layer_case(torch.float32, 2, 2, 8, 5, 12)
    lam = {t: torch.ones(2) for t in ("lse", "var", "tc")}
    adam, lr, moments = torch.ones(2, dtype=torch.int32), torch.full((2,), 1e-3), [torch.zeros(2, 5, 12)] * 2 + [torch.zeros(2, 5)] * 2
    make = lambda **kw: fused.relu_infomax_stepper(**{**dict(  # noqa: E731
        data=data, weight=weight, bias=bias, weights=lam, reduction="sum", adam=adam, lr=lr, moments=moments,
        betas=(0.9, 0.999), eps=1e-8, batch_size=8), **kw})
    step = make()
    step(idx, 1)  # the valid call passes
    for kw, match in ((dict(adam=adam.long()), "adam must"), (dict(moments=[]), "moments"), (dict(lr=lr[:1]), "lr must"),
                      (dict(reduction="max"), "reduction"), (dict(batch_size=1), "batch_size must"),
                      (dict(bias=bias.double()), "bias must")):
        with pytest.raises(ValueError, match=match):
            make(**kw)
    for bad_idx, t, match in ((idx[:1], 1, "idx must"), (torch.cat([idx, idx], 1), 1, "idx must"), (idx, 0, "t must"),
                              (idx.clone().fill_(10 ** 6), 1, r"idx must hold sample indices in \[0, 50\)")):
        with pytest.raises(ValueError, match=match):
            step(bad_idx, t)


def test_engine_takes_the_one_step_path_with_as_many_runs_per_thread():
    from encoder_study.engine import RunStack
    from encoder_study.training import RunConfig

    threads = torch.get_num_threads()
    stack = lambda seeds, **kw: RunStack([RunConfig(seed=s, **kw) for s in seeds], 20, torch.device("cpu"))  # noqa: E731
    assert stack(range(1, 2 * threads + 1)).one_pass
    assert stack([1] * (2 * threads)).one_pass  # runs sharing a seed too
    assert not stack([1] * (2 * threads), model="sae").one_pass  # the SAE keeps its stages
    if threads > 1:
        assert not stack(range(1, threads + 2)).one_pass  # a thread would sit idle


@pytest.mark.parametrize("mode,avx512,expected", [("auto", True, True), ("auto", False, False), ("torch", True, False),
                                                   ("c", False, True)])
def test_kernel_switch_chooses_where_the_c_kernels_run(monkeypatch, mode, avx512, expected):
    # auto takes the C kernels only on processors with AVX-512, where they were measured to pay
    monkeypatch.setenv(fused.KERNELS_ENV, mode)
    monkeypatch.setattr(fused, "cpu_has_avx512", lambda: avx512)
    assert fused.engine_uses_c() is expected
    assert (fused.identity() == "torch") is (not expected)


def test_kernel_switch_names_a_bad_setting(monkeypatch):
    monkeypatch.setenv(fused.KERNELS_ENV, "fast")
    with pytest.raises(ValueError, match="ENCODER_STUDY_KERNELS='fast' is not allowed; choose one of 'auto', 'torch', 'c'"):
        fused.engine_uses_c()
