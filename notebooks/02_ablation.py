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
# program (`encoder_study.training.engine`); each run still has its own seed, initialisation and
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
from encoder_study.book.record import ParameterGuard

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
from IPython.display import Markdown, display

from encoder_study.book.data import mnist_tensors
from encoder_study.book.progress import progress
from encoder_study.book.record import COLORS, mean_std, paper_numbers, repo_path, save_figure, start_notebook
from encoder_study.evaluation.metrics import (
    activation_summary,
    correlation,
    dead_units,
    features,
    firing_frequency,
    linear_probe_accuracy,
    plateau_epoch,
    usage_distribution,
)
from encoder_study.models.config import LossConfig, RunConfig
from encoder_study.training.runs import run_experiments

record = start_notebook(results_dir, params)
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
# the epoch loss never again improves by more than 0.1% of its total change. The figure's message,
# from its data, is printed under it.

# %%
curves = pd.DataFrame(curves)


fig, axes = plt.subplots(1, 4, figsize=(10, 2.9), layout="constrained")
plateaus = []
styles = ["-", "--", ":", "-."]
for ax, name in zip(axes, CONFIGS):
    for i, s in enumerate(seeds):
        c = curves[(curves.config == name) & (curves.seed == s)]
        stop = plateau_epoch(c.total.to_numpy())
        ax.plot(c.epoch, c.total, color=COLORS[name], ls=styles[i % len(styles)], lw=1.2, label=f"seed {s}")
        ax.plot(c.epoch.iloc[stop - 1], c.total.iloc[stop - 1], "o", color=COLORS[name], ms=4, mfc="white")
        plateaus.append({"config": name, "seed": s, "plateau_epoch": stop, "final_loss": c.total.iloc[-1]})
    ax.set_title(name), ax.set_xlabel("epoch")
    ax.ticklabel_format(axis="y", style="plain", useOffset=False)  # no offset: read the values as they are
axes[0].set_ylabel("training objective (epoch mean)")
axes[0].legend(fontsize=7, frameon=False)
fig.suptitle("Each configuration on its own y axis; open circle: the epoch it stops learning", fontsize=9)
loss_paths = save_figure(fig, "fig2b_ablation_loss_curves", repo_path(figures_dir))
plateaus = pd.DataFrame(plateaus)
record.table("plateaus", plateaus)
stops = plateaus.groupby("config", sort=False).plateau_epoch
display(
    Markdown(
        "**Figure 2b's message.** The epoch after which each configuration's objective stops "
        f"improving (of {int(curves.epoch.max())}; the seeds' range): "
        + "; ".join(f"{c} {g.min()}-{g.max()}" if g.min() != g.max() else f"{c} {g.min()}" for c, g in stops)
        + "."
    )
)
plateaus.groupby("config", sort=False)[["plateau_epoch", "final_loss"]].mean()

# %% [markdown]
# ## Against the paper

# %%
PAPER = paper_numbers()["ablation"]


def paper_redundancy(config: str) -> str:
    value = PAPER[config]["redundancy"]
    return "- (all dead)" if value is None else f"about {value:,}"


mean = agg[["dead_units", "dead_by_firing", "redundancy"]].mean()
comparison = pd.DataFrame({
    "paper: dead": {k: f"{PAPER[k]['dead_units']}/64" for k in CONFIGS},
    "ours: dead (variance rule)": {k: f"{mean.loc[k, 'dead_units']:.1f}/64" for k in CONFIGS},
    "ours: dead (never fires)": {k: f"{mean.loc[k, 'dead_by_firing']:.1f}/64" for k in CONFIGS},
    "paper: redundancy": {k: paper_redundancy(k) for k in CONFIGS},
    "ours: redundancy": {k: "- (all dead)" if mean.loc[k, "dead_units"] == 64
                         else f"{mean.loc[k, 'redundancy']:.0f}" for k in CONFIGS},
})
record.table("paper_comparison", comparison.reset_index(names="config"))
comparison

# %% [markdown]
# ## What it shows
#
# Written by code from the tables above, so a rerun rewrites the numbers. A note on reading the
# responsibility entropy: exp(H) is the number of equally weighted units that would give entropy
# H. With ReLU, softmax(-a) gives every unit at exactly zero the same, largest responsibility, so
# an entropy near ln(number of silent units) says the responsibility is spread evenly over the
# units a sample does not drive, not that it has picked a component (notebook 10 measures where
# the responsibility goes, and why the objective keeps lowering its loss by growing the
# activations' scale).

# %%
from encoder_study.models.losses import uniform_lse_value

m = metrics.groupby("config", sort=False)
mean, std = m.mean(numeric_only=True), m.std(numeric_only=True, ddof=1).fillna(0.0)


def v(config, col, fmt=".3g"):
    """'mean ± std over seeds' of a column, formatted."""
    text = f"{mean.loc[config, col]:{fmt}}"
    return text + (f" ± {std.loc[config, col]:.2g}" if len(seeds) > 1 else "")


def spread(config):
    """exp(entropy) against the units at or below the L0 threshold, per image."""
    e_h = np.exp(mean.loc[config, "responsibility_entropy"])
    return f"e^H = {e_h:.1f} vs {64 - mean.loc[config, 'l0']:.1f}"


all_dead = bool((metrics[metrics.config == "lse_only"].dead_units == 64).all())
plat = plateaus.groupby("config", sort=False).plateau_epoch
gap_seed = metrics.groupby("config").probe_accuracy.std(ddof=1).max() if len(seeds) > 1 else np.nan
rules_agree = bool((metrics.dead_units == metrics.dead_by_firing).all())
lse_gain = mean.loc["lse_var_tc", "probe_accuracy"] - mean.loc["var_tc_only", "probe_accuracy"]
full_probe = metrics[metrics.config == "lse_var_tc"].probe_accuracy
alone_probe = metrics[metrics.config == "var_tc_only"].probe_accuracy
removes = mean.loc["lse_var_tc", "redundancy"] < mean.loc["lse_var", "redundancy"] / 10
sparser = mean.loc["lse_var_tc", "l0"] + 2 * std.loc["lse_var_tc", "l0"] < mean.loc["var_tc_only", "l0"]
helpful = (mean.loc["lse_var", "probe_accuracy"] < mean.loc["var_tc_only", "probe_accuracy"]
           <= mean.loc["lse_var_tc", "probe_accuracy"])
dead, final = v("lse_only", "dead_units"), v("lse_only", "final_loss", ".1f")
lines = [
    f"- **LSE alone {'collapses' if all_dead else 'does not fully collapse'}**: dead units {dead} of 64, "
    f"final epoch loss {final} (the all-zero value is {uniform_lse_value(128, 64):.1f} per full batch; the "
    f"epoch's last batch is smaller), flat from epoch {plat.max().loc['lse_only']:.0f} at the latest by the "
    f"plateau rule (the paper: about epoch {PAPER['lse_only_stops_by_epoch']}; it states no rule). With no "
    "volume control every energy is pushed to 0, and ReLU makes that absorbing: a unit negative on every "
    "input gets no gradient again.",
    "- **The variance term prevents the collapse but leaves redundancy**: dead units "
    f"{v('lse_var', 'dead_units')}, redundancy {v('lse_var', 'redundancy', '.0f')} "
    f"(paper: {paper_redundancy('lse_var')}; maximum 4,032), effective rank of W "
    f"{v('lse_var', 'effective_rank', '.1f')} of 64.",
    f"- **Decorrelation {'removes' if removes else 'does not remove'} it**: redundancy "
    f"{v('lse_var_tc', 'redundancy', '.0f')} (paper: {paper_redundancy('lse_var_tc')}), "
    f"effective rank {v('lse_var_tc', 'effective_rank', '.1f')}, L0 {v('lse_var_tc', 'l0', '.1f')} of 64 "
    f"(paper, notebook 3's table: {paper_numbers()['benchmark']['ours']['l0']}). Responsibility entropy "
    f"{v('lse_var_tc', 'responsibility_entropy')} nats (ln 64 = 4.16; "
    f"{spread('lse_var_tc')} units at or below 0.01 per image): close to uniform over the silent units, "
    "not a confident assignment.",
    f"- **Without LSE** (`var_tc_only`): redundancy {v('var_tc_only', 'redundancy', '.0f')} (paper: "
    f"{paper_redundancy('var_tc_only')}), but L0 {v('var_tc_only', 'l0', '.1f')}: the code is not sparse. "
    f"Entropy {v('var_tc_only', 'responsibility_entropy')} nats ({spread('var_tc_only')}): spread over its "
    "few silent units, the same reading as above. "
    + ("LSE is what makes the code sparse." if sparser else "Here LSE does not make the code sparser."),
    f"- **Linear probe** (beyond the paper): full objective {v('lse_var_tc', 'probe_accuracy', '.4f')}, "
    f"InfoMax alone {v('var_tc_only', 'probe_accuracy', '.4f')}, LSE + variance "
    f"{v('lse_var', 'probe_accuracy', '.4f')}, LSE alone {v('lse_only', 'probe_accuracy', '.4f')} (every "
    f"feature zero: the majority class). The largest seed standard deviation of any configuration is "
    f"{gap_seed:.2g}; the full objective's probe differs from InfoMax alone's by {lse_gain:+.3f}"
    + (
        " (the two seed ranges overlap: within the spread)"
        if full_probe.min() <= alone_probe.max() and alone_probe.min() <= full_probe.max()
        else f" (every seed {'above' if lse_gain > 0 else 'below'} every seed of InfoMax alone)"
    )
    + (", and decorrelation is what turns LSE's sparsity from harmful into helpful (LSE + variance "
       "probes below InfoMax alone)." if helpful else "."),
    "- **The two dead-unit rules** (variance < 0.01, and active on < 0.1% of test images) "
    + ("agree on every run: the activations here are large (the variance term grows them, notebook 10), so "
       "the variance rule has no small-scale unit to misjudge. They disagree for the SAE of notebook 3, "
       "whose activations are on the pixel scale." if rules_agree else
       f"disagree on {int((metrics.dead_units != metrics.dead_by_firing).sum())} of {len(metrics)} runs."),
]
def percent(config):
    """The probe accuracy in percent, mean ± std over seeds."""
    text = f"{100 * mean.loc[config, 'probe_accuracy']:.2f}"
    return text + (f" ± {100 * std.loc[config, 'probe_accuracy']:.2f}" if len(seeds) > 1 else "")


table = [
    "| config | dead units | paper | redundancy | paper | L0 | probe accuracy (%) |",
    "|---|---|---|---|---|---|---|",
] + [
    f"| {c} | {v(c, 'dead_units', '.1f')} | {PAPER[c]['dead_units']}/64 | "
    + ("- (all dead)" if mean.loc[c, "dead_units"] == 64 else v(c, "redundancy", ".0f"))
    + f" | {paper_redundancy(c)} | {v(c, 'l0', '.1f')} | {percent(c)} |"
    for c in CONFIGS
]
findings = "\n".join(lines)
record.summary(
    f"MNIST, 64 units, {epochs} epochs, seeds {', '.join(map(str, seeds))}; mean ± std over seeds.\n\n"
    + "\n".join(table) + "\n\n" + findings
)
record.close(figures=[p.name for p in paths + loss_paths])
display(Markdown(findings))
