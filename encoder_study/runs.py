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

import numpy as np
import torch

from . import __version__, fused
from .data import cache_dir
from .engine import RunResult, group_runs, train_group
from .progress import Progress
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


def as_data_tensor(name: str, x: object) -> torch.Tensor:
    """A 2-D floating-point tensor (samples x features) from a tensor or a NumPy array, or an
    error that names the argument."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a NumPy array or a torch tensor (samples x features), "
                        f"got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"{name} must be 2-D (samples x features) with at least 2 samples; got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} has dtype {x.dtype}; give floating-point data (scale integer data first, "
                        f"for example bytes / 255)")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} holds NaN or infinite values; remove or impute them first")
    return x


def run_experiments(configs: list[RunConfig], train_x: torch.Tensor | np.ndarray,
                    test_x: torch.Tensor | np.ndarray | None = None, fresh: bool | None = None,
                    progress: bool = True, cache: str | Path | None = None) -> list[RunResult]:
    """Results for every config, in order: from the cache where a group was finished before,
    else trained (one stacked program per group) and cached. ``fresh`` (default: the
    ENCODER_STUDY_FRESH environment variable) retrains everything; ``cache`` is the run cache's
    folder (default: ``runs/`` under the data cache)."""
    if not configs:
        raise ValueError("configs is empty; give at least one RunConfig")
    bad = [type(c).__name__ for c in configs if not isinstance(c, RunConfig)]
    if bad:
        raise TypeError(f"configs must be RunConfig objects; got {bad[:3]}")
    train_x = as_data_tensor("train_x", train_x)
    test_x = None if test_x is None else as_data_tensor("test_x", test_x)
    if test_x is not None and test_x.shape[1] != train_x.shape[1]:
        raise ValueError(f"test_x has {test_x.shape[1]} features but train_x has {train_x.shape[1]}")
    fresh = os.environ.get("ENCODER_STUDY_FRESH", "") not in ("", "0") if fresh is None else fresh
    if cache is not None and not isinstance(cache, (str, os.PathLike)):
        raise TypeError(f"cache={cache!r} must be a folder path (str or Path) or None")
    root = Path(cache) if cache is not None else cache_dir() / "runs"
    root.mkdir(parents=True, exist_ok=True)
    fingerprint = data_fingerprint(train_x) + (data_fingerprint(test_x) if test_x is not None else "")
    results: list[RunResult | None] = [None] * len(configs)
    groups = list(group_runs(configs).values())
    overall = Progress(total=len(groups), desc="groups of runs", unit="done", disable=not progress)
    from_cache = 0
    for g, idx in enumerate(groups):
        group = [configs[i] for i in idx]
        key = group_cache_key(group, fingerprint)
        path = root / f"{key}.pt"
        if path.exists() and not fresh:
            loaded = [_from_record(d) for d in torch.load(path, weights_only=False)]
            from_cache += 1
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
        overall.status(f"{from_cache} from the run cache")
        overall.update()
    overall.close(f"{len(groups)} group{'s' if len(groups) > 1 else ''} of {len(configs)} runs: {len(groups) - from_cache} trained, "
                  f"{from_cache} loaded from the run cache")
    return results  # type: ignore[return-value]
