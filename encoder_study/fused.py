"""The engine's work in C: the encoder's objective and the SAE's loss, with gradients; the first
layer of runs that each have a data order of their own, with the gather folded in; and the
encoder's whole training step, run by run.

``losses.combined_loss_and_grad`` computes the encoder objective's gradient by hand in about fifty
small torch operations, and the SAE's gradient takes a dozen more; at the book's sizes (a few to 24
runs of 128 x 64 activations) each costs more in dispatch than in arithmetic: together they were a
quarter of a training step. Here the same formulas run as C passes (``fused.c``) around the GEMMs,
which stay in torch, but for one: with one run per data order, gathering the minibatches took a
fifth of a step, so ``first_layer`` reads the samples straight from the dataset into a blocked GEMM;
and for the encoder, ``relu_infomax_stepper`` takes each run through its whole step (first layer,
objective, weight gradient, Adam or SGD) while its data stay in one core's caches.
The library is compiled once per machine with gcc (``make setup`` does it; the first use
otherwise) into the cache's build folder, named by a hash of the source, the compiler and the
CPU, in float32 (training) and float64 (the tests' exact comparisons). Where no compiler works,
``available()`` is False and the engine keeps the torch path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess

from collections.abc import Callable
from pathlib import Path

import torch

from .data import cache_dir
from .losses import CORRELATION_EPS, REDUCTIONS, VARIANCE_EPS
from .storage import warn, write_atomic
from .validation import check_choice

SOURCE = Path(__file__).with_name("fused.c")
CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-std=gnu11", "-shared", "-fPIC", "-Wall"]  # no errno: sqrt vectorises
PRECISIONS = {torch.float32: ("f32", []), torch.float64: ("f64", ["-DFUSED_DOUBLE"])}
_LIBS: dict[torch.dtype, ctypes.CDLL] = {}
_FAILED = False


def _cpu_signature() -> str:
    """The CPU model and instruction-set flags (the library is built with -march=native)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags"))][:2]
        return "\n".join(lines)
    except OSError:
        return platform.processor() or platform.machine()


@functools.cache
def _build_key() -> str:
    """A hash of everything that shapes the binaries: source, compiler and its flags, CPU."""
    cc = os.environ.get("CC", "gcc")
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    except OSError:
        version = ["no compiler"]
    blob = SOURCE.read_bytes() + " ".join([cc, *CFLAGS, *version, _cpu_signature()]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def library_path(dtype: torch.dtype = torch.float32) -> Path:
    """Where this machine's build for ``dtype`` lives: the run cache's build folder."""
    return cache_dir() / "build" / f"fused-{_build_key()}-{PRECISIONS[dtype][0]}.so"


def build() -> list[Path]:
    """Compile both precisions unless this machine's builds are already there; returns their paths."""
    cc = os.environ.get("CC", "gcc")
    if shutil.which(cc) is None:
        raise RuntimeError(f"no C compiler: CC={cc!r} is not on PATH")
    paths = []
    for dtype, (_, defines) in PRECISIONS.items():
        path = library_path(dtype)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)

            def compile_to(tmp: Path, defines: list[str] = defines) -> None:
                result = subprocess.run([cc, *CFLAGS, *defines, str(SOURCE), "-o", str(tmp), "-lm"],
                                        capture_output=True, text=True)
                if result.returncode != 0:
                    raise RuntimeError(f"compiling {SOURCE.name} failed:\n{result.stderr.strip()[-2000:]}")

            write_atomic(path, compile_to)  # a concurrent build never leaves half a library
        paths.append(path)
    return paths


def _library(dtype: torch.dtype) -> ctypes.CDLL | None:
    global _FAILED
    if not _LIBS and not _FAILED:
        try:
            build()
            for dt in PRECISIONS:
                # torch (imported above) has loaded its own libgomp.so.1: the library's OpenMP
                # resolves to it, so its parallel loops run on torch's threads, not a second team.
                lib = ctypes.CDLL(str(library_path(dt)))
                real = ctypes.c_float if dt == torch.float32 else ctypes.c_double
                for name, argtypes in _SIGNATURES.items():
                    getattr(lib, name).argtypes = [real if a is _REAL else a for a in argtypes]
                    getattr(lib, name).restype = _RESTYPES.get(name, ctypes.c_int)
                _LIBS[dt] = lib
        except (OSError, RuntimeError, subprocess.SubprocessError) as err:
            _FAILED = True
            _LIBS.clear()
            warn(f"fused loss unavailable, the engine uses the torch path: {err}", stacklevel=3)
    return _LIBS.get(dtype)


def _loaded(dtype: torch.dtype) -> ctypes.CDLL:
    """The library for ``dtype``, or a RuntimeError where it could not be built or loaded."""
    lib = _library(dtype)
    if lib is None:
        raise RuntimeError("the fused library is not available here; check fused.available() first")
    return lib


def available() -> bool:
    """Whether the C kernels can run here (the libraries built and loaded)."""
    return _library(torch.float32) is not None


KERNELS_ENV = "ENCODER_STUDY_KERNELS"
KERNEL_MODES = ("auto", "torch", "c")


def kernels_mode() -> str:
    """The engine's kernel setting: ENCODER_STUDY_KERNELS = auto (default), torch or c."""
    return check_choice(KERNELS_ENV, os.environ.get(KERNELS_ENV, "auto") or "auto", KERNEL_MODES)


@functools.cache
def cpu_has_avx512() -> bool:
    """Whether this processor has AVX-512 (the kernels' tiles are sized for its 32 vector registers)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:
        return False


def engine_uses_c() -> bool:
    """Whether the engine trains with the C kernels (else with torch alone).

    ``c`` demands them (an error where they cannot be built); ``torch`` never uses them; ``auto``
    uses them where they build and the processor has AVX-512: they were designed and measured to
    pay there, while on a processor with AVX2 alone their register tiles spill and they run
    several times slower than torch (benchmarks/README.md).
    """
    mode = kernels_mode()
    if mode == "torch":
        return False
    if mode == "c":
        if not available():
            raise RuntimeError(f"{KERNELS_ENV}=c but the C kernels could not be built or loaded here")
        return True
    return cpu_has_avx512() and available()


def identity() -> str:
    """Names the code that computes the training numbers (for the run cache's key): 'torch' where
    the engine does not use the C kernels, else a hash of the built libraries themselves, so that
    an edit to fused.c's comments keeps the finished runs."""
    if not engine_uses_c():
        return "torch"
    return "fused-" + hashlib.sha256(b"".join(library_path(dt).read_bytes() for dt in PRECISIONS)).hexdigest()[:16]


_INT, _PTR, _REAL = ctypes.c_int, ctypes.c_void_p, object()  # _REAL: float or double, by the library
_SIGNATURES = {
    "lse_pass": [_INT, _INT, _INT, _INT, _PTR, _PTR, _REAL, _PTR, _PTR, _PTR, _PTR],
    "infomax_pass": [_INT, _INT, _INT, _PTR, _PTR, _PTR, _PTR, _REAL, _REAL, _PTR, _PTR],
    "relu_grad_pass": [_INT, _INT, _INT, _INT, _PTR, _PTR, _PTR, _PTR],
    "sae_residual_pass": [_INT, _INT, _INT, _INT, _INT, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR],
    "sae_relu_grad_pass": [_INT, _INT, _INT, _PTR, _PTR, _PTR, _PTR],
    "first_layer_pass": [_INT, _INT, _INT, _INT, _PTR, ctypes.c_int64, _PTR, ctypes.c_int64, _PTR, _PTR, _PTR, _PTR],
    "team_size": [],
    "encoder_step_scratch": [_INT, _INT, _INT],
    "encoder_step_pass": [_INT, _INT, _INT, _INT, _PTR, ctypes.c_int64, _PTR, ctypes.c_int64, _PTR, _PTR, _PTR, _PTR,
                          _PTR, _REAL, _REAL, _REAL, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _REAL, _REAL, _REAL,
                          ctypes.c_double, ctypes.c_double, _PTR, _PTR],
}
_RESTYPES = {"encoder_step_scratch": ctypes.c_size_t}
TERM_ROWS = ("total", "lse", "var", "tc", "wr")  # the rows of the encoder's (5, R) terms tensor
SAE_TERM_ROWS = ("total", "mse", "l1")  # and of the SAE's (3, R); both as the engine's ("total", *terms)


def _buffer(workspace: dict | None, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A scratch tensor, reused from ``workspace`` when it holds one of this shape and dtype
    (fresh buffers cost about 35 us a step at 24 runs, measured: first-touch page faults)."""
    t = None if workspace is None else workspace.get(name)
    if t is None or t.shape != shape or t.dtype != dtype:
        t = torch.empty(shape, dtype=dtype)
        if workspace is not None:
            workspace[name] = t
    return t


def _check_stack(name: str, t: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    if t.shape != shape or t.dtype != dtype or t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous {dtype} CPU tensor of shape {shape}; got {t.dtype}, "
                         f"{t.device}, shape {tuple(t.shape)}, contiguous={t.is_contiguous()}")


def _check_data_and_weight(data: torch.Tensor, weight: torch.Tensor) -> tuple[int, int, int, int]:
    """(n, D, R, K) of a dataset (n, D) and a stacked first-layer weight (R, K, D), both checked."""
    if data.dim() != 2 or data.dtype not in PRECISIONS:
        raise ValueError(f"data must be a float32 or float64 (n, D) tensor; got {data.dtype}, shape {tuple(data.shape)}")
    n, D = data.shape
    _check_stack("data", data, (n, D), data.dtype)
    if weight.dim() != 3:
        raise ValueError(f"weight must be the stacked first-layer weight (R, K, D); got shape {tuple(weight.shape)}")
    R, K, _ = weight.shape
    _check_stack("weight", weight, (R, K, D), data.dtype)
    return n, D, R, K


def _indices_out_of_range(idx: torch.Tensor, n: int) -> ValueError:
    """The error for sample indices the C side refused (it checks them before writing anything)."""
    return ValueError(f"idx must hold sample indices in [0, {n}); got min {int(idx.min())}, max {int(idx.max())}")


@torch.no_grad()
def first_layer(data: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                workspace: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The minibatches x = data[idx] (S, B, D) and the first layer's pre-activations z (S, B, N)
    in one pass: z[s] = x[s] W[s]^T + b[s], the stacked weight (R, K, D) and bias (R, K) read as S
    rows of N = R/S*K units (the runs of one data order side by side, as the engine lays them out).

    ``data`` (n, D) is the whole training set, ``idx`` (S, B) int64 sample indices with unit
    stride along B (rows of an epoch's orders). The gather costs no pass of its own: blocked as a
    GEMM (per slice of 112 inputs, the weights of 64 units transposed into a panel that stays in
    L1; tiles of 6 samples x 64 units), the tiles read the samples straight from ``data`` and copy
    each slice to x after use (x feeds the weight gradient); the next tile's rows are requested
    while one computes. Each output is summed in input order, bias first, whatever the thread
    count. With a ``workspace`` the outputs live in its buffers.
    """
    n, D, R, K = _check_data_and_weight(data, weight)
    if idx.dim() != 2 or idx.dtype != torch.int64 or idx.device.type != "cpu" or idx.stride(1) != 1:
        raise ValueError(f"idx must be an int64 CPU tensor (S, B) with unit stride along B; got {idx.dtype}, "
                         f"{idx.device}, shape {tuple(idx.shape)}, strides {idx.stride()}")
    S, B = idx.shape
    if S < 1 or R % S:
        raise ValueError(f"the runs R={R} must split evenly over the data orders S={S}")
    _check_stack("bias", bias, (R, K), data.dtype)
    lib = _loaded(data.dtype)
    N = R // S * K
    x = _buffer(workspace, "x", (S, B, D), data.dtype)
    z = _buffer(workspace, "z", (S, B, N), data.dtype)
    if lib.first_layer_pass(S, B, N, D, data.data_ptr(), n, idx.data_ptr(), idx.stride(0), weight.data_ptr(),
                            bias.data_ptr(), z.data_ptr(), x.data_ptr()) != 0:
        raise _indices_out_of_range(idx, n)
    return x, z


def relu_infomax_stepper(data: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                         weights: dict[str, torch.Tensor], reduction: str, adam: torch.Tensor, lr: torch.Tensor,
                         moments: list[torch.Tensor], betas: tuple[float, float], eps: float, batch_size: int,
                         workspace: dict | None = None) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """Training steps of R ReLU encoder runs on the objective, each on its own minibatch, run by run
    (see ``encoder_step_pass`` in fused.c): the first layer, the terms and dL/dz of
    ``relu_infomax_loss_and_grad``, the weight gradient, and each run's optimizer update, applied
    in place to ``weight`` (R, K, D) and ``bias`` (R, K).

    Checks the tensors once and returns ``step(idx, t)``: one step on the minibatches
    data[idx[r]] (idx (R, b) int64, 2 <= b <= batch_size, unit stride along the batch) at
    optimizer step number t >= 1, returning the terms (5, R), rows ``TERM_ROWS``, computed before
    the update. The tensors must stay where they are between steps (the engine's are updated in
    place); the steps cost no checks but idx's and t's, and no allocation.

    ``adam`` (R,) int32: 1 for Adam (torch's update, ``betas``, ``eps``), 0 for SGD; ``lr`` (R,);
    ``moments`` [m_weight, v_weight, m_bias, v_bias] in the parameters' shapes (read only for
    Adam runs; may be empty when there is none).
    """
    n, D, R, K = _check_data_and_weight(data, weight)
    dt, B = data.dtype, batch_size
    if not isinstance(B, int) or B < 2:
        raise ValueError(f"batch_size must be an int >= 2 (the covariance needs two samples); got {B!r}")
    check_choice("reduction", reduction, REDUCTIONS)
    for name, t, shape in (("bias", bias, (R, K)), ("lr", lr, (R,)),
                           *((f"weights[{k!r}]", weights[k], (R,)) for k in ("lse", "var", "tc"))):
        _check_stack(name, t, shape, dt)
    _check_stack("adam", adam, (R,), torch.int32)
    if bool(adam.any()):
        if len(moments) != 4:
            raise ValueError(f"moments must be [m_weight, v_weight, m_bias, v_bias] for Adam runs; got {len(moments)}")
        for name, t, shape in zip(("m_weight", "v_weight", "m_bias", "v_bias"), moments,
                                  ((R, K, D), (R, K, D), (R, K), (R, K))):
            _check_stack(name, t, shape, dt)
    lib = _loaded(dt)
    scratch = _buffer(workspace, "step_scratch", (lib.team_size() * lib.encoder_step_scratch(B, K, D),), dt)
    terms = _buffer(workspace, "terms", (len(TERM_ROWS), R), dt)
    b1, b2 = betas
    fixed = (data.data_ptr(), n)
    lambdas = (weight.data_ptr(), bias.data_ptr(), *(weights[k].data_ptr() for k in ("lse", "var", "tc")))
    optimizer = (VARIANCE_EPS, CORRELATION_EPS, adam.data_ptr(), lr.data_ptr(),
                 *((t.data_ptr() for t in moments) if len(moments) == 4 else (None,) * 4), b1, b2, eps)

    def step(idx: torch.Tensor, t: int) -> torch.Tensor:
        if (idx.dim() != 2 or idx.shape[0] != R or not 2 <= idx.shape[1] <= B or idx.dtype != torch.int64
                or idx.device.type != "cpu" or idx.stride(1) != 1):
            raise ValueError(f"idx must be an int64 CPU tensor (R={R}, b) with 2 <= b <= {B} and unit stride along "
                             f"the batch; got {idx.dtype}, {idx.device}, shape {tuple(idx.shape)}, strides {idx.stride()}")
        if not isinstance(t, int) or t < 1:
            raise ValueError(f"t must be the optimizer's step number, an int >= 1; got {t!r}")
        b = idx.shape[1]
        if lib.encoder_step_pass(R, b, K, D, *fixed, idx.data_ptr(), idx.stride(0), *lambdas,
                                 1.0 if reduction == "sum" else 1.0 / b, *optimizer, 1.0 - b1 ** t,
                                 (1.0 - b2 ** t) ** 0.5, scratch.data_ptr(), terms.data_ptr()) != 0:
            raise _indices_out_of_range(idx, n)
        return terms

    # the tensors whose memory the step reads and writes through raw pointers live as long as it
    step.tensors = (data, weight, bias, *(weights[k] for k in ("lse", "var", "tc")), adam, lr, *moments)  # type: ignore[attr-defined]
    return step


@torch.no_grad()
def relu_infomax_loss_and_grad(z: torch.Tensor, per_seed: int, weights: dict[str, torch.Tensor],
                               reduction: str = "sum", workspace: dict | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-run terms of the encoder's objective on a = relu(z), dL/dz and dL/d(bias).

    ``z`` is the first layer's output (S, B, per_seed*K): one row per data order, that order's
    ``per_seed`` runs side by side (run r = s * per_seed + j). ``weights`` maps lse/var/tc to
    per-run lambdas (R,), contiguous, z's dtype. Returns (terms, grad_z, grad_bias): terms (5, R),
    its rows ``TERM_ROWS`` (total, lse, var, tc, wr = 0), the values ``combined_loss_and_grad``
    gives; grad_z in z's layout; grad_bias (R, K). With a ``workspace`` dict the outputs live in
    its buffers and the next call with the same shapes overwrites them.
    """
    if z.dtype not in PRECISIONS or z.device.type != "cpu" or z.dim() != 3 or not z.is_contiguous():
        raise ValueError(f"z must be a contiguous float32 or float64 CPU tensor (S, B, m*K); got {z.dtype}, "
                         f"{z.device}, shape {tuple(z.shape)}")
    lib = _loaded(z.dtype)
    S, B, mK = z.shape
    if not isinstance(per_seed, int) or per_seed < 1 or mK % per_seed:
        raise ValueError(f"per_seed={per_seed!r} must be a positive divisor of z's last dimension {mK}")
    if B < 2:
        raise ValueError(f"the batch must hold at least 2 samples for the covariance; got B={B}")
    check_choice("reduction", reduction, REDUCTIONS)
    R, K = S * per_seed, mK // per_seed
    for t in ("lse", "var", "tc"):
        _check_stack(f"weights[{t!r}]", weights[t], (R,), z.dtype)
    scale = 1.0 if reduction == "sum" else 1.0 / B
    lam_lse, lam_var, lam_tc = (weights[t].data_ptr() for t in ("lse", "var", "tc"))
    work = _buffer(workspace, "work", (2, R, B, K), z.dtype)  # dL/da, then the centred activations
    g, centred = work[0], work[1]
    terms = _buffer(workspace, "terms", (len(TERM_ROWS), R), z.dtype)
    row_lse = _buffer(workspace, "row_lse", (R * B,), torch.float64)
    lib.lse_pass(R, per_seed, B, K, z.data_ptr(), lam_lse, scale, g.data_ptr(), centred.data_ptr(),
                 row_lse.data_ptr(), terms.data_ptr())
    gram = torch.bmm(centred.transpose(1, 2), centred, out=_buffer(workspace, "gram", (R, K, K), z.dtype))
    dcov = _buffer(workspace, "dcov", (R, K, K), z.dtype)
    lib.infomax_pass(R, B, K, gram.data_ptr(), lam_lse, lam_var, lam_tc, VARIANCE_EPS, CORRELATION_EPS,
                     dcov.data_ptr(), terms.data_ptr())
    g.baddbmm_(centred, dcov)
    grad_z = _buffer(workspace, "grad_z", tuple(z.shape), z.dtype)
    grad_bias = _buffer(workspace, "grad_bias", (R, K), z.dtype)
    lib.relu_grad_pass(R, per_seed, B, K, z.data_ptr(), g.data_ptr(), grad_z.data_ptr(), grad_bias.data_ptr())
    return terms, grad_z, grad_bias


@torch.no_grad()
def sae_loss_and_grad(z: torch.Tensor, x: torch.Tensor, decoder_weight: torch.Tensor, decoder_bias: torch.Tensor,
                      l1: torch.Tensor, workspace: dict | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The standard SAE's loss (MSE over all elements + l1 mean|a|, a = relu(z)) for a stack of runs.

    ``z`` (R, B, K) are the encoder's pre-activations, ``x`` (S, B, D) the minibatches, run r
    reading x[r // (R/S)]; decoder weights (R, D, K), biases (R, D), ``l1`` (R,). Returns (terms
    (3, R), rows ``SAE_TERM_ROWS``; [dL/dz, dL/d(encoder bias), dL/d(decoder weight), dL/d(decoder
    bias)]), the numbers of ``engine.RunStack``'s torch path. The two decoder GEMMs and the one
    back through the decoder stay in torch; the elementwise work around them is two C passes.
    """
    if z.dim() != 3 or x.dim() != 3 or z.dtype not in PRECISIONS:
        raise ValueError(f"z must be (R, B, K) and x (S, B, D), float32 or float64; got {tuple(z.shape)}, "
                         f"{tuple(x.shape)}, {z.dtype}")
    (R, B, K), (S, _, D) = z.shape, x.shape
    if S < 1 or R % S:
        raise ValueError(f"the runs R={R} must split evenly over the minibatches S={S}")
    for name, t, shape in (("z", z, (R, B, K)), ("x", x, (S, B, D)), ("decoder_weight", decoder_weight, (R, D, K)),
                           ("decoder_bias", decoder_bias, (R, D)), ("l1", l1, (R,))):
        _check_stack(name, t, shape, z.dtype)
    lib = _loaded(z.dtype)
    a = torch.clamp_min(z, 0.0, out=_buffer(workspace, "a", (R, B, K), z.dtype))  # relu
    diff = torch.bmm(a, decoder_weight.transpose(1, 2), out=_buffer(workspace, "diff", (R, B, D), z.dtype))
    terms = _buffer(workspace, "terms", (len(SAE_TERM_ROWS), R), z.dtype)
    grad_bd = _buffer(workspace, "grad_bd", (R, D), z.dtype)
    row_sq = _buffer(workspace, "row_sq", (R * B,), torch.float64)
    lib.sae_residual_pass(R, R // S, B, D, K, diff.data_ptr(), x.data_ptr(), decoder_bias.data_ptr(), a.data_ptr(),
                          l1.data_ptr(), row_sq.data_ptr(), grad_bd.data_ptr(), terms.data_ptr())
    g_xhat = diff  # now dMSE/dx_hat
    grad_a = torch.bmm(g_xhat, decoder_weight, out=_buffer(workspace, "grad_a", (R, B, K), z.dtype))
    grad_b = _buffer(workspace, "grad_b", (R, K), z.dtype)
    lib.sae_relu_grad_pass(R, B, K, z.data_ptr(), grad_a.data_ptr(), l1.data_ptr(), grad_b.data_ptr())
    grad_wd = torch.bmm(g_xhat.transpose(1, 2), a, out=_buffer(workspace, "grad_wd", (R, D, K), z.dtype))
    return terms, [grad_a, grad_b, grad_wd, grad_bd]


if __name__ == "__main__":  # `python -m encoder_study.fused`: build now (make setup), not at first use
    print("fused loss libraries:", *map(str, build()))
