"""One run, trained the plain way: a module, a torch optimizer, a loop over minibatches.

This is the reference that ``engine.py`` (many runs as one batched program) must agree with,
and the baseline the speed benchmark compares against. ``RunConfig`` defines a run for both.
"""

from __future__ import annotations

import ctypes
import functools
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from .data import TensorLoader
from .losses import LossConfig, combined_loss, sae_loss
from .metrics import dead_units, l0, redundancy_score
from .model import ACTIVATIONS, MODEL_KINDS, Encoder, StandardSAE, build_model, check_activation_for
from .validation import check_choice, check_int, check_nonnegative, check_positive, check_positive_int

OPTIMIZERS = ("adam", "sgd")
DEVICES = ("auto", "cpu", "cuda")
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run (the defaults of docs/paper.md)."""

    model: str = "encoder"  # "encoder" (ours, decoder-free), "sae" (standard SAE) or "topk" (TopK SAE)
    hidden_dim: int = 64
    activation: str = "relu"
    loss: LossConfig = field(default_factory=LossConfig)  # the encoder's lambdas
    l1: float = 0.01  # the SAE's sparsity weight
    k: int = 0  # the TopK SAE's active latents per sample (model="topk" only)
    optimizer: str = "adam"
    lr: float = 1e-3
    epochs: int = 100
    batch_size: int = 128
    seed: int = 1
    device: str = "auto"
    eval_every: int = 10  # test-set metrics every this many epochs (and at the last)

    def __post_init__(self) -> None:
        check_choice("model", self.model, MODEL_KINDS)
        check_positive_int("hidden_dim", self.hidden_dim)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_activation_for(self.model, self.activation)
        check_int("k", self.k)
        if self.model == "topk" and not 1 <= self.k <= self.hidden_dim:
            raise ValueError(f"k={self.k} is not allowed for model='topk' with hidden_dim={self.hidden_dim}; "
                             f"need 1 <= k <= hidden_dim")
        if self.model != "topk" and self.k != 0:
            raise ValueError(f"k={self.k} is not allowed for model={self.model!r}; k is the TopK SAE's (leave it 0)")
        if isinstance(self.loss, dict):
            object.__setattr__(self, "loss", LossConfig(**self.loss))
        if not isinstance(self.loss, LossConfig):
            raise TypeError(f"loss must be a LossConfig or a dict of lambdas, got {type(self.loss).__name__}")
        check_nonnegative("l1", self.l1)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_positive("lr", self.lr)
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
        check_int("seed", self.seed)
        check_choice("device", self.device, DEVICES)
        check_positive_int("eval_every", self.eval_every)

    def as_dict(self) -> dict:
        return asdict(self)

    def with_(self, **changes) -> "RunConfig":
        return replace(self, **changes)


def resolve_device(device: str) -> torch.device:
    check_choice("device", device, DEVICES)
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but torch.cuda.is_available() is False")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@functools.cache
def _openmp_runtime() -> ctypes.CDLL | None:
    """The GNU OpenMP runtime torch runs its CPU threads on, if it is that one (Linux wheels)."""
    libs = sorted(Path(torch.__file__).parent.joinpath("lib").glob("libgomp*.so*"))
    try:
        return ctypes.CDLL(str(libs[0]) if libs else "libgomp.so.1")
    except OSError:
        return None


def _set_flush_denormal_on_every_thread(on: bool) -> None:
    """``torch.set_flush_denormal`` on this thread and on each of torch's OpenMP worker threads.

    The flag lives in each thread's own floating-point control register, and torch sets it only
    on the calling thread, so the second half of every parallel op kept computing with denormals
    (seen here: with 2 threads, Adam's moments came out flushed in the first half and denormal
    in the second). An empty OpenMP parallel region (libgomp's GOMP_parallel, the entry point
    compilers emit for ``#pragma omp parallel``) runs the call on every thread of the pool that
    torch's parallel ops use. Without libgomp only the calling thread is set.
    """
    if sys.is_finalizing():
        # a flush_denormals() entered and never left, closed at interpreter exit: torch's worker
        # threads are gone and an OpenMP region would wait for them forever (seen: a hang); the
        # process is ending, so there is nothing to restore
        return
    gomp = _openmp_runtime()
    if gomp is None or torch.get_num_threads() == 1:
        torch.set_flush_denormal(on)
        return
    callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _: torch.set_flush_denormal(on))
    gomp.GOMP_parallel(callback, None, ctypes.c_uint(torch.get_num_threads()), ctypes.c_uint(0))


@contextmanager
def flush_denormals():
    """Treat denormal floats as zero while training (CPU), on every thread.

    Adam's moment estimates for units that stop receiving gradient decay geometrically into the
    denormal range, where x86 arithmetic is many times slower: measured here (5 SAE runs in one
    stack, 2 threads), epochs went from 1.3 s to 2.0-2.3 s after the first with the flag on the
    main thread only, and stayed at 1.3 s with it on every thread. Values below 1e-38 become 0,
    which moves no result that matters.
    """
    _set_flush_denormal_on_every_thread(True)
    try:
        yield
    finally:
        _set_flush_denormal_on_every_thread(False)


LossFn = Callable[[torch.nn.Module, torch.Tensor], dict]


def make_loss_fn(config: RunConfig) -> LossFn:
    """loss_fn(model, x) -> dict of per-batch terms, with 'total' the one to minimise."""
    if config.model == "sae":
        def sae(model: torch.nn.Module, x: torch.Tensor) -> dict:
            x_hat, a = model(x)
            return sae_loss(x, x_hat, a, config.l1)
        return sae

    def encoder(model: torch.nn.Module, x: torch.Tensor) -> dict:
        a, _ = model(x)
        out = combined_loss(a, model.W, config.loss)
        out.pop("responsibilities")
        return out
    return encoder


def make_optimizer(model: torch.nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, betas=ADAM_BETAS, eps=ADAM_EPS, fused=True)
    return torch.optim.SGD(model.parameters(), lr=config.lr)


def train_epoch(model: torch.nn.Module, loader: TensorLoader, optimizer: torch.optim.Optimizer,
                loss_fn: LossFn) -> dict[str, float]:
    """One pass over the loader; returns the mean of each loss term over its batches.

    Sums stay on the device and are read once at the end: no host sync per step.
    """
    model.train()
    device = next(model.parameters()).device
    sums: dict[str, torch.Tensor] = {}
    n = 0
    for x, _ in loader:
        x = x.to(device, non_blocking=True)
        out = loss_fn(model, x)
        optimizer.zero_grad(set_to_none=True)
        out["total"].backward()
        optimizer.step()
        for k, v in out.items():
            sums[k] = sums.get(k, 0) + v.detach()
        n += 1
    return {k: float(v) / n for k, v in sums.items()}


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: TensorLoader, loss_fn: LossFn) -> dict[str, float]:
    """Mean loss terms over the loader's batches and activation metrics over all its samples."""
    model.eval()
    device = next(model.parameters()).device
    sums: dict[str, torch.Tensor] = {}
    acts = []
    n = 0
    for x, _ in loader:
        x = x.to(device)
        for k, v in loss_fn(model, x).items():
            sums[k] = sums.get(k, 0) + v
        acts.append(model.encode(x))
        n += 1
    A = torch.cat(acts).cpu()
    metrics = {f"test_{k}": float(v) / n for k, v in sums.items()}
    metrics.update(dead_units=dead_units(A), l0=l0(A), redundancy=redundancy_score(A))
    return metrics


def train(model: torch.nn.Module, train_loader: TensorLoader, test_loader: TensorLoader | None,
          config: RunConfig) -> list[dict]:
    """Train one model in place; return the per-epoch history (loss terms; test metrics every
    ``eval_every`` epochs). A non-finite loss stops the run and is recorded as ``diverged``."""
    if not isinstance(config, RunConfig):
        raise TypeError(f"config must be a RunConfig, got {type(config).__name__}")
    if config.model == "topk":
        raise ValueError("model='topk' is not allowed in the plain loop; the TopK SAE's decoder-norm constraint "
                         "and dead-latent bookkeeping live in the engine (engine.train_group, runs.run_experiments)")
    expected = Encoder if config.model == "encoder" else StandardSAE
    if not isinstance(model, expected):
        raise TypeError(f"config.model={config.model!r} needs a {expected.__name__}, got {type(model).__name__}")
    device = resolve_device(config.device)
    model.to(device)
    optimizer, loss_fn = make_optimizer(model, config), make_loss_fn(config)
    history = []
    for epoch in range(config.epochs):
        train_loader.set_epoch(epoch)
        start = time.perf_counter()
        with flush_denormals():
            row = {"epoch": epoch + 1, **train_epoch(model, train_loader, optimizer, loss_fn)}
        row["seconds"] = time.perf_counter() - start
        if not math.isfinite(row["total"]):
            row["diverged"] = True
            history.append(row)
            break
        if test_loader is not None and ((epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs):
            row.update(evaluate(model, test_loader, loss_fn))
        history.append(row)
    return history


def train_run(config: RunConfig, train_x: torch.Tensor, test_x: torch.Tensor | None = None
              ) -> tuple[torch.nn.Module, list[dict]]:
    """Build the run's model from its seed and train it with the plain loop."""
    model = build_model(config.model, train_x.shape[1], config.hidden_dim, config.activation, config.seed, k=config.k)
    model.to(train_x.dtype)
    train_loader = TensorLoader(train_x, None, config.batch_size, shuffle=True, seed=config.seed)
    test_loader = None if test_x is None else TensorLoader(test_x, None, 8192)
    return model, train(model, train_loader, test_loader, config)
