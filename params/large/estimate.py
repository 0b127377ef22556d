"""Time and memory of notebook 5 at params/large/05_llm_activations.yaml, estimated from measured
rows: seconds per epoch on one H200 at 234,188 x 576 -> 1152, batch 1024 (benchmarks/cuda/
llm_shapes.txt), scaled to this parameter set's tokens and widths (the H200's 141 GiB; an 80 GiB GPU
holds the largest group too). GEMM work grows with tokens x
width; ours also has a minibatch covariance (B x K^2), so its time is given as a range between the
two scalings. Memory: the training vectors on the GPU (float32), and per group the parameters'
training state (engine.group_memory_bytes) plus ours' covariance and its gradient (R x K x K each)
and a few (R, B, K) activation buffers. Run: .venv/bin/python params/large/estimate.py
(its output is kept beside it in estimate.txt).
"""

import re
from pathlib import Path

import yaml

from encoder_study.models.config import RunConfig
from encoder_study.training.engine import group_memory_bytes

HERE = Path(__file__).resolve().parent
MEASURED_N, MEASURED_K, D = 234_188, 1152, 576
TRAIN_FRACTION = 0.9  # notebook 5 holds out a tenth of the contexts
ACTIVATION_BUFFERS = 6  # z, a and their gradients, with some slack, per run of a group


def measured_seconds() -> dict[str, float]:
    text = (HERE.parent.parent / "benchmarks" / "cuda" / "llm_shapes.txt").read_text()
    return {m: float(s) for m, s in re.findall(r"(\w+)\s+cuda: ([\d.]+) s", text)}


def groups(p: dict) -> list[tuple[str, int, int]]:
    """(model, width, runs) of each group notebook 5 trains with these parameters: the selection
    round at the smallest width (every rate of lr_grid, and for every model lr_edge_steps past its
    edge), the knob settings at the other widths at the chosen rate, and the comparison runs on
    every seed (the first seed's partly shared with the selection round; counted again here, an
    upper bound)."""
    seeds, targets = len(p["seeds"]), len(p["target_l0"])
    rates = len(p["lr_grid"]) + p.get("lr_edge_steps", 0)
    k0 = min(p["hidden_dims"])
    settings = {m: targets for m in ("encoder", "topk", "batchtopk")}
    settings.update(sae=len(p["sae_l1_grid"][0]), sae_dnorm=len(p["sae_dnorm_l1_grid"][0]),
                    jumprelu=len(p["jumprelu_threshold_init_grid"][0]))
    out = [("encoder", k0, rates)]  # the calibration runs
    out += [(m, k, n * (rates if k == k0 else 1)) for m, n in settings.items() for k in p["hidden_dims"]]
    widths = sorted({*p["hidden_dims"], *([p["test_width"]] if p["test_width"] else [])})
    for k in widths:
        paper = 1 if k in p["hidden_dims"] else 0
        out.append(("encoder", k, seeds * (paper + targets)))
    for model in ("sae", "sae_dnorm", "jumprelu", "topk", "batchtopk"):
        out += [(model, k, seeds * targets) for k in p["hidden_dims"]]
    return out


def main() -> None:
    p = yaml.safe_load((HERE / "05_llm_activations.yaml").read_text())
    n = int(p["max_tokens"] * TRAIN_FRACTION)
    seconds = measured_seconds()
    seconds["batchtopk"] = seconds["topk"]  # measured within 10% of TopK's (benchmarks/README.md)
    # not measured on a GPU: the decoder-norm L1 SAE and the JumpReLU SAE do the L1 SAE's two GEMMs
    # and a few elementwise passes more, so the L1 SAE's time is their floor
    seconds["sae_dnorm"] = seconds["jumprelu"] = seconds["sae"]
    B, epochs = p["batch_size"], p["epochs"]
    print(
        f"{n:,} training tokens x {D}, batch {B}, {epochs} epochs; "
        f"data on the GPU {n * D * 4 / 2**30:.1f} GiB"
    )
    print(f"{'group':<22}{'runs':>5}{'hours (GEMM scaling)':>22}{'hours (K^2 scaling)':>21}{'GiB':>8}")
    total_low = total_high = 0.0
    for model, k, runs in groups(p):
        gemm = (n / MEASURED_N) * (k / MEASURED_K)
        low = seconds[model] * gemm * runs * epochs / 3600
        high = low * (k / MEASURED_K) if model == "encoder" else low
        config = RunConfig(model=model, hidden_dim=k, k=20 if "topk" in model else 0)
        state = group_memory_bytes([config] * runs, D)
        extra = runs * (2 * k * k * 4 if model == "encoder" else 0) + runs * ACTIVATION_BUFFERS * B * k * 4
        total_low, total_high = total_low + low, total_high + high
        print(f"{model + ' ' + str(k):<22}{runs:>5}{low:>22.1f}{high:>21.1f}{(state + extra) / 2**30:>8.1f}")
    print(f"{'all groups':<27}{total_low:>22.1f}{total_high:>21.1f}")


if __name__ == "__main__":
    main()
