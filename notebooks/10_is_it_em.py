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
# # 10. Is it EM? What the objective optimises
#
# **Question.** The paper's claim is that gradient descent on L_lse *is* EM: the gradient with
# respect to each unit's output is that unit's responsibility r = softmax(-a) (notebook 1 checks
# the identity to rounding). An identity of gradients says what one step does. Whether training
# *behaves* like EM depends on more: EM converges to a fixed point of a bounded objective, and
# its responsibilities are a soft clustering of the data. This notebook asks four things of the
# paper's model and objective, at the paper's settings (784 -> 64, ReLU, Adam 1e-3, batch 128,
# 100 epochs, all lambdas 1):
#
# 1. Does the objective have a minimum for training to converge to?
# 2. Does it, once the model is bounded, and what happens to the features?
# 3. Where does the responsibility go, and does it agree with a mixture fitted by explicit EM?
# 4. Does an explicit EM on the same model and objective (E-step, then M-steps with the
#    responsibilities held fixed) follow gradient descent?
#
# **The scale direction (derivation).** Write a = relu(W x + b) and scale the first layer,
# (W, b) -> (cW, cb) with c > 0. ReLU is positively homogeneous, so every activation becomes
# c a and which units are on does not change. Term by term, with v_j the minibatch variance of
# unit j, K units and B samples:
#
# - L_var(c a) = -sum_j log(c^2 v_j + eps) = L_var(a) - 2K log c when eps = 0: it falls without
#   bound as c grows.
# - L_tc(c a) = L_tc(a): a correlation does not depend on scale (up to its 1e-8 guard).
# - L_lse(c a) = -sum_n log sum_j exp(-c a_nj), whose derivative in c is
#   sum_n sum_j r_nj(c) a_nj >= 0: LSE prefers small activations. But if sample n has m_n >= 1
#   units at exactly zero, its term stays between -log K and -log m_n for every c: bounded.
#
# So dL/dc = sum_n sum_j r_nj a_nj - 2 sum_j v_j / (v_j + eps). As c grows, r moves onto the
# units at zero, where r_nj a_nj = 0, and the first part goes to 0 while the second stays near
# 2K = 128: **as long as every sample leaves some unit at zero, the loss can always be lowered by
# scaling the first layer up, and it has no minimum.** In EM's terms, the variance term plays the
# log-determinant of a Gaussian mixture without the data term that would balance it. What the
# derivation predicts, and this notebook measures: the weights' norm grows for as long as
# training runs; the loss keeps falling mostly through L_var; each sample's responsibility-weighted
# energy sum_j r_j a_j is small (the scale keeps growing while its minibatch sum is below 2K,
# i.e. below 2K / B = 1 per sample); and training does not reach a fixed point.
#
# **Method.**
# - *The paper's runs* (seeds below; the same runs as notebook 2's `lse_var_tc` and notebook 3's
#   ours, shared through the run cache): per epoch, the loss terms, the parameters' norm and their
#   relative change over the epoch (the engine records both). The activation scale per epoch is
#   read off the variance term itself: -L_var / (2K) is the mean over units of log std(a_j) on a
#   minibatch, so exp(-L_var / 2K) is the geometric-mean standard deviation of the units. On the
#   trained models, the objective is evaluated on the test images at scaled copies (cW, cb) and
#   the measured slope at c = 1 is compared with the formula above.
# - *Two bounded variants*, each trained like the paper's runs: **(a) unit rows**: W's rows are
#   projected onto the unit sphere before the first step and after every step (the bias stays
#   free); activations are then bounded by ||x|| + |b|. **(b) scale-free variance**: L_var is
#   replaced by -sum_j log(v_j + eps) + K log(mean_k v_k + eps), which is unchanged by scaling
#   and still lowest when all units carry equal variance; then nothing rewards a larger scale and
#   LSE's preference for small activations is all that sets it (`encoder_study.models.kinds`,
#   `encoder_unit_rows` and `encoder_scale_free`).
# - *Responsibilities*: on the test images, each sample's share of responsibility on units at
#   exactly zero (`metrics.silent_responsibility_share`); and the agreement (normalised mutual
#   information of the soft assignments, `agreement.soft_nmi`; and of the argmax assignments) with
#   a 64-component diagonal Gaussian mixture fitted by explicit EM on the training images'
#   top principal components (`agreement.fit_pca_mixture`, one per seed, as in notebook 7), for
#   three energies: softmax(-a) (the paper's), softmax(-z) (the pre-activation: no unit cut off at
#   zero) and softmax(-a / s) with s_j unit j's standard deviation on the training images (a
#   scale-free energy). For scale: the untrained layer (chance) and two mixtures of different seeds
#   (how far explicit EM agrees with itself). Intervals: 95% bootstrap over test images (the same
#   resampled images for every seed) of the mean over seeds, in the "basic" form: a mutual
#   information computed on resampled rows is biased upward by the repeats, and the basic interval
#   reflects the resampled quantiles about the full-sample value to correct it.
# - *Explicit EM beside gradient descent* (`encoder_em`): the E-step's parameters are kept
#   beside the model; each minibatch's responsibilities are q = softmax(-a) under them (what an
#   E-step over the whole training set would give those samples), and the optimizer's steps
#   between E-steps lower the auxiliary function U = sum q a + sum q log q (>= L_lse, equal right
#   after an E-step) plus the InfoMax terms with q fixed: a generalised EM (M-steps lower U without
#   minimising it). An E-step every step is gradient descent exactly (tested in float64; here one
#   seed run that way as the check); every 20 steps, every epoch (469 steps) and every 5 epochs it
#   is not. Same seeds, so the same start and the same minibatches as the paper's runs.
#
# Findings below are written by code from this notebook's tables, so they follow a rerun.
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
estep_every: list[int] = [20, 469, 2345]  # optimizer steps between E-steps (469: one epoch)
scales: list[float] = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]  # c in (cW, cb)
mixture_pca_dims: int = 50
bootstrap_resamples: int = 1000
probe_max_iter: int = 5000
results_dir: str = "scratch/10_is_it_em"
figures_dir: str = "scratch/figures"

# %%
# refused before any work: metrics take variances over the test images (at least 2)
params = guard.check(
    globals(),
    at_least={"n_train": 2, "n_test": 2, "epochs": 1, "probe_max_iter": 1, "mixture_pca_dims": 1,
              "bootstrap_resamples": 1},
)

import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from encoder_study.book.data import mnist_tensors
from encoder_study.book.progress import progress
from encoder_study.book.record import COLORS, mean_std, repo_path, save_figure, start_notebook
from encoder_study.evaluation.agreement import bootstrap_interval, fit_pca_mixture, hard, soft_nmi
from encoder_study.evaluation.ground_truth import matched_cosines
from encoder_study.evaluation.metrics import features, l0, responsibilities, silent_responsibility_share
from encoder_study.evaluation.scoring import evaluate_run
from encoder_study.models.config import RunConfig
from encoder_study.models.losses import LossConfig, combined_loss
from encoder_study.models.model import build_run_model
from encoder_study.training.runs import run_experiments

record = start_notebook(results_dir, params)
data = mnist_tensors(n_train=n_train, n_test=n_test)
K, B = 64, 128
VARIANTS = {"paper": "encoder", "unit rows": "encoder_unit_rows", "scale-free var": "encoder_scale_free"}
runs = [(name, RunConfig(model=model, seed=s, epochs=epochs))
        for name, model in VARIANTS.items() for s in seeds]
runs += [(f"EM every {e}", RunConfig(model="encoder_em", seed=s, epochs=epochs, knobs={"estep_every": e}))
         for e in estep_every for s in seeds]
# the check: with an E-step before every step, EM is gradient descent (one seed)
runs += [("EM every 1", RunConfig(model="encoder_em", seed=seeds[0], epochs=epochs,
                                  knobs={"estep_every": 1}))]
start = time.perf_counter()
results = dict(zip([(n, c.seed) for n, c in runs], run_experiments([c for _, c in runs], data["train_x"],
                                                                     data["test_x"])))
record.duration("training (or loading from the run cache)", time.perf_counter() - start)
steps_per_epoch = -(-len(data["train_x"]) // B)
print(f"{len(runs)} runs; {steps_per_epoch} optimizer steps per epoch")

# %% [markdown]
# ## 1. The scale direction, measured
#
# Per epoch for the paper's runs: each loss term (mean over the epoch's minibatches), the norm of
# all parameters, the geometric-mean activation scale exp(-L_var / 2K), and how far the
# parameters moved in the epoch relative to their norm.

# %%
curves = pd.DataFrame([{"model": n, "seed": s, **h} for (n, s), r in results.items() for h in r.history])
curves["objective"] = curves.lse + curves["var"] + curves.tc  # the paper's L (em_gap not included)
curves["activation_scale"] = np.exp(-curves["var"] / (2 * K))
curves["rel_loss_change"] = (curves.groupby(["model", "seed"]).objective.diff().abs()
                             / curves.groupby(["model", "seed"]).objective.shift().abs())
record.table("curves", curves)
paper = curves[curves.model == "paper"]
late = paper[paper.epoch > min(10, epochs - 1)]
moves = late.groupby("seed").agg(lse_move=("lse", lambda s: s.max() - s.min()),
                                 var_fall=("var", lambda s: s.iloc[0] - s.iloc[-1]),
                                 norm_growth=("param_norm", lambda s: s.iloc[-1] / s.iloc[0]))
moves

# %% [markdown]
# **The objective along the scale direction.** Each trained paper run's objective on the test
# images (in minibatches of 128, averaged) at (cW, cb) for the c of the parameters, and the slope
# at c = 1 measured by central differences against the formula
# sum r a - 2 sum_j v_j / (v_j + eps).

# %%
@torch.no_grad()
def objective_at_scale(model, X, c, batch=B):
    """Mean over minibatches of the paper's terms at (cW, cb), and of the formula's two parts."""
    W, b = model.W.double(), model.b.double()
    rows = []
    for i in range(0, len(X) - batch + 1, batch):
        a = torch.relu(c * (X[i:i + batch].double() @ W.T + b))
        out = combined_loss(a, W, LossConfig())
        v = a.var(dim=0)
        rows.append({"lse": float(out["lse"]), "var": float(out["var"]), "tc": float(out["tc"]),
                     "r_a": float((responsibilities(a) * a).sum()),
                     "two_k_share": float((2 * v / (v + 1e-6)).sum())})
    return pd.DataFrame(rows).mean().to_dict()


scale_rows, slopes = [], []
for s in seeds:
    model = results[("paper", s)].model()
    for c in scales:
        scale_rows.append({"seed": s, "c": c, **objective_at_scale(model, data["test_x"], c)})
    h = 1e-4
    lo, at, hi = (objective_at_scale(model, data["test_x"], c) for c in (1 - h, 1.0, 1 + h))
    total = lambda d: d["lse"] + d["var"] + d["tc"]  # noqa: E731
    slopes.append({"seed": s, "measured_slope": (total(hi) - total(lo)) / (2 * h),
                   "formula_slope": at["r_a"] - at["two_k_share"], "sum_r_a_per_batch": at["r_a"],
                   "r_a_per_sample": at["r_a"] / B})
scale_table = pd.DataFrame(scale_rows)
scale_table["objective"] = scale_table.lse + scale_table["var"] + scale_table.tc
slopes = pd.DataFrame(slopes)
record.table("scale_direction", scale_table)
record.table("scale_slope", slopes)
display(scale_table.groupby("c")[["lse", "var", "tc", "objective"]].mean().round(2))
slopes.round(3)

# %% [markdown]
# ## 2. Bounded variants: do they reach a fixed point, and what do their features become?
#
# Per run, on the test images: the linear probe (standardised features, as everywhere in the
# book), L0 at the paper's threshold (a > 0.01) and counting every a > 0 (scale-free), dead units
# (the paper's variance rule, which depends on scale, and never active), redundancy,
# responsibility entropy, and whether training has come to rest: the parameters' norm at the end
# against after epoch 1 and against ten epochs before the end, the objective's mean change per
# epoch over those last ten epochs (a drift, not minibatch noise), and the last epoch's relative
# parameter change. At a fixed point the objective stops drifting and the norm stops growing;
# the relative parameter change does not fall to zero under Adam at a constant rate even there
# (Adam's step has about the same size however small the gradient, so minibatch noise keeps it
# moving), so it says more about scale than about rest.

# %%
rows = []
feats = {}
late_span = min(10, epochs - 1) or 1  # the last epochs over which drift is measured
probe_start = time.perf_counter()
for (name, s), res in progress(list(results.items()), desc="probes", unit="runs"):
    scores = evaluate_run(res, data["train_x"], data["test_x"], data["train_y"], data["test_y"],
                          probe_max_iter)
    model = res.model()
    A, Z = features(model, data["test_x"]), (data["test_x"] @ model.W.T + model.b).detach()
    feats[(name, s)] = (A, Z, features(model, data["train_x"]).std(dim=0))
    hist = curves[(curves.model == name) & (curves.seed == s)]
    rows.append({"model": name, "seed": s, "probe_accuracy": scores["probe_accuracy"], "l0": scores["l0"],
                 "l0_any": l0(A, threshold=0.0), "dead_units": scores["dead_units"],
                 "never_active": int(((A > 0).sum(0) == 0).sum()), "redundancy": scores["redundancy"],
                 "responsibility_entropy": scores["responsibility_entropy"],
                 "silent_share": float(silent_responsibility_share(A).mean()),
                 "norm_growth": hist.param_norm.iloc[-1] / hist.param_norm.iloc[0],
                 "late_norm_growth": hist.param_norm.iloc[-1] / hist.param_norm.iloc[-1 - late_span],
                 "late_objective_slope": (hist.objective.iloc[-1] - hist.objective.iloc[-1 - late_span])
                 / late_span,
                 "final_rel_loss_change": hist.rel_loss_change.iloc[-1],
                 "final_param_change": hist.param_change.iloc[-1],
                 "final_objective": hist.objective.iloc[-1], "train_seconds": res.seconds})
metrics = pd.DataFrame(rows)
record.duration("probes and metrics", time.perf_counter() - probe_start)
record.table("metrics", metrics)
COLS = ["probe_accuracy", "l0", "l0_any", "dead_units", "never_active", "redundancy",
        "responsibility_entropy", "silent_share", "norm_growth", "late_norm_growth", "late_objective_slope",
        "final_param_change"]
mean_std(metrics, "model", COLS)

# %% [markdown]
# ## Figure 14: the scale direction and the bounded variants
#
# Left: the loss terms of the paper's runs per epoch (each as its change from epoch 1, so the
# three share an axis). Middle: the parameters' norm per epoch for the paper's objective and the
# two bounded variants (log scale). Right: the relative change of the parameters per epoch (log
# scale): a run at a fixed point would fall towards zero. Lines: mean over seeds; bands: min to
# max over seeds.

# %%
SHADES = {"paper": COLORS["ours"], "unit rows": "#2ca02c", "scale-free var": "#9467bd"}
fig, axes = plt.subplots(1, 3, figsize=(11, 3.3))
ax = axes[0]
for term, color in (("lse", "#1f77b4"), ("var", "#ff7f0e"), ("tc", "#2ca02c"), ("objective", "k")):
    per_seed = paper.pivot(index="epoch", columns="seed", values=term)
    change = per_seed - per_seed.iloc[0]
    label = {"objective": "total"}.get(term, "L_" + term)
    ax.plot(change.index, change.mean(axis=1), color=color, label=label)
    ax.fill_between(change.index, change.min(axis=1), change.max(axis=1), color=color, alpha=0.2, lw=0)
ax.set_xlabel("epoch"), ax.set_ylabel("change since epoch 1"), ax.legend(fontsize=7)
ax.set_title("paper's objective: which term falls", fontsize=9)
for ax, column, label in ((axes[1], "param_norm", "norm of all parameters"),
                          (axes[2], "param_change", "relative parameter change per epoch")):
    for name, color in SHADES.items():
        per_seed = curves[curves.model == name].pivot(index="epoch", columns="seed", values=column)
        ax.plot(per_seed.index, per_seed.mean(axis=1), color=color, label=name)
        ax.fill_between(per_seed.index, per_seed.min(axis=1), per_seed.max(axis=1), color=color, alpha=0.2,
                        lw=0)
    ax.set_yscale("log"), ax.set_xlabel("epoch"), ax.set_ylabel(label), ax.legend(fontsize=7)
axes[1].set_title("scale: grows unless bounded", fontsize=9)
axes[2].set_title("towards a fixed point?", fontsize=9)
paths = save_figure(fig, "fig14_scale_direction", repo_path(figures_dir))

# %% [markdown]
# ## 3. Where the responsibility goes, and agreement with explicit EM

# %%
Xtr_np, Xte_np = data["train_x"].double().numpy(), data["test_x"].double().numpy()
mix_start = time.perf_counter()
mixtures = {s: fit_pca_mixture(Xtr_np, K, min(mixture_pca_dims, Xtr_np.shape[1]), seed=s) for s in seeds}
G = {s: mixtures[s].responsibilities(Xte_np) for s in seeds}
record.duration("explicit-EM mixtures", time.perf_counter() - mix_start)


def energies(name, s):
    A, Z, std = feats[(name, s)]
    return {"softmax(-a)": A, "softmax(-z)": Z, "softmax(-a/s)": A / torch.where(std > 0, std, 1.0)}


assignments = {}
for name in metrics.model.unique():
    for s in seeds:
        if (name, s) not in feats:
            continue
        for energy, E in energies(name, s).items():
            if energy == "softmax(-a)" or name in VARIANTS:  # other energies only for the three objectives
                assignments[(name, energy, s)] = responsibilities(E).numpy()
for s in seeds:  # chance: the untrained layer of the same seed
    A0 = features(build_run_model(RunConfig(seed=s), data["test_x"].shape[1], s), data["test_x"])
    assignments[("untrained", "softmax(-a)", s)] = responsibilities(A0).numpy()
if len(seeds) > 1:  # explicit EM against itself: each mixture against the next seed's
    for a, b in zip(seeds, seeds[1:] + seeds[:1]):
        assignments[("mixture, other seed", "posterior", a)] = G[b]

def mean_nmi(R, idx, assign=lambda M: M):
    """Mean over the seeds in R of the NMI of R[seed] with the seed's mixture, on rows idx
    (with repeats: a bootstrap resample, taken as per-row counts)."""
    counts = np.bincount(idx, minlength=n_te)
    return float(np.mean([soft_nmi(assign(R[s]), assign(G[s]), weights=counts) for s in R]))


agree_rows = []
n_te = len(Xte_np)
everything = np.arange(n_te)
for (name, energy) in dict.fromkeys((n, e) for n, e, _ in assignments):
    R = {s: assignments[(name, energy, s)] for s in seeds if (name, energy, s) in assignments}
    lo, hi = bootstrap_interval(lambda idx, R=R: mean_nmi(R, idx), n_te, resamples=bootstrap_resamples,
                                seed=0, method="basic")
    per_seed = [soft_nmi(R[s], G[s]) for s in R]
    agree_rows.append({"model": name, "energy": energy, "nmi_soft": mean_nmi(R, everything),
                       "nmi_soft_lo": lo, "nmi_soft_hi": hi, "nmi_hard": mean_nmi(R, everything, hard),
                       "nmi_soft_seed_std": float(np.std(per_seed, ddof=1)) if len(R) > 1 else np.nan})
agreement = pd.DataFrame(agree_rows)
record.table("em_agreement", agreement)
agreement.round(3)

# %% [markdown]
# ## Figure 15: where the responsibility goes, and what it agrees with
#
# Left: per test image, the share of its responsibility softmax(-a) on units at exactly zero
# (histogram over images, all seeds). Right: soft NMI with the explicit-EM mixture, with the 95%
# bootstrap interval of the mean over seeds (basic form, corrected for the resampling bias, so a
# marker can sit just above its bar), for each model and energy; the dashed line is the
# untrained layer (chance), the dotted line one mixture against another seed's (explicit EM's
# agreement with itself).

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1, 1.6]})
ax = axes[0]
bins = np.linspace(0, 1, 41)
for name, color in SHADES.items():
    share = np.concatenate([silent_responsibility_share(feats[(name, s)][0]) for s in seeds])
    ax.hist(share, bins=bins, color=color, alpha=0.5, label=name)
ax.set_xlabel("share of the image's responsibility on units at 0"), ax.set_ylabel("test images (all seeds)")
ax.legend(fontsize=7), ax.set_title("softmax(-a) goes to the silent units", fontsize=9)
ax = axes[1]
shown = agreement[~agreement.model.isin(["untrained", "mixture, other seed"])].reset_index(drop=True)
markers = {"softmax(-a)": "o", "softmax(-z)": "s", "softmax(-a/s)": "^"}
order = list(dict.fromkeys(shown.model))
for _, r in shown.iterrows():
    x = order.index(r.model) + (list(markers).index(r.energy) - 1) * 0.22
    color = SHADES.get(r.model, "#7f7f7f")
    ax.vlines(x, r.nmi_soft_lo, r.nmi_soft_hi, color=color, lw=1.2)
    ax.plot(x, r.nmi_soft, markers[r.energy], color=color, ms=5,
            label=r.energy if r.model == order[0] else None)
for name, style in (("untrained", "--"), ("mixture, other seed", ":")):
    if (agreement.model == name).any():
        ax.axhline(float(agreement[agreement.model == name].nmi_soft.iloc[0]), color="k", ls=style, lw=1,
                   label=name + (" (chance)" if name == "untrained" else " (EM vs EM)"))
ax.set_xticks(range(len(order)), order, rotation=20, fontsize=7)
ax.set_ylim(0, None), ax.set_ylabel("soft NMI with the explicit-EM mixture")
ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
ax.set_title("agreement with explicit EM", fontsize=9)
paths += save_figure(fig, "fig15_responsibilities", repo_path(figures_dir))

# %% [markdown]
# ## 4. Explicit EM beside gradient descent
#
# Each EM run against the paper's gradient-descent run of the same seed (same start, same
# minibatches): the final objective, the parameters' norm, how far the final weights are from
# gradient descent's (rows matched one to one by cosine, mean matched cosine; the same measure
# between two gradient-descent seeds gives what different runs of one method differ by), and the
# EM gap at the end (the mean per minibatch of KL(q || r) summed over its samples: how stale the
# responsibilities were).

# %%
em_rows = []
W_gd = {s: results[("paper", s)].state["linear.weight"].double().numpy() for s in seeds}
for name in ["EM every 1"] + [f"EM every {e}" for e in estep_every]:
    for s in seeds:
        if (name, s) not in results:
            continue
        res = results[(name, s)]
        hist = curves[(curves.model == name) & (curves.seed == s)]
        gd = curves[(curves.model == "paper") & (curves.seed == s)]
        em_rows.append({"model": name, "seed": s,
                        "objective_minus_gd": hist.objective.iloc[-1] - gd.objective.iloc[-1],
                        "max_abs_objective_gap_over_epochs": float(np.max(np.abs(hist.objective.values
                                                                                 - gd.objective.values))),
                        "norm_ratio_to_gd": hist.param_norm.iloc[-1] / gd.param_norm.iloc[-1],
                        "matched_cosine_to_gd": float(
                            matched_cosines(res.state["linear.weight"].double().numpy(), W_gd[s]).mean()),
                        "final_em_gap": hist.em_gap.iloc[-1]})
if len(seeds) > 1:
    for a, b in zip(seeds, seeds[1:]):
        em_rows.append({"model": "paper (other seed)", "seed": a,
                        "matched_cosine_to_gd": float(matched_cosines(W_gd[a], W_gd[b]).mean())})
em = pd.DataFrame(em_rows)
record.table("em_vs_gd", em)
em_summary = em.groupby("model", sort=False).agg(["mean", "std"]).drop(columns="seed")
em_summary.round(4)

# %% [markdown]
# ## Figure 16: explicit EM against gradient descent, per epoch
#
# The paper's objective (left, as the difference from gradient descent of the same seed) and the
# mean EM gap per minibatch (right, log scale) for each E-step interval. Lines: mean over seeds;
# bands: min to max over seeds.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
gd = curves[curves.model == "paper"].set_index(["seed", "epoch"]).objective
palette = plt.cm.viridis(np.linspace(0, 0.85, len(estep_every)))
for e, color in zip(estep_every, palette):  # the every-1 check lies on 0 (float32 rounding); not drawn
    c = curves[curves.model == f"EM every {e}"].set_index(["seed", "epoch"])
    diff = (c.objective - gd).unstack("seed")
    axes[0].plot(diff.index, diff.mean(axis=1), color=color, label=f"E-step every {e} steps")
    axes[0].fill_between(diff.index, diff.min(axis=1), diff.max(axis=1), color=color, alpha=0.2, lw=0)
    gap = c.em_gap.unstack("seed").clip(lower=1e-12)
    axes[1].plot(gap.index, gap.mean(axis=1), color=color, label=f"every {e}")
    axes[1].fill_between(gap.index, gap.min(axis=1), gap.max(axis=1), color=color, alpha=0.2, lw=0)
axes[0].axhline(0, color="k", lw=0.8)
axes[0].set_xlabel("epoch"), axes[0].set_ylabel("objective, EM minus gradient descent")
axes[0].legend(fontsize=7)
axes[1].set_yscale("log"), axes[1].set_xlabel("epoch"), axes[1].set_ylabel("EM gap KL(q || r) per minibatch")
axes[1].legend(fontsize=7), axes[1].set_title("how stale the responsibilities are", fontsize=9)
axes[0].set_title("same objective, explicit EM", fontsize=9)
paths += save_figure(fig, "fig16_explicit_em", repo_path(figures_dir))
record.close(figures=[p.name for p in paths], steps_per_epoch=steps_per_epoch)

# %% [markdown]
# ## What it shows
#
# The findings, written by code from the tables above (a rerun rewrites them); the verdict that
# follows them states no measured number.

# %%
def ms(col, model, table=metrics, fmt=".3g"):
    """'mean ± std over seeds' of a column for one model."""
    v = table[table.model == model][col]
    return f"{v.mean():{fmt}} ± {v.std(ddof=1):.2g}" if len(v) > 1 else f"{v.mean():{fmt}}"


def nmi(model, energy):
    """Its soft NMI with the mixture and the 95% interval, as text, and the row."""
    r = agreement[(agreement.model == model) & (agreement.energy == energy)].iloc[0]
    return f"{r.nmi_soft:.3f} [{r.nmi_soft_lo:.3f}, {r.nmi_soft_hi:.3f}]", r


def versus(a, b):
    """How two agreement intervals relate, in words."""
    (_, ra), (_, rb) = nmi(*a), nmi(*b)
    if ra.nmi_soft_lo <= rb.nmi_soft_hi and rb.nmi_soft_lo <= ra.nmi_soft_hi:
        return "the intervals overlap"
    return "above it, the intervals apart" if ra.nmi_soft > rb.nmi_soft else "below it, the intervals apart"


falls = scale_table.groupby("c").objective.mean()
monotone = bool((np.diff(falls.values) < 0).all())
drift = metrics.groupby("model").late_objective_slope.mean()
check = em[em.model == "EM every 1"]
stale = [e for e in estep_every if e > 1]
other_seed = em[em.model == "paper (other seed)"].matched_cosine_to_gd
lse_share = 1 - metrics[metrics.model == "paper"].silent_share.mean()
ours = ("paper", "softmax(-a)")
part1 = (
    "**1. No minimum, as derived.** On the trained paper runs the test objective falls "
    f"{'at every step' if monotone else 'NOT at every step'} of c from {scales[0]:g} to "
    f"{scales[-1]:g} ({falls.iloc[0]:.0f} to {falls.iloc[-1]:.0f}, mean over seeds); its slope at c = 1 "
    f"measured by differences, {slopes.measured_slope.mean():.2f}, equals the formula's "
    f"{slopes.formula_slope.mean():.2f}. "
    f"The responsibility-weighted energy sum_j r_j a_j is {slopes.r_a_per_sample.mean():.2g} per sample, "
    "where the scale would stop growing at 1. In training, after epoch "
    f"{min(10, epochs - 1)} the LSE term moves by at most {moves.lse_move.max():.0f} while the variance "
    f"term falls by {moves.var_fall.min():.0f}-{moves.var_fall.max():.0f} and the parameters' norm grows "
    f"{moves.norm_growth.min():.1f}-{moves.norm_growth.max():.1f}x; over the last {late_span} epochs the "
    f"objective still falls by {-drift['paper']:.2f} per epoch and the norm grows "
    f"{ms('late_norm_growth', 'paper')}x."
)
part2 = (
    "**2. Bounded variants.** Objective drift over the last epochs (per epoch): paper "
    f"{drift['paper']:+.3f}, unit rows {drift['unit rows']:+.3f}, scale-free variance "
    f"{drift['scale-free var']:+.3f}; norm growth over them {ms('late_norm_growth', 'paper')}, "
    f"{ms('late_norm_growth', 'unit rows')}, {ms('late_norm_growth', 'scale-free var')}. Probe accuracy "
    f"{ms('probe_accuracy', 'paper', fmt='.4f')}, {ms('probe_accuracy', 'unit rows', fmt='.4f')}, "
    f"{ms('probe_accuracy', 'scale-free var', fmt='.4f')}; units active (a > 0) per image "
    f"{ms('l0_any', 'paper')}, {ms('l0_any', 'unit rows')}, {ms('l0_any', 'scale-free var')}; redundancy "
    f"{ms('redundancy', 'paper')}, {ms('redundancy', 'unit rows')}, {ms('redundancy', 'scale-free var')}; "
    f"responsibility entropy (ln 64 = 4.16) {ms('responsibility_entropy', 'paper')}, "
    f"{ms('responsibility_entropy', 'unit rows')}, {ms('responsibility_entropy', 'scale-free var')}."
)
part3 = (
    "**3. The responsibility goes to the silent units.** Per image, the share of softmax(-a) on units at "
    f"exactly zero: paper {ms('silent_share', 'paper')}, unit rows {ms('silent_share', 'unit rows')}, "
    f"scale-free variance {ms('silent_share', 'scale-free var')}. So for the paper's model "
    f"{lse_share:.2g} of the LSE gradient lands on units that are on; the rest meets a ReLU that is off "
    "and moves nothing. Agreement with the explicit-EM mixture (soft NMI on all test images, mean over "
    "seeds; in brackets the 95% basic bootstrap interval, which corrects for the upward bias that "
    "repeated rows give a resampled NMI and so can sit just below the value beside it): paper "
    f"softmax(-a) {nmi('paper', 'softmax(-a)')[0]} against the untrained "
    f"layer's {nmi('untrained', 'softmax(-a)')[0]} ({versus(ours, ('untrained', 'softmax(-a)'))}); "
    f"softmax(-z) {nmi('paper', 'softmax(-z)')[0]}; the scale-free softmax(-a/s) "
    f"{nmi('paper', 'softmax(-a/s)')[0]}; unit rows softmax(-a) {nmi('unit rows', 'softmax(-a)')[0]}, "
    f"softmax(-a/s) {nmi('unit rows', 'softmax(-a/s)')[0]}"
    + (f"; one mixture against another seed's {nmi('mixture, other seed', 'posterior')[0]}" if len(seeds) > 1
       else "")
    + "."
)
part4 = (
    "**4. Explicit EM.** With an E-step every step (the check, seed "
    f"{seeds[0]}), EM ends {check.objective_minus_gd.iloc[0]:+.2g} from gradient descent's objective "
    "(float32 rounding in another order of operations; equal in float64 in the tests). With stale "
    "responsibilities, relative to gradient descent from the same start: "
    + "; ".join(
        f"every {e} steps, objective {ms('objective_minus_gd', f'EM every {e}', em)}, weights matched at "
        f"cosine {ms('matched_cosine_to_gd', f'EM every {e}', em, '.3f')}, probe "
        f"{ms('probe_accuracy', f'EM every {e}', fmt='.4f')} (gradient descent "
        f"{ms('probe_accuracy', 'paper', fmt='.4f')}), L0 {ms('l0', f'EM every {e}')}"
        for e in stale)
    + (f". Two gradient-descent seeds match at cosine {other_seed.mean():.3f}." if len(other_seed) else ".")
)
findings = "\n\n".join([part1, part2, part3, part4])
record.summary(findings)
display(Markdown(findings))

# %% [markdown]
# ## Verdict
#
# *What the implicit-EM claim predicts.* If gradient descent on this objective is EM, training
# should (i) converge to a fixed point of a bounded objective, (ii) assign each image, through its
# responsibilities, to the components that explain it, so that the assignment is a clustering
# comparable to an explicit mixture's, and (iii) behave the same whether the responsibilities are
# recomputed every step or held fixed for a while, since EM's M-step with fixed responsibilities
# is what each gradient step is said to be.
#
# *What holds.* The identity itself: the gradient of L_lse is the responsibility (notebook 1), and
# an explicit EM with an E-step before every step is gradient descent (here to float32 rounding,
# in the tests to float64). EM with responsibilities held fixed for up to one epoch also trains
# much like gradient descent (section 4: probe and L0 within gradient descent's seed range, the
# weights matched closely). Held for five epochs, the probe still is, but the code is clearly
# sparser and the weights have drifted further from gradient descent's: staleness is tolerated,
# not free.
#
# *What does not.* (i) The paper's objective has no minimum: scaling the first layer lowers it by
# 2K log c, and the runs do exactly that for as long as they train, so there is no fixed point
# for an EM reading to converge to; bounding the scale (unit rows) removes the drift. (ii) With
# ReLU, softmax(-a) puts nearly all of each image's responsibility on the units that are off, all
# of them equally: the E-step's "assignment" is the set of units an image does not drive, and its
# agreement with an explicit mixture is measured above against chance. (iii) Where EM with stale
# responsibilities follows gradient descent (up to an epoch), it does so for a reason that
# undercuts the reading rather than supporting it: the responsibility that lands on silent units
# passes no gradient (ReLU is off there), so the LSE term steers training only through the small
# share left on active units, and the InfoMax terms, which have no responsibilities in them, do
# most of the work.
#
# *So:* "gradient descent on LSE is implicit EM" is true as an identity of one step's gradient,
# and nothing more operational: the model trained by the paper's objective is not converging to
# an EM fixed point, and its responsibilities are not a clustering of the data. The useful
# features it learns (notebooks 3, 7) come from a decorrelated, growing, sparse code, which the
# bounded variants suggest needs neither the unbounded scale nor the EM reading. Notebooks 2 and 4
# read their entropies and loss curves in this light.
