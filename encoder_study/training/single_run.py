"""One run, trained the plain way: a module, a torch optimizer, a loop over minibatches.

This is the reference that ``engine.py`` (many runs as one batched program) must agree with,
and the baseline the speed benchmark compares against. ``config.RunConfig`` defines a run for both.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from ..book.data import TensorLoader
from ..evaluation.metrics import dead_units, l0, redundancy_score
from ..models.config import ADAM_BETAS, ADAM_EPS, RunConfig, resolve_device
from ..models.kinds import KINDS
from ..models.kinds.encoder import EncoderKind
from ..models.kinds.sae import SAEKind
from ..models.losses import combined_loss, sae_loss
from ..models.model import build_run_model
from .cpu import flush_denormals

LossFn = Callable[[torch.nn.Module, torch.Tensor], dict]


def _sae_loss_fn(config: RunConfig) -> LossFn:
    def sae(model: torch.nn.Module, x: torch.Tensor) -> dict:
        x_hat, a = model(x)
        return sae_loss(x, x_hat, a, config.l1)

    return sae


def _encoder_loss_fn(config: RunConfig) -> LossFn:
    def encoder(model: torch.nn.Module, x: torch.Tensor) -> dict:
        a, _ = model(x)
        out = combined_loss(a, model.W, config.loss)
        out.pop("responsibilities")
        return out

    return encoder


# The kinds the plain loop trains (the references the engine is held to), each with its loss as
# written in losses.py; keyed by the kind's class itself, so a subclass (sae_infomax) is not taken
# for its parent.
PLAIN_LOOP_LOSSES: dict[type, Callable[[RunConfig], LossFn]] = {
    EncoderKind: _encoder_loss_fn,
    SAEKind: _sae_loss_fn,
}


def make_loss_fn(config: RunConfig) -> LossFn:
    """loss_fn(model, x) -> dict of per-batch terms, with 'total' the one to minimise."""
    return PLAIN_LOOP_LOSSES[KINDS[config.model]](config)


def make_optimizer(model: torch.nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, betas=ADAM_BETAS, eps=ADAM_EPS, fused=True)
    return torch.optim.SGD(model.parameters(), lr=config.lr)


def train_epoch(
    model: torch.nn.Module, loader: TensorLoader, optimizer: torch.optim.Optimizer, loss_fn: LossFn
) -> dict[str, float]:
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


def train(
    model: torch.nn.Module, train_loader: TensorLoader, test_loader: TensorLoader | None, config: RunConfig
) -> list[dict]:
    """Train one model in place; return the per-epoch history (loss terms; test metrics every
    ``eval_every`` epochs). A non-finite loss stops the run and is recorded as ``diverged``."""
    if not isinstance(config, RunConfig):
        raise TypeError(f"config must be a RunConfig, got {type(config).__name__}")
    if KINDS[config.model] not in PLAIN_LOOP_LOSSES:
        raise ValueError(
            f"model={config.model!r} is not allowed in the plain loop (it trains "
            f"{', '.join(repr(kind.name) for kind in PLAIN_LOOP_LOSSES)}); train it with the engine "
            f"(engine.train_group, runs.run_experiments), where its kind's training rules live"
        )
    expected = KINDS[config.model].module
    if not isinstance(model, expected):
        raise TypeError(
            f"config.model={config.model!r} needs a {expected.__name__}, got {type(model).__name__}"
        )
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


def train_run(
    config: RunConfig, train_x: torch.Tensor, test_x: torch.Tensor | None = None
) -> tuple[torch.nn.Module, list[dict]]:
    """Build the run's model from its seed and train it with the plain loop."""
    model = build_run_model(config, train_x.shape[1], config.seed)
    model.to(train_x.dtype)
    train_loader = TensorLoader(train_x, None, config.batch_size, shuffle=True, seed=config.seed)
    test_loader = None if test_x is None else TensorLoader(test_x, None, 8192)
    return model, train(model, train_loader, test_loader, config)
