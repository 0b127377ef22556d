"""The notebooks' entry point for training: a list of runs in, results out, finished work cached.

``run_experiments`` checks the runs and the data, groups the runs (``engine.group_runs``: one
stacked program per group) and hands the groups to an executor (``executors.py``: here, one after
another with checkpoints, or as tasks on a Ray cluster), which takes each from the run cache
(``run_cache.py``) or trains and caches it. So an interrupted book resumes where it stopped. Set
ENCODER_STUDY_FRESH=1 (``make book FRESH=1``) to ignore the cache and retrain.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..book.data import cache_dir
from ..models.config import RunConfig
from .engine import RunResult, group_runs, init_fingerprint
from .executors import EXECUTORS, executor_name
from .run_cache import GroupJob, RunCache, data_fingerprint, fresh_requested

CHECK_ROWS = 65536  # rows read at a time when data are checked


def _check_distinct(configs: list[RunConfig], init: list[str]) -> None:
    """Refuse a run given twice (the same config starting from the same state)."""
    seen: dict[tuple[RunConfig, str], int] = {}
    for i, key in enumerate(zip(configs, init)):
        if key in seen:
            c = configs[i]
            raise ValueError(
                f"configs {seen[key]} and {i} are the same run (model={c.model!r}, seed={c.seed}); "
                f"a repeated seed is not another sample: remove the duplicate"
            )
        seen[key] = i


def _check_init(init: object, n: int) -> list[dict[str, torch.Tensor] | None] | None:
    if init is None:
        return None
    if not isinstance(init, (list, tuple)) or len(init) != n:
        got = f"a list of {len(init)}" if isinstance(init, (list, tuple)) else f"a {type(init).__name__}"
        raise ValueError(
            f"init must be a list with one entry (a state dict or None) per config; {n} configs, got {got}"
        )
    for i, state in enumerate(init):
        if state is not None and not (
            isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
        ):
            raise TypeError(
                f"init[{i}] must be None or a dict of tensors (a state dict), got {type(state).__name__}"
            )
    return list(init)


def as_data_tensor(name: str, x: object) -> torch.Tensor:
    """A 2-D floating-point tensor (samples x features) from a tensor or a NumPy array, or an
    error that names the argument."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name} must be a NumPy array or a torch tensor (samples x features), got {type(x).__name__}"
        )
    if x.dim() != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(
            f"{name} must be 2-D (samples x features) with at least 2 samples; got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(
            f"{name} has dtype {x.dtype}; give floating-point data (scale integer data first, "
            f"for example bytes / 255)"
        )
    for start in range(0, len(x), CHECK_ROWS):  # in chunks: x may be a memory-mapped file
        if not bool(torch.isfinite(x[start : start + CHECK_ROWS]).all()):
            raise ValueError(f"{name} holds NaN or infinite values; remove or impute them first")
    return x


def run_experiments(
    configs: list[RunConfig],
    train_x: torch.Tensor | np.ndarray,
    test_x: torch.Tensor | np.ndarray | None = None,
    fresh: bool | None = None,
    progress: bool = True,
    cache: str | Path | None = None,
    executor: str | None = None,
    init: list[dict[str, torch.Tensor] | None] | None = None,
) -> list[RunResult]:
    """Results for every config, in order: from the cache where a group was finished before,
    else trained (one stacked program per group) and cached. ``fresh`` (default: the
    ENCODER_STUDY_FRESH environment variable) retrains everything; ``cache`` is the run cache's
    folder (default: ``runs/`` under the data cache); ``executor`` trains the missing groups here
    ("local", one after another, checkpointing) or as tasks on a Ray cluster ("ray", see
    ``executors.py``); default: the ENCODER_STUDY_EXECUTOR environment variable, else local.
    ``init``: per config, a state dict (whole or in part) to start from instead of the seed's
    initialisation, for training in phases (``engine.initial_state``); part of the cache key."""
    if not configs:
        raise ValueError("configs is empty; give at least one RunConfig")
    bad = [type(c).__name__ for c in configs if not isinstance(c, RunConfig)]
    if bad:
        raise TypeError(f"configs must be RunConfig objects; got {bad[:3]}")
    init = _check_init(init, len(configs))
    fingerprints = [init_fingerprint(i) for i in init] if init else None  # hashed once, used twice
    _check_distinct(configs, fingerprints or [""] * len(configs))
    executor = executor_name(executor)
    train_x = as_data_tensor("train_x", train_x)
    test_x = None if test_x is None else as_data_tensor("test_x", test_x)
    if test_x is not None and test_x.shape[1] != train_x.shape[1]:
        raise ValueError(f"test_x has {test_x.shape[1]} features but train_x has {train_x.shape[1]}")
    fresh = fresh_requested() if fresh is None else fresh
    if cache is not None and not isinstance(cache, (str, os.PathLike)):
        raise TypeError(f"cache={cache!r} must be a folder path (str or Path) or None")
    cache = RunCache(
        Path(cache) if cache is not None else cache_dir() / "runs",
        fresh,
        data_fingerprint(train_x) + (data_fingerprint(test_x) if test_x is not None else ""),
    )
    groups = list(group_runs(configs).values())
    jobs = [
        GroupJob(
            f"group {g + 1}/{len(groups)}: {configs[idx[0]].model} x{len(idx)}",
            [configs[i] for i in idx],
            None if init is None else [init[i] for i in idx],
            None if fingerprints is None else [fingerprints[i] for i in idx],
        )
        for g, idx in enumerate(groups)
    ]
    found = EXECUTORS[executor](jobs, cache, train_x, test_x, progress)
    results: list[RunResult | None] = [None] * len(configs)
    for idx, job in zip(groups, jobs):
        for i, r in zip(idx, found[job.name]):
            results[i] = r
    return results  # type: ignore[return-value]
