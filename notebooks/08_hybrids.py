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
from encoder_study.book import ParameterGuard

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

from encoder_study.book import COLORS, Record, repo_path, save_figure, use_style
from encoder_study.config import LossConfig, RunConfig
from encoder_study.data import mnist_tensors
from encoder_study.engine import initial_state
from encoder_study.evaluation import evaluate_codes
from encoder_study.ground_truth import matched_cosines
from encoder_study.metrics import (
    activation_summary,
    centre_surround_opposition,
    features,
    fvu,
    responsibilities,
    template_correlation,
    weight_input_alignment,
)
from encoder_study.model import build_run_model
from encoder_study.progress import progress
from encoder_study.runs import run_experiments

use_style()
record = Record(repo_path(results_dir), params)
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
final.groupby(["condition", "infomax_weight"], dropna=False, sort=False)[
    ["l2_distance", "cosine_similarity", "fvu", "probe_accuracy", "l0", "dead_units"]
].agg(["mean", "std"]).round(4)

# %% [markdown]
# ## Figure 9: what the paper's objective does inside an SAE
# Final states, mean over seeds (bars: one standard deviation); the weight sweep of
# `sae_plus_infomax` (single seed) as small markers.

# %%
label = {
    "sae": "SAE",
    "pretrain_then_sae": "pretrain\nthen SAE",
    "sae_plus_infomax": f"SAE + {infomax_weight:g} x\n(LSE+InfoMax)",
    "alternating": "SAE, then\nLSE+InfoMax,\nthen SAE",
}
main = final[final.infomax_weight.isna() | (final.infomax_weight == infomax_weight)]
fig, axes = plt.subplots(1, 4, figsize=(13, 3.4))
for ax, (col, title) in zip(
    axes,
    [
        ("probe_accuracy", "probe accuracy (%)"),
        ("fvu", "FVU (decoder, test)"),
        ("l0", "L0 (of 64)"),
        ("l2_distance", "encoder distance from init"),
    ],
):
    g = main.groupby("condition", sort=False)[col].agg(["mean", "std"]).reindex(list(PATHS))
    k = 100 if col == "probe_accuracy" else 1
    ax.bar(
        range(len(g)),
        g["mean"] * k,
        yerr=g["std"] * k,
        color=[COLORS["sae"], "#9467bd", "#8c564b", "#e377c2"],
        capsize=3,
    )
    sweep = final[(final.condition == "sae_plus_infomax") & (final.infomax_weight != infomax_weight)]
    for _, r in sweep.iterrows():
        ax.plot(2, r[col] * k, "k.", ms=5)
        ax.annotate(
            f"w={r.infomax_weight:g}", (2, r[col] * k), fontsize=6, xytext=(4, 0), textcoords="offset points"
        )
    ax.set_xticks(range(len(g)), [label[c] for c in g.index], fontsize=6.5)
    ax.set_title(title, fontsize=9)
    if col == "probe_accuracy":
        ax.set_ylim(max(0, 100 * main[col].min() - 5), 100 * main[col].max() + 1)
fig.suptitle(f"MNIST, 64 units, phases of {P} epochs, seeds {', '.join(map(str, seeds))}", fontsize=10)
paths = save_figure(fig, "fig9_hybrids", repo_path(figures_dir))

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
record.close(figures=[p.name for p in paths])

# %% [markdown]
# ## What it shows
#
# Phases of 15 epochs (the author's were 50), three seeds; final states unless said.
#
# - **As a regulariser, the paper's objective turns the SAE into ours: the probe accuracy comes,
#   the reconstruction goes.** The SAE trained with MSE + L1 + 0.1 (LSE + InfoMax) reaches ours'
#   probe accuracy (93.3% against 90.3% for the plain SAE; ours alone has 93.3% at 30 epochs
#   below) and loses its dead units (0 of 64, against 35 by the paper's variance rule), but its
#   decoder's FVU doubles (0.48 against 0.24). The weight w hardly matters between 0.01 and 1
#   (probe 92.9-93.3%, FVU 0.48 at each): the LSE term is a sum over the batch and the MSE a
#   mean over its elements, so even at w = 0.01 the paper's terms dominate the gradient. So the
#   hoped-for SAE that keeps the decoder's reconstruction and gains the decoder-free probe
#   accuracy does not appear at any w tried; the trade-off of notebooks 3, 6 and 7 is reproduced
#   inside one model.
# - **As pretraining, it helps neither.** After the LSE + InfoMax phase the encoder alone probes
#   at 93.0% (L0 20, no dead unit); the SAE phase that follows keeps its direction (cosine 0.99
#   between the phase's start and end) but ends at 89.4% and FVU 0.50, both worse than the SAE
#   from its initialisation, with a code five times sparser (L0 5.7). Alternating is worst:
#   the SAE phase after the LSE + InfoMax phase ends at 81.6% and FVU 0.63 (L0 3.3). The encoder
#   that the paper's objective leaves behind is far from where it started (distance about
#   160-420, where the initial encoder's norm is about 5), and 15 epochs of SAE training from
#   there, with the L1 penalty on activations that large, drive the code to a few units. (With
#   the author's 50-epoch phases the SAE phases might recover more; this record does not say.)
# - **The parameter distance itself** separates the objectives cleanly: SAE training moves the
#   encoder little (distance 3.6, cosine 0.65 with its initialisation), any phase with the
#   paper's terms moves it far (about 160-420, cosine 0.13-0.19), mostly by growing the weights.
# - **The activation's sign matters for ours, not as a mirror image.** With -ReLU ours keeps
#   almost the same probe accuracy (92.8% against 93.3%) but is no longer sparse (L0 55 of 64
#   against 18), and its negated weights are not its ReLU weights (best one-to-one match cosine
#   0.27; the pictures in figure 12 differ). The SAE hardly notices the sign (L0 34 against 32,
#   probe 90.6% against 90.3%; match 0.10, its decoder absorbs the sign).
# - **Prototypes? Partly, and the paper's responsibilities point the other way.** Weighted by
#   how strongly each unit fires, ours' weights correlate 0.32 with the mean of the images they
#   respond to (the SAE's 0.11): more template-like than the SAE's, far from copies. Weighted by
#   the paper's responsibilities softmax(-a), the correlation is negative (-0.10), and so is the
#   responsibility-weighted alignment of images and weights (-0.10): with ReLU the responsibility
#   goes to the units that are silent on an image (notebook 7 found the same), so the paper's
#   "responsible" components are the ones that do not match. With -ReLU the alignment turns
#   positive (0.50): low energy then means strong firing. And 47% of ours' units have a centre
#   and surround of opposite sign (19% for the SAE): detectors of where a stroke is not, as much
#   as templates of where it is (figure 12).
