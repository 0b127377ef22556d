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
# # 6. The honest MNIST comparison: whole sparsity frontiers, not one point each
#
# **Question.** The paper compares one setting of each model (ours at lambdas 1, the SAE at L1
# weight 0.01) and finds ours sparser *and* better for a linear probe. But sparsity is a knob:
# a comparison at one point each says little about which model is better at a *given* L0.
# Swept over each model's sparsity knob, where do the decoder-free encoder, the paper's L1 SAE
# and a TopK SAE sit on the probe-accuracy-vs-L0 and FVU-vs-L0 planes?
#
# **Method.** 64 units, MNIST, Adam 1e-3, batch 128, `epochs` epochs, the seeds in `seeds`.
# Knobs: ours, the LSE weight `ours_lse` with variance and decorrelation weights 1 (LSE pulls
# activations down towards silence, InfoMax spreads them out: their ratio sets the sparsity);
# the SAE, its L1 weight `sae_l1`; the TopK SAE, its k `topk_k`. Per run: linear-probe accuracy
# (the book's probe: standardised features, lbfgs logistic regression, 60k train / 10k test), L0
# (activations > 0.01), FVU on the test images (the SAEs through their decoders; ours, with no
# decoder, through a least-squares affine readout fitted on the training features), and units
# active on fewer than 0.1% of test images.
#
# *Where results go.* Run on its own (JupyterLab, or papermill without `results_dir` and
# `figures_dir`), this notebook writes its tables and figures under `scratch/` (ignored by git);
# only `make book` writes the committed record (`executed/`, `figures/`).

# %%
from encoder_study.book import ParameterGuard
from encoder_study.progress import progress

guard = ParameterGuard(globals())

# %% tags=["parameters"]
epochs: int = 50
seeds: list[int] = [1]
hidden_dim: int = 64
ours_lse: list[float] = [0.1, 0.3, 1.0, 3.0, 10.0]
sae_l1: list[float] = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3]
topk_k: list[int] = [2, 4, 8, 16, 32]
n_train: int = 60000
n_test: int = 10000
probe_max_iter: int = 5000
results_dir: str = "scratch/06_mnist_frontier"
figures_dir: str = "scratch/figures"

# %%
# refused before any work: metrics take variances over the test images (at least 2)
params = guard.check(globals(), at_least={"n_train": 2, "n_test": 2, "epochs": 1, "probe_max_iter": 1})

import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import NullFormatter, ScalarFormatter

from encoder_study.book import COLORS, Record, repo_path, save_figure, use_style
from encoder_study.config import LossConfig, RunConfig
from encoder_study.data import mnist_tensors
from encoder_study.evaluation import evaluate_run
from encoder_study.runs import run_experiments

use_style()
record = Record(repo_path(results_dir), params)
data = mnist_tensors(n_train=n_train, n_test=n_test)
Xtr, ytr, Xte, yte = data["train_x"], data["train_y"], data["test_x"], data["test_y"]

base = RunConfig(hidden_dim=hidden_dim, epochs=epochs)
runs = [("ours", "lambda_lse", w, base.with_(seed=s, loss=LossConfig(lse=w)))
        for w in ours_lse for s in seeds]
runs += [("sae", "l1", w, base.with_(model="sae", seed=s, l1=w)) for w in sae_l1 for s in seeds]
runs += [("topk", "k", k, base.with_(model="topk", seed=s, k=k)) for k in topk_k for s in seeds]
start = time.perf_counter()
results = run_experiments([r[-1] for r in runs], Xtr, Xte)
record.duration("training (or loading from the run cache)", time.perf_counter() - start)

# %%
rows = []
COLUMNS = ("probe_accuracy", "l0", "fvu", "readout_fvu", "dead_by_firing", "n_params", "train_seconds",
           "diverged")
t0 = time.perf_counter()
for (name, knob, value, cfg), res in progress(list(zip(runs, results)), desc="probes and readouts",
                                             unit="runs"):
    scores = evaluate_run(res, Xtr, Xte, ytr, yte, probe_max_iter)
    rows.append({"model": name, "knob": knob, "knob_value": value, "seed": cfg.seed, "hidden_dim": hidden_dim,
                 **{c: scores.get(c, np.nan) for c in COLUMNS}})
metrics = pd.DataFrame(rows)
record.duration("probes and readouts", time.perf_counter() - t0)
record.table("metrics", metrics)
metrics.round(4)

# %% [markdown]
# ## Figure 7: probe accuracy and reconstruction against sparsity
# One point per knob setting (mean over seeds); the knob's value is written beside each point.
# Settings that collapse (L0 below 1) are left off, and the probe axis starts at `probe_floor`;
# what falls outside is named under the figure (the table above has every number).

# %%
probe_floor = 85.0
mean = metrics.groupby(["model", "knob_value"], as_index=False)[["probe_accuracy", "l0", "fvu"]].mean()
fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8))
labels = {"ours": "ours (λ_lse)", "sae": "L1 SAE (l1)", "topk": "TopK SAE (k)"}
for name in ["ours", "sae", "topk"]:
    d = mean[(mean.model == name) & (mean.l0 >= 1)].sort_values("l0")
    for ax, col, k in zip(axes, ["probe_accuracy", "fvu"], [100, 1]):
        ax.plot(d.l0, d[col] * k, "o-", color=COLORS[name], label=labels[name], ms=4)
        for _, r in d.iterrows():
            ax.annotate(f"{r.knob_value:g}", (r.l0, r[col] * k), fontsize=6, xytext=(3, 3),
                        textcoords="offset points", color=COLORS[name])
for ax, label in zip(axes, ["linear-probe test accuracy (%)", "FVU (test images)"]):
    ax.set_xscale("log")
    ax.set_xticks([t for t in (1, 2, 4, 8, 16, 32, 64) if t <= hidden_dim])
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"L0: active units per image (of {hidden_dim})")
    ax.set_ylabel(label)
axes[0].set_ylim(probe_floor, None)
axes[0].legend(loc="lower right")
outside = mean[(mean.l0 < 1) | (mean.probe_accuracy * 100 < probe_floor)]
if len(outside):
    fig.supxlabel("outside the axes: " + "; ".join(
        f"{labels[r.model].split(' (')[0]} {r.knob_value:g} (L0 {r.l0:.2g}, probe {r.probe_accuracy:.1%}, "
        f"FVU {r.fvu:.2f})" for r in outside.itertuples()), fontsize=7)
fig.suptitle(f"MNIST, {hidden_dim} units, {epochs} epochs, "
             f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}")
paths = save_figure(fig, "fig7_mnist_frontier", repo_path(figures_dir))

# %% [markdown]
# ## At matched sparsity
# For each L0 that ours reaches, the other models' probe accuracy and FVU at that L0, read off
# their frontier by linear interpolation in log L0. Blank where the other model's sweep has no
# points on both sides of that L0 within a factor of 4 of each other: across a wider gap (the L1
# SAE jumps from L0 about 29 to about 3 between l1 = 0.03 and 0.1) a line would invent numbers.

# %%
def at_l0(name: str, col: str, target: float, max_gap: float = 4.0) -> float:
    d = mean[mean.model == name].sort_values("l0")
    x, y = np.log(d.l0.to_numpy()), d[col].to_numpy()
    t = np.log(target)
    below, above = x[x <= t], x[x >= t]
    if len(below) == 0 or len(above) == 0 or above.min() - below.max() > np.log(max_gap):
        return np.nan
    return float(np.interp(t, x, y))


ours = mean[mean.model == "ours"].sort_values("l0")
matched = pd.DataFrame([{"lambda_lse": r.knob_value, "l0": r.l0, "ours_probe": r.probe_accuracy,
                         "sae_probe": at_l0("sae", "probe_accuracy", r.l0),
                         "topk_probe": at_l0("topk", "probe_accuracy", r.l0), "ours_fvu": r.fvu,
                         "sae_fvu": at_l0("sae", "fvu", r.l0), "topk_fvu": at_l0("topk", "fvu", r.l0)}
                        for _, r in ours.iterrows()])
record.table("matched_sparsity", matched)
record.close(figures=[p.name for p in paths])
matched.round(4)

# %% [markdown]
# ## What it shows
#
# One seed and 50 epochs per setting (the paper's settings use 100; notebook 3 has the 100-epoch
# points for lambdas 1 and l1 = 0.01, and they agree with these within 0.3 points of probe
# accuracy).
#
# - **The LSE weight is a real sparsity knob for the decoder-free model.** From lambda_lse = 0.1
#   to 10 (variance and decorrelation weights 1), ours' L0 falls from about 49 to about 3.7 of
#   64 while its probe accuracy stays between 92.1% and 93.2%, with no dead unit anywhere. The
#   price is reconstruction: the readout's FVU rises from 0.19 to 0.49.
# - **Against the paper's L1 SAE, the paper's conclusion holds everywhere, and more strongly.**
#   The L1 weight barely moves the SAE's sparsity (L0 35 to 29 over a 30x range) until the SAE
#   collapses (l1 = 0.1: L0 2.6, probe 47.3%, 61 of 64 units silent; l1 = 0.3: everything silent).
#   Where it has not collapsed (L0 29-35) its probe accuracy is 2.4-3 points below ours at any
#   sparsity, and about half its units never fire. The paper's single-point comparison was not a
#   lucky choice of operating point for ours.
# - **Against a TopK SAE the story changes.** At matched L0 (the table above: TopK interpolated
#   to ours' L0) the TopK SAE's probe accuracy is level with ours (within 0.3 points, single
#   seed: ours 0.3 ahead at the sparsest point, L0 3.7, 92.1% against 91.8%; level near L0 6.5,
#   93.2% both; TopK 0.1 ahead near L0 18, 93.2% against 93.1%), and its reconstruction is
#   clearly better at every L0 (at L0 about 18: FVU 0.21 against 0.35; at about 6.5: 0.33
#   against 0.43), as it should be, since
#   reconstruction is what it is trained for. Ours does this with half the parameters and
#   no decoder; it does not beat a modern SAE on features a linear probe can use, it matches it.
# - **So the fair summary of the paper's benchmark** is: decoder-free features are as linearly
#   useful as a well-trained modern SAE's at the same sparsity and clearly more useful than a
#   plain L1 SAE's, while rebuilding the input less well.
