"""The book in smoke mode: every notebook runs through papermill into a temporary folder, with
the contract of its results tables checked. The committed record is never touched. Also: the
record as a reader meets it (figures inside, little progress noise, an offline HTML book), and
that JupyterLab and plain papermill leave the repository as they found it."""

import csv
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jupytext
import nbformat
import numpy as np
import pandas as pd
import papermill as pm
import pytest
import yaml
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
CONTRACT = {
    "01_verify_theorem": ["dtype", "n_points", "max_abs_error", "mean_abs_error", "correlation"],
    "02_ablation": [
        "config",
        "seed",
        "dead_units",
        "redundancy",
        "weight_redundancy",
        "effective_rank",
        "responsibility_entropy",
        "l0",
        "probe_accuracy",
    ],
    "03_benchmark": ["model", "seed", "probe_accuracy", "l0", "n_params", "fvu", "train_seconds"],
    "04_dynamics": ["optimizer", "lr", "seed", "final_loss", "probe_accuracy", "epoch_90pct_decrease"],
    "05_llm_activations": [  # columns every finished run has (the decoder's and the splice's: see below)
        "model",
        "hidden_dim",
        "seed",
        "lr",
        "knob",
        "knob_value",
        "l0",
        "fvu_readout",
        "dead_fraction",
        "dense_fraction_10pct",
        "dense_fraction_1pct",
        "l2_ratio_readout",
        "tokens_seen",
        "seconds_per_run",
    ],
    "06_mnist_frontier": [
        "model",
        "knob",
        "knob_value",
        "seed",
        "lr",
        "probe_accuracy",
        "l0",
        "fvu",
        "readout_fvu",
        "seconds_per_run",
    ],
    "07_controls": ["model", "hidden_dim", "seed", "probe_accuracy", "l0", "fvu", "fit_seconds", "n_params"],
    "08_hybrids": {  # columns that may be empty by design (fvu of an encoder-only phase) are checked below
        "metrics": ["condition", "seed", "phase", "l2_distance", "cosine_similarity", "probe_accuracy", "l0"],
        "activation_sign": [
            "model",
            "activation",
            "seed",
            "l0",
            "probe_accuracy",
            "template_corr_activation",
        ],
    },
    "09_identifiability": {  # a notebook without a metrics.csv names its tables
        "recovery": ["model", "setting", "seed", "n_components", "input_dim", "mcc", "mean_best_cosine"],
        "stability": ["data", "model", "seed_a", "seed_b", "mean_matched_cosine", "share_above_0_9"],
    },
    "10_is_it_em": {
        "metrics": [
            "model",
            "seed",
            "probe_accuracy",
            "l0_any",
            "silent_share",
            "norm_growth",
            "final_param_change",
        ],
        "curves": ["model", "seed", "epoch", "lse", "var", "tc", "param_norm", "param_change"],
        "scale_slope": ["seed", "measured_slope", "formula_slope", "r_a_per_sample"],
        "em_agreement": ["model", "energy", "nmi_soft", "nmi_soft_lo", "nmi_soft_hi", "nmi_hard"],
    },
}
FIGURES = {
    "01_verify_theorem": ["fig1_theorem"],
    "02_ablation": ["fig2_ablation"],
    "03_benchmark": ["fig3_benchmark", "fig4_features"],
    "04_dynamics": ["fig5_dynamics"],
    "05_llm_activations": [
        "fig6_llm_frontier",
        "fig6b_llm_frontier_readout",
        "fig11_llm_features",
        "fig13_lse_rule",
    ],
    "06_mnist_frontier": ["fig7_mnist_frontier"],
    "07_controls": ["fig8_controls"],
    "08_hybrids": ["fig9_hybrids", "fig12_activation_sign"],
    "09_identifiability": ["fig10_recovery"],
    "10_is_it_em": ["fig14_scale_direction", "fig15_responsibilities", "fig16_explicit_em"],
}


@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    before = {p: p.stat().st_mtime for p in (ROOT / "executed").rglob("*") if p.is_file()}
    env = {**os.environ, "ENCODER_STUDY_FRESH": "1"}  # smoke runs train, never reuse stale results
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "run_book.py"),
            "--params",
            "params/smoke",
            "--out",
            str(out),
        ],
        check=True,
        cwd=ROOT,
        env=env,
        capture_output=True,
    )
    after = {p: p.stat().st_mtime for p in (ROOT / "executed").rglob("*") if p.is_file()}
    assert before == after, "the smoke run touched the committed record"
    return out


def test_every_notebook_has_a_contract():
    assert set(NOTEBOOKS) <= set(CONTRACT), f"add {set(NOTEBOOKS) - set(CONTRACT)} to CONTRACT"
    assert {"01_verify_theorem", "02_ablation", "03_benchmark"} <= set(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_smoke_notebook(smoke_book, name):
    nb = nbformat.read(smoke_book / f"{name}.ipynb", as_version=4)
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"
    ]
    assert not errors, errors[:1]
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    tables = CONTRACT[name] if isinstance(CONTRACT[name], dict) else {"metrics": CONTRACT[name]}
    for table, columns in tables.items():
        df = pd.read_csv(smoke_book / name / f"{table}.csv")
        assert set(columns) <= set(df.columns), (table, set(columns) - set(df.columns))
        # a diverged run has no probe
        finished = df[df["diverged_epoch"].isna()] if "diverged_epoch" in df else df
        assert len(finished) > 0 and finished[columns].notna().all().all(), table
    info = json.loads((smoke_book / name / "run_info.json").read_text())
    assert {"parameters", "environment", "durations_s"} <= set(info)
    assert 0.1 < info["peak_memory_gib"] < 8  # the kernel's own peak RSS, in GiB
    assert info["environment"]["packages"]["torch"].startswith("2.13.0")
    for fig in FIGURES[name]:
        for ext in ("pdf", "png"):
            assert (smoke_book / "figures" / f"{fig}.{ext}").stat().st_size > 1000
    images, stderr = _outputs(nb)
    assert images >= len(FIGURES[name]), f"{name}: {images} image outputs for figures {FIGURES[name]}"
    assert stderr <= MAX_STDERR_OUTPUTS


def _outputs(nb) -> tuple[int, int]:
    """(image outputs, stderr outputs) of an executed notebook."""
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    images = sum("image/png" in o.get("data", {}) for o in outs)
    stderr = sum(o.output_type == "stream" and o.name == "stderr" for o in outs)
    return images, stderr


MAX_STDERR_OUTPUTS = 30  # progress is one in-place output per bar; warnings may add a few


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_record_has_its_figures_inside_and_little_noise(name):
    nb = nbformat.read(ROOT / "executed" / f"{name}.ipynb", as_version=4)
    images, stderr = _outputs(nb)
    assert images >= len(FIGURES[name]) and stderr <= MAX_STDERR_OUTPUTS, (images, stderr)


def test_theorem_numbers_in_smoke(smoke_book):
    df = pd.read_csv(smoke_book / "01_verify_theorem" / "metrics.csv").set_index("dtype")
    assert df.loc["float64", "max_abs_error"] < 1e-12 and df.loc["float32", "max_abs_error"] < 1e-6
    assert df.loc["float32", "correlation"] > 0.9999


def test_hybrids_smoke_has_every_condition_phase_and_sign(smoke_book):
    df = pd.read_csv(smoke_book / "08_hybrids" / "metrics.csv")
    phases = df.groupby("condition").phase.unique().to_dict()
    assert set(phases) == {"sae", "pretrain_then_sae", "sae_plus_infomax", "alternating"}
    assert {"1: sae", "2: lse_infomax", "3: sae", "total"} == set(phases["alternating"])
    sae_phases = df[df.phase.str.contains("sae") | (df.phase == "total")]
    assert sae_phases.fvu.notna().all() and df[df.phase.str.contains("lse_infomax")].fvu.isna().all()
    assert (df[df.condition == "sae_plus_infomax"].infomax_weight > 0).all()
    assert df.cosine_similarity.between(-1 - 1e-9, 1 + 1e-9).all() and (df.l2_distance > 0).all()
    assert not df.diverged.any()  # the hybrid's large LSE sums are not mistaken for divergence
    sign = pd.read_csv(smoke_book / "08_hybrids" / "activation_sign.csv")
    assert set(zip(sign.model, sign.activation)) == {
        (m, a) for m in ("ours", "sae") for a in ("relu", "neg_relu")
    }
    assert sign[sign.activation == "neg_relu"].matched_cosine_to_relu.between(-1, 1).all()


def test_identifiability_smoke_covers_every_model_setting_and_pair(smoke_book):
    rec = pd.read_csv(smoke_book / "09_identifiability" / "recovery.csv")
    params = yaml.safe_load((ROOT / "params" / "smoke" / "09_identifiability.yaml").read_text())
    for setting, g in rec.groupby("setting"):
        assert set(g.model) == {"ours", "sae", "topk", "sparse_coding"}, setting
        assert (g.groupby("model").seed.nunique() == len(params["seeds"])).all(), setting
    assert rec.mcc.between(0, 1).all() and rec.mean_best_cosine.between(0, 1 + 1e-9).all()
    st = pd.read_csv(smoke_book / "09_identifiability" / "stability.csv")
    assert set(st.data) == {"mnist", "llm"} and set(st.model) == {"ours", "sae", "topk"}
    assert (st.seed_a < st.seed_b).all() and st.share_above_0_9.between(0, 1).all()
    assert st.mean_matched_cosine.between(-1 - 1e-9, 1 + 1e-9).all()


def test_controls_smoke_has_every_method_and_the_em_comparison(smoke_book):
    df = pd.read_csv(smoke_book / "07_controls" / "metrics.csv")
    assert set("ours sae topk pca pca_relu random kmeans gmm gmm_log sparse_coding ica nmf".split()) <= set(
        df.model
    )
    assert (df.hidden_dim == 64).all() and df.probe_accuracy.between(0, 1).all()
    em = pd.read_csv(smoke_book / "07_controls" / "em_agreement.csv")
    assert {"seed", "nmi_hard", "nmi_soft"} <= set(em.columns) and em[
        ["nmi_hard", "nmi_soft"]
    ].stack().between(0, 1).all()


def test_llm_smoke_frontier_follows_the_targets_and_the_rule(smoke_book):
    folder = smoke_book / "05_llm_activations"
    df = pd.read_csv(folder / "metrics.csv")
    models = {"ours", "sae", "sae_dnorm", "jumprelu", "topk", "batchtopk"}
    assert set(df.model) == models and (df.hidden_dim > 576).any()  # one overcomplete
    info = json.loads((folder / "run_info.json").read_text())
    seeds, lr_grid = info["parameters"]["seeds"], info["parameters"]["lr_grid"]
    assert set(df.seed) == set(seeds) and len(seeds) >= 2
    # every model trained at one rate of the grid, the one the selection table marks as chosen
    selection = pd.read_csv(folder / "lr_selection.csv")
    chosen = selection[selection.chosen].set_index("model").lr
    assert set(chosen.index) == models and set(lr_grid) <= set(selection.lr)
    past_edge = set(selection.lr) - set(lr_grid)  # tried only beyond the grid, never inside it
    assert all(v < min(lr_grid) or v > max(lr_grid) for v in past_edge)
    assert (df.lr == df.model.map(chosen)).all() and chosen.to_dict() == info["chosen_lr"]
    # the selection round ran on validation only: its runs are seed 1 and not in the test metrics' rows
    runs = pd.read_csv(folder / "selection_runs.csv")
    assert set(runs.seed) == {seeds[0]} and set(runs.lr) == set(selection.lr) and runs.l0.notna().any()
    # ours: lambda = (K / K0)^2 L0_0 / target, computed here independently of the notebook from the
    # calibration run (the paper's weights at the smallest width and the chosen rate, on validation)
    sizes = sorted(set(df[df.model == "topk"].hidden_dim))
    calibration = runs[(runs.model == "ours") & runs.target_l0.isna() & (runs.lr == chosen["ours"])]
    assert list(calibration.hidden_dim) == [sizes[0]]
    rule = df[(df.model == "ours") & df.target_l0.notna()]
    expected = (rule.hidden_dim / sizes[0]) ** 2 * calibration.l0.iloc[0] / rule.target_l0
    assert np.allclose(rule.knob_value, expected, rtol=2e-5, atol=0) and set(rule.hidden_dim) - set(sizes)
    for kind in ("topk", "batchtopk"):  # k = each target, capped at the width
        d = df[df.model == kind]
        assert (d.knob_value == np.minimum(d.hidden_dim, d.target_l0.round())).all()
    # every SAE reconstructs twice (decoder and the common readout), ours through the readout only
    sae = df[df.model != "ours"]
    assert (
        sae.fvu_decoder.notna().all()
        and df.fvu_readout.notna().all()
        and df[df.model == "ours"].fvu_decoder.isna().all()
    )
    spliced = df[df.hidden_dim.isin(sizes)]
    assert spliced.ce_loss_recovered_readout.between(-5, 1.0).all() and (spliced.kl_div_readout >= 0).all()
    per_context = pd.read_csv(folder / "splice_per_context.csv")
    assert per_context.groupby("splice").size().eq(info["parameters"]["ce_contexts"]).all()
    # the matched-L0 table: intervals hold their values, the paired differences hold theirs
    matched = pd.read_csv(folder / "matched_l0.csv")
    assert set(matched.model) == models and set(matched.reconstruction) == {"decoder", "readout"}
    m = matched.dropna(subset=["ce_loss_recovered"])
    assert (m.ce_lo <= m.ce_loss_recovered + 1e-12).all() and (m.ce_loss_recovered <= m.ce_hi + 1e-12).all()
    assert (m.ce_seed_min <= m.ce_seed_max).all() and (m.fvu_seed_min <= m.fvu + 1e-12).all()
    d = m.dropna(subset=["ce_minus_ours"])
    assert (d.ce_minus_ours_lo <= d.ce_minus_ours_hi).all() and (
        m[m.model == "ours"].ce_minus_ours.isna()
    ).all()
    refs = pd.read_csv(folder / "ce_references.csv").set_index("reference")
    assert (
        refs.loc["zero ablation", "ce"] > refs.loc["clean", "ce"] and refs.loc["zero ablation", "kl_div"] > 0
    )
    assert (df.dense_fraction_10pct <= df.dense_fraction_1pct).all() and (df.l2_ratio_readout > 0).all()
    page = (folder / "features.html").read_text()
    assert not re.search(r"<script|(src|href)\s*=", page)  # static, nothing fetched (tokens are escaped)
    feats = pd.read_csv(folder / "features.csv")
    assert set(feats.model) == models and feats.token_concentration_most_used.between(0, 1).all()
    assert (folder / "summary.md").read_text().startswith("**Setting.**")


def test_mnist_smoke_frontier_every_model_at_its_chosen_rate_with_intervals(smoke_book):
    folder = smoke_book / "06_mnist_frontier"
    df = pd.read_csv(folder / "metrics.csv")
    models = {"ours", "sae", "sae_dnorm", "jumprelu", "topk", "batchtopk"}
    info = json.loads((folder / "run_info.json").read_text())
    p = info["parameters"]
    assert set(df.model) == models and set(df.seed) == set(p["seeds"])
    selection = pd.read_csv(folder / "lr_selection.csv")
    chosen = selection[selection.chosen].set_index("model").lr
    assert chosen.to_dict() == info["chosen_lr"] and (df.lr == df.model.map(chosen)).all()
    runs = pd.read_csv(folder / "selection_runs.csv")  # on validation, first seed, every rate
    assert set(runs.seed) == {p["seeds"][0]} and set(p["lr_grid"]) <= set(runs.lr)
    beyond = set(runs.lr) - set(p["lr_grid"])  # rates tried past the grid's edge, at most one per model here
    assert all(not min(p["lr_grid"]) <= lr <= max(p["lr_grid"]) for lr in beyond)
    assert (runs[runs.lr.isin(beyond)].groupby("model").lr.nunique() <= p["lr_edge_steps"]).all()
    # every model has a readout FVU; only the SAEs a decoder's
    assert df.readout_fvu.notna().all() and df[df.model == "ours"].decoder_fvu.isna().all()
    assert df[df.model != "ours"].decoder_fvu.notna().all() and df.probe_accuracy.between(0, 1).all()
    matched = pd.read_csv(folder / "matched_sparsity.csv")
    d = matched.dropna(subset=["probe_minus_ours"])
    assert (d.probe_minus_ours_lo <= d.probe_minus_ours + 1e-12).all()
    assert (d.probe_minus_ours <= d.probe_minus_ours_hi + 1e-12).all()
    m = matched.dropna(subset=["probe"])
    assert (m.probe_seed_min <= m.probe + 1e-12).all() and (m.probe <= m.probe_seed_max + 1e-12).all()
    assert (folder / "summary.md").read_text().startswith("**Rates chosen on validation**")
    # the JumpReLU SAE is swept by its L0 weight (the paper's knob), its thresholds kept per run
    jumprelu = df[(df.model == "jumprelu") & ~df.diverged]
    thresholds = pd.read_csv(folder / "jumprelu_thresholds.csv")
    assert set(df[df.model == "jumprelu"].knob) == {"sparsity"} and len(thresholds) == len(jumprelu)
    assert sorted(thresholds.sparsity.unique()) == sorted(p["jumprelu_sparsity"])
    assert (thresholds.threshold_start == p["jumprelu_threshold_init"]).all()
    pairs = lambda d, knob: sorted(zip(d[knob], d.seed))  # noqa: E731
    assert pairs(thresholds, "sparsity") == pairs(jumprelu, "knob_value")  # one row per trained run
    assert "What set the JumpReLU SAE's sparsity" in (folder / "summary.md").read_text()


def _as_ipynb(name, folder) -> Path:
    """The notebook converted from its jupytext source (the .ipynb is not tracked)."""
    path = Path(folder) / f"{name}.ipynb"
    nbformat.write(jupytext.read(ROOT / "notebooks" / f"{name}.py"), path)
    return path


def _run(name, tmp_path, params):
    pm.execute_notebook(
        str(_as_ipynb(name, tmp_path)),
        str(tmp_path / "out.ipynb"),
        parameters={"results_dir": str(tmp_path / "r"), "figures_dir": str(tmp_path / "f"), **params},
        cwd=str(ROOT),
        kernel_name="python3",
        progress_bar=False,
    )


def test_unknown_parameter_fails_by_name(tmp_path, smoke_book):
    with pytest.raises(pm.PapermillExecutionError, match="unknown parameter.*'epoch'"):
        _run("01_verify_theorem", tmp_path, {"epoch": 3})


def test_wrong_parameter_type_fails_by_name(tmp_path, smoke_book):
    with pytest.raises(pm.PapermillExecutionError, match="parameter batch='many'"):
        _run("01_verify_theorem", tmp_path, {"batch": "many"})


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_source_round_trips_and_writes_to_scratch_by_default(name):
    """Saving the notebook from JupyterLab rewrites the .py from the cells: it must come back byte
    for byte, or merely opening a notebook would change a tracked file. And its default output
    folders must be the ignored scratch/, so that a run outside `make book` leaves the record alone."""
    text = (ROOT / "notebooks" / f"{name}.py").read_text()
    nb = jupytext.reads(text, fmt="py:percent")
    assert jupytext.writes(nb, fmt="py:percent") == text
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert f'results_dir: str = "scratch/{name}"' in params.source
    assert 'figures_dir: str = "scratch/figures"' in params.source
    assert nb.cells[0].cell_type == "markdown" and "scratch/" in nb.cells[0].source


def _git_status() -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_jupyterlab_opens_runs_and_saves_a_notebook_without_changing_the_repository(tmp_path):
    """As a reader would in JupyterLab: open the .py as a notebook, Run All (the kernel's working
    directory is notebooks/, the parameters their defaults), save. git status must not change."""
    before = _git_status()
    port = _free_port()
    jupyter = Path(sys.executable).parent / "jupyter"
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [
            str(jupyter),
            "server",
            "--no-browser",
            "--allow-root",
            f"--port={port}",
            "--ip=127.0.0.1",
            "--IdentityProvider.token=testtoken",
            f"--ServerApp.root_dir={ROOT}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path)},
    )
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
        nb = nbformat.from_dict(model["content"])
        NotebookClient(
            nb, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
        ).execute()
        assert _outputs(nb)[0] >= 1  # the figure, shown in the notebook
        put = urllib.request.Request(
            url.split("?")[0],
            method="PUT",
            headers={"Authorization": "token testtoken"},
            data=json.dumps({"type": "notebook", "format": "json", "content": nb}).encode(),
        )
        with opener.open(put, timeout=30) as r:
            assert r.status in (200, 201)
        assert _git_status() == before
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        for leftover in (ROOT / "notebooks").glob("01_verify_theorem.ipynb"):
            leftover.unlink()  # the ignored paired copy JupyterLab made


def test_plain_papermill_with_a_parameter_file_leaves_the_repository_alone(tmp_path):
    before = _git_status()
    params = yaml.safe_load((ROOT / "params" / "smoke" / "02_ablation.yaml").read_text())
    pm.execute_notebook(
        str(_as_ipynb("02_ablation", tmp_path)),
        str(tmp_path / "out.ipynb"),
        parameters=params,
        cwd=str(ROOT),
        kernel_name="python3",
        progress_bar=False,
    )
    assert (ROOT / "scratch" / "02_ablation" / "metrics.csv").exists()
    assert _git_status() == before


def test_no_file_points_outside_the_repository():
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    # written in pieces so that this file does not match itself
    outside = ("../" + "shared", "/" + "work/", str(Path.home()) + "/", "site-" + "packages/")
    hits = []
    for name in tracked:
        path = ROOT / name
        if path.suffix in {".png", ".pdf", ".npz", ".gz"} or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        hits += [f"{name}: {o}" for o in outside if o in text]
    assert not hits, hits[:10]


ABSOLUTE_PATH = re.compile(
    r"(?<![\w.])/(tmp|root|home|Users|private|var/folders)/"  # POSIX build folders and homes
    r"|PosixPath\('/"  # a printed absolute pathlib path
    r"|[A-Z]:\\\\Users"  # a Windows home, as JSON escapes it
)


# Executed before Record.close stopped returning its path (their last cell printed it); the next
# `make book` replaces them, and then this set must be emptied.
AWAITING_REBUILD: set[str] = set()  # executed notebooks whose record still holds a path, until their rerun


def test_the_record_holds_no_absolute_path():
    """A path of the machine that made the record (a build folder, a home) says nothing to a reader
    and leaks where it ran: no executed notebook, table or run_info may hold one."""
    hits = {}
    for path in sorted((ROOT / "executed").rglob("*")):
        if path.is_file() and path.suffix in {".ipynb", ".csv", ".json", ".html", ".md"}:
            found = [m.group(0) for m in ABSOLUTE_PATH.finditer(path.read_text(errors="replace"))]
            if found:
                hits[str(path.relative_to(ROOT / "executed"))] = found
    assert set(hits) <= AWAITING_REBUILD, {k: v for k, v in hits.items() if k not in AWAITING_REBUILD}


def test_notebook_outputs_print_no_absolute_path(smoke_book):
    """What the notebooks print (their outputs, not the parameters papermill injects) holds no
    absolute path: the fix the record's two stale notebooks await."""
    hits = []
    for path in sorted(smoke_book.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            for out in cell.get("outputs", []):
                text = json.dumps(out)
                if "PosixPath('/" in text or str(ROOT) in text:
                    hits.append(path.name)
    assert not hits, hits


def test_html_book_is_offline_with_figures_and_an_index(smoke_book, tmp_path):
    out = tmp_path / "html"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "render_html.py"),
            "--src",
            str(smoke_book),
            "--out",
            str(out),
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    assert (out / "mathjax" / "MathJax.js").exists()
    for name in NOTEBOOKS:
        page = (out / f"{name}.html").read_text()
        assert "data:image/png;base64" in page
        assert 'src="mathjax/MathJax.js' in page
        loads = re.findall(
            r"<(?:script|link|img|iframe|source)\b[^>]*\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//", page
        )
        assert not loads, f"{name} loads from the network: {loads[:3]}"
    index = (out / "index.html").read_text()
    assert index.count("<section>") == len(NOTEBOOKS) and index.count('<img src="figures/') == len(NOTEBOOKS)
    assert "Question." in index


def _script_module(name: str):
    """scripts/<name>.py imported as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _render_html_module():
    return _script_module("render_html")


def test_benchmark_smoke_adds_each_model_at_its_validation_chosen_rate(smoke_book):
    folder = smoke_book / "03_benchmark"
    p = json.loads((folder / "run_info.json").read_text())["parameters"]
    selection = pd.read_csv(folder / "lr_selection.csv")
    assert set(selection.model) == {"ours", "sae"} and set(selection.lr) == set(p["lr_grid"])
    chosen = selection[selection.chosen]
    assert sorted(chosen.model) == ["ours", "sae"]  # one rate per model, the best on validation
    for _, d in selection.groupby("model"):
        assert d.loc[d.chosen, "probe_accuracy"].iloc[0] == d.probe_accuracy.max()
    best = pd.read_csv(folder / "metrics_at_chosen_rate.csv")
    assert (best.lr == best.model.map(chosen.set_index("model").lr)).all()
    assert set(best.seed) == set(p["seeds"])
    assert "Each at its own learning rate" in (folder / "summary.md").read_text()


def test_every_notebook_writes_its_summary_for_the_readme(smoke_book):
    missing = [n for n in NOTEBOOKS if not (smoke_book / n / "summary.md").is_file()]
    assert not missing, f"no summary.md from {missing}: update_readme.py joins them and types nothing itself"
    for name in NOTEBOOKS:
        assert len((smoke_book / name / "summary.md").read_text().strip()) > 50, name


def test_readme_results_are_the_records_summaries_joined():
    """The README's results section is what scripts/update_readme.py makes of the committed record."""
    module = _script_module("update_readme")
    readme = (ROOT / "README.md").read_text()
    committed = readme.split(module.START, 1)[1].split(module.END, 1)[0].strip()
    assert committed == module.section().strip(), "README.md is stale: run scripts/update_readme.py"


def test_book_timings_name_the_book_run_that_measured_each_notebook(smoke_book):
    """Every notebook's row is written as it finishes, with its book run's start, the processor and
    the run cache's state (FRESH=1 reads no cache: 0); no half-executed notebook is left beside them."""
    with open(smoke_book / "book_timings.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["notebook"] for r in rows] == sorted(NOTEBOOKS)
    assert len({r["book_started"] for r in rows}) == 1 and all(r["processor"] for r in rows)
    assert {r["cached_groups_at_start"] for r in rows} == {"0"}
    assert all(float(r["seconds"]) > 0 for r in rows)
    assert sorted(p.name for p in smoke_book.glob("*.ipynb")) == [f"{n}.ipynb" for n in sorted(NOTEBOOKS)]


def test_readme_times_say_which_book_runs_measured_them():
    """Hand-built timing rows: one run from an empty cache, a book split over two runs, and an old
    file that recorded neither."""
    module = _script_module("update_readme")
    row = lambda nb, started, cached: {  # noqa: E731
        "notebook": nb,
        "seconds": "60.0",
        "book_started": started,
        "processor": "Some CPU, 2 cores",
        "cached_groups_at_start": cached,
    }
    one = [row("01_a", "2026-01-01 10:00 UTC", "0"), row("02_b", "2026-01-01 10:00 UTC", "3")]
    assert module._provenance(one) == (
        "all in one run: the book run started 2026-01-01 10:00 UTC on Some CPU, 2 cores, "
        "from an empty run cache"
    )
    split = [one[0], row("02_b", "2026-01-02 09:00 UTC", "7")]
    text = module._provenance(split)
    assert text.startswith("in 2 book runs, the total their sum: 01 in the book run started 2026-01-01")
    second = "02 in the book run started 2026-01-02 09:00 UTC on Some CPU, 2 cores, from a run cache holding"
    assert second in text
    old = {"notebook": "03_c", "seconds": "1.0", "params": "p"}
    assert module._provenance([old]) == (
        "all in one run: an older book run that did not record when, where or with what run cache"
    )
    assert module._provenance([old, *one]).startswith(
        "in 2 book runs, the total their sum: 01, 02 in the book"
    )
    assert module._provenance([old, *one]).endswith(
        "; 03 in an older book run that did not record when, where or with what run cache"
    )


def test_index_first_finding_is_the_first_bold_claim_of_the_findings():
    """Hand-built notebooks: the note and the setting before the findings are skipped; the claim
    can sit in the section's own Markdown or in what a code cell displays."""
    render = _render_html_module()
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    shown = code("display(Markdown(findings))")
    shown.outputs = [
        nbformat.v4.new_output(
            "display_data",
            data={
                "text/markdown": "**Setting.** 3 seeds.\n\n- **Ours leads** at 93%.\n- **The SAE** at 90%."
            },
        )
    ]
    nb = nbformat.v4.new_notebook(
        cells=[md("# T"), md("## What it shows\nWritten by code."), shown, md("## Next")]
    )
    assert render.headline_of(nb) == "**Ours leads** at 93%."
    own = nbformat.v4.new_notebook(cells=[md("## What it shows\n\n- **It holds.** Yes.\n- **Also.** No.")])
    assert render.headline_of(own) == "**It holds.** Yes."
    plain = nbformat.v4.new_notebook(
        cells=[md("**What it shows.** The line is y = x.\n\n**A caution.** Later.")]
    )
    assert render.headline_of(plain) == "The line is y = x."


def test_record_index_shows_a_finding_for_every_notebook():
    render = _render_html_module()
    for name in NOTEBOOKS:
        headline = render.headline_of(nbformat.read(ROOT / "executed" / f"{name}.ipynb", as_version=4))
        assert headline and not headline.startswith(("Written", "The findings")), (name, headline[:80])
