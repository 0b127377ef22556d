"""The public API on data that is not MNIST: scikit-learn's 8 x 8 digits (1,797 images, 64 pixels)."""

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import encoder_study as es
from encoder_study.model import Encoder


@pytest.fixture(scope="module")
def digits():
    return (load_digits().data / 16.0).astype(np.float32)  # pixels 0..16 -> 0..1


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("runs"))  # a str, as a user would pass it


@pytest.fixture(scope="module")
def ours(digits, cache):
    return es.fit(digits, kind="ours", hidden_dim=16, epochs=2, seed=3, cache=cache, progress=False)


def test_encode_is_relu_of_the_first_layer_in_float64(ours, digits):
    A = ours.encode(digits)
    assert isinstance(A, np.ndarray) and A.shape == (len(digits), 16) and A.dtype == np.float32
    W = ours.state["linear.weight"].double().numpy()
    b = ours.state["linear.bias"].double().numpy()
    expected = np.maximum(digits.astype(np.float64) @ W.T + b, 0)  # an independent float64 forward
    scale = np.abs(digits.astype(np.float64)) @ np.abs(W.T) + np.abs(b)  # bound on the float32 sum's rounding
    assert np.all(np.abs(A - expected) <= 64 * np.finfo(np.float32).eps * scale + 1e-30)
    assert isinstance(ours.encode(torch.from_numpy(digits)), torch.Tensor)


def test_save_and_load_round_trip_to_identical_features(ours, digits, tmp_path):
    folder = ours.save(str(tmp_path / "dict"))  # a str path
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["kind"] == "ours" and cfg["input_dim"] == 64 and cfg["hidden_dim"] == 16
    assert cfg["knobs"] == {"lambda_lse": 1.0, "lambda_var": 1.0, "lambda_tc": 1.0}
    assert cfg["training"]["epochs"] == 2 and cfg["training"]["seed"] == 3
    assert cfg["package_version"] == es.__version__
    assert not list(folder.glob("*.tmp"))
    again = es.load(folder)  # a Path
    assert np.array_equal(again.encode(digits), ours.encode(digits))
    assert isinstance(again.model(), Encoder)


@pytest.mark.parametrize(
    "kind,knobs,keys",
    [
        ("sae", {"l1": 0.05}, {"encoder.weight", "decoder.weight"}),
        ("topk", {"k": 4}, {"pre_bias", "decoder.weight"}),
    ],
)
def test_sae_kinds_fit_save_and_load(digits, cache, tmp_path, kind, knobs, keys):
    d = es.fit(digits, kind=kind, hidden_dim=16, epochs=1, cache=cache, progress=False, **knobs)
    assert keys <= set(d.state)
    A = d.encode(digits)
    if kind == "topk":
        assert (A > 0).sum(1).max() <= 4  # at most k active latents
    assert np.array_equal(es.load(d.save(tmp_path / kind)).encode(digits), A)


def test_fit_again_loads_the_same_run_from_the_cache(ours, digits, cache):
    again = es.fit(digits, kind="ours", hidden_dim=16, epochs=2, seed=3, cache=cache, progress=False)
    for name, t in ours.state.items():
        assert torch.equal(again.state[name], t)


@pytest.mark.parametrize(
    "kwargs,error,words",
    [
        ({"X": np.zeros(64, np.float32)}, ValueError, "X must be 2-D"),
        ({"X": np.full((20, 4), np.nan, np.float32)}, ValueError, "X holds NaN"),
        ({"X": np.zeros((20, 4), np.uint8)}, TypeError, "X has dtype torch.uint8"),
        ({"X": [[0.0, 1.0]] * 10}, TypeError, "X must be a NumPy array or a torch tensor"),
        ({"hidden_dim": "many"}, TypeError, "hidden_dim='many' must be an integer"),
        ({"lr": "1e-3"}, TypeError, "lr='1e-3' must be a real number"),
        ({"kind": "pca"}, ValueError, "kind='pca' is not allowed"),
        ({"l1": 0.1}, TypeError, "kind='ours' does not take l1"),
        ({"kind": "topk"}, TypeError, "kind='topk' needs k="),
        ({"kind": "topk", "k": 40}, ValueError, "k=40 is not allowed"),
        ({"batch_size": 5000}, ValueError, "batch_size=5000 is larger than X's"),
        ({"cache": 3}, TypeError, "cache=3 must be a folder path"),
    ],
)
def test_bad_input_is_named(digits, cache, kwargs, error, words):
    args = {"X": digits, "hidden_dim": 16, "epochs": 1, "cache": cache, "progress": False, **kwargs}
    with pytest.raises(error, match=words.replace("(", r"\(").replace("[", r"\[")):
        es.fit(**args)


def test_encode_and_save_and_load_name_their_bad_input(ours, tmp_path):
    with pytest.raises(ValueError, match="X has 3 features; this dictionary was trained on 64"):
        ours.encode(np.zeros((5, 3), np.float32))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OSError, match="is not a writable folder"):
        ours.save(blocker / "inside")
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        es.load(tmp_path)
    with pytest.raises(TypeError, match="path=None must be a folder path"):
        es.load(None)
