"""Write the README's results section from the committed record (executed/*/), never by hand.

Replaces everything between the markers <!-- results:start --> and <!-- results:end -->.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
EXEC = ROOT / "executed"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def table_row(*cells: object) -> str:
    """One markdown table row."""
    return "| " + " | ".join(map(str, cells)) + " |"


def pm(series: pd.Series, k: float = 1.0, digits: int = 2) -> str:
    """mean ± std over seeds; a single seed's value alone (a spread of one value is not 0)."""
    if len(series) < 2:
        return f"{series.mean() * k:.{digits}f}"
    return f"{series.mean() * k:.{digits}f} ± {series.std(ddof=1) * k:.{digits}f}"


def _theorem() -> list[str]:
    """Notebook 1: the theorem check against the paper's float32 numbers."""
    out: list[str] = []
    t = EXEC / "01_verify_theorem" / "metrics.csv"
    if t.exists():
        df = pd.read_csv(t).set_index("dtype")
        out += [
            "**1. Theorem** (gradient of L_lse vs softmax(-a), 8,192 values): "
            + "; ".join(
                f"{d}: max |err| {r.max_abs_error:.2e}, mean {r.mean_abs_error:.2e}, corr {r.correlation:.6f}"
                for d, r in df.iterrows()
            )
            + " (paper, float32: 4.47e-08, 2.79e-09, 1.0000).",
            "",
        ]
    return out


def _ablation() -> list[str]:
    """Notebook 2: the ablation table beside the paper's."""
    out: list[str] = []
    t = EXEC / "02_ablation" / "metrics.csv"
    if t.exists():
        df = pd.read_csv(t)
        paper = {
            "lse_only": ("64/64", "-"),
            "lse_var": ("0/64", "~1875"),
            "lse_var_tc": ("0/64", "~29"),
            "var_tc_only": ("0/64", "~28"),
        }
        out += [
            "**2. Ablation** (MNIST, 64 units, 100 epochs, seeds "
            + ", ".join(map(str, sorted(df.seed.unique())))
            + ")",
            "",
            table_row(
                "config",
                "dead units (ours)",
                "dead (paper)",
                "redundancy (ours)",
                "redundancy (paper)",
                "L0",
                "resp. entropy (nats)",
                "probe accuracy (%)",
            ),
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, g in df.groupby("config", sort=False):
            red = "- (all dead)" if g.dead_units.mean() == 64 else pm(g.redundancy, digits=0)
            out.append(
                f"| {name} | {pm(g.dead_units, digits=1)} | {paper.get(name, ('', ''))[0]} | {red} | "
                f"{paper.get(name, ('', ''))[1]} | {pm(g.l0, digits=1)} | {pm(g.responsibility_entropy)} | "
                + (f"{pm(g.probe_accuracy, 100)} |" if "probe_accuracy" in g else "- |")
            )
        out.append("")
    return out


def _benchmark() -> list[str]:
    """Notebook 3: the benchmark table beside the paper's."""
    out: list[str] = []
    t = EXEC / "03_benchmark" / "metrics.csv"
    if t.exists():
        df = pd.read_csv(t)
        ours, sae = (df[df.model == m] for m in ("ours", "sae"))
        raw = EXEC / "03_benchmark" / "raw_pixel_probe.csv"
        raw_acc = pd.read_csv(raw).probe_accuracy.iloc[0] if raw.exists() else float("nan")
        out += [
            "**3. Benchmark** (seeds "
            + ", ".join(map(str, sorted(df.seed.unique())))
            + f"; raw-pixel probe: {raw_acc * 100:.2f}%)",
            "",
            "| metric | ours (LSE + InfoMax, no decoder) | paper: ours | standard SAE | paper: SAE |",
            "|---|---|---|---|---|",
            table_row(
                "linear probe accuracy (%)",
                pm(ours.probe_accuracy, 100),
                "93.43 ± 0.38",
                pm(sae.probe_accuracy, 100),
                "90.26 ± 0.32",
            ),
            table_row("L0 (of 64)", pm(ours.l0, digits=1), "17.2", pm(sae.l0, digits=1), "32.2"),
            table_row(
                "parameters",
                f"{int(ours.n_params.iloc[0]):,}",
                "50,240",
                f"{int(sae.n_params.iloc[0]):,}",
                "101,200",
            ),
            table_row(
                "FVU, fitted linear readout (test)",
                pm(ours.readout_fvu, digits=3),
                "-",
                pm(sae.readout_fvu, digits=3),
                "-",
            ),
            table_row("FVU, SAE's own decoder (test)", "-", "-", pm(sae.decoder_fvu, digits=3), "-"),
            table_row(
                "training seconds per run (batched)",
                pm(ours.train_seconds, digits=1),
                "-",
                pm(sae.train_seconds, digits=1),
                "-",
            ),
            "",
        ]
    return out


def _dynamics() -> list[str]:
    """Notebook 4: the optimizer dynamics table."""
    out: list[str] = []
    t = EXEC / "04_dynamics" / "metrics.csv"
    if t.exists():
        df = pd.read_csv(t)
        out += [
            "**4. Optimizer dynamics** (final training loss and probe accuracy, mean over seeds)",
            "",
            table_row(
                "optimizer",
                "lr",
                "final loss",
                "probe accuracy (%)",
                "epoch of 90% of the loss decrease",
                "diverged runs",
            ),
            "|---|---|---|---|---|---|",
        ]
        for (o, lr), d in df.groupby(["optimizer", "lr"]):
            out.append(
                f"| {o} | {lr:g} | {d.final_loss.mean():.1f} | {pm(d.probe_accuracy, 100)} | "
                f"{d.epoch_90pct_decrease.mean():.0f} | {int(d.diverged_epoch.notna().sum())} |"
            )
        info = json.loads((EXEC / "04_dynamics" / "run_info.json").read_text())
        out += [
            "",
            "Spearman correlation of final loss with probe accuracy: "
            f"{info.get('spearman_loss_vs_probe', float('nan')):.2f}.",
            "",
        ]
    return out


def _llm() -> list[str]:
    """Notebook 5: the language model (its own summary, written from its tables)."""
    return _notebook_summary("05_llm_activations", "5. Beyond the paper: SmolLM2-135M's residual stream.")


def _mnist_frontier() -> list[str]:
    """Notebook 6: the MNIST sparsity frontier (its own summary, written from its tables)."""
    return _notebook_summary("06_mnist_frontier", "6. MNIST sparsity frontier, every model at its best.")


def _controls() -> list[str]:
    """Notebook 7: the controls."""
    out: list[str] = []
    t = EXEC / "07_controls" / "metrics.csv"
    if t.exists():
        df = pd.read_csv(t)
        info = json.loads((EXEC / "07_controls" / "run_info.json").read_text())
        em = pd.read_csv(EXEC / "07_controls" / "em_agreement.csv")
        out += [
            f"**7. Controls** (MNIST, 64 features each, the same probe and readout; mean ± std over seeds "
            f"{', '.join(map(str, info['parameters']['seeds']))} where a method is stochastic; TopK at k = "
            f"{info['topk_k']}, ours' mean L0)",
            "",
            "| method | probe accuracy (%) | L0 | FVU (linear readout) | fit seconds |",
            "|---|---|---|---|---|",
        ]
        order = "ours sae topk pca pca_relu random kmeans gmm gmm_log sparse_coding ica nmf".split()
        for m in [m for m in order if m in set(df.model)]:
            g = df[df.model == m]
            out.append(
                f"| {m} | {pm(g.probe_accuracy, 100)} | {pm(g.l0, digits=1)} | {pm(g.fvu, digits=3)} | "
                f"{g.fit_seconds.mean():.0f} |"
            )
        em["compared"] = em.compared.str.replace(r" \(seed \d+\)", "", regex=True)  # gmm vs gmm: all pairs
        agree = em.groupby("compared", sort=False)[["nmi_hard", "nmi_soft"]].mean()
        out += [
            "",
            "Responsibilities against a Gaussian mixture fitted by explicit EM (normalised mutual "
            "information, hard / soft): "
            + "; ".join(f"{k} {r.nmi_hard:.2f} / {r.nmi_soft:.3f}" for k, r in agree.iterrows())
            + ".",
            "",
        ]
    return out


def _hybrids() -> list[str]:
    """Notebook 8: the hybrids and the activation's sign."""
    out: list[str] = []
    t = EXEC / "08_hybrids" / "metrics.csv"
    if t.exists():
        df = pd.read_csv(t)
        info = json.loads((EXEC / "08_hybrids" / "run_info.json").read_text())
        p = info["parameters"]
        final = df[df.phase == "total"]
        out += [
            f"**8. The paper's objective inside an SAE** (MNIST, 64 units, phases of {p['phase_epochs']} "
            f"epochs, seeds {', '.join(map(str, p['seeds']))}; final states, mean over seeds; the author's "
            f"parameter-distance experiment)",
            "",
            "| condition | w | probe accuracy (%) | FVU (decoder) | L0 | dead units "
            "| encoder distance from init |",
            "|---|---|---|---|---|---|---|",
        ]
        for (cond, w), g in final.groupby(["condition", "infomax_weight"], dropna=False, sort=False):
            out.append(
                f"| {cond} | {'' if pd.isna(w) else f'{w:g}'} | {pm(g.probe_accuracy, 100)} | "
                f"{pm(g.fvu, digits=3)} | {pm(g.l0, digits=1)} | {g.dead_units.mean():.1f} | "
                f"{g.l2_distance.mean():.2f} |"
            )
        sign = pd.read_csv(EXEC / "08_hybrids" / "activation_sign.csv")
        agg = sign.groupby(["model", "activation"], sort=False).mean(numeric_only=True)
        out += [
            "",
            "Activation sign and weight geometry (mean over seeds; template correlation with the "
            "activation-weighted mean input): "
            + "; ".join(
                f"{m} {a}: probe {r.probe_accuracy:.1%}, L0 {r.l0:.1f}, "
                f"template {r.template_corr_activation:.2f}"
                + (
                    ""
                    if pd.isna(r.matched_cosine_to_relu)
                    else f", matched to ReLU's {r.matched_cosine_to_relu:.2f}"
                )
                for (m, a), r in agg.iterrows()
            )
            + ".",
            "",
        ]
    return out


def _identifiability() -> list[str]:
    """Notebook 9: identifiability and stability."""
    out: list[str] = []
    t = EXEC / "09_identifiability" / "recovery.csv"
    if t.exists():
        rec = pd.read_csv(t)
        info = json.loads((EXEC / "09_identifiability" / "run_info.json").read_text())
        p = info["parameters"]
        models = [m for m in ["ours", "sae", "topk", "sparse_coding"] if m in set(rec.model)]
        out += [
            f"**9. Identifiability and stability.** Recovering known sparse components (D = "
            f"{p['input_dim']}; K components, mean L0 of the truth, noise; each model's knob set to the true "
            f"L0; MCC of the codes / mean best cosine of the dictionary, mean over seeds "
            f"{', '.join(map(str, p['seeds']))}):",
            "",
            "| setting | " + " | ".join(models) + " |",
            "|---|" + "---|" * len(models),
        ]
        mean = rec.groupby(["setting", "model"], sort=False)[["mcc", "mean_best_cosine"]].mean()
        for setting in rec.setting.unique():
            cells = [
                f"{mean.loc[(setting, m), 'mcc']:.2f} / {mean.loc[(setting, m), 'mean_best_cosine']:.2f}"
                for m in models
            ]
            out.append(f"| {setting} | " + " | ".join(cells) + " |")
        st = pd.read_csv(EXEC / "09_identifiability" / "stability.csv")
        agg = st.groupby(["data", "model", "weights"], sort=False)[
            ["mean_matched_cosine", "share_above_0_9"]
        ].mean()
        out += [
            "",
            "Seed stability (units of two seeds matched one to one by weight cosine; mean over seed pairs): "
            + "; ".join(
                f"{data} {model} ({weights}) {r.mean_matched_cosine:.2f}, {r.share_above_0_9:.0%} above 0.9"
                for (data, model, weights), r in agg.iterrows()
            )
            + ".",
            "",
        ]
    return out


def _notebook_summary(notebook: str, title: str) -> list[str]:
    """A notebook's own summary (``summary.md``, written by the notebook from its tables)."""
    path = EXEC / notebook / "summary.md"
    return [f"**{title}** " + path.read_text().strip(), ""] if path.exists() else []


def _is_it_em() -> list[str]:
    """Notebook 10: is it EM?"""
    return _notebook_summary("10_is_it_em", "10. Is it EM?")


def _memory(notebook: str) -> str:
    """' (x.x GiB)': the peak resident memory its run_info records, or nothing."""
    info = EXEC / notebook / "run_info.json"
    peak = json.loads(info.read_text()).get("peak_memory_gib") if info.exists() else None
    return f" ({peak:.1f} GiB)" if peak is not None else ""


def _timings() -> list[str]:
    """The time of each notebook (book_timings.csv)."""
    out: list[str] = []
    t = EXEC / "book_timings.csv"
    if t.exists():
        rows = list(csv.DictReader(t.open()))
        total = sum(float(r["seconds"]) for r in rows)
        env, extract = {}, None
        info_files = sorted(EXEC.glob("*/run_info.json"))
        if info_files:
            env = json.loads(info_files[0].read_text()).get("environment", {})
        llm_info = EXEC / "05_llm_activations" / "run_info.json"
        if llm_info.exists():
            durations = json.loads(llm_info.read_text()).get("durations_s", {})
            extract = next((v for k, v in durations.items() if k.startswith("activations")), None)
        note = (
            f"; notebook 05's includes {extract / 60:.1f} min to extract or read its activations"
            if extract
            else ""
        )
        out += [
            f"**Time to run the book here** ({env.get('torch_threads', '?')} threads, "
            f"{env.get('processor', 'unknown processor')}; "
            f"empty run cache{note}; in brackets the peak memory of the run in the record): "
            + ", ".join(
                f"{r['notebook']} {float(r['seconds']) / 60:.1f} min{_memory(r['notebook'])}" for r in rows
            )
            + f"; total {total / 60:.1f} min.",
            "",
        ]
    return out


def _figures() -> list[str]:
    """The figures, in numeric order."""
    out: list[str] = []
    figs = sorted(
        (p.name for p in (ROOT / "figures").glob("*.pdf")),
        key=lambda n: (int(re.sub(r"\D", "", n.split("_")[0]) or 0), n),
    )
    if figs:
        out += ["Figures: " + ", ".join(f"[`{f}`](figures/{f})" for f in figs) + ".", ""]
    return out


PARTS = (
    _theorem,
    _ablation,
    _benchmark,
    _dynamics,
    _llm,
    _mnist_frontier,
    _controls,
    _hybrids,
    _identifiability,
    _is_it_em,
    _timings,
    _figures,
)  # the results section's parts, in the record's order


def section() -> str:
    out = [
        "_Generated by `scripts/update_readme.py` from `executed/` (the record); mean ± std over seeds._",
        "",
    ]
    for part in PARTS:
        out += part()
    return "\n".join(out)


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"README.md lacks the markers {START} ... {END}")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{section()}\n{END}{tail}")
    print("README.md results section updated from executed/")


if __name__ == "__main__":
    main()
