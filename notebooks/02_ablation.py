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
# # 2. Ablation: what each term of the objective does
#
# **Question.** The theory says LSE alone is EM without volume control and must collapse (the
# analogue of a Gaussian mixture without its log-determinant), that the variance term prevents
# the collapse, and that decorrelation removes redundancy between components. Is that what
# training on MNIST shows?
#
# **Method.** The paper's four configurations (`lambda_lse`, `lambda_var`, `lambda_tc`), each at
# the paper's settings (784 -> 64 encoder with ReLU, Adam 1e-3, batch 128, 100 epochs, the
# 60,000 training images) and three seeds. All twelve runs train together as one batched
# program (`encoder_study.engine`); each run still has its own seed, initialisation and
# minibatch order (the four runs of a seed see the same minibatches). Metrics are taken on the
# 10,000 test images. Beyond the paper, each run's features also get notebook 3's linear probe
# (standardised features, the book's logistic regression fitted on the training images, accuracy
# on the test images): `var_tc_only` has the InfoMax terms without LSE, close to VICReg's variance
# and covariance terms, so comparing it with `lse_var_tc` isolates what the LSE term adds to the
# features themselves, not only to their redundancy.
#
# *Where results go.* Run on its own (JupyterLab, or papermill without `results_dir` and
# `figures_dir`), this notebook writes its tables and figures under `scratch/` (ignored by git);
# only `make book` writes the committed record (`executed/`, `figures/`).

# %%
from encoder_study.book import ParameterGuard

guard = ParameterGuard(globals())

# %% tags=["parameters"]
epochs: int = 100
seeds: list[int] = [1, 2, 3]
n_train: int = 60000
n_test: int = 10000
batch_size: int = 128
lr: float = 1e-3
probe_max_iter: int = 5000
results_dir: str = "scratch/02_ablation"
figures_dir: str = "scratch/figures"

# %%
# refused before any work: metrics take variances over the test images (at least 2)
params = guard.check(globals(), at_least={"n_train": 2, "n_test": 2, "epochs": 1, "probe_max_iter": 1})

import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from encoder_study.book import COLORS, Record, mean_std, repo_path, save_figure, use_style
from encoder_study.config import LossConfig, RunConfig
from encoder_study.data import mnist_tensors
from encoder_study.metrics import (
    activation_summary,
    correlation,
    dead_units,
    features,
    firing_frequency,
    linear_probe_accuracy,
    plateau_epoch,
    usage_distribution,
)
from encoder_study.progress import progress
from encoder_study.runs import run_experiments

use_style()
record = Record(repo_path(results_dir), params)
data = mnist_tensors(n_train=n_train, n_test=n_test)

CONFIGS = {  # name: (lambda_lse, lambda_var, lambda_tc), as in the paper
    "lse_only": (1.0, 0.0, 0.0),
    "lse_var": (1.0, 1.0, 0.0),
    "lse_var_tc": (1.0, 1.0, 1.0),
    "var_tc_only": (0.0, 1.0, 1.0),
}
runs = [(name, RunConfig(seed=s, epochs=epochs, batch_size=batch_size, lr=lr,
                         loss=LossConfig(lse=lse, var=v, tc=t, wr=0.0)))
        for name, (lse, v, t) in CONFIGS.items() for s in seeds]

start = time.perf_counter()
results = run_experiments([cfg for _, cfg in runs], data["train_x"], data["test_x"])
record.duration("training (or loading from the run cache)", time.perf_counter() - start)

# %% [markdown]
# ## Metrics per run

# %%
rows, units, curves = [], [], []
activations = {}
probe_start = time.perf_counter()
for (name, cfg), res in progress(list(zip(runs, results)), desc="metrics and probes", unit="runs"):
    model = res.model()
    A, A_train = features(model, data["test_x"]), features(model, data["train_x"])
    activations[(name, cfg.seed)] = A
    rows.append({"config": name, "seed": cfg.seed, **activation_summary(A, res.state["linear.weight"]),
                 "probe_accuracy": linear_probe_accuracy(A_train, data["train_y"], A, data["test_y"],
                                                         max_iter=probe_max_iter),
                 "final_loss": res.history[-1]["total"], "diverged_epoch": res.diverged_epoch,
                 "train_seconds": res.seconds})
    for j, (u, f, v) in enumerate(zip(usage_distribution(A), firing_frequency(A), A.var(dim=0).tolist())):
        units.append({"config": name, "seed": cfg.seed, "unit": j, "usage": u, "firing_frequency": f,
                      "variance": v})
    curves += [{"config": name, "seed": cfg.seed, **h} for h in res.history]
metrics = pd.DataFrame(rows)
record.duration("metrics and probes", time.perf_counter() - probe_start)
record.table("metrics", metrics)
record.table("units", pd.DataFrame(units))
record.table("loss_curves", pd.DataFrame(curves))
metrics.round(3)

# %%
cols = ["dead_units", "dead_by_firing", "redundancy", "weight_redundancy", "effective_rank",
        "responsibility_entropy", "l0", "probe_accuracy"]
summary = mean_std(metrics, "config", cols)
summary

# %% [markdown]
# ## Figure 2: correlation of the units, and dead units and redundancy per configuration

# %%
fig = plt.figure(figsize=(10, 5.2))
grid = fig.add_gridspec(2, 4, height_ratios=[1.15, 1])
for i, name in enumerate(CONFIGS):
    ax = fig.add_subplot(grid[0, i])
    A = activations[(name, seeds[0])]
    C = correlation(A).numpy()
    im = ax.imshow(C, cmap="RdBu_r", vmin=-1, vmax=1)
    n_dead = dead_units(A)
    if n_dead == A.shape[1]:  # every unit silent: no correlation is defined, the panel stays blank
        ax.text(0.5, 0.5, f"all {n_dead} units dead:\nno correlation\nto show", transform=ax.transAxes,
                ha="center", va="center", fontsize=9)
    ax.set_title(f"{name}\n(seed {seeds[0]})")
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_xlabel("unit"), ax.set_ylabel("unit") if i == 0 else None
fig.colorbar(im, ax=fig.axes[:4], shrink=0.8, label="correlation over test images")
agg = metrics.groupby("config", sort=False)
x = np.arange(len(CONFIGS))
for k, (col, label) in enumerate([("dead_units", "dead units (of 64), variance < 0.01"),
                                  ("redundancy", "redundancy (max 4032)")]):
    ax = fig.add_subplot(grid[1, 2 * k:2 * k + 2])
    for xi, name in enumerate(CONFIGS):
        vals = metrics.loc[metrics.config == name, col]
        if col == "redundancy" and (metrics.loc[metrics.config == name, "dead_units"] == 64).all():
            ax.text(xi, 1, "undefined\n(all dead)", ha="center", va="bottom", fontsize=8)
            continue  # the table's "-": a correlation of silent units is not zero, it does not exist
        ax.bar(xi, vals.mean(), yerr=vals.std(ddof=1) if len(vals) > 1 else None, capsize=3,
               color=COLORS[name])
        ax.scatter(np.full(len(vals), xi), vals, color="k", s=8, zorder=3)
    ax.set_xticks(x, list(CONFIGS))
    ax.set_ylabel(label)
    ax.set_yscale("symlog", linthresh=10) if col == "redundancy" else None
fig.suptitle(f"Ablation on MNIST: bars are means over {len(seeds)} seeds, dots single seeds")
paths = save_figure(fig, "fig2_ablation", repo_path(figures_dir))

# %% [markdown]
# ## Loss curves
#
# The terms live on different scales (LSE is summed over the batch), so each configuration's
# total objective is drawn on its own axis; the "stops learning" epoch is the first after which
# the epoch loss never again improves by more than 0.1% of its total change.

# %%
curves = pd.DataFrame(curves)


fig, axes = plt.subplots(1, 4, figsize=(10, 2.6))
plateaus = []
for ax, name in zip(axes, CONFIGS):
    for s in seeds:
        c = curves[(curves.config == name) & (curves.seed == s)]
        ax.plot(c.epoch, c.total, color=COLORS[name], alpha=0.8, lw=1)
        plateaus.append({"config": name, "seed": s, "plateau_epoch": plateau_epoch(c.total.to_numpy()),
                         "final_loss": c.total.iloc[-1]})
    ax.set_title(name), ax.set_xlabel("epoch")
axes[0].set_ylabel("training objective (epoch mean)")
loss_paths = save_figure(fig, "fig2b_ablation_loss_curves", repo_path(figures_dir))
plateaus = pd.DataFrame(plateaus)
record.table("plateaus", plateaus)
plateaus.groupby("config", sort=False)[["plateau_epoch", "final_loss"]].mean()

# %% [markdown]
# ## Against the paper

# %%
PAPER = {"lse_only": ("64/64", "- (all dead)"), "lse_var": ("0/64", "~1875"),
         "lse_var_tc": ("0/64", "~29"), "var_tc_only": ("0/64", "~28")}
mean = agg[["dead_units", "dead_by_firing", "redundancy"]].mean()
comparison = pd.DataFrame({
    "paper: dead": {k: v[0] for k, v in PAPER.items()},
    "ours: dead (variance rule)": {k: f"{mean.loc[k, 'dead_units']:.1f}/64" for k in CONFIGS},
    "ours: dead (never fires)": {k: f"{mean.loc[k, 'dead_by_firing']:.1f}/64" for k in CONFIGS},
    "paper: redundancy": {k: v[1] for k, v in PAPER.items()},
    "ours: redundancy": {k: "- (all dead)" if mean.loc[k, "dead_units"] == 64
                         else f"{mean.loc[k, 'redundancy']:.0f}" for k in CONFIGS},
})
record.table("paper_comparison", comparison.reset_index(names="config"))
record.close(figures=[p.name for p in paths + loss_paths])
comparison

# %% [markdown]
# ## What it shows
#
# - **LSE alone collapses, exactly as the theory predicts.** Every unit ends dead on every seed,
#   and the objective sits at its all-zero value (-128 ln 64 = -532.3 per full batch; the epoch
#   mean above is slightly higher because the last batch holds 96 images). With no volume
#   control, the cheapest way to make every sample well explained is to push every energy
#   $a_j$ to 0, and ReLU makes that state absorbing: once a unit's pre-activation is negative on
#   all inputs it receives no gradient again. By our plateau rule the loss stops improving within
#   the first two epochs, earlier than the paper's "about epoch 10": the paper does not state its
#   rule, and the collapse is fast under Adam at 1e-3.
# - **The variance term alone prevents the collapse but leaves the units redundant**: no dead
#   units, yet the off-diagonal correlation mass is in the paper's range (about 1,900 of a possible
#   4,032), and the effective rank of $W$ is about 22 of 64: many units encode the same direction.
# - **Adding decorrelation removes the redundancy** (about 29, as the paper) and raises the
#   effective rank to about 56, while keeping the code sparse (L0 about 17 of 64, the paper's
#   17.2) and the responsibilities far from uniform (entropy below ln 64 = 4.16).
# - **Without LSE** (variance + decorrelation only) the units are as decorrelated (about 28, as
#   the paper), but the code is no longer sparse: about 56 of 64 units are active per image and
#   the responsibilities are nearly one-hot on the least active unit (entropy about 2). LSE is
#   what makes the mixture sparse; InfoMax is what keeps it alive and diverse.
# - **What LSE adds to the features, beyond the paper** (the `probe_accuracy` column): the linear
#   probe reads the digit from the full objective's features at about 93.5%, from InfoMax alone
#   (`var_tc_only`, close to VICReg's variance and covariance terms) at about 92.3%, from LSE with
#   the variance term but no decorrelation at about 82%, and from the collapsed LSE-only code at
#   chance (about 11%, every feature zero). So the LSE term buys about one point of probe accuracy
#   over InfoMax alone while cutting the active units from about 56 to about 17 per image; most of
#   the probe's accuracy comes from the InfoMax terms, and decorrelation is what turns LSE's
#   sparsity from harmful (82%) into helpful. The seed spread is 0.1-0.6 points, far below these
#   gaps.
# - **The two dead-unit rules agree here.** The variance rule (variance < 0.01) and the firing
#   rule (active on < 0.1% of test images) give the same counts for every run, because our
#   activations are large (mean activation tens to hundreds). They disagree for the SAE in the
#   benchmark notebook, whose activations are on the pixel scale.
