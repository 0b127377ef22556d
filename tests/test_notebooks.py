"""The book in smoke mode: every notebook runs through papermill into a temporary folder, with
the contract of its results tables checked. The committed record is never touched."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
CONTRACT = {
    "01_verify_theorem": ["dtype", "n_points", "max_abs_error", "mean_abs_error", "correlation"],
    "02_ablation": ["config", "seed", "dead_units", "redundancy", "weight_redundancy", "effective_rank",
                    "responsibility_entropy", "l0"],
    "03_benchmark": ["model", "seed", "probe_accuracy", "l0", "n_params", "fvu", "train_seconds"],
    "04_dynamics": ["optimizer", "lr", "seed", "final_loss", "probe_accuracy", "epoch_90pct_decrease"],
    "05_llm_activations": ["model", "hidden_dim", "input_dim", "seed", "l0", "fvu", "dead_fraction",
                           "ce_loss_recovered"],
    "06_mnist_frontier": ["model", "knob", "knob_value", "seed", "probe_accuracy", "l0", "fvu"],
}
FIGURES = {"01_verify_theorem": ["fig1_theorem"], "02_ablation": ["fig2_ablation"],
           "03_benchmark": ["fig3_benchmark", "fig4_features"], "04_dynamics": ["fig5_dynamics"],
           "05_llm_activations": ["fig6_llm_frontier"], "06_mnist_frontier": ["fig7_mnist_frontier"]}


@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    before = {p: p.stat().st_mtime for p in (ROOT / "executed").rglob("*") if p.is_file()}
    env = {**os.environ, "ENCODER_STUDY_FRESH": "1"}  # smoke runs train, never reuse stale results
    subprocess.run([sys.executable, str(ROOT / "scripts" / "run_book.py"), "--params", "params/smoke",
                    "--out", str(out)], check=True, cwd=ROOT, env=env, capture_output=True)
    after = {p: p.stat().st_mtime for p in (ROOT / "executed").rglob("*") if p.is_file()}
    assert before == after, "the smoke run touched the committed record"
    return out


def test_every_notebook_has_a_contract():
    assert set(NOTEBOOKS) <= set(CONTRACT), f"add {set(NOTEBOOKS) - set(CONTRACT)} to CONTRACT"
    assert {"01_verify_theorem", "02_ablation", "03_benchmark"} <= set(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_smoke_notebook(smoke_book, name):
    nb = nbformat.read(smoke_book / f"{name}.ipynb", as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors[:1]
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    df = pd.read_csv(smoke_book / name / "metrics.csv")
    assert set(CONTRACT[name]) <= set(df.columns), set(CONTRACT[name]) - set(df.columns)
    finished = df[df["diverged_epoch"].isna()] if "diverged_epoch" in df else df  # a diverged run has no probe
    assert len(finished) > 0 and finished[CONTRACT[name]].notna().all().all()
    info = json.loads((smoke_book / name / "run_info.json").read_text())
    assert {"parameters", "environment", "durations_s"} <= set(info)
    assert 0.1 < info["peak_memory_gib"] < 8  # the kernel's own peak RSS, in GiB
    assert info["environment"]["packages"]["torch"].startswith("2.13.0")
    for fig in FIGURES[name]:
        for ext in ("pdf", "png"):
            assert (smoke_book / "figures" / f"{fig}.{ext}").stat().st_size > 1000


def test_theorem_numbers_in_smoke(smoke_book):
    df = pd.read_csv(smoke_book / "01_verify_theorem" / "metrics.csv").set_index("dtype")
    assert df.loc["float64", "max_abs_error"] < 1e-12 and df.loc["float32", "max_abs_error"] < 1e-6
    assert df.loc["float32", "correlation"] > 0.9999


def test_llm_smoke_matches_topk_to_ours_sparsity(smoke_book):
    df = pd.read_csv(smoke_book / "05_llm_activations" / "metrics.csv")
    assert {"ours", "topk", "sae"} <= set(df.model) and (df.hidden_dim > df.input_dim).any()  # one overcomplete
    for h, g in df.groupby("hidden_dim"):
        ours_l0 = g[(g.model == "ours") & (g.lambda_lse == 1.0)].l0.mean()  # the paper's lambdas
        assert round(ours_l0) in set(g[g.model == "topk"].k), (h, ours_l0)
    assert df.ce_loss_recovered.between(-5, 1.0).all()
    refs = pd.read_csv(smoke_book / "05_llm_activations" / "ce_references.csv").set_index("reference")
    assert refs.loc["zero ablation", "ce"] > refs.loc["clean", "ce"]


def _run(name, tmp_path, params):
    pm.execute_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"), str(tmp_path / "out.ipynb"),
                        parameters={"results_dir": str(tmp_path / "r"), "figures_dir": str(tmp_path / "f"), **params},
                        cwd=str(ROOT), kernel_name="python3", progress_bar=False)


def test_unknown_parameter_fails_by_name(tmp_path, smoke_book):
    with pytest.raises(pm.PapermillExecutionError, match="unknown parameter.*'epoch'"):
        _run("01_verify_theorem", tmp_path, {"epoch": 3})


def test_wrong_parameter_type_fails_by_name(tmp_path, smoke_book):
    with pytest.raises(pm.PapermillExecutionError, match="parameter batch='many'"):
        _run("01_verify_theorem", tmp_path, {"batch": "many"})


def test_py_and_ipynb_are_paired():
    for name in NOTEBOOKS:
        ipynb = ROOT / "notebooks" / f"{name}.ipynb"
        assert ipynb.exists(), f"{ipynb} missing: run jupytext --sync notebooks/{name}.py"
        code_py = [c for c in (ROOT / "notebooks" / f"{name}.py").read_text().split("# %%") if c.strip()]
        nb = nbformat.read(ipynb, as_version=4)
        assert len(nb.cells) == len(code_py) - 1  # the jupytext header is not a cell


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_jupyterlab_opens_py_notebook_as_notebook(tmp_path):
    port = _free_port()
    jupyter = Path(sys.executable).parent / "jupyter"
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([str(jupyter), "server", "--no-browser", "--allow-root", f"--port={port}",
                             "--ip=127.0.0.1", "--IdentityProvider.token=testtoken", f"--ServerApp.root_dir={ROOT}"],
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path)})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy
    try:
        url = f"http://127.0.0.1:{port}/api/contents/notebooks/01_verify_theorem.py?type=notebook&content=1"
        req = urllib.request.Request(url, headers={"Authorization": "token testtoken"})
        model = None
        for _ in range(120):
            if proc.poll() is not None:
                break
            try:
                with opener.open(req, timeout=5) as r:
                    model = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.5)
        if proc.poll() is not None or model is None:
            pytest.fail("jupyter server did not answer:\n" + (tmp_path / "server.log").read_text()[-2000:])
        assert model["type"] == "notebook"
        cells = model["content"]["cells"]
        assert any("parameters" in c["metadata"].get("tags", []) for c in cells)
        assert cells[0]["cell_type"] == "markdown"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
