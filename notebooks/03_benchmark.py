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
# # 3. Benchmark: the decoder-free encoder against a standard sparse autoencoder
#
# **Question.** Does a single layer trained with LSE + InfoMax and no decoder learn features as
# useful as a standard SAE's, with half the parameters? Useful is measured three ways: how well a
# linear probe reads the digit class from the features, how sparse the features are (L0), and how
# much of the image a linear readout can rebuild from them (fraction of variance unexplained).
#
# **Method.** Ours: `Encoder(784, 64)` with all three terms (lambdas 1). SAE: `StandardSAE(784, 64)`,
# MSE + 0.01 L1. Both with Adam 1e-3, batch 128, 100 epochs, the paper's seeds 1-5. The probe
# standardises the features (fit on train) and fits multinomial logistic regression (the objective
# of sklearn's default `LogisticRegression`, C = 1, by scipy's L-BFGS-B from zero, up to 5000
# iterations; `metrics.fit_logistic_regression`) on the 60,000 training images; accuracy is on the
# 10,000 test images.
#
# *Where results go.* Run on its own (JupyterLab, or papermill without `results_dir` and
# `figures_dir`), this notebook writes its tables and figures under `scratch/` (ignored by git);
# only `make book` writes the committed record (`executed/`, `figures/`).

# %%
from encoder_study.book import ParameterGuard
from encoder_study.progress import progress

guard = ParameterGuard(globals())

# %% tags=["parameters"]
epochs: int = 100
seeds: list[int] = [1, 2, 3, 4, 5]
n_train: int = 60000
n_test: int = 10000
sae_l1: float = 0.01
probe_max_iter: int = 5000
raw_pixel_probe: bool = True
results_dir: str = "scratch/03_benchmark"
figures_dir: str = "scratch/figures"

# %%
# refused before any work: metrics take variances over the test images (at least 2)
params = guard.check(globals(), at_least={"n_train": 2, "n_test": 2, "epochs": 1, "probe_max_iter": 1})

import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from encoder_study.book import COLORS, Record, mean_std, repo_path, save_figure, use_style
from encoder_study.config import RunConfig
from encoder_study.data import mnist_tensors
from encoder_study.evaluation import evaluate_run
from encoder_study.metrics import features, linear_probe_accuracy, reconstruction_mse
from encoder_study.runs import run_experiments

use_style()
record = Record(repo_path(results_dir), params)
data = mnist_tensors(n_train=n_train, n_test=n_test)
Xtr, ytr, Xte, yte = data["train_x"], data["train_y"], data["test_x"], data["test_y"]

runs = [("ours", RunConfig(model="encoder", seed=s, epochs=epochs)) for s in seeds]
runs += [("sae", RunConfig(model="sae", seed=s, epochs=epochs, l1=sae_l1)) for s in seeds]
start = time.perf_counter()
results = run_experiments([cfg for _, cfg in runs], Xtr, Xte)
record.duration("training (or loading from the run cache)", time.perf_counter() - start)

# %% [markdown]
# ## Probe, sparsity and reconstruction per run
#
# Reconstruction through $W^\top$ (`reconstruction_mse`, $\lVert x - W^\top a\rVert^2$) is reported
# because the paper reports it, but it says little for our model: nothing ties the scale of $a$ to
# the pixels, and the variance term pushes activations to a large scale. The fair measure for a
# model without a decoder is the FVU of the best *linear* readout fitted on the training features
# (least squares with a bias) and scored on the test images; the SAE gets the same readout beside
# its own decoder's FVU.

# %%
rows = []
probe_start = time.perf_counter()
for (name, cfg), res in progress(list(zip(runs, results)), desc="probes and readouts", unit="runs"):
    row = {"model": name, "seed": cfg.seed, **evaluate_run(res, Xtr, Xte, ytr, yte, probe_max_iter)}
    model = res.model()
    row["recon_mse_through_WT"] = reconstruction_mse(Xte, features(model, Xte), model.W)
    rows.append(row)
metrics = pd.DataFrame(rows)
record.duration("probes and readouts", time.perf_counter() - probe_start)
record.table("metrics", metrics)
metrics.round(4)

# %%
cols = ["probe_accuracy", "l0", "n_params", "readout_fvu", "decoder_fvu", "recon_mse_through_WT",
        "dead_units",
        "dead_by_firing", "mean_activation", "train_seconds"]
summary = mean_std(metrics, "model", cols)
summary.T

# %% [markdown]
# ### Raw pixels as features
# The same probe on the 784 raw pixels: the floor that any learned 64-feature code is judged against.

# %%
if raw_pixel_probe:
    t0 = time.perf_counter()
    raw_acc = linear_probe_accuracy(Xtr, ytr, Xte, yte, max_iter=probe_max_iter)
    record.duration("raw-pixel probe", time.perf_counter() - t0)
else:
    raw_acc = float("nan")
record.table("raw_pixel_probe", pd.DataFrame([{"features": "raw pixels (784)", "probe_accuracy": raw_acc}]))
print(f"raw-pixel probe accuracy: {raw_acc:.4f}")

# %% [markdown]
# ## Figure 3: probe accuracy, sparsity and reconstruction

# %%
fig, axes = plt.subplots(1, 3, figsize=(9, 2.9))
panels = [("probe_accuracy", "linear-probe test accuracy (%)", 100),
          ("l0", "L0: active units per image (of 64)", 1),
          ("readout_fvu", "FVU of a linear readout (test)", 1)]
jitter = np.linspace(-0.08, 0.08, len(seeds))
for ax, (col, label, k) in zip(axes, panels):
    for i, name in enumerate(["ours", "sae"]):  # a dot plot: the axis need not start at zero
        v = (metrics.loc[metrics.model == name, col] * k).to_numpy()
        ax.scatter(i + jitter[:len(v)], v, color=COLORS[name], s=12, alpha=0.6, zorder=2)
        ax.errorbar(i + 0.22, v.mean(), yerr=v.std(ddof=1) if len(v) > 1 else 0, fmt="o", color="k", ms=5,
                    capsize=4, zorder=3)
    ax.set_xticks([0, 1], ["ours (no decoder)", "standard SAE"])
    ax.set_xlim(-0.5, 1.6)
    ax.set_ylabel(label)
if raw_pixel_probe:
    axes[0].axhline(raw_acc * 100, color=COLORS["paper"], ls="--", lw=1, label="raw pixels")
    axes[0].legend(loc="lower left")
fig.suptitle(f"MNIST, 64 units: coloured dots are single seeds ({len(seeds)}), "
             "black the mean ± std over seeds")
paths = save_figure(fig, "fig3_benchmark", repo_path(figures_dir))

# %% [markdown]
# ## Figure 4: the features
# The 64 rows of $W$ as 28 x 28 images (seed 1), each panel on its own symmetric colour scale
# (red positive, blue negative).

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 5.2))
for ax, name in zip(axes, ["ours", "sae"]):
    i = next(k for k, (n, c) in enumerate(runs) if n == name)
    W = results[i].model().W.detach().numpy()
    tiles = np.zeros((8 * 29 - 1, 8 * 29 - 1))
    tiles[:] = np.nan
    for j, w in enumerate(W):
        r, c = divmod(j, 8)
        tiles[r * 29:r * 29 + 28, c * 29:c * 29 + 28] = w.reshape(28, 28) / max(np.abs(w).max(), 1e-12)
    ax.imshow(tiles, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_title({"ours": "ours: LSE + InfoMax, no decoder", "sae": "standard SAE (encoder weights)"}
                 [name] + f", seed {runs[i][1].seed}")
    ax.axis("off")
feature_paths = save_figure(fig, "fig4_features", repo_path(figures_dir))

# %% [markdown]
# ## Against the paper

# %%
g = metrics.groupby("model")
fmt = lambda m, col, k=100: f"{g[col].mean()[m] * k:.2f} ± {g[col].std(ddof=1).fillna(0)[m] * k:.2f}"  # noqa: E731
comparison = pd.DataFrame({
    "paper: ours": ["93.43 ± 0.38", "17.2", "50,240"],
    "this book: ours": [fmt("ours", "probe_accuracy"), f"{g.l0.mean()['ours']:.1f}",
                        f"{int(g.n_params.first()['ours']):,}"],
    "paper: SAE": ["90.26 ± 0.32", "32.2", "101,200"],
    "this book: SAE": [fmt("sae", "probe_accuracy"), f"{g.l0.mean()['sae']:.1f}",
                       f"{int(g.n_params.first()['sae']):,}"],
}, index=["linear probe accuracy (%)", "L0 (of 64)", "parameters"])
record.table("paper_comparison", comparison.reset_index(names="metric"))
record.close(figures=[p.name for p in paths + feature_paths], raw_pixel_probe_accuracy=raw_acc)
comparison

# %% [markdown]
# ## What it shows
#
# - **The headline reproduces.** The decoder-free encoder's features support a better linear
#   probe than the standard SAE's (about 93% against about 90%, the paper's 93.43% and 90.26%
#   within a fraction of a point and within the seed-to-seed spread), at about half the L0
#   (about 17 against about 32 active units per image, the paper's 17.2 and 32.2) and with half
#   the parameters (50,240 against 101,200: no decoder).
# - **Sparsity and probe accuracy are not the whole story.** A raw-pixel probe reaches about
#   92%, so the SAE's 64 features lose class information against the pixels while ours keep a
#   little more than the pixels expose linearly.
# - **Reconstruction favours the SAE, as it should.** Through $W^\top$ our model's error is
#   meaningless (about $4 \times 10^{10}$ per image against a mean squared image norm of about 89: nothing
#   ties the scale of $a$ to the pixels, and the variance term drives activations to tens; the
#   SAE's encoder weights give about 88 the same way, because its decoder, not $W^\top$,
#   reconstructs).
#   The fair comparison is the FVU of a fitted linear readout: about 0.35 for ours against about
#   0.24 for the SAE, whose readout is almost exactly its own decoder (decoder FVU about 0.24).
#   The decoder-free objective never asks for reconstruction; that it still keeps 65% of the
#   pixel variance linearly recoverable is what lets it function as a code at all.
# - **The variance rule for dead units fails on the SAE**: it counts about 60 of the SAE's 64
#   units as dead (their activations are on the pixel scale, so their variance is below 0.01
#   even when they fire), while the firing rule finds about 30 units that never fire on more
#   than 0.1% of test images. The figure of the SAE's features shows the same split: about half
#   its units are untrained random filters (the noise-like panels, which the paper describes),
#   the rest are smooth stroke detectors. Ours has no dead unit by either rule.
# - Training times are per run, with the runs of one model kind trained together as one batched
#   program (the `runs_trained_together` column); the SAE costs more per run because it has a
#   second layer to multiply through and differentiate.
