"""Files that are never read back half-written, caches that cannot run code, and damage kept aside.

``write_atomic`` writes a new file under a fresh temporary name in the target's folder (created
exclusively, so a link planted there is never followed) and renames it into place, so a reader
sees the old file or the new one, never a part; a failed write (a full disk, say) leaves no
temporary file behind. Every file it writes gets the same mode (0666 less the umask), whatever
library produced the bytes.

``save_tree`` and ``load_tree`` keep the run cache and the checkpoints: nested dicts and lists of
tensors, numbers, strings, booleans and None, in one safetensors file whose header carries the
structure as JSON. Reading one parses tensors and JSON and nothing else, so a file planted in a
cache folder cannot run code (the torch pickle files of earlier versions could; they are refused
by name, see ``legacy_cache_files``). A file that cannot be parsed is moved aside under a name
that is never read again, kept for inspection and named in the warning, and the caller rebuilds.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from .progress import notify

TREE_FORMAT = "encoder-study-tree/1"
TENSOR_REF = "__tensor__"  # {TENSOR_REF: name} stands for a tensor in the JSON structure
LEGACY_SUFFIX = ".pt"  # run-cache files and checkpoints of earlier versions: torch pickles


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()


def warn(message: str, stacklevel: int = 2) -> None:
    """A warning that also reaches the console running the book (not only the notebook)."""
    warnings.warn(message, stacklevel=stacklevel + 1)
    notify(message)


def write_atomic(path: Path, content: bytes | str | Callable[[BinaryIO], None]) -> None:
    """Put ``content`` (bytes, text as UTF-8, or a function that writes to a binary file) at
    ``path`` atomically. A link at ``path`` is replaced, not followed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())  # on disk before it takes the name: a power cut leaves old or new
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _plain(value: object, tensors: dict[str, torch.Tensor], where: str) -> object:
    """``value`` as JSON-ready data, its tensors moved into ``tensors`` (CPU copies)."""
    if isinstance(value, torch.Tensor):
        name = str(len(tensors))
        t = value.detach().cpu().contiguous()
        shared = any(
            t.untyped_storage().data_ptr() == u.untyped_storage().data_ptr() for u in tensors.values()
        )
        tensors[name] = t.clone() if shared else t  # safetensors refuses tensors that share memory
        return {TENSOR_REF: name}
    if isinstance(value, dict):
        if any(not isinstance(k, str) for k in value):
            raise TypeError(f"{where}: dict keys must be strings to be stored, got {list(value)[:3]}")
        if TENSOR_REF in value:
            raise ValueError(f"{where}: the key {TENSOR_REF!r} is reserved")
        return {k: _plain(v, tensors, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"{where}: a {type(value).__name__} cannot be stored (tensors, numbers, text, lists, dicts)"
    )


def _rebuilt(value: object, tensors: dict[str, torch.Tensor]) -> object:
    if isinstance(value, dict):
        if set(value) == {TENSOR_REF}:
            return tensors[value[TENSOR_REF]]
        return {k: _rebuilt(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebuilt(v, tensors) for v in value]
    return value


def save_tree(obj: object, path: Path) -> None:
    """Store ``obj`` (nested dicts with string keys, lists and tuples (read back as lists),
    tensors, numbers, strings, booleans, None) in one safetensors file, atomically."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    tree = json.dumps(_plain(obj, tensors, "obj"))
    write_atomic(path, save(tensors, metadata={"format": TREE_FORMAT, "tree": tree}))


def load_tree(path: Path) -> object:
    """What ``save_tree`` stored at ``path``; ValueError if the file is not such a file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:  # safetensors reports damage as its own error types
        raise ValueError(f"not a readable safetensors file ({type(e).__name__}: {str(e)[:120]})") from e
    if meta.get("format") != TREE_FORMAT:
        raise ValueError(f"format {meta.get('format')!r} is not {TREE_FORMAT!r}")
    try:
        return _rebuilt(json.loads(meta["tree"]), tensors)
    except (KeyError, TypeError, RecursionError, json.JSONDecodeError) as e:
        raise ValueError(f"its structure does not parse ({type(e).__name__}: {e})") from e


def read_json_object(path: Path) -> dict:
    """The JSON object in ``path``, or a ValueError naming the file (not JSON, not an object)."""
    try:
        value = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, or a ValueError naming the file."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors reports damage as its own error types
        raise ValueError(
            f"{path}: not a readable safetensors file ({type(e).__name__}: {str(e)[:120]})"
        ) from e


def move_aside(path: Path, what: str, reason: str) -> Path:
    """Rename a damaged or unexpected cache file to a name no reader uses, and warn naming it."""
    kept = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    try:
        os.replace(path, kept)
    except OSError as e:
        warn(f"{what} {path} is not usable ({reason}) and could not be moved aside ({e}); rebuilding it")
        return path
    warn(f"{what} {path} is not usable ({reason}); kept as {kept.name} for inspection, rebuilding it")
    return kept


def load_or_discard(path: Path, what: str) -> object | None:
    """The tree stored at ``path``, or None: when it is missing, or (with a warning naming the
    file it was moved to) when it cannot be parsed."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return load_tree(path)
    except ValueError as e:
        move_aside(path, what, str(e))
        return None


def legacy_cache_files(folder: Path) -> list[Path]:
    """Run-cache files and checkpoints an earlier version wrote as torch pickles (``*.pt``): never
    read (a pickle can run code when loaded); their runs are trained again."""
    return sorted(p for p in Path(folder).glob(f"*{LEGACY_SUFFIX}") if p.is_file())
