"""``python -m encoder_study.fit`` on an array file: trains, scores the held-out rows, writes a
SAELens folder that loads back to the same features; bad input is named, in one ``error:`` line
with exit status 2, before any work."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import encoder_study as es
from encoder_study.interface import cli
from encoder_study.interface.cli import load_activations, main

ROOT = Path(__file__).resolve().parent.parent


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
            "--heldout-rows 9 must be between 2 and 8 (the array has 10 rows)",
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


# Every user error is one line on stderr, exit status 2, before any work (tiny arrays: 40 x 3).


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.npy"
    np.save(path, np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32))
    return path


@pytest.fixture
def no_fit(monkeypatch):
    """fit replaced by a stand-in that fails the test if it is ever called."""

    def fail(*args, **kwargs):
        raise AssertionError("fit was called: a refused command must not train")

    monkeypatch.setattr(cli, "fit", fail)


def _args(path, tmp_path, kind="sae", *extra):
    return [
        "--activations",
        str(path),
        "--kind",
        kind,
        "--hidden-dim",
        "4",
        "--epochs",
        "1",
        "--batch-size",
        "10",
        "--heldout-rows",
        "10",
        "--out",
        str(tmp_path / "out"),
        "--cache",
        str(tmp_path / "runs"),
        *extra,
    ]


def _refused(capsys, tmp_path) -> str:
    """The single stderr line of a refusal (nothing written); its text after ``error: ``."""
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()
    return err[len("error: ") :]


@pytest.mark.parametrize(
    "kind,extra,message",
    [
        (
            "topk",
            [],
            "--kind topk needs --k (active latents per sample): an integer from 1 to --hidden-dim (4)",
        ),
        ("batchtopk", [], "--kind batchtopk needs --k"),
        ("topk", ["--k", "5"], "--k 5 is not allowed: --kind topk takes 1 <= k <= --hidden-dim (4)"),
        (
            "batchtopk",
            ["--k", "0"],
            "--k 0 is not allowed: --kind batchtopk takes 1 <= k <= --hidden-dim (4)",
        ),
        ("sae", ["--k", "2"], "--kind sae does not take --k; its knobs: --l1"),
        ("sae", ["--hidden-dim", "0"], "--hidden-dim 0 is not allowed: give an integer >= 1"),
        ("sae", ["--epochs", "0"], "--epochs 0 is not allowed: give an integer >= 1"),
        ("sae", ["--batch-size", "-2"], "--batch-size -2 is not allowed: give an integer >= 1"),
        ("ours", ["--batch-size", "1"], "--batch-size 1 is not allowed: --kind ours takes a variance over"),
        ("sae", ["--lr", "0"], "--lr 0.0 is not allowed: give a finite number > 0"),
        ("sae", ["--lr=-1e-3"], "--lr -0.001 is not allowed: give a finite number > 0"),
        ("sae", ["--lr", "nan"], "--lr nan is not allowed: give a finite number > 0"),
        ("sae", ["--lr", "inf"], "--lr inf is not allowed: give a finite number > 0"),
        ("ours", ["--lambda-lse", "-1"], "--lambda-lse -1.0 is not allowed: give a finite number >= 0"),
        ("sae", ["--l1", "nan"], "--l1 nan is not allowed: give a finite number >= 0"),
        ("sae", ["--seed", str(10**13)], "--seed 10000000000000 is not allowed: give an integer from -1,000"),
        ("ours", ["--readout-samples", "0"], "--readout-samples 0 is not allowed: give an integer >= 1"),
        ("ours", ["--readout-samples", "-5"], "--readout-samples -5 is not allowed"),
        ("sae", ["--heldout-rows", "1"], "--heldout-rows 1 must be between 2 and 38 (the array has 40 rows)"),
        (
            "sae",
            ["--heldout-rows", "39"],
            "--heldout-rows 39 must be between 2 and 38 (the array has 40",
        ),
        (
            "sae",
            ["--batch-size", "31"],
            "--batch-size 31 is not allowed: it is larger than the 30 training rows (40 rows, 10 held out)",
        ),
        (
            "ours",
            ["--batch-size", "29"],
            "--batch-size 29 is not allowed: the 30 training rows would leave a last",
        ),
    ],
)
def test_a_flag_out_of_range_is_named_before_any_work(small, tmp_path, capsys, no_fit, kind, extra, message):
    assert main(_args(small, tmp_path, kind, *extra)) == 2  # a later flag overrides _args' own
    assert message in _refused(capsys, tmp_path)


def test_the_default_split_of_a_small_array_is_named(tmp_path, capsys, no_fit):
    np.save(tmp_path / "x.npy", np.ones((12, 3), np.float32))
    args = ["--activations", str(tmp_path / "x.npy"), "--kind", "sae", "--hidden-dim", "4"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    assert "the default (a tenth of the rows, at most 65,536: 1) is too few" in _refused(capsys, tmp_path)


def test_cuda_without_a_gpu_is_refused_before_the_data_are_read(small, tmp_path, capsys, no_fit, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cli, "load_activations", lambda path: pytest.fail("the data were read"))
    assert main(_args(small, tmp_path, "sae", "--device", "cuda")) == 2
    message = _refused(capsys, tmp_path)
    assert message.startswith("--device cuda is not allowed: torch.cuda.is_available() is False")
    assert "use --device cpu or --device auto" in message


def test_an_out_that_is_a_file_is_refused(small, tmp_path, capsys, no_fit):
    (tmp_path / "file").write_text("not a folder")
    assert main([*_args(small, tmp_path), "--out", str(tmp_path / "file")]) == 2
    assert f"--out {tmp_path / 'file'} is not allowed: it is a file" in _refused(capsys, tmp_path)
    assert main([*_args(small, tmp_path), "--out", str(tmp_path / "file" / "d")]) == 2
    assert f"{tmp_path / 'file'} is a file, so the folder cannot be created" in _refused(capsys, tmp_path)


@pytest.mark.parametrize("exists", [True, False])
def test_an_out_that_is_not_writable_is_refused_without_a_probe_file(
    small, tmp_path, capsys, no_fit, monkeypatch, exists
):
    locked = tmp_path / "locked"
    locked.mkdir()
    out = locked if exists else locked / "new" / "d"
    real = os.access
    monkeypatch.setattr(cli.os, "access", lambda path, mode: Path(path) != locked and real(path, mode))
    assert main([*_args(small, tmp_path), "--out", str(out)]) == 2
    message = _refused(capsys, tmp_path)
    assert f"--out {out} is not allowed: " in message and "is not writable (permission denied)" in message
    assert (exists or f"{locked}, where it would be created," in message) and list(locked.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes to any folder")
def test_a_read_only_folder_is_refused(small, tmp_path, capsys, no_fit):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        assert main([*_args(small, tmp_path), "--out", str(locked / "d")]) == 2
        assert "is not writable (permission denied)" in _refused(capsys, tmp_path)
    finally:
        locked.chmod(0o755)


def test_a_cache_that_is_a_file_is_refused(small, tmp_path, capsys, no_fit):
    (tmp_path / "file").write_text("not a folder")
    assert main([*_args(small, tmp_path), "--cache", str(tmp_path / "file")]) == 2
    assert f"--cache {tmp_path / 'file'} is not allowed: it is a file" in _refused(capsys, tmp_path)


def test_an_out_that_holds_a_dictionary_is_refused_unless_overwrite(small, tmp_path, capsys, monkeypatch):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "cfg.json").write_text("{}")
    calls = []

    def diverging(*args, **kwargs):  # stops the command right after its checks
        calls.append(kwargs)
        raise FloatingPointError("training diverged at epoch 1: stand-in; try a smaller lr (lr=0.001)")

    monkeypatch.setattr(cli, "fit", diverging)
    assert main(_args(small, tmp_path)) == 2
    err = capsys.readouterr().err
    assert (
        "--out" in err and "it already holds a dictionary (cfg.json); give --overwrite" in err and not calls
    )
    assert main(_args(small, tmp_path, "sae", "--overwrite")) == 1 and len(calls) == 1


def test_a_diverged_run_is_one_line_with_exit_status_1(small, tmp_path, capsys, monkeypatch):
    def diverging(*args, **kwargs):
        raise FloatingPointError("training diverged at epoch 1: loss 1e+30 above its bound; try a smaller lr")

    monkeypatch.setattr(cli, "fit", diverging)
    assert main(_args(small, tmp_path)) == 1
    err = capsys.readouterr().err
    assert err == "error: training diverged at epoch 1: loss 1e+30 above its bound; try a smaller lr\n"
    assert not (tmp_path / "out").exists()


def test_what_only_the_run_config_refuses_is_reported_too(small, tmp_path, capsys, no_fit, monkeypatch):
    def refusing(*args, **kwargs):
        raise TypeError("kind='sae' does not take something")

    monkeypatch.setattr(cli, "run_config_for", refusing)
    assert main(_args(small, tmp_path)) == 2
    assert _refused(capsys, tmp_path) == "kind='sae' does not take something\n"


def test_held_out_rows_without_variance_give_null_fvu_with_the_reason_and_a_negative_seed_trains(
    tmp_path, capsys
):
    X = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    X[-10:] = 0.0  # every held-out row the same: FVU divides by zero
    np.save(tmp_path / "x.npy", X)
    assert main(_args(tmp_path / "x.npy", tmp_path, "ours", "--seed", "-3")) == 0
    text = (tmp_path / "out" / "heldout_metrics.json").read_text()
    scores = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in strict JSON"))
    assert scores["fvu"] is None and "zero variance" in scores["fvu_undefined_because"]
    assert 0 <= scores["l0"] <= 4 and scores["train_seconds"] > 0
    out = capsys.readouterr().out
    assert "FVU undefined (the held-out rows have zero variance" in out and "nan" not in out.lower()


def test_every_flag_has_help_that_names_its_default():
    p = cli.parser()
    formatter = p._get_formatter()
    for action in p._actions:
        if action.dest == "help":
            continue
        text = formatter._get_help_string(action) or ""
        assert "default" in text or "required" in text, action.option_strings
    assert "passes over the training rows, >= 1 (default: 5)" in " ".join(p.format_help().split())


@pytest.mark.parametrize(
    "argv0,prog",
    [
        ("/venv/bin/encoder-study-fit", "encoder-study-fit"),
        ("/repo/encoder_study/fit.py", "python -m encoder_study.fit"),
        ("", "python -m encoder_study.fit"),
    ],
)
def test_the_usage_names_the_command_typed(monkeypatch, argv0, prog):
    monkeypatch.setattr(sys, "argv", [argv0])
    assert cli.parser().prog == prog


def test_the_console_script_names_itself(tmp_path):
    script = Path(sys.executable).parent / "encoder-study-fit"
    if not script.exists():
        pytest.skip("the console script is not installed beside this Python")
    out = subprocess.run([str(script), "--kind", "pca"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.startswith("usage: encoder-study-fit")
