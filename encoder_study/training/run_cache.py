"""The run cache: finished groups of runs on disk, keyed by everything that can move their numbers.

A group's key covers every run's config, the data's bytes, the code of every module that computes
them (``NUMERIC_SOURCES`` and the kind's own files, comments and docstrings left out), the torch
version and the thread count. So any change to that code retrains the runs it could move, and
nothing needs a hand-bumped version. A finished group is one file (``storage.save_tree``: tensors
and JSON, nothing that can run code), written atomically; a group that is training keeps a
checkpoint beside it.

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

import torch

from ..book.storage import legacy_cache_files, load_or_discard, move_aside, save_tree, warn
from ..models.config import RunConfig
from ..models.kinds import KINDS
from .engine import RunResult, from_record, to_record

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # encoder_study/
KINDS_DIR = PACKAGE_DIR / "models" / "kinds"
HASH_ROWS = 65536  # rows hashed at a time
# The modules whose code computes every run's numbers (configs and their defaults, CPU arithmetic
# settings, the engine, initialisation, data orders, the objective, the metrics kept in a run's
# history, what every model kind shares). Their code is part of every group's run-cache key; a
# group's key also holds its own model kind's code (``kind_files``), so adding a kind (one file
# and a registry line) retrains nothing that was trained before. The other modules (progress,
# storage, validation, this cache, runs and the executors, the registry, the book's helpers, the
# API) only check, show, store, send or look up; tests/test_robustness.py holds that every module
# the engine imports is in one list or the other.
NUMERIC_SOURCES = (
    "__init__.py",
    "book/data.py",
    "evaluation/metrics.py",
    "models/config.py",
    "models/kinds/base.py",
    "models/losses.py",
    "models/model.py",
    "models/stacking.py",
    "training/cpu.py",
    "training/engine.py",
    "training/single_run.py",
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
            todo += [p for p in relative_imports(path) if p.parent == KINDS_DIR and p.exists()]
    return sorted(seen - {KINDS_DIR / "__init__.py", KINDS_DIR / "base.py"})


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
    for start in range(0, max(len(x), 1), HASH_ROWS):
        h.update(x[start : start + HASH_ROWS].numpy().tobytes())
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
        if not all(isinstance(t, torch.Tensor) for r in results for t in r.state.values()):
            raise ValueError("a run's state is not a set of tensors")
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


def fresh_requested() -> bool:
    """Whether ENCODER_STUDY_FRESH (``make book FRESH=1``) asks to retrain instead of reading the cache."""
    return os.environ.get("ENCODER_STUDY_FRESH", "") not in ("", "0")


def finished_groups(root: Path) -> int:
    """How many finished groups of runs the cache folder ``root`` holds (checkpoints of groups still
    training, ``*.partial.safetensors``, not counted)."""
    if not root.is_dir():
        return 0
    return sum(1 for p in root.glob("*.safetensors") if not p.name.endswith(".partial.safetensors"))


class RunCache:
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

    def paths(self, job: GroupJob) -> tuple[Path, Path, Path]:
        """(the finished group's file, its lock, its checkpoint while it trains)."""
        key = group_cache_key(job.configs, self.data, job.init_fingerprints)
        return (
            self.root / f"{key}.safetensors",
            self.root / f"{key}.lock",
            self.root / f"{key}.partial.safetensors",
        )

    def cached(self, job: GroupJob) -> list[RunResult] | None:
        """The group's results if the cache holds them (call it holding the group's lock)."""
        path = self.paths(job)[0]
        # fresh: only results written since this call began (by another process, while we waited) count
        usable = path.exists() and (not self.fresh or path.stat().st_mtime >= self.started)
        loaded = _load_group(path, job.configs) if usable else None
        self.hits += loaded is not None
        return loaded

    def load_into(self, job: GroupJob, found: dict[str, list[RunResult]]) -> bool:
        """Whether the group is cached; if so its results go into ``found`` under its name."""
        with _group_lock(self.paths(job)[1], job.name):
            loaded = self.cached(job)
        if loaded is not None:
            found[job.name] = loaded
        return loaded is not None

    def save(self, job: GroupJob, results: list[RunResult], locked: bool = False) -> list[RunResult]:
        """Write a finished group (taking its lock, unless the caller holds it)."""
        if locked:
            _save_group(self.paths(job)[0], results)
            return results
        with self.holding(job):
            _save_group(self.paths(job)[0], results)
        return results

    def holding(self, job: GroupJob):
        """The group's OS lock, as a context: a second process that needs the group waits."""
        return _group_lock(self.paths(job)[1], job.name)
