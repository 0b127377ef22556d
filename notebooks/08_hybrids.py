# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 8. The paper's objective inside an SAE, the activation's sign, and the weights' geometry
#
# **Question.** The decoder-free objective gives features a linear probe reads better than a
# plain L1 SAE's (notebook 3), while the SAE rebuilds the input better. Used inside an SAE, as
# pretraining or as a regulariser, does LSE + InfoMax give an SAE that keeps the decoder's
# reconstruction and gains the probe accuracy? The paper's author ran this as a "parameter
# distance" experiment; this notebook runs it with the book's measures. Two more of the author's
# experiments: does the sign of the activation matter (ReLU against -ReLU = -max(0, z)), and do
# the weights look like prototypes of the inputs they answer to, as the paper's "digit
# prototypes" reading says?
#
# **Method.** MNIST, 784 -> 64, Adam 1e-3, batch 128, seeds `seeds`, the SAE's L1 weight
# `sae_l1`, ours' lambdas 1. Training runs in phases of `phase_epochs` epochs (the author used 50;
# this book's default, 15, keeps the notebook inside its time budget here; set it to 50 for the
# author's protocol); every phase is a run of the engine that starts from the state
# the previous phase ended in (`run_experiments(..., init=...)`), with a fresh Adam, as the
# author's script does:
# - **sae**: the SAE from its initialisation, 2 x `phase_epochs` epochs.
# - **pretrain_then_sae**: the SAE's initial encoder trained alone with LSE + InfoMax for one
#   phase (the decoder untouched), then the whole SAE (that encoder, the decoder still at its
#   initialisation) with MSE + L1 for one phase.
# - **sae_plus_infomax**: the SAE trained from scratch for 2 x `phase_epochs` epochs with
#   MSE + L1 + w (L_lse + L_var + L_tc) on its own activations (model kind `sae_infomax`), at
#   w = `infomax_weight` (the author's) on every seed and at each w in `infomax_weight_sweep` on
#   `sweep_seeds`.
# - **alternating**: one phase of SAE, one of LSE + InfoMax on the encoder alone, one of SAE.
#
# Per condition, seed and phase: the L2 distance and the cosine similarity between the encoder's
# parameters (W and b, flattened) at the phase's start and end, and, from the start of training
# to the end, one more row (`phase` = "total"); and for the state the phase ends in: the SAE's
# FVU through its decoder on the test images (`fvu`; empty where the phase trained the encoder
# alone, whose decoder is then stale), the fitted linear readout's FVU (`readout_fvu`), the
# book's linear probe on the encoder's features, L0 and dead units (the paper's variance rule).
#
# **The activation's sign.** Ours and the SAE trained for 2 x `phase_epochs` epochs with ReLU and
# with -ReLU. Are the -ReLU weights the ReLU weights negated? Each -ReLU run's negated weight
# vectors are matched one to one to the same seed's ReLU run (Hungarian algorithm on cosine,
# `ground_truth.matched_cosines`), and the mean matched cosine is reported. L0 counts |a| > 0.01.
#
# **Geometry.** For the same eight kinds of run (`metrics.template_correlation`,
# `weight_input_alignment`, `centre_surround_opposition`): how well each unit's weights correlate
# with its *template*, the mean of the test images weighted by the unit's responsibility
# softmax(-a) (the paper's definition) or by its activation |a| (the images it fires on); the
# responsibility-weighted cosine between images and weight vectors; and the share of units whose
# centre (middle 40% of the image) and surround have opposite mean signs. The prototype reading
# predicts high template correlation, positive alignment and few centre-surround units.
#
# *Where results go.* Run on its own (JupyterLab, or papermill without `results_dir` and
# `figures_dir`), this notebook writes its tables and figures under `scratch/` (ignored by git);
# only `make book` writes the committed record (`executed/`, `figures/`).

# %%
from encoder_study.book.record import ParameterGuard

guard = ParameterGuard(globals())

# %% tags=["parameters"]
seeds: list[int] = [1, 2, 3]
phase_epochs: int = 15
hidden_dim: int = 64
sae_l1: float = 0.01
infomax_weight: float = 0.1
infomax_weight_sweep: list[float] = [0.01, 1.0]
sweep_seeds: list[int] = [1]
n_train: int = 60000
n_test: int = 10000
probe_max_iter: int = 5000
results_dir: str = "scratch/08_hybrids"
figures_dir: str = "scratch/figures"

# %%
params = guard.check(
    globals(), at_least={"n_train": 2, "n_test": 2, "phase_epochs": 1, "hidden_dim": 2, "probe_max_iter": 1}
)

import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from encoder_study.book.data import mnist_tensors
from encoder_study.book.progress import progress
from encoder_study.book.record import COLORS, repo_path, save_figure, start_notebook
from encoder_study.evaluation.ground_truth import matched_cosines
from encoder_study.evaluation.metrics import (
    activation_summary,
    centre_surround_opposition,
    features,
    fvu,
    responsibilities,
    template_correlation,
    weight_input_alignment,
)
from encoder_study.evaluation.scoring import evaluate_codes
from encoder_study.models.config import LossConfig, RunConfig
from encoder_study.models.model import build_run_model
from encoder_study.training.engine import initial_state
from encoder_study.training.runs import run_experiments

record = start_notebook(results_dir, params)
data = mnist_tensors(n_train=n_train, n_test=n_test)
Xtr, ytr, Xte, yte = data["train_x"], data["train_y"], data["test_x"], data["test_y"]
D = Xtr.shape[1]

# %% [markdown]
# ## Training, phase by phase
# Each step trains every phase whose starting state is known, batched by the engine; a phase's
# result is cached under its config *and* its starting state, so a rerun trains nothing.

# %%
P = phase_epochs
sae_cfg = lambda s, epochs: RunConfig(
    model="sae",
    seed=s,
    epochs=epochs,
    hidden_dim=hidden_dim,  # noqa: E731
    l1=sae_l1,
    eval_every=epochs,
)
enc_cfg = lambda s, epochs, **kw: RunConfig(
    model="encoder",
    seed=s,
    epochs=epochs,  # noqa: E731
    hidden_dim=hidden_dim,
    eval_every=epochs,
    **kw,
)
as_encoder = lambda st: {"linear.weight": st["encoder.weight"], "linear.bias": st["encoder.bias"]}  # noqa: E731
as_sae_encoder = lambda st: {"encoder.weight": st["linear.weight"], "encoder.bias": st["linear.bias"]}  # noqa: E731
start_of = {s: initial_state(sae_cfg(s, 2 * P), D) for s in seeds}  # every condition's first state


def train(jobs: dict[tuple, tuple[RunConfig, dict | None]]) -> dict[tuple, object]:
    """Train (or load) named phases at once: name -> (config, starting state or None)."""
    names = list(jobs)
    results = run_experiments([jobs[n][0] for n in names], Xtr, Xte, init=[jobs[n][1] for n in names])
    return dict(zip(names, results))


t0 = time.perf_counter()
weights = [(infomax_weight, s) for s in seeds] + [(w, s) for w in infomax_weight_sweep for s in sweep_seeds]
step1 = {("sae", s): (sae_cfg(s, 2 * P), None) for s in seeds}
step1 |= {("pretrain", s): (enc_cfg(s, P), as_encoder(start_of[s])) for s in seeds}
step1 |= {("alt_a", s): (sae_cfg(s, P), None) for s in seeds}
step1 |= {
    ("hybrid", w, s): (
        RunConfig(
            model="sae_infomax",
            seed=s,
            epochs=2 * P,
            hidden_dim=hidden_dim,
            l1=sae_l1,
            loss=LossConfig(lse=w, var=w, tc=w),
            eval_every=2 * P,
        ),
        None,
    )
    for w, s in weights
}
step1 |= {
    (f"sign_{m}_{act}", s): (cfg, None)
    for s in seeds
    for m, act, cfg in [
        ("ours", "relu", enc_cfg(s, 2 * P)),
        ("ours", "neg_relu", enc_cfg(s, 2 * P, activation="neg_relu")),
        ("sae", "neg_relu", sae_cfg(s, 2 * P).with_(activation="neg_relu")),
    ]
}
done = train(step1)
step2 = {("pretrain_sae", s): (sae_cfg(s, P), as_sae_encoder(done[("pretrain", s)].state)) for s in seeds}
step2 |= {("alt_b", s): (enc_cfg(s, P), as_encoder(done[("alt_a", s)].state)) for s in seeds}
done |= train(step2)
step3 = {
    ("alt_c", s): (sae_cfg(s, P), {**done[("alt_a", s)].state, **as_sae_encoder(done[("alt_b", s)].state)})
    for s in seeds
}
done |= train(step3)
record.duration("training (or loading from the run cache)", time.perf_counter() - t0)

# %% [markdown]
# ## Distances and measures, per phase


# %%
def encoder_vector(state: dict) -> torch.Tensor:
    w, b = (
        (state["linear.weight"], state["linear.bias"])
        if "linear.weight" in state
        else (state["encoder.weight"], state["encoder.bias"])
    )
    return torch.cat([w.flatten(), b]).double()


def measures(state: dict, config: RunConfig | None) -> dict:
    """The state's encoder features on train and test; the SAE's decoder FVU where ``config`` is
    the SAE that state belongs to."""
    enc = build_run_model(enc_cfg(1, 1), D)
    enc.load_state_dict({k.replace("encoder.", "linear."): v for k, v in state.items() if "decoder" not in k})
    A_tr, A_te = features(enc, Xtr), features(enc, Xte)
    row = evaluate_codes(A_tr, A_te, Xtr, Xte, ytr, yte, probe_max_iter)
    row["dead_units"] = activation_summary(A_te, enc.W)["dead_units"]
    if config is not None:
        m = build_run_model(config, D)
        m.load_state_dict(state)
        with torch.no_grad():
            row["fvu"] = fvu(Xte, m(Xte)[0])
    return row


PATHS = {  # condition -> its phases: (phase name, the job that ends it, whether it is an SAE phase)
    "sae": [("sae", "sae", True)],
    "pretrain_then_sae": [("lse_infomax", "pretrain", False), ("sae", "pretrain_sae", True)],
    "sae_plus_infomax": [("sae_plus_infomax", "hybrid", True)],
    "alternating": [("sae", "alt_a", True), ("lse_infomax", "alt_b", False), ("sae", "alt_c", True)],
}
rows = []
t0 = time.perf_counter()
todo = [
    (c, w, s)
    for c in PATHS
    for w, s in (weights if c == "sae_plus_infomax" else [(np.nan, s) for s in seeds])
]
for condition, w, s in progress(todo, desc="phases measured", unit="runs"):
    before = encoder_vector(start_of[s])
    first = before
    for i, (phase, job, is_sae) in enumerate(PATHS[condition]):
        res = done[(job, w, s)] if job == "hybrid" else done[(job, s)]
        after = encoder_vector(res.state)
        m = measures(res.state, res.config if is_sae else None)
        last = i == len(PATHS[condition]) - 1
        for name, a, b in [(f"{i + 1}: {phase}", before, after)] + (
            [("total", first, after)] if last else []
        ):
            rows.append(
                {
                    "condition": condition,
                    "infomax_weight": w,
                    "seed": s,
                    "phase": name,
                    "l2_distance": float((b - a).norm()),
                    "cosine_similarity": float(torch.nn.functional.cosine_similarity(a, b, dim=0)),
                    "fvu": m.get("fvu", np.nan),
                    "readout_fvu": m["readout_fvu"],
                    "probe_accuracy": m["probe_accuracy"],
                    "l0": m["l0"],
                    "dead_units": m["dead_units"],
                    "train_seconds": res.seconds,
                    "diverged": res.diverged_epoch is not None,
                }
            )
        before = after
metrics = pd.DataFrame(rows)
record.duration("measures", time.perf_counter() - t0)
record.table("metrics", metrics)
final = metrics[metrics.phase == "total"]


def mean_pm(values: pd.Series, fmt: str) -> str:
    """'mean ± std' over seeds; a single seed's value alone, without ±."""
    v = values.dropna()
    if v.empty:
        return "-"
    return f"{v.mean():{fmt}} ± {v.std(ddof=1):{fmt}}" if len(v) > 1 else f"{v.mean():{fmt}}"


SHOWN = {
    "l2_distance": ".2f",
    "cosine_similarity": ".3f",
    "fvu": ".3f",
    "probe_accuracy": ".4f",
    "l0": ".1f",
    "dead_units": ".1f",
}
final.groupby(["condition", "infomax_weight"], dropna=False, sort=False).agg(
    seeds=("seed", "size"), **{c: (c, lambda v, f=f: mean_pm(v, f)) for c, f in SHOWN.items()}
)

# %% [markdown]
# ## Figure 9: what the paper's objective does inside an SAE
# Final states: each seed a dot, the mean a bar with one standard deviation; the weight sweep of
# `sae_plus_infomax` (one seed each) as the open markers beside it, one marker per weight, each
# in its own column. FVU, L0 and the distance are drawn from zero; the probe panel spans its
# values, and the break marks at the foot of its axis say that it does not start at zero. The
# figure's message, from its data, is printed under it.

# %%
label = {
    "sae": "SAE",
    "pretrain_then_sae": "pretrain,\nthen SAE",
    "sae_plus_infomax": f"SAE +\n{infomax_weight:g} x (LSE\n+InfoMax)",
    "alternating": "SAE, then\nLSE+InfoMax,\nthen SAE",
}
path_colors = dict(zip(PATHS, [COLORS["sae"], "#9467bd", "#8c564b", "#e377c2"]))
main = final[final.infomax_weight.isna() | (final.infomax_weight == infomax_weight)]
sweep = final[(final.condition == "sae_plus_infomax") & (final.infomax_weight != infomax_weight)]
sweep_markers = dict(zip(sorted(sweep.infomax_weight.unique()), ["v", "^", "s", "D", "P", "X"]))
fig, axes = plt.subplots(1, 4, figsize=(13, 3.6), layout="constrained")
for ax, (col, title) in zip(
    axes,
    [
        ("probe_accuracy", "probe accuracy (%)"),
        ("fvu", "FVU (decoder, test)"),
        ("l0", "L0 (of 64)"),
        ("l2_distance", "encoder distance from init"),
    ],
):
    k = 100 if col == "probe_accuracy" else 1
    for i, condition in enumerate(PATHS):
        values = main.loc[main.condition == condition, col].to_numpy() * k
        c = path_colors[condition]
        ax.scatter(i + np.linspace(-0.12, 0.12, len(values)), values, color=c, s=14, zorder=3)
        if len(values) > 1:
            spread = values.std(ddof=1)
            ax.errorbar(i, values.mean(), yerr=spread, fmt="_", color="k", ms=16, capsize=4, zorder=4)
    beside = list(PATHS).index("sae_plus_infomax") + 0.3
    for _, r in sweep.iterrows():
        marker = sweep_markers[r.infomax_weight]
        column = beside + 0.12 * list(sweep_markers).index(r.infomax_weight)  # no two weights overprint
        ax.plot(
            column,
            r[col] * k,
            marker,
            color=path_colors["sae_plus_infomax"],
            mfc="white",
            ms=5,
            label=f"w = {r.infomax_weight:g} (seed {r.seed:g})",
        )
    ax.set_xticks(range(len(PATHS)), [label[c] for c in PATHS], fontsize=6.5)
    ax.set_xlim(-0.5, len(PATHS) - 0.3)
    ax.set_title(title, fontsize=9)
    if col == "probe_accuracy":  # the break marks: this axis does not start at zero
        ax.plot([-0.012, 0.012], [0.005, 0.025], transform=ax.transAxes, color="k", lw=1, clip_on=False)
        ax.plot([-0.012, 0.012], [0.025, 0.045], transform=ax.transAxes, color="k", lw=1, clip_on=False)
    else:
        ax.set_ylim(0, None)
if len(sweep):
    axes[0].legend(fontsize=6.5, frameon=False, title="SAE + w x (LSE+InfoMax)", title_fontsize=6.5)
fig.suptitle(
    f"MNIST, 64 units, phases of {P} epochs, seeds {', '.join(map(str, seeds))}: dots single seeds, "
    "black bars mean ± one standard deviation; the probe axis is broken (not from 0)",
    fontsize=10,
)
paths = save_figure(fig, "fig9_hybrids", repo_path(figures_dir))
shown = main.groupby("condition").agg(
    probe=("probe_accuracy", "mean"), l0=("l0", "mean"), fvu=("fvu", "mean")
)
display(
    Markdown(
        "**Figure 9's message** (means over seeds, from the figure's data): "
        + "; ".join(
            f"{label[c].replace(chr(10), ' ')}: probe {shown.loc[c, 'probe']:.2%}, "
            f"L0 {shown.loc[c, 'l0']:.1f}, FVU {shown.loc[c, 'fvu']:.3f}"
            for c in PATHS
            if c in shown.index
        )
        + ". The black bars give each mean's spread over seeds."
    )
)

# %% [markdown]
# ## The activation's sign, and the weights' geometry

# %%
t0 = time.perf_counter()
sign_rows, pictures = [], {}
for s in seeds:
    runs = {
        ("ours", "relu"): done[("sign_ours_relu", s)],
        ("ours", "neg_relu"): done[("sign_ours_neg_relu", s)],
        ("sae", "relu"): done[("sae", s)],
        ("sae", "neg_relu"): done[("sign_sae_neg_relu", s)],
    }
    for (model, act), res in runs.items():
        m = res.model()
        A_tr, A_te = features(m, Xtr).abs(), features(m, Xte).abs()
        scores = evaluate_codes(A_tr, A_te, Xtr, Xte, ytr, yte, probe_max_iter)
        W = m.W.detach()
        relu_W = runs[(model, "relu")].model().W.detach()
        R = responsibilities(features(m, Xte))
        sign_rows.append(
            {
                "model": model,
                "activation": act,
                "seed": s,
                "l0": scores["l0"],
                "probe_accuracy": scores["probe_accuracy"],
                "matched_cosine_to_relu": float(matched_cosines(-W, relu_W).mean())
                if act == "neg_relu"
                else np.nan,
                "template_corr_responsibility": template_correlation(W, Xte, R),
                "template_corr_activation": template_correlation(W, Xte, A_te),
                "weight_input_alignment": weight_input_alignment(W, Xte, R),
                "centre_surround_opposition": centre_surround_opposition(W),
            }
        )
        if s == seeds[0]:
            pictures[(model, act)] = W
signs = pd.DataFrame(sign_rows)
record.duration("activation sign and geometry", time.perf_counter() - t0)
record.table("activation_sign", signs)
signs.groupby(["model", "activation"], sort=False).mean(numeric_only=True).drop(columns="seed").round(3)

# %% [markdown]
# ## Figure 12: the weights with ReLU and with -ReLU
# Seed `seeds[0]`, the first 16 units of each run as 28 x 28 images (each scaled to its own
# largest |weight|; red positive, blue negative). The -ReLU runs' units are shown negated and in
# the order of their best match to the ReLU run's units, so that a pair that is the same feature
# up to sign looks the same.

# %%
from scipy.optimize import linear_sum_assignment  # noqa: E402

fig, axes = plt.subplots(2, 2, figsize=(9, 3.0))
for col, model in enumerate(["ours", "sae"]):
    relu_W = pictures[(model, "relu")]
    cos = (
        torch.nn.functional.normalize(-pictures[(model, "neg_relu")], dim=1)
        @ torch.nn.functional.normalize(relu_W, dim=1).T
    )
    rows_, cols_ = linear_sum_assignment(cos.numpy(), maximize=True)
    partner = dict(zip(cols_, rows_))  # relu unit -> its matched neg_relu unit
    for row, (act, W) in enumerate([("relu", relu_W), ("neg_relu", -pictures[(model, "neg_relu")])]):
        order = range(16) if act == "relu" else [partner[j] for j in range(16)]
        tiles = np.ones((2 * 29 - 1, 8 * 29 - 1)) * np.nan
        for i, j in enumerate(order):
            w = W[j].numpy()
            r, c = divmod(i, 8)
            tiles[r * 29 : r * 29 + 28, c * 29 : c * 29 + 28] = w.reshape(28, 28) / max(
                np.abs(w).max(), 1e-12
            )
        ax = axes[row, col]
        ax.imshow(tiles, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(
            f"{model}, {'ReLU' if act == 'relu' else '-ReLU (weights negated, matched order)'}", fontsize=8
        )
        ax.axis("off")
paths += save_figure(fig, "fig12_activation_sign", repo_path(figures_dir))

# %% [markdown]
# ## What it shows
# Written by the next cell from this notebook's tables (every number, and each claim's wording,
# follows a rerun); `summary.md` beside the tables holds the same text for the README.


# %%
def rows(condition, phase="total", w=None):
    """One condition's rows at one phase; for `sae_plus_infomax`, at one w (`infomax_weight` unless given)."""
    d = metrics[(metrics.condition == condition) & (metrics.phase == phase)]
    if condition == "sae_plus_infomax":
        d = d[d.infomax_weight == (infomax_weight if w is None else w)]
    return d


def sign(model, act):
    return signs[(signs.model == model) & (signs.activation == act)]


def versus(a, b):
    """How two sets of per-seed values lie: 'above' or 'below' when their ranges are apart, else 'within'."""
    if a.min() > b.max():
        return "above"
    return "below" if a.max() < b.min() else "within"


WORDS = {"above": "every seed above", "below": "every seed below", "within": "the seed ranges overlap"}


def pct(v):
    return mean_pm(v * 100, ".2f") + "%"


def span(v, fmt):
    return f"{v.min():{fmt}}-{v.max():{fmt}}"


def dead(v):
    """Dead units of `hidden_dim`: the count alone where every seed has the same."""
    if len(v) > 1 and v.nunique() == 1:
        return f"{v.iloc[0]:.0f} of {hidden_dim} on every seed"
    return f"{mean_pm(v, '.0f')} of {hidden_dim}"


def listed(values):
    return ", ".join(f"{v:g}" for v in values)


# 1. the paper's terms as a regulariser
sae, hyb, ours = rows("sae"), rows("sae_plus_infomax"), sign("ours", "relu")
probe_sae = versus(hyb.probe_accuracy, sae.probe_accuracy)
probe_ours = versus(hyb.probe_accuracy, ours.probe_accuracy)
fvu_sae = versus(hyb.fvu, sae.fvu)
gains, loses = probe_sae == "above", fvu_sae == "above"
if gains and loses and probe_ours == "within":
    head = "turns the SAE into ours: the probe accuracy comes, the reconstruction goes"
elif gains:
    head = "raises the probe accuracy and " + ("costs" if loses else "keeps") + " the reconstruction"
elif loses:
    head = "costs the reconstruction without raising the probe accuracy"
else:
    head = "changes neither the probe accuracy nor the reconstruction beyond the seed spread"
hybrids = final[final.condition == "sae_plus_infomax"]
tried = sorted(hybrids.infomax_weight.unique())
sweep = hybrids[hybrids.seed.isin(sweep_seeds)].groupby("infomax_weight")[["probe_accuracy", "fvu"]].mean()
by_w = ""
if len(sweep) > 1:
    w_range = sweep.max() - sweep.min()
    seed_range = hyb[["probe_accuracy", "fvu"]].max() - hyb[["probe_accuracy", "fvu"]].min()
    small = len(hyb) > 1 and bool((w_range <= seed_range).all())
    by_w = (
        f" Over w = {listed(sweep.index)} (seed{'s' if len(sweep_seeds) > 1 else ''} "
        f"{', '.join(map(str, sweep_seeds))}) the probe runs {span(sweep.probe_accuracy * 100, '.2f')}% "
        f"and the FVU {span(sweep.fvu, '.3f')}: w moves them {'no more' if small else 'more'} than the "
        f"seeds do at w = {infomax_weight:g} (ranges over w: {w_range.probe_accuracy * 100:.2f} points "
        f"and {w_range.fvu:.4f}; over seeds: {seed_range.probe_accuracy * 100:.2f} and "
        f"{seed_range.fvu:.4f})."
    )
hoped = hybrids[(hybrids.fvu <= sae.fvu.max()) & (hybrids.probe_accuracy > sae.probe_accuracy.max())]
if hoped.empty:
    verdict = (
        " So the hoped-for SAE that keeps the decoder's reconstruction and gains the decoder-free probe "
        f"accuracy does not appear at any w tried ({tried[0]:g} to {tried[-1]:g}). The claim goes no "
        "further than that range: by the same argument every w tried lies where the paper's terms "
        "dominate, and a w small enough for the reconstruction to lead was not tried."
    )
else:
    verdict = (
        " An SAE with the plain SAE's reconstruction (FVU within its seed range) that probes above every "
        f"plain-SAE seed appears at w = {listed(sorted(hoped.infomax_weight.unique()))}."
    )
part1 = (
    f"Phases of {P} epochs (the author's: 50), seeds {', '.join(map(str, seeds))}; final states unless "
    "said; mean ± std over seeds, a single seed's value without ±.\n\n"
    f"- **As a regulariser, the paper's objective {head}.** The SAE trained with MSE + L1 + "
    f"{infomax_weight:g} (L_lse + L_var + L_tc) probes at {pct(hyb.probe_accuracy)}, against "
    f"{pct(sae.probe_accuracy)} for the plain SAE ({WORDS[probe_sae]}) and "
    f"{pct(ours.probe_accuracy)} for ours alone, trained {2 * P} epochs in the sign experiment below "
    f"({WORDS[probe_ours]}). Its dead units by the paper's variance rule: {dead(hyb.dead_units)}, "
    f"against the plain SAE's {dead(sae.dead_units)}. Its decoder's FVU: "
    f"{mean_pm(hyb.fvu, '.3f')} against {mean_pm(sae.fvu, '.3f')}, {hyb.fvu.mean() / sae.fvu.mean():.1f} "
    f"times as much ({WORDS[fvu_sae]})."
    + by_w
    + " The LSE term is a sum over the batch and the MSE a mean over its elements, so at every w tried "
    "the paper's terms should outweigh the reconstruction in the gradient."
    + verdict
    + (" The trade-off of notebooks 3, 6 and 7 is reproduced inside one model." if gains and loses else "")
)

# 2. as pretraining, and alternating
pre1, pre2 = rows("pretrain_then_sae", "1: lse_infomax"), rows("pretrain_then_sae", "2: sae")
pre, alt = rows("pretrain_then_sae"), rows("alternating")
helps = [
    what
    for what, ok in [
        ("the probe", versus(pre.probe_accuracy, sae.probe_accuracy) == "above"),
        ("the reconstruction", versus(pre.fvu, sae.fvu) == "below"),
    ]
    if ok
]
rest = final[final.condition != "alternating"]
worst = alt.probe_accuracy.max() < rest.probe_accuracy.min() and alt.fvu.min() > rest.fvu.max()
norm0 = pd.Series({s: float(encoder_vector(start_of[s]).norm()) for s in seeds})
paper_phases = metrics[metrics.phase.str.contains("lse_infomax|sae_plus_infomax")]
from_init = metrics[metrics.phase.isin(["1: lse_infomax", "1: sae_plus_infomax"])]
growth = ((from_init.l2_distance - from_init.seed.map(norm0)) / from_init.seed.map(norm0)).min()


def against_sae(col, fmt, scale=1.0):
    """'x (the plain SAE's y; how the seeds lie)' for the SAE after pretraining."""
    a, b = pre[col] * scale, sae[col] * scale
    unit = "%" if scale == 100 else ""
    return f"{mean_pm(a, fmt)}{unit} (the plain SAE's {mean_pm(b, fmt)}{unit}; {WORDS[versus(a, b)]})"


part2 = (
    "- **As pretraining, it helps "
    + (" and ".join(helps) + " only" if helps else "neither the probe nor the reconstruction")
    + f".** After the LSE + InfoMax phase the encoder alone probes at {pct(pre1.probe_accuracy)} (L0 "
    f"{mean_pm(pre1.l0, '.1f')}, dead units {dead(pre1.dead_units)}). The SAE phase that follows "
    + ("keeps its direction" if pre2.cosine_similarity.min() > 0.9 else "turns the encoder")
    + f" (cosine {mean_pm(pre2.cosine_similarity, '.3f')} between the phase's start and end) and ends "
    f"at probe {against_sae('probe_accuracy', '.2f', 100)}, FVU {against_sae('fvu', '.3f')} and L0 "
    f"{against_sae('l0', '.1f')}"
    + (
        f": a code {sae.l0.mean() / pre.l0.mean():.1f} times sparser."
        if versus(pre.l0, sae.l0) == "below"
        else "."
    )
    + f" {'Alternating is worst' if worst else 'Alternating'}: the SAE phase after its LSE + InfoMax "
    f"phase ends at probe {pct(alt.probe_accuracy)}, FVU {mean_pm(alt.fvu, '.3f')} and L0 "
    f"{mean_pm(alt.l0, '.1f')}. The encoder that the paper's objective leaves behind is far from where "
    f"it started: its phases move it {span(paper_phases.l2_distance, '.0f')}, where the initial "
    f"encoder's norm is {norm0.mean():.1f}; {P} epochs of SAE training from there end at L0 "
    f"{mean_pm(pre.l0, '.1f')} (pretraining) and {mean_pm(alt.l0, '.1f')} (alternating) of "
    f"{hidden_dim}, presumably because the L1 penalty acts on activations grown that large."
    + (
        " (With the author's 50-epoch phases the SAE phases might recover more; this record does not say.)"
        if P < 50
        else ""
    )
)

# 3. the parameter distance
sae_from_init = metrics[(metrics.phase == "1: sae") & metrics.condition.isin(["sae", "alternating"])]
cleanly = sae_from_init.l2_distance.max() < paper_phases.l2_distance.min()
part3 = (
    "- **The parameter distance itself separates the objectives"
    + (" cleanly" if cleanly else " only in part")
    + ".** SAE training from the initialisation moves the encoder "
    f"{span(sae_from_init.l2_distance, '.1f')} (cosine {span(sae_from_init.cosine_similarity, '.2f')} "
    f"with its start); every phase with the paper's terms moves it {span(paper_phases.l2_distance, '.0f')} "
    f"(cosine {span(paper_phases.cosine_similarity, '.2f')})"
    + (", mostly by growing the weights" if growth >= 10 else "")
    + f": from the initialisation, the end state's norm is at least {growth:.0f} times the start's (by "
    "the triangle inequality)."
)

# 4. the activation's sign
ours_n, sae_r, sae_n = sign("ours", "neg_relu"), sign("sae", "relu"), sign("sae", "neg_relu")
change = {m: abs(np.log(sign(m, "neg_relu").l0.mean() / sign(m, "relu").l0.mean())) for m in ("ours", "sae")}
mirror = ours_n.matched_cosine_to_relu.mean() >= 0.9


def sign_pair(model, col, fmt, scale=1.0):
    """'-ReLU value against ReLU value (how the seeds lie)'."""
    a, b = sign(model, "neg_relu")[col] * scale, sign(model, "relu")[col] * scale
    unit = "%" if scale == 100 else ""
    return f"{mean_pm(a, fmt)}{unit} against {mean_pm(b, fmt)}{unit} ({WORDS[versus(a, b)]})"


part4 = (
    "- **The activation's sign matters "
    + ("more for ours than for the SAE" if change["ours"] > change["sae"] else "for both models")
    + (", and not as a mirror image.**" if not mirror else ", as a mirror image.**")
    + " With -ReLU against ReLU, ours probes at "
    f"{sign_pair('ours', 'probe_accuracy', '.2f', 100)} and has L0 {sign_pair('ours', 'l0', '.1f')} "
    f"of {hidden_dim}; its negated weights match its ReLU weights one to one at a mean cosine of "
    f"{mean_pm(ours_n.matched_cosine_to_relu, '.3f')} (1 would be a mirror image; figure 12 shows both). "
    f"The SAE: L0 {sign_pair('sae', 'l0', '.1f')}, probe {sign_pair('sae', 'probe_accuracy', '.2f', 100)}, "
    f"matched cosine {mean_pm(sae_n.matched_cosine_to_relu, '.3f')}"
    + ("; its decoder can absorb the sign." if change["sae"] < change["ours"] else ".")
)

# 5. the weights' geometry
corr_act = versus(ours.template_corr_activation, sae_r.template_corr_activation)
other_way = ours.template_corr_responsibility.max() < 0 and ours.weight_input_alignment.max() < 0
centre = versus(ours.centre_surround_opposition, sae_r.centre_surround_opposition)
part5 = (
    "- **Prototypes? "
    + ("Partly" if corr_act == "above" else "No more than the SAE's")
    + (", and the paper's responsibilities point the other way.**" if other_way else ".**")
    + " Weighted by how strongly each unit fires, ours' weights correlate "
    f"{mean_pm(ours.template_corr_activation, '.3f')} with the mean of the images they respond to, the "
    f"SAE's {mean_pm(sae_r.template_corr_activation, '.3f')} ({WORDS[corr_act]}; 1 would be a copy). "
    "Weighted by the paper's responsibilities softmax(-a), ours' correlation is "
    f"{mean_pm(ours.template_corr_responsibility, '.3f')} and the responsibility-weighted alignment of "
    f"images and weights {mean_pm(ours.weight_input_alignment, '.3f')}"
    + (
        ", both negative on every seed: with ReLU the responsibility goes to the units that are silent on "
        'an image (notebook 7 found the same), so the paper\'s "responsible" components are the ones that '
        "do not match."
        if other_way
        else "."
    )
    + f" With -ReLU the alignment is {mean_pm(ours_n.weight_input_alignment, '.3f')}"
    + (
        ", positive on every seed: low energy then means strong firing."
        if ours_n.weight_input_alignment.min() > 0
        else "."
    )
    + f" {mean_pm(ours.centre_surround_opposition * 100, '.0f')}% of ours' units have a centre and "
    f"surround of opposite sign, against {mean_pm(sae_r.centre_surround_opposition * 100, '.0f')}% of "
    f"the SAE's ({WORDS[centre]})"
    + (
        ": detectors of where a stroke is not, as much as templates of where it is (figure 12)."
        if centre == "above"
        else "."
    )
)
findings = "\n".join([part1, part2, part3, part4, part5])
hybrid_table = [
    "| condition | w | probe accuracy (%) | FVU (decoder) | L0 | dead units | encoder distance from init |",
    "|---|---|---|---|---|---|---|",
] + [
    f"| {condition} | {'' if pd.isna(w) else f'{w:g}'} | {mean_pm(g.probe_accuracy * 100, '.2f')} | "
    f"{mean_pm(g.fvu, '.3f')} | {mean_pm(g.l0, '.1f')} | {g.dead_units.mean():.1f} | "
    f"{g.l2_distance.mean():.2f} |"
    for (condition, w), g in final.groupby(["condition", "infomax_weight"], dropna=False, sort=False)
]
record.summary("\n".join(hybrid_table) + "\n\n" + findings)
display(Markdown(findings))
record.close(figures=[p.name for p in paths])
