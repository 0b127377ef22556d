"""The notebooks' entry point for training: a list of runs in, results out, finished work cached.

``run_experiments`` groups the runs (engine.group_runs), and for each group either loads its
results from the run cache or trains it with the batched engine, checkpointing as it goes, so an
interrupted book resumes where it stopped. The cache key covers everything that can move the
group's numbers: every run's config, the data's bytes, the code of every module that computes
them (``NUMERIC_SOURCES``, comments and docstrings left out), the torch version and the thread
count. So any change to that code retrains
the runs it could move, and nothing needs a hand-bumped version. Set ENCODER_STUDY_FRESH=1
(``make book FRESH=1``) to ignore the cache and retrain.

Two processes that need the same group (two books sharing a cache): the first to take the
group's lock file trains it, the other waits and then loads the result. The lock is an OS file
lock (``fcntl.flock``), released by the kernel when its holder exits or is killed, so a stale lock
cannot block anyone; on a network file system without such locks both would train.
"""

from __future__ import annotations

import ast
import fcntl
import functools
import hashlib
import inspect
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import RunConfig
from .data import cache_dir
from .engine import RunResult, from_record, group_runs, init_fingerprint, to_record, train_group
from .executors import executor_name, run_ray
from .kinds import KINDS
from .progress import Progress
from .storage import legacy_cache_files, load_or_discard, move_aside, save_tree, warn

PACKAGE_DIR = Path(__file__).resolve().parent
CHECK_ROWS = 65536  # rows read at a time when data are checked or hashed
# The modules whose code computes every run's numbers (configs and their defaults, CPU arithmetic
# settings, the engine, initialisation, data orders, the objective, the metrics kept in a run's
# history, what every model kind shares). Their code is part of every group's run-cache key; a
# group's key also holds its own model kind's code (``kind_files``), so adding a kind (one file
# and a registry line) retrains nothing that was trained before. The other modules (progress,
# storage, validation, runs itself, the registry, the book's helpers, the API) only check, show,
# store or look up; tests/test_robustness.py holds that every module the engine imports is in one
# list or the other.
NUMERIC_SOURCES = (
    "__init__.py",
    "config.py",
    "cpu.py",
    "data.py",
    "engine.py",
    "kinds/base.py",
    "losses.py",
    "metrics.py",
    "model.py",
    "stacking.py",
    "training.py",
)


def relative_imports(path: Path) -> set[Path]:
    """The modules of this package that the module at ``path`` imports (``from .x import``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            base = path.parent
            for _ in range(node.level - 1):
                base = base.parent
            for name in [node.module] if node.module else [a.name for a in node.names]:
                target = base.joinpath(*name.split("."))
                found.add(target / "__init__.py" if target.is_dir() else target.with_suffix(".py"))
    return found


def kind_files(kind: str) -> list[Path]:
    """The source of model kind ``kind``: the file that defines its registered class and every
    module of ``kinds/`` that file reaches by relative imports (a kind may reuse another's code)."""
    start = Path(inspect.getsourcefile(KINDS[kind])).resolve()
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += [p for p in relative_imports(path) if p.parent == PACKAGE_DIR / "kinds" and p.exists()]
    return sorted(seen - {PACKAGE_DIR / "kinds" / "__init__.py", PACKAGE_DIR / "kinds" / "base.py"})


def _code_of(source: str) -> str:
    """A module's code without its comments and docstrings (its syntax tree), so that editing
    prose keeps the finished runs while any change to what runs retrains them."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
    return ast.dump(tree)


@functools.cache
def code_fingerprint(kind: str) -> str:
    """sha256 of the code that computes a run of model kind ``kind``: the shared numeric modules
    (``NUMERIC_SOURCES``) and the kind's own files (``kind_files``)."""
    h = hashlib.sha256()
    for path in [PACKAGE_DIR / name for name in NUMERIC_SOURCES] + kind_files(kind):
        name = path.relative_to(PACKAGE_DIR) if path.is_relative_to(PACKAGE_DIR) else path.name
        h.update(f"{name}\0{_code_of(path.read_text())}\0".encode())
    return h.hexdigest()[:16]


def data_fingerprint(x: torch.Tensor) -> str:
    """sha256 of a tensor's bytes (shape and dtype included), read in chunks of rows (the same
    digest as hashing all bytes at once, without a copy of a large or memory-mapped array)."""
    h = hashlib.sha256(f"{tuple(x.shape)}{x.dtype}".encode())
    x = x.detach().cpu().contiguous()
    for start in range(0, max(len(x), 1), CHECK_ROWS):
        h.update(x[start : start + CHECK_ROWS].numpy().tobytes())
    return h.hexdigest()[:16]


def group_cache_key(configs: list[RunConfig], fingerprint: str, init: list[str] | None = None) -> str:
    """The run-cache key of a group: its configs, the data, the code, torch and the thread count,
    and (for runs that start from given states) those states' fingerprints."""
    blob = json.dumps(
        {
            "configs": [c.as_dict() for c in configs],
            **({"init": init} if init else {}),
            "data": fingerprint,
            "code": code_fingerprint(configs[0].model),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass
class GroupJob:
    """One group of runs to train: a name for messages, its configs and, for runs that start from
    given states (training in phases), those states (None where a run starts from its seed)."""

    name: str
    configs: list[RunConfig]
    init: list[dict[str, torch.Tensor] | None] | None = None
    init_fingerprints: list[str] | None = None  # of ``init`` (engine.init_fingerprint), for the cache key


def _load_group(path: Path, group: list[RunConfig]) -> list[RunResult] | None:
    """The cached results of ``group``, or None (with a warning) if the file is unreadable or
    holds other runs."""
    records = load_or_discard(path, "run-cache file")
    if records is None:
        return None
    try:
        results = [from_record(d) for d in records]  # type: ignore[union-attr]
        if [r.config for r in results] != group:
            raise ValueError("it holds other runs than its key names")
    except (TypeError, KeyError, ValueError) as e:
        move_aside(path, "run-cache file", f"not a finished group: {e}")
        return None
    return results


def _save_group(path: Path, results: list[RunResult]) -> None:
    try:
        save_tree([to_record(r) for r in results], path)
    except OSError as e:
        warn(
            f"could not save a finished group to the run cache ({path}: {str(e)[:120]}); its results are "
            f"kept in memory for this run only"
        )


@contextmanager
def _group_lock(path: Path, desc: str) -> Iterator[None]:
    """Hold ``path``'s OS lock (waiting, with a message, while another process holds it)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if path.is_symlink():
            raise OSError(
                f"run-cache lock {path} is a symbolic link; refusing to follow it (remove it)"
            ) from e
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            warn(f"{desc}: another process is training this group (lock {path.name}); waiting for it")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


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
    fresh = os.environ.get("ENCODER_STUDY_FRESH", "") not in ("", "0") if fresh is None else fresh
    if cache is not None and not isinstance(cache, (str, os.PathLike)):
        raise TypeError(f"cache={cache!r} must be a folder path (str or Path) or None")
    cache = _RunCache(
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
    found: dict[str, list[RunResult]] = {}
    if executor == "ray":
        missing = [job for job in jobs if not cache.load_into(job, found)]
        if missing:  # every group cached: no cluster is started
            run_ray(
                missing,
                train_x,
                test_x,
                lambda job, res: found.update({job.name: cache.save(job, res)}),
                progress,
            )
    else:
        overall = Progress(total=len(jobs), desc="groups of runs", unit="done", disable=not progress)
        for job in jobs:
            found[job.name] = cache.load_or_train(job, train_x, test_x, progress)
            overall.status(f"{cache.hits} from the run cache")
            overall.update()
        overall.close(
            f"{len(jobs)} group{'s' if len(jobs) > 1 else ''} of {len(configs)} runs: "
            f"{len(jobs) - cache.hits} trained, {cache.hits} loaded from the run cache"
        )
    results: list[RunResult | None] = [None] * len(configs)
    for idx, job in zip(groups, jobs):
        for i, r in zip(idx, found[job.name]):
            results[i] = r
    return results  # type: ignore[return-value]


class _RunCache:
    """The run cache's folder as run_experiments uses it: a file per finished group, named by the
    group's key; an OS lock per group while it is read, trained (locally) or written."""

    def __init__(self, root: Path, fresh: bool, data: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.fresh, self.data, self.started, self.hits = root, fresh, data, time.time(), 0
        legacy = legacy_cache_files(root)
        if legacy:
            warn(
                f"the run cache {root} holds {len(legacy)} file(s) of an earlier version (*.pt, torch "
                f"pickles, which can run code when read): they are never read, and their runs are trained "
                f"again. Delete them (rm {root}/*.pt) once you no longer need them"
            )

    def _paths(self, job: GroupJob) -> tuple[Path, Path, Path]:
        key = group_cache_key(job.configs, self.data, job.init_fingerprints)
        return (
            self.root / f"{key}.safetensors",
            self.root / f"{key}.lock",
            self.root / f"{key}.partial.safetensors",
        )

    def _cached(self, job: GroupJob) -> list[RunResult] | None:
        path = self._paths(job)[0]
        # fresh: only results written since this call began (by another process, while we waited) count
        usable = path.exists() and (not self.fresh or path.stat().st_mtime >= self.started)
        loaded = _load_group(path, job.configs) if usable else None
        self.hits += loaded is not None
        return loaded

    def load_into(self, job: GroupJob, found: dict[str, list[RunResult]]) -> bool:
        """Whether the group is cached; if so its results go into ``found`` under its name."""
        with _group_lock(self._paths(job)[1], job.name):
            loaded = self._cached(job)
        if loaded is not None:
            found[job.name] = loaded
        return loaded is not None

    def save(self, job: GroupJob, results: list[RunResult]) -> list[RunResult]:
        with _group_lock(self._paths(job)[1], job.name):
            _save_group(self._paths(job)[0], results)
        return results

    def load_or_train(
        self, job: GroupJob, train_x: torch.Tensor, test_x: torch.Tensor | None, progress: bool
    ) -> list[RunResult]:
        """The group from the cache, else trained here (checkpointing) and saved, all under its lock:
        a second process that needs the group waits, then loads it."""
        path, lock, checkpoint = self._paths(job)
        with _group_lock(lock, job.name):
            loaded = self._cached(job)
            if loaded is None:
                if self.fresh and checkpoint.exists():
                    checkpoint.unlink()
                loaded = train_group(
                    job.configs,
                    train_x,
                    test_x,
                    checkpoint=checkpoint,
                    progress=progress,
                    desc=job.name,
                    init=job.init,
                )
                _save_group(path, loaded)
        return loaded
