"""The public API on data that is not MNIST: scikit-learn's 8 x 8 digits (1,797 images, 64 pixels)."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import encoder_study as es
from encoder_study.models.model import Encoder


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


def test_repr_is_short_and_names_the_dictionary(ours):
    text = repr(ours)
    assert text.startswith("Dictionary(kind='ours', input_dim=64, hidden_dim=16") and "seed=3" in text
    assert len(text) < 200 and "tensor" not in text


def test_save_refuses_a_folder_holding_a_dictionary_unless_asked_to_overwrite(ours, digits, tmp_path):
    folder = ours.save(tmp_path / "d")
    with pytest.raises(FileExistsError, match="already holds a dictionary.*overwrite=True"):
        ours.save(folder)
    with pytest.raises(FileExistsError, match="already holds a dictionary"):
        ours.save(folder, format="saelens")
    copy = dataclasses.replace(ours)  # saving with readout_x keeps a readout: not on the shared fixture
    with pytest.raises(ValueError, match="readout_x=None"):  # refused before anything is removed
        copy.save(folder, format="saelens", overwrite=True)
    assert es.load(folder).kind == "ours"
    copy.save(folder, format="saelens", overwrite=True, readout_x=digits)  # replaces it: one format left
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    assert es.load(folder).kind == "ours"


def _tamper(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "changes,words",
    [
        ({"kind": "sae", "knobs": {"l1": 0.01}}, "are not those of a 'sae' model"),
        ({"kind": "gated"}, "kind='gated' is not allowed"),
        ({"hidden_dim": 8}, r"linear.weight is torch.float32 \(16, 64\); a hidden_dim=8"),
        ({"input_dim": 10}, "input_dim=10 model needs"),
        ({"input_dim": "64"}, "input_dim='64' must be an integer"),
        ({"dtype": "float16"}, "dtype='float16' is not 'float32'"),
        ({"knobs": {"l1": 0.1}}, "does not take l1"),
        ({"tensors": {"linear.weight": [16, 63], "linear.bias": [16]}}, "shapes are not those config.json"),
        ({"format": "other/1"}, "format 'other/1'"),
    ],
)
def test_load_checks_the_config_against_the_weights(ours, tmp_path, changes, words):
    folder = ours.save(tmp_path / "d")
    _tamper(folder, **changes)
    with pytest.raises(ValueError, match=words):
        es.load(folder)


def test_load_refuses_missing_fields_weights_of_another_dtype_and_non_finite_weights(ours, tmp_path):
    from safetensors.torch import save_file

    folder = ours.save(tmp_path / "d")
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["training"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="the field 'training' is missing"):
        es.load(folder)
    for name, bad in [
        ("dtype", {k: v.double() for k, v in ours.state.items()}),
        (
            "nan",
            {k: v.clone().fill_(float("nan")) if k == "linear.bias" else v for k, v in ours.state.items()},
        ),
    ]:
        folder = ours.save(tmp_path / name)
        save_file(bad, str(folder / "weights.safetensors"))
        with pytest.raises(ValueError, match="float64|NaN or infinite"):
            es.load(folder)
    (folder / "weights.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(ValueError, match="weights.safetensors: not a readable safetensors file"):
        es.load(folder)


def test_load_refuses_a_folder_holding_both_formats(ours, digits, tmp_path):
    folder = ours.save(tmp_path / "d")
    ours.save(tmp_path / "s", format="saelens", readout_x=digits)
    for name in ("cfg.json", "sae_weights.safetensors"):
        (folder / name).write_bytes((tmp_path / "s" / name).read_bytes())
    with pytest.raises(ValueError, match="holds two dictionaries, one in each format"):
        es.load(folder)


def test_knobs_accept_numpy_scalars_and_ints_for_floats(digits, cache):
    d = es.fit(
        digits,
        kind="topk",
        k=np.int64(4),
        hidden_dim=np.int64(16),
        epochs=np.int32(1),
        lr=np.float64(1e-3),
        seed=np.uint8(2),
        cache=cache,
        progress=False,
    )
    assert d.config.k == 4 and type(d.config.k) is int and type(d.config.lr) is float
    same = es.fit(
        digits, kind="topk", k=4, hidden_dim=16, epochs=1, lr=1e-3, seed=2, cache=cache, progress=False
    )
    assert torch.equal(d.state["encoder.weight"], same.state["encoder.weight"])  # one run, one cache key
    assert (
        es.fit(digits, kind="sae", l1=1, hidden_dim=16, epochs=1, cache=cache, progress=False).config.l1
        == 1.0
    )


def test_batch_size_one_is_refused_by_name_for_ours_and_trained_for_the_saes(digits, cache):
    with pytest.raises(ValueError, match="batch_size=1 is not allowed for model='encoder'.*at least 2"):
        es.fit(digits, kind="ours", hidden_dim=16, epochs=1, batch_size=1, cache=cache, progress=False)
    d = es.fit(digits[:64], kind="sae", hidden_dim=4, epochs=1, batch_size=1, cache=cache, progress=False)
    assert np.isfinite(d.history[-1]["total"])


def test_a_refused_overwrite_leaves_the_old_dictionary_as_it_was(digits, cache, tmp_path):
    sae = es.fit(digits, kind="sae", hidden_dim=8, epochs=1, cache=cache, progress=False)
    neg = dataclasses.replace(sae, config=sae.config.with_(activation="neg_relu"))
    folder = neg.save(tmp_path / "d")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(ValueError, match="only ReLU activations"):
        neg.save(folder, format="saelens", overwrite=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_load_draws_no_random_numbers_and_allocates_nothing_for_a_huge_config(ours, tmp_path):
    folder = ours.save(tmp_path / "d")
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    es.load(folder)
    assert torch.equal(torch.rand(3), expected)
    _tamper(folder, hidden_dim=10**7, input_dim=10**7, tensors=None)
    with pytest.raises(ValueError, match="a hidden_dim=10000000, input_dim=10000000 model needs"):
        es.load(folder)


def test_knobs_too_large_for_a_float_and_malformed_metadata_are_refused_by_name(digits, cache, tmp_path):
    with pytest.raises(ValueError, match="l1=1000000.* must be finite"):
        es.fit(digits, kind="sae", l1=10**400, hidden_dim=8, epochs=1, cache=cache, progress=False)
    sae = es.fit(digits, kind="sae", hidden_dim=8, epochs=1, cache=cache, progress=False)
    folder = sae.save(tmp_path / "s", format="saelens")
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["metadata"]["encoder_study"] = ["not", "an", "object"]
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="metadata.encoder_study must be an object"):
        es.load(folder)
