"""Files that are never read back half-written, and caches that say what they threw away.

``write_atomic`` writes next to the target under a temporary name and renames it into place, so a
reader sees the old file or the new one, never a part; a failed write (a full disk, say) leaves
no temporary file behind. ``load_or_discard`` reads a cached file and, if it cannot be read,
warns with the file's name, removes it and returns None, so the caller rebuilds it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from .progress import notify


def warn(message: str, stacklevel: int = 2) -> None:
    """A warning that also reaches the console running the book (not only the notebook)."""
    warnings.warn(message, stacklevel=stacklevel + 1)
    notify(message)


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename tmp to ``path``; on any error remove tmp and re-raise."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_torch(obj: object, path: Path) -> None:
    """torch.save, atomically."""
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def load_or_discard(path: Path, what: str) -> object | None:
    """torch.load of a cache file; None (with a warning naming it, the file removed) if it is
    missing or cannot be read."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return torch.load(path, weights_only=False)
    except Exception as e:  # a truncated or overwritten file fails in many ways inside torch's reader
        warn(f"{what} {path} could not be read ({type(e).__name__}: {str(e)[:120]}); removed, rebuilding it")
        path.unlink(missing_ok=True)
        return None
