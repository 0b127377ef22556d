"""A table of bad inputs thrown at ``fit``, ``encode``, ``save``, ``load``, ``run_experiments``,
``RunConfig``, the command (``python -m encoder_study.fit``) and ``scripts/run_book.py``: each is
refused with a message that names the argument or the file (and, where it can, the bad value), or,
for inputs that are unusual but valid, handled correctly (it trains, the loss is finite, the stored
config holds plain Python numbers).

Every case is tiny (200 samples of scikit-learn's 8 x 8 digits, hidden_dim 8, one epoch) and
writes only under pytest's temporary folders.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import encoder_study as es
from encoder_study.models.config import RunConfig
from encoder_study.training.runs import run_experiments

ROOT = Path(__file__).resolve().parent.parent
HIDDEN = 8
KNOBS = {"ours": {}, "sae": {"l1": 0.05}, "topk": {"k": 2}, "batchtopk": {"k": 2}}


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return (load_digits().data[:200] / 16.0).astype(np.float32)  # (200, 64), pixels in 0..1


@pytest.fixture(scope="module")
def fitted(digits, tmp_path_factory) -> dict[str, es.Dictionary]:
    cache = tmp_path_factory.mktemp("fitted-runs")
    return {
        kind: es.fit(
            digits,
            kind=kind,
            hidden_dim=HIDDEN,
            epochs=1,
            batch_size=64,
            cache=cache,
            progress=False,
            **knobs,
        )
        for kind, knobs in KNOBS.items()
    }


@pytest.fixture
def c(digits, fitted, tmp_path) -> SimpleNamespace:
    """What a row needs: the data, the fitted dictionaries, a fresh folder and a run cache in it."""
    return SimpleNamespace(X=digits, fitted=fitted, tmp=tmp_path, cache=str(tmp_path / "runs"))


# --- helpers the rows call --------------------------------------------------------------------------


def fit(c, X=None, **kwargs) -> es.Dictionary:
    """es.fit on the digits with the tiny settings; ``kwargs`` override them."""
    args = {"hidden_dim": HIDDEN, "epochs": 1, "batch_size": 64, "cache": c.cache, "progress": False}
    return es.fit(c.X if X is None else X, **{**args, **kwargs})


def saved(c, kind="ours", format="encoder-study") -> Path:
    """A fresh folder holding ``kind``'s fitted dictionary in ``format``."""
    d = dataclasses.replace(c.fitted[kind])  # a copy: a SAELens save of ours keeps its readout
    extra = {"readout_x": c.X} if format == "saelens" and kind == "ours" else {}
    return d.save(c.tmp / f"{kind}-{format}", format=format, **extra)


def load_with_config(c, change, kind="ours", file="config.json") -> es.Dictionary:
    """Save ``kind`` (SAELens's layout if ``file`` is cfg.json), let ``change`` edit the config in
    place (what it returns is ignored), write it back and load the folder."""
    folder = saved(c, kind, "saelens" if file == "cfg.json" else "encoder-study")
    cfg = json.loads((folder / file).read_text())
    change(cfg)
    (folder / file).write_text(json.dumps(cfg))
    return es.load(folder)


def load_with_text(c, file: str, text: str | bytes) -> es.Dictionary:
    """Save ours, replace one of its files' contents, load the folder."""
    folder = saved(c)
    target = folder / file
    target.write_bytes(text) if isinstance(text, bytes) else target.write_text(text)
    return es.load(folder)


def load_with_weights(c, change) -> es.Dictionary:
    """Save ours, let ``change`` map its tensors to new ones, write them back and load the folder."""
    from safetensors.torch import load_file, save_file

    folder = saved(c)
    tensors = load_file(str(folder / "weights.safetensors"))
    save_file(change(tensors), str(folder / "weights.safetensors"))
    return es.load(folder)


def both_formats(c) -> es.Dictionary:
    folder = saved(c)
    other = saved(c, "sae", "saelens")
    for name in ("cfg.json", "sae_weights.safetensors"):
        shutil.copy(other / name, folder / name)
    return es.load(folder)


def a_file(c) -> Path:
    path = c.tmp / "a_file"
    path.write_text("not a folder")
    return path


def save_twice(c, **kwargs) -> Path:
    folder = c.fitted["sae"].save(c.tmp / "d")
    return c.fitted["sae"].save(folder, **kwargs)


def run(c, configs, **kwargs):
    return run_experiments(configs, c.X, cache=c.cache, progress=False, **kwargs)


def tiny(**kwargs) -> RunConfig:
    return RunConfig(**{"hidden_dim": HIDDEN, "epochs": 1, "batch_size": 64, **kwargs})


def nan_weights(t):
    return {**t, "linear.weight": torch.full_like(t["linear.weight"], float("nan"))}


# --- refused: (call, the exception, a regex its message must match) ---------------------------------

REFUSED = [
    # es.fit: the data
    pytest.param(
        lambda c: fit(c, X=c.X.tolist()), TypeError, r"^X must be a NumPy array.*got list", id="fit-X-list"
    ),
    pytest.param(
        lambda c: fit(c, X="digits.npy"), TypeError, r"^X must be a NumPy array.*got str", id="fit-X-str"
    ),
    pytest.param(
        lambda c: es.fit(None), TypeError, r"^X must be a NumPy array.*got NoneType", id="fit-X-None"
    ),
    pytest.param(lambda c: fit(c, X=c.X[0]), ValueError, r"^X must be 2-D.*got shape \(64,\)", id="fit-X-1d"),
    pytest.param(
        lambda c: fit(c, X=c.X[:1]),
        ValueError,
        r"^X must be 2-D.*at least 2 samples; got shape \(1, 64\)",
        id="fit-X-one-row",
    ),
    pytest.param(
        lambda c: fit(c, X=(c.X * 16).astype(np.int64)),
        TypeError,
        r"^X has dtype torch\.int64",
        id="fit-X-int64",
    ),
    pytest.param(
        lambda c: fit(c, X=np.where(np.arange(64) == 5, np.nan, c.X).astype(np.float32)),
        ValueError,
        r"^X holds NaN or infinite values",
        id="fit-X-nan",
    ),
    pytest.param(
        lambda c: fit(c, X=np.where(np.arange(64) == 5, -np.inf, c.X).astype(np.float32)),
        ValueError,
        r"^X holds NaN or infinite values",
        id="fit-X-inf",
    ),
    pytest.param(
        lambda c: fit(c, X_test=c.X[:, :32]),
        ValueError,
        r"X_test has 32 features but X has 64",
        id="fit-X_test-other-features",
    ),
    pytest.param(
        lambda c: fit(c, X_test=[[0.0] * 64] * 4),
        TypeError,
        r"^X_test must be a NumPy array.*got list",
        id="fit-X_test-list",
    ),
    # es.fit: kind and knobs
    pytest.param(lambda c: fit(c, kind="gated"), ValueError, r"^kind='gated' is not allowed", id="fit-kind"),
    pytest.param(lambda c: fit(c, l1=0.1), TypeError, r"^kind='ours' does not take l1", id="fit-ours-l1"),
    pytest.param(
        lambda c: fit(c, kind="sae", k=2), TypeError, r"^kind='sae' does not take k", id="fit-sae-k"
    ),
    pytest.param(lambda c: fit(c, kind="topk"), TypeError, r"^kind='topk' needs k=", id="fit-topk-no-k"),
    pytest.param(
        lambda c: fit(c, kind="batchtopk"), TypeError, r"^kind='batchtopk' needs k=", id="fit-batchtopk-no-k"
    ),
    pytest.param(
        lambda c: fit(c, kind="topk", k=0),
        ValueError,
        r"^k=0 must be >= 1 and <= hidden_dim \(kind='topk'\)",
        id="fit-k-0",
    ),
    pytest.param(
        lambda c: fit(c, kind="batchtopk", k=9),
        ValueError,
        r"^k=9 is not allowed .*hidden_dim=8",
        id="fit-k-above-hidden_dim",
    ),
    pytest.param(
        lambda c: fit(c, kind="topk", k=2.5),
        TypeError,
        r"^k=2\.5 must be an integer, got float",
        id="fit-k-float",
    ),
    pytest.param(
        lambda c: fit(c, lambda_lse=-1), ValueError, r"^lambda_lse=-1 must be >= 0", id="fit-lambda-neg"
    ),
    pytest.param(
        lambda c: fit(c, kind="sae", l1="a"), TypeError, r"^l1='a' must be a real number", id="fit-l1-str"
    ),
    # es.fit: sizes and training settings
    pytest.param(
        lambda c: fit(c, hidden_dim=0), ValueError, r"^hidden_dim=0 must be >= 1", id="fit-hidden_dim-0"
    ),
    pytest.param(
        lambda c: fit(c, hidden_dim=-1), ValueError, r"^hidden_dim=-1 must be >= 1", id="fit-hidden_dim-neg"
    ),
    pytest.param(
        lambda c: fit(c, hidden_dim=2.5),
        TypeError,
        r"^hidden_dim=2\.5 must be an integer",
        id="fit-hidden_dim-float",
    ),
    pytest.param(
        lambda c: fit(c, hidden_dim="8"),
        TypeError,
        r"^hidden_dim='8' must be an integer, got str",
        id="fit-hidden_dim-str",
    ),
    pytest.param(
        lambda c: fit(c, hidden_dim=True),
        TypeError,
        r"^hidden_dim=True must be an integer, got bool",
        id="fit-hidden_dim-bool",
    ),
    pytest.param(lambda c: fit(c, epochs=0), ValueError, r"^epochs=0 must be >= 1", id="fit-epochs-0"),
    pytest.param(
        lambda c: fit(c, epochs=True), TypeError, r"^epochs=True must be an integer", id="fit-epochs-bool"
    ),
    pytest.param(lambda c: fit(c, lr=0), ValueError, r"^lr=0 must be > 0", id="fit-lr-0"),
    pytest.param(lambda c: fit(c, lr=-1), ValueError, r"^lr=-1 must be > 0", id="fit-lr-neg"),
    pytest.param(lambda c: fit(c, lr=float("nan")), ValueError, r"^lr=nan must be finite", id="fit-lr-nan"),
    pytest.param(lambda c: fit(c, lr=float("inf")), ValueError, r"^lr=inf must be finite", id="fit-lr-inf"),
    pytest.param(
        lambda c: fit(c, lr="fast"), TypeError, r"^lr='fast' must be a real number, got str", id="fit-lr-str"
    ),
    pytest.param(lambda c: fit(c, batch_size=0), ValueError, r"^batch_size=0 must be >= 1", id="fit-batch-0"),
    pytest.param(
        lambda c: fit(c, batch_size=1),
        ValueError,
        r"^batch_size=1 is not allowed for model='encoder'.*variance.*at least 2",
        id="fit-ours-batch-1",
    ),
    pytest.param(
        lambda c: fit(c, batch_size=500),
        ValueError,
        r"^batch_size=500 is larger than X's 200 samples",
        id="fit-batch-above-X",
    ),
    pytest.param(
        lambda c: fit(c, optimizer="rmsprop"),
        ValueError,
        r"^optimizer='rmsprop' is not allowed; choose one of",
        id="fit-optimizer",
    ),
    pytest.param(
        lambda c: fit(c, device="tpu"), ValueError, r"^device='tpu' is not allowed", id="fit-device"
    ),
    pytest.param(
        lambda c: fit(c, seed=1.5), TypeError, r"^seed=1\.5 must be an integer", id="fit-seed-float"
    ),
    pytest.param(lambda c: fit(c, cache=3), TypeError, r"^cache=3 must be a folder path", id="fit-cache-int"),
    # Dictionary.encode
    pytest.param(
        lambda c: c.fitted["ours"].encode(c.X[:, :32]),
        ValueError,
        r"^X has 32 features; this dictionary was trained on 64",
        id="encode-features",
    ),
    pytest.param(
        lambda c: c.fitted["sae"].encode(c.X.reshape(2, 100, 64)),
        ValueError,
        r"^X must be 2-D.*got shape \(2, 100, 64\)",
        id="encode-3d",
    ),
    pytest.param(
        lambda c: c.fitted["sae"].encode(c.X.tolist()),
        TypeError,
        r"^X must be a NumPy array.*got list",
        id="encode-list",
    ),
    # Dictionary.save
    pytest.param(
        lambda c: c.fitted["sae"].save(c.tmp / "d", format="onnx"),
        ValueError,
        r"^format='onnx' is not allowed",
        id="save-format",
    ),
    pytest.param(
        lambda c: c.fitted["sae"].save(c.tmp / "d", input_scale=0),
        ValueError,
        r"^input_scale=0 must be > 0",
        id="save-input_scale-0",
    ),
    pytest.param(
        lambda c: c.fitted["sae"].save(c.tmp / "d", format="saelens", input_scale=-1),
        ValueError,
        r"^input_scale=-1 must be > 0",
        id="save-input_scale-neg",
    ),
    pytest.param(
        lambda c: c.fitted["sae"].save(a_file(c)),
        OSError,
        r"^path='[^']*a_file' is not a writable folder",
        id="save-path-is-a-file",
    ),
    pytest.param(
        lambda c: c.fitted["sae"].save(None),
        TypeError,
        r"^path=None must be a folder path",
        id="save-path-None",
    ),
    pytest.param(
        lambda c: c.fitted["sae"].save(""), TypeError, r"^path='' must be a folder path", id="save-path-empty"
    ),
    pytest.param(
        lambda c: save_twice(c),
        FileExistsError,
        r"^path='[^']*/d' already holds a dictionary \(config\.json, weights\.safetensors\); "
        r"pass overwrite=True",
        id="save-over-a-dictionary",
    ),
    pytest.param(
        lambda c: save_twice(c, format="saelens"),
        FileExistsError,
        r"^path='[^']*/d' already holds a dictionary.*overwrite=True",
        id="save-saelens-over-a-dictionary",
    ),
    pytest.param(
        lambda c: dataclasses.replace(c.fitted["ours"]).save(c.tmp / "d", format="saelens"),
        ValueError,
        r"^readout_x=None: ours has no decoder",
        id="save-saelens-ours-no-readout_x",
    ),
    pytest.param(
        lambda c: dataclasses.replace(c.fitted["ours"]).save(
            c.tmp / "d", format="saelens", readout_x=c.X[:, :3]
        ),
        ValueError,
        r"^readout_x has 3 features; this dictionary takes 64",
        id="save-saelens-readout_x-features",
    ),
    # es.load: the folder
    pytest.param(lambda c: es.load(None), TypeError, r"^path=None must be a folder path", id="load-None"),
    pytest.param(
        lambda c: es.load(c.tmp / "nope"),
        FileNotFoundError,
        r"^path='[^']*/nope' is not a folder holding a saved dictionary",
        id="load-missing-folder",
    ),
    pytest.param(
        lambda c: es.load(a_file(c)),
        FileNotFoundError,
        r"^path='[^']*/a_file' is not a folder",
        id="load-a-file",
    ),
    pytest.param(
        lambda c: es.load(c.tmp),
        FileNotFoundError,
        r"^path='[^']*' is not a saved dictionary: config\.json is missing",
        id="load-empty-folder",
    ),
    pytest.param(
        lambda c: es.load((saved(c) / "weights.safetensors").unlink() or c.tmp / "ours-encoder-study"),
        FileNotFoundError,
        r"is not a saved dictionary: weights\.safetensors is missing",
        id="load-no-weights",
    ),
    pytest.param(
        lambda c: both_formats(c),
        ValueError,
        r"^path='[^']*' holds two dictionaries, one in each format \(config\.json, weights\.safetensors and "
        r"cfg\.json, sae_weights\.safetensors\)",
        id="load-both-formats",
    ),
    # es.load: config.json
    pytest.param(
        lambda c: load_with_text(c, "config.json", "{kind: ours"),
        ValueError,
        r"/config\.json: not valid JSON",
        id="load-config-not-json",
    ),
    pytest.param(
        lambda c: load_with_text(c, "config.json", b"\xff\xfe\x00garbage"),
        ValueError,
        r"/config\.json: not valid JSON",
        id="load-config-not-utf8",
    ),
    pytest.param(
        lambda c: load_with_text(c, "config.json", "[1, 2]"),
        ValueError,
        r"/config\.json: expected a JSON object, got list",
        id="load-config-list",
    ),
    pytest.param(
        lambda c: load_with_config(c, lambda cfg: cfg.update(format="other/9")),
        ValueError,
        r"/config\.json: format 'other/9' is not 'encoder-study-dictionary/1'",
        id="load-format",
    ),
    pytest.param(
        lambda c: load_with_config(c, lambda cfg: cfg.update(kind="gated")),
        ValueError,
        r"/config\.json: kind='gated' is not allowed",
        id="load-kind",
    ),
    pytest.param(
        lambda c: load_with_config(c, lambda cfg: cfg.update(knobs={"l1": 0.01})),
        ValueError,
        r"/config\.json: kind='ours' does not take l1",
        id="load-knobs-of-another-kind",
    ),
    pytest.param(
        lambda c: load_with_config(c, lambda cfg: cfg.pop("training")),
        ValueError,
        r"/config\.json: the field 'training' is missing",
        id="load-no-training",
    ),
    pytest.param(
        lambda c: load_with_config(c, lambda cfg: cfg["training"].pop("seed")),
        ValueError,
        r"/config\.json: the field 'seed' is missing",
        id="load-no-training-seed",
    ),
    pytest.param(
        lambda c: load_with_config(c, lambda cfg: cfg["training"].update(lr="fast")),
        ValueError,
        r"/config\.json: lr='fast' must be a real number",
        id="load-training-lr-str",
    ),
    pytest.param(
        lambda c: load_with_config(c, lambda cfg: cfg.update(input_dim="64")),
        ValueError,
        r"/config\.json: input_dim='64' must be an integer >= 1",
        id="load-input_dim-str",
    ),
    pytest.param(
        lambda c: load_with_config(c, lambda cfg: cfg.update(dtype="float16")),
        ValueError,
        r"/config\.json: dtype='float16' is not 'float32'",
        id="load-dtype",
    ),
    pytest.param(
        lambda c: load_with_config(c, lambda cfg: cfg.update(hidden_dim=16)),
        ValueError,
        r"/weights\.safetensors: linear\.weight is torch\.float32 \(8, 64\); "
        r"a hidden_dim=16, input_dim=64 model",
        id="load-hidden_dim-tampered",
    ),
    # es.load: weights.safetensors
    pytest.param(
        lambda c: load_with_text(c, "weights.safetensors", b"\x00garbage" * 8),
        ValueError,
        r"/weights\.safetensors: not a readable safetensors file",
        id="load-weights-garbage",
    ),
    pytest.param(
        lambda c: load_with_weights(c, nan_weights),
        ValueError,
        r"/weights\.safetensors: linear\.weight holds NaN or infinite values",
        id="load-weights-nan",
    ),
    pytest.param(
        lambda c: load_with_weights(c, lambda t: {**t, "linear.bias": t["linear.bias"].double()}),
        ValueError,
        r"/weights\.safetensors: linear\.bias is torch\.float64",
        id="load-weights-float64",
    ),
    pytest.param(
        lambda c: load_with_weights(c, lambda t: {"linear.weight": t["linear.weight"]}),
        ValueError,
        r"/weights\.safetensors: its tensors' shapes are not those config\.json records",
        id="load-weights-missing-tensor",
    ),
    # es.load: SAELens's layout
    pytest.param(
        lambda c: load_with_config(c, lambda cfg: cfg["metadata"].pop("encoder_study"), "sae", "cfg.json"),
        ValueError,
        r"^path='[^']*' is a SAELens folder that encoder-study did not write",
        id="load-saelens-foreign",
    ),
    pytest.param(
        lambda c: load_with_config(c, lambda cfg: cfg.update(d_in=63), "sae", "cfg.json"),
        ValueError,
        r"/cfg\.json: d_in=63, but the tensors",
        id="load-saelens-d_in",
    ),
    pytest.param(
        lambda c: load_with_config(c, lambda cfg: cfg.update(d_sae=7), "ours", "cfg.json"),
        ValueError,
        r"/cfg\.json: d_sae=7, but the tensors",
        id="load-saelens-d_sae",
    ),
    pytest.param(
        lambda c: load_with_config(c, lambda cfg: cfg.update(architecture="topk"), "sae", "cfg.json"),
        ValueError,
        r"/cfg\.json: architecture='topk', but",
        id="load-saelens-architecture",
    ),
    pytest.param(
        lambda c: load_with_config(c, lambda cfg: cfg.update(k=5), "topk", "cfg.json"),
        ValueError,
        r"/cfg\.json: k=5, but",
        id="load-saelens-k",
    ),
    pytest.param(
        lambda c: load_with_config(
            c, lambda cfg: cfg["metadata"]["encoder_study"].update(kind="pca"), "sae", "cfg.json"
        ),
        ValueError,
        r"/cfg\.json: metadata\.encoder_study\.kind='pca' is not one of",
        id="load-saelens-kind",
    ),
    # runs.run_experiments
    pytest.param(lambda c: run(c, []), ValueError, r"^configs is empty", id="runs-empty"),
    pytest.param(
        lambda c: run(c, [{"model": "sae"}]),
        TypeError,
        r"^configs must be RunConfig objects; got \['dict'\]",
        id="runs-not-RunConfig",
    ),
    pytest.param(
        lambda c: run(c, [tiny(), tiny()]), ValueError, r"^configs 0 and 1 are the same run", id="runs-twice"
    ),
    pytest.param(
        lambda c: run(c, [tiny(), tiny(seed=2)], init=[None]),
        ValueError,
        r"^init must be a list with one entry .* per config; 2 configs, got a list of 1",
        id="runs-init-length",
    ),
    pytest.param(
        lambda c: run(c, [tiny()], init=[5]),
        TypeError,
        r"^init\[0\] must be None or a dict of tensors.*got int",
        id="runs-init-type",
    ),
    pytest.param(
        lambda c: run(c, [tiny()], executor="spark"),
        ValueError,
        r"^executor='spark' is not allowed",
        id="runs-executor",
    ),
    pytest.param(
        lambda c: run_experiments([tiny()], c.X.tolist(), progress=False),
        TypeError,
        r"^train_x must be a NumPy array",
        id="runs-train_x-list",
    ),
    # RunConfig
    pytest.param(lambda c: tiny(model="gated"), ValueError, r"^model='gated' is not allowed", id="cfg-model"),
    pytest.param(
        lambda c: tiny(model="sae", activation="tanh"),
        ValueError,
        r"^activation='tanh' is not allowed for model='sae'; choose one of 'relu'",
        id="cfg-sae-tanh",
    ),
    pytest.param(
        lambda c: tiny(activation="tanh"),
        ValueError,
        r"^activation='tanh' is not allowed; choose one of",
        id="cfg-encoder-tanh",
    ),
    pytest.param(
        lambda c: tiny(loss={"lse": -1}), ValueError, r"lse=-1 must be >= 0", id="cfg-loss-negative"
    ),
    pytest.param(
        lambda c: tiny(loss={"typo": 1}),
        TypeError,
        r"^loss=\{'typo': 1\}: unknown term\(s\) \['typo'\]; LossConfig takes \['lse'",
        id="cfg-loss-unknown-term",
    ),
    pytest.param(
        lambda c: tiny(loss={"reduction": "median"}),
        ValueError,
        r"^reduction='median' is not allowed",
        id="cfg-reduction",
    ),
    pytest.param(
        lambda c: tiny(loss=5), TypeError, r"^loss must be a LossConfig or a dict.*got int", id="cfg-loss-int"
    ),
    pytest.param(
        lambda c: tiny(model="sae", k=4), ValueError, r"^k=4 is not allowed for model='sae'", id="cfg-sae-k"
    ),
    pytest.param(
        lambda c: tiny(eval_every=0), ValueError, r"^eval_every=0 must be >= 1", id="cfg-eval_every-0"
    ),
]


@pytest.mark.parametrize("call,error,message", REFUSED)
def test_bad_input_is_refused_by_name(c, call, error, message):
    with pytest.raises(error, match=message):
        call(c)


# --- accepted: unusual but valid input, handled correctly --------------------------------------------


def assert_trained(d: es.Dictionary, kind: str) -> None:
    assert d.kind == kind and d.history and math.isfinite(d.history[-1]["total"])
    A = d.encode(np.zeros((3, d.input_dim), np.float32))
    assert A.shape == (3, d.hidden_dim) and np.isfinite(A).all()


def plain(config: RunConfig) -> None:
    """Every number of the config (and its loss) is a plain Python int or float, not a NumPy scalar."""
    numbers = {**dataclasses.asdict(config), **dataclasses.asdict(config.loss), **dict(config.knobs)}
    for name, value in numbers.items():
        if name == "knobs":  # a kind's own knobs, (name, value) pairs: their values are checked above
            continue
        if not isinstance(value, (str, dict)):
            assert type(value) in (int, float), (name, type(value))


def accept_sae_batch_1(c):
    d = fit(c, kind="sae", batch_size=1, X=c.X[:50])  # no variance in its loss: one sample per step is fine
    assert_trained(d, "sae")
    assert d.config.batch_size == 1


def accept_numpy_scalars(c):
    d = fit(c, kind="topk", k=np.int64(2), lr=np.float64(1e-3), hidden_dim=np.int64(HIDDEN), seed=np.int32(4))
    assert_trained(d, "topk")
    plain(d.config)
    assert (d.config.k, d.config.lr, d.config.hidden_dim, d.config.seed) == (2, 1e-3, HIDDEN, 4)
    assert (d.encode(c.X) > 0).sum(1).max() <= 2


def accept_numpy_knobs_and_save_them_as_json(c):
    d = fit(c, lambda_lse=np.float32(2.0), lambda_tc=np.int64(0))
    assert_trained(d, "ours")
    plain(d.config)
    cfg = json.loads((d.save(c.tmp / "d") / "config.json").read_text())
    assert cfg["knobs"] == {"lambda_lse": 2.0, "lambda_var": 1.0, "lambda_tc": 0.0}
    assert es.load(c.tmp / "d").config == dataclasses.replace(d.config, device="auto")


def accept_int_for_float(c):
    d = fit(c, lr=1, lambda_var=2)
    assert_trained(d, "ours")
    assert type(d.config.lr) is float and d.config.lr == 1.0 and type(d.config.loss.var) is float
    sae = fit(c, kind="sae", l1=0)  # an int, and 0: no sparsity penalty is allowed
    assert_trained(sae, "sae")
    assert type(sae.config.l1) is float and sae.config.l1 == 0.0


def accept_tensor_and_float64_data(c):
    d = fit(c, X=torch.from_numpy(c.X.astype(np.float64)), kind="sae", X_test=c.X[:20])
    assert_trained(d, "sae")
    A = d.encode(torch.from_numpy(c.X[:5]))
    assert isinstance(A, torch.Tensor) and A.dtype == torch.float32 and A.shape == (5, HIDDEN)


def accept_batch_size_equal_to_X(c):
    d = fit(c, X=c.X[:64], batch_size=64)
    assert_trained(d, "ours")


def accept_overwrite(c):
    folder = c.fitted["sae"].save(c.tmp / "d")
    c.fitted["topk"].save(folder, overwrite=True)
    assert es.load(folder).kind == "topk"
    c.fitted["sae"].save(folder, format="saelens", overwrite=True)  # one format left, never both
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    assert es.load(folder).kind == "sae"


def accept_identical_config_with_other_seed(c):
    results = run(c, [tiny(), tiny(seed=2)], init=[None, None])
    assert len(results) == 2 and all(math.isfinite(r.history[-1]["total"]) for r in results)


ACCEPTED = [
    pytest.param(accept_sae_batch_1, id="fit-sae-batch-1"),
    pytest.param(accept_numpy_scalars, id="fit-numpy-scalar-k-lr-hidden_dim-seed"),
    pytest.param(accept_numpy_knobs_and_save_them_as_json, id="fit-numpy-knobs-saved-as-json"),
    pytest.param(accept_int_for_float, id="fit-int-lr-and-knobs"),
    pytest.param(accept_tensor_and_float64_data, id="fit-float64-tensor-X"),
    pytest.param(accept_batch_size_equal_to_X, id="fit-batch-equal-to-X"),
    pytest.param(accept_overwrite, id="save-overwrite"),
    pytest.param(accept_identical_config_with_other_seed, id="runs-init-all-None"),
]


@pytest.mark.parametrize("check", ACCEPTED)
def test_unusual_valid_input_is_handled_correctly(c, check):
    check(c)


# --- the command: python -m encoder_study.fit -------------------------------------------------------


def npy(c, array) -> str:
    path = c.tmp / "acts.npy"
    np.save(path, array)
    return str(path)


def text_file(c) -> str:
    path = c.tmp / "acts.npy"
    path.write_text("1,2,3\n4,5,6\n")
    return str(path)


def command(c, acts, *extra) -> list[str]:
    return ["--activations", acts, "--kind", "ours", "--hidden-dim", "8", "--epochs", "1", "--out",
            str(c.tmp / "out"), "--cache", c.cache, *extra]  # fmt: skip


COMMAND = [
    pytest.param(
        lambda c: command(c, str(c.tmp / "missing.npy")),
        r"--activations \S*missing\.npy: no such file",
        id="cmd-missing-file",
    ),
    pytest.param(
        lambda c: command(c, text_file(c)), r"--activations \S*acts\.npy: not a \.npy", id="cmd-not-npy"
    ),
    pytest.param(
        lambda c: command(c, npy(c, c.X[0])),
        r"--activations \S*acts\.npy: expected a 2-D.*got shape \(64,\)",
        id="cmd-1d",
    ),
    pytest.param(
        lambda c: command(c, npy(c, (c.X * 16).astype(np.int32))),
        r"--activations \S*: dtype int32 is not floating",
        id="cmd-int32",
    ),
    pytest.param(
        lambda c: command(c, npy(c, np.where(np.arange(200)[:, None] == 7, np.nan, c.X))),
        r"--activations \S*: row 7 holds NaN",
        id="cmd-nan-row",
    ),
    pytest.param(
        lambda c: command(c, npy(c, c.X), "--l1", "0.1"),
        r"--kind ours does not take --l1",
        id="cmd-knob-of-sae",
    ),
    pytest.param(
        lambda c: command(c, npy(c, c.X), "--heldout-rows", "1"),
        r"--heldout-rows 1 must be between 2 and 198",
        id="cmd-heldout-rows",
    ),
    pytest.param(
        lambda c: command(c, npy(c, c.X), "--kind", "gated"),
        r"argument --kind: invalid choice: 'gated'",
        id="cmd-kind",
    ),
    pytest.param(
        lambda c: command(c, npy(c, c.X), "--hidden-dim", "2.5"),
        r"argument --hidden-dim: invalid int value: '2\.5'",
        id="cmd-hidden-dim-float",
    ),
    pytest.param(
        lambda c: command(c, npy(c, c.X), "--hidden-dim", "0"),
        r"^error: --hidden-dim 0\b",
        id="cmd-hidden-dim-0",
    ),
]


@pytest.mark.parametrize("argv,message", COMMAND)
def test_the_command_refuses_bad_input_by_name(c, argv, message, capsys):
    from encoder_study.interface.cli import main

    try:
        status = main(argv(c))
    except SystemExit as e:  # argparse's own refusals
        status = e.code
    assert status == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (c.tmp / "out").exists()  # refused before anything is trained or written


# --- scripts/run_book.py: the parameter files -------------------------------------------------------

THEOREM = "01_verify_theorem.yaml"  # the cheap notebook: --only 01


def run_book(c, change: str | None) -> tuple[subprocess.CompletedProcess, Path]:
    """run_book.py --only 01 on a copy of params/smoke whose 01 file ``change`` replaces (None: a
    --params folder that does not exist); always --out under the test's folder."""
    params = c.tmp / "params"
    if change is not None:
        shutil.copytree(ROOT / "params" / "smoke", params)
        (params / THEOREM).write_text(change.replace("TMP", str(c.tmp)))
    r = subprocess.run(
        [
            sys.executable,
            "scripts/run_book.py",
            "--params",
            str(params),
            "--only",
            "01",
            "--out",
            str(c.tmp / "out"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return r, params


BOOK = [
    pytest.param(None, [r"--params \S*params: no such folder"], id="book-params-missing"),
    pytest.param(
        "seed: 0\nbatch: 16\ncomponents: 8\ntypo: 3\n",
        [r"unknown parameter\(s\) \['typo'\]", THEOREM],
        id="book-unknown-parameter",
    ),
    pytest.param(
        "seed: 0\nbatch: '16'\ncomponents: 8\n",
        [r"parameter batch='16' has type str; expected int", THEOREM],
        id="book-wrong-type",
    ),
    pytest.param("seed: [0, 1\n", [THEOREM + ": not valid YAML"], id="book-not-yaml"),
    pytest.param(
        "seed: !!python/object/apply:os.system ['touch TMP/executed']\n",
        [THEOREM + r": not valid YAML.*python/object/apply:os\.system"],
        id="book-python-object-tag",
    ),
]


@pytest.mark.parametrize("change,messages", BOOK)
def test_run_book_refuses_bad_parameter_files_by_name(c, change, messages):
    r, params = run_book(c, change)
    assert r.returncode != 0
    for message in messages:
        assert re.search(message, r.stderr), (message, r.stderr[-2000:])
    assert not (c.tmp / "executed").exists()  # a YAML tag is refused, never run
