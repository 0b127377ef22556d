"""Training speed: the plain per-run loop against the batched engine, side by side in one run.

    python benchmarks/training_speed.py [--device cpu|cuda] [--epochs 3] [--out benchmarks/training_speed.csv]

Prints run-epochs per second (one run-epoch = one run seeing all 60,000 MNIST images once,
784 -> 64, batch 128, Adam, the full objective) for the plain loop and for the engine at 1, 4, 12
and 24 runs, and the engine's fraction of this machine's fp32 GEMM peak, measured in the same
run. Each figure is the median over the timed epochs (the first epoch is a warm-up).
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import time
from pathlib import Path

import torch

from encoder_study.data import mnist_tensors
from encoder_study.engine import train_group
from encoder_study.training import RunConfig, train_run

N, D, K = 60000, 784, 64
FLOP_PER_RUN_EPOCH = 4 * N * D * K  # forward GEMM + weight-gradient GEMM, 2 flops per multiply-add


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def gemm_peak(device: torch.device, n: int = 2048, reps: int = 15) -> float:
    """Median fp32 GFLOP/s of an n x n x n matmul."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--epochs", type=int, default=3, help="epochs per measurement (the first is a warm-up)")
    ap.add_argument("--runs", type=int, nargs="*", default=[1, 4, 12, 24])
    ap.add_argument("--out", default=str(Path(__file__).with_name("training_speed.csv")))
    args = ap.parse_args()
    device = torch.device(args.device)
    X = mnist_tensors()["train_x"].to(device)
    peak = gemm_peak(device)
    print(f"machine: {machine(device)}; fp32 GEMM peak (2048^3, median): {peak:.0f} GFLOP/s")
    rows = []

    cfg = RunConfig(epochs=args.epochs, device=args.device, seed=1)
    _, hist = train_run(cfg, X)
    plain = 1.0 / statistics.median(h["seconds"] for h in hist[1:])
    rows.append(("plain", 1, plain))
    for r in args.runs:
        results = train_group([cfg.with_(seed=s) for s in range(1, r + 1)], X, progress=False)
        rows.append(("engine", r, r / statistics.median(h["seconds"] for h in results[0].history[1:])))

    print(f"\n{'method':<8}{'runs':>6}{'run-epochs/s':>15}{'x plain':>9}{'GEMM fraction':>15}")
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "runs", "run_epochs_per_s", "gemm_fraction", "speedup_vs_plain", "gemm_peak_gflops",
                    "device", "machine"])
        for method, r, rate in rows:
            frac = rate * FLOP_PER_RUN_EPOCH / 1e9 / peak
            print(f"{method:<8}{r:>6}{rate:>15.2f}{rate / plain:>9.1f}{frac:>15.1%}")
            w.writerow([method, r, f"{rate:.4f}", f"{frac:.4f}", f"{rate / plain:.2f}", f"{peak:.1f}", device.type,
                        machine(device)])
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
