"""The notebooks' entry point for training: a list of runs in, results out, finished work cached.

``run_experiments`` groups the runs (engine.group_runs), and for each group either loads its
results from the run cache or trains it with the batched engine, checkpointing as it goes, so an
interrupted book resumes where it stopped. The cache key covers everything that defines the
group's numbers: every run's config, the data's fingerprint, the engine's version and the torch
version. Set ENCODER_STUDY_FRESH=1 (``make book FRESH=1``) to ignore the cache and retrain.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from . import __version__, fused
from .data import cache_dir
from .engine import RunResult, group_runs, train_group
from .training import RunConfig

ENGINE_VERSION = 7  # bump when a change to training moves numbers (6: C first layer, one run per data order; 7: blocked as a GEMM)


def data_fingerprint(x: torch.Tensor) -> str:
    """sha256 of a tensor's bytes (shape and dtype included)."""
    h = hashlib.sha256(f"{tuple(x.shape)}{x.dtype}".encode())
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def group_cache_key(configs: list[RunConfig], fingerprint: str) -> str:
    blob = json.dumps({"configs": [c.as_dict() for c in configs], "data": fingerprint,
                       "engine": ENGINE_VERSION, "loss_kernel": fused.identity(), "package": __version__,
                       "torch": torch.__version__, "threads": torch.get_num_threads()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _to_record(r: RunResult) -> dict:
    return {"config": r.config.as_dict(), "state": r.state, "history": r.history,
            "diverged_epoch": r.diverged_epoch, "seconds": r.seconds, "group_size": r.group_size}


def _from_record(d: dict) -> RunResult:
    return RunResult(RunConfig(**d["config"]), d["state"], d["history"], d["diverged_epoch"], d["seconds"],
                     d["group_size"])


def run_experiments(configs: list[RunConfig], train_x: torch.Tensor, test_x: torch.Tensor | None = None,
                    fresh: bool | None = None, progress: bool = True,
                    cache: Path | None = None) -> list[RunResult]:
    """Results for every config, in order: from the cache where a group was finished before,
    else trained (one stacked program per group) and cached. ``fresh`` (default: the
    ENCODER_STUDY_FRESH environment variable) retrains everything."""
    if not configs:
        raise ValueError("configs is empty; give at least one RunConfig")
    bad = [type(c).__name__ for c in configs if not isinstance(c, RunConfig)]
    if bad:
        raise TypeError(f"configs must be RunConfig objects; got {bad[:3]}")
    fresh = os.environ.get("ENCODER_STUDY_FRESH", "") not in ("", "0") if fresh is None else fresh
    root = (cache or cache_dir() / "runs")
    root.mkdir(parents=True, exist_ok=True)
    fingerprint = data_fingerprint(train_x) + (data_fingerprint(test_x) if test_x is not None else "")
    results: list[RunResult | None] = [None] * len(configs)
    groups = list(group_runs(configs).values())
    for g, idx in enumerate(groups):
        group = [configs[i] for i in idx]
        key = group_cache_key(group, fingerprint)
        path = root / f"{key}.pt"
        if path.exists() and not fresh:
            loaded = [_from_record(d) for d in torch.load(path, weights_only=False)]
        else:
            desc = f"group {g + 1}/{len(groups)}: {group[0].model} x{len(group)}"
            checkpoint = root / f"{key}.partial.pt"
            if fresh and checkpoint.exists():
                checkpoint.unlink()
            loaded = train_group(group, train_x, test_x, checkpoint=checkpoint, progress=progress, desc=desc)
            tmp = path.with_suffix(".tmp")
            torch.save([_to_record(r) for r in loaded], tmp)
            os.replace(tmp, path)
        for i, r in zip(idx, loaded):
            results[i] = r
    return results  # type: ignore[return-value]
