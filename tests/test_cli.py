"""``python -m encoder_study.fit`` on an array file: trains, scores the held-out rows, writes a
SAELens folder that loads back to the same features; bad input is named."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import encoder_study as es
from encoder_study.cli import load_activations, main

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def acts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("acts")
    X = (load_digits().data / 16.0).astype(np.float32)
    np.save(folder / "acts.npy", X)
    return folder / "acts.npy", X


@pytest.mark.parametrize(
    "kind,knob",
    [
        ("ours", ["--lambda-lse", "2"]),
        ("sae", ["--l1", "0.05"]),
        ("topk", ["--k", "4"]),
        ("batchtopk", ["--k", "4"]),
    ],
)
def test_command_trains_scores_and_writes_a_folder_that_loads_to_the_same_features(
    acts, tmp_path, kind, knob, capsys
):
    path, X = acts
    cache = tmp_path / "runs"
    args = [
        "--activations",
        str(path),
        "--kind",
        kind,
        "--hidden-dim",
        "16",
        "--epochs",
        "2",
        "--batch-size",
        "128",
    ]
    args += ["--heldout-rows", "197", "--out", str(tmp_path / "d"), "--cache", str(cache), *knob]
    assert main(args) == 0
    assert "held out (197 rows)" in capsys.readouterr().out
    scores = json.loads((tmp_path / "d" / "heldout_metrics.json").read_text())
    assert scores["fvu"] > 0 and 0 < scores["l0"] <= 16 and 0 <= scores["dead_fraction"] <= 1
    loaded = es.load(tmp_path / "d")
    # the same run again through the API (the run cache hands back the command's run)
    knobs = {"ours": {"lambda_lse": 2.0}, "sae": {"l1": 0.05}, "topk": {"k": 4}, "batchtopk": {"k": 4}}[kind]
    same = es.fit(
        X[:-197],
        kind=kind,
        hidden_dim=16,
        epochs=2,
        seed=1,
        batch_size=128,
        X_test=X[-197:],
        cache=cache,
        progress=False,
        **knobs,
    )
    assert np.array_equal(loaded.encode(X), same.encode(X))
    # the held-out FVU, recomputed here in float64 from the loaded folder
    A = torch.from_numpy(loaded.encode(X[-197:])).double()
    held = torch.from_numpy(X[-197:]).double()
    if kind == "ours":
        x_hat = torch.cat([A, torch.ones(len(A), 1, dtype=torch.float64)], 1) @ loaded.readout.double()
    else:
        with torch.no_grad():
            x_hat = loaded.model().double()(held)[0]
    expected = float(((held - x_hat) ** 2).sum() / ((held - held.mean(0)) ** 2).sum())
    assert scores["fvu"] == pytest.approx(expected, rel=1e-4)


def test_a_float32_file_is_trained_on_in_place(acts):
    path, X = acts
    mapped = load_activations(path)
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, X)
    assert torch.from_numpy(mapped).data_ptr() == mapped.ctypes.data  # no copy on the way to torch


def test_other_float_types_are_converted(acts, tmp_path):
    _, X = acts
    np.save(tmp_path / "x64.npy", X.astype(np.float64))
    loaded = load_activations(tmp_path / "x64.npy")
    assert loaded.dtype == np.float32 and np.array_equal(loaded, X)


@pytest.mark.parametrize(
    "make,extra,message",
    [
        (None, [], "no such file"),
        (lambda: np.ones(10, np.float32), [], "expected a 2-D"),
        (lambda: np.ones((10, 3), np.int64), [], "not floating point"),
        (
            lambda: np.where(np.arange(30).reshape(10, 3) == 13, np.nan, 1.0).astype(np.float32),
            [],
            "row 4 holds NaN",
        ),
        (lambda: np.ones((10, 3), np.float32), ["--k", "3"], "--kind ours does not take --k"),
        (
            lambda: np.ones((10, 3), np.float32),
            ["--heldout-rows", "9"],
            "--heldout-rows 9 must be between 2 and 8",
        ),
    ],
)
def test_bad_input_is_named(tmp_path, capsys, make, extra, message):
    path = tmp_path / "bad.npy"
    if make is not None:
        np.save(path, make())
    args = [
        "--activations",
        str(path),
        "--kind",
        "ours",
        "--hidden-dim",
        "4",
        "--out",
        str(tmp_path / "o"),
        *extra,
    ]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_unknown_kind_is_refused_by_name(acts, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--activations", str(acts[0]), "--kind", "pca", "--hidden-dim", "4", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "invalid choice: 'pca'" in capsys.readouterr().err


def test_module_runs_from_the_command_line(acts, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "encoder_study.fit",
            "--activations",
            str(acts[0]),
            "--kind",
            "sae",
            "--hidden-dim",
            "8",
            "--epochs",
            "1",
            "--batch-size",
            "128",
            "--out",
            str(tmp_path / "d"),
            "--cache",
            str(tmp_path / "runs"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "SAELens layout" in out.stdout and (tmp_path / "d" / "sae_weights.safetensors").exists()
