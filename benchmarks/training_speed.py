"""Training speed: the plain per-run loop against the batched engine, side by side in one run.

    python benchmarks/training_speed.py [--device cpu|cuda] [--epochs 3] [--out benchmarks/training_speed.csv]

Prints run-epochs per second (one run-epoch = one run seeing all 60,000 MNIST images once,
784 -> 64, batch 128, Adam, the full objective) for the plain loop and for the engine at 1, 4,
12 and 24 runs, each run on its own seed, and again with the runs sharing 3 seeds or 1 (as in
the book: runs on one seed share minibatches and a GEMM), with the engine's fraction of this
machine's fp32 GEMM peak measured in the same run (four times, between the parts: the median),
and the process's peak memory; then the L1 SAE at the book's shape (12 runs), and the L1, TopK
and BatchTopK SAEs at notebook 5's (576 -> 288 and 1152 on 65,536 random vectors, batch 1024,
3 runs; the TopK kinds with k = 32, 64 and 128). Each figure is the median over the timed epochs
(the first epoch is a warm-up). A TopK kind's run-epoch counts the L1 SAE's five GEMMs.
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import time
from pathlib import Path

import torch

from encoder_study.book import peak_memory_gib
from encoder_study.config import LossConfig, RunConfig
from encoder_study.data import mnist_tensors
from encoder_study.engine import train_group
from encoder_study.training import train_run

N, D, K = 60000, 784, 64
WIDTHS = (14, 9, 12, 6, 7, 15, 15)  # the printed table's columns


def flop_per_run_epoch(model: str, n: int, d: int, k: int) -> int:
    """The GEMM flops of one run-epoch (2 per multiply-add): the first layer forward and its weight
    gradient; a decoder adds its forward, its weight gradient and the gradient into the code."""
    return (4 if model == "encoder" else 10) * n * d * k


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


def layouts(runs: list[int]) -> list[tuple[int, int]]:
    """(runs, data orders) to measure: every run its own seed; and, as in the book, runs sharing
    seeds (3 seeds, like the ablation and the optimizer study; 1 seed, like a lambda sweep)."""
    out = [(r, r) for r in runs]
    out += [(r, 3) for r in runs if r % 3 == 0 and r > 3]
    out += [(r, 1) for r in runs if r > 1]
    return out


def epoch_rate(configs: list[RunConfig], X: torch.Tensor) -> float:
    """Run-epochs per second of one engine group: runs / median epoch time (first epoch left out)."""
    results = train_group(configs, X, progress=False)
    return len(configs) / statistics.median(h["seconds"] for h in results[0].history[1:])


def measure(args: argparse.Namespace, device: torch.device, X: torch.Tensor, peaks: list[float]):
    """The rows (method, model, runs, seeds, n, d, k, run-epochs/s) of every measurement, and the plain
    loop's rate; the GEMM peak is measured again between the parts (into ``peaks``)."""
    rows = []

    cfg = RunConfig(epochs=args.epochs, device=args.device, seed=1)
    _, hist = train_run(cfg, X)
    plain = 1.0 / statistics.median(h["seconds"] for h in hist[1:])
    rows.append(("plain", "encoder", 1, 1, N, D, K, plain))
    for r, orders in layouts(args.runs):
        # runs on one seed differ in their LSE weight (what a sweep varies; the speed does not care)
        configs = [cfg.with_(seed=1 + i % orders, loss=LossConfig(lse=1.0 + i // orders)) for i in range(r)]
        rows.append(("engine_torch", "encoder", r, orders, N, D, K, epoch_rate(configs, X)))
        print(
            f"  engine encoder {r:>3} runs on {orders:>2} seeds: {rows[-1][-1]:.2f} run-epochs/s", flush=True
        )
    peaks.append(gemm_peak(device))
    sae = RunConfig(model="sae", epochs=args.epochs, device=args.device)
    rows.append(
        ("engine_torch", "sae", 12, 12, N, D, K, epoch_rate([sae.with_(seed=s) for s in range(1, 13)], X))
    )
    peaks.append(gemm_peak(device))
    g = torch.Generator().manual_seed(0)
    V = torch.randn(65536, 576, generator=g).to(device)  # notebook 5's shape: residual-stream width 576
    for model in ("sae", "topk", "batchtopk"):
        for hidden in (288, 1152):
            # three seeds; the TopK kinds at the sparsities of a frontier (as in notebook 5)
            configs = [
                RunConfig(
                    model=model,
                    hidden_dim=hidden,
                    batch_size=1024,
                    epochs=args.epochs,
                    device=args.device,
                    seed=s,
                    **({} if model == "sae" else {"k": k}),
                )
                for s, k in ((1, 32), (2, 64), (3, 128))
            ]
            rows.append(("engine_torch", model, 3, 3, len(V), 576, hidden, epoch_rate(configs, V)))
            print(f"  engine {model} 576 -> {hidden}, 3 runs: {rows[-1][-1]:.2f} run-epochs/s", flush=True)
    peaks.append(gemm_peak(device))
    return rows, plain


def write_table(out: str, rows: list, peak: float, plain: float, memory: float, device: torch.device) -> None:
    """Print the table and write the CSV: each row's share of the GEMM peak and speed-up."""
    header = ("method", "model", "shape", "runs", "seeds", "run-epochs/s", "GEMM fraction")
    cells = (f"{h:<{w}}" if i < 2 else f"{h:>{w}}" for i, (h, w) in enumerate(zip(header, WIDTHS)))
    print("\n" + "".join(cells))
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "method",
                "model",
                "n",
                "input_dim",
                "hidden_dim",
                "runs",
                "data_orders",
                "run_epochs_per_s",
                "gemm_fraction",
                "speedup_vs_plain",
                "gemm_peak_gflops",
                "peak_memory_gib",
                "device",
                "machine",
            ]
        )
        for method, model, r, orders, n, d, k, rate in rows:
            frac = rate * flop_per_run_epoch(model, n, d, k) / 1e9 / peak
            speedup = f"{rate / plain:.2f}" if (model, n, d, k) == ("encoder", N, D, K) else ""
            print(f"{method:<14}{model:<9}{f'{d}->{k}':>12}{r:>6}{orders:>7}{rate:>15.2f}{frac:>15.1%}")
            w.writerow(
                [
                    method,
                    model,
                    n,
                    d,
                    k,
                    r,
                    orders,
                    f"{rate:.4f}",
                    f"{frac:.4f}",
                    speedup,
                    f"{peak:.1f}",
                    f"{memory:.2f}",
                    device.type,
                    machine(device),
                ]
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"]
    )
    ap.add_argument("--epochs", type=int, default=3, help="epochs per measurement (the first is a warm-up)")
    ap.add_argument("--runs", type=int, nargs="*", default=[1, 4, 12, 24])
    ap.add_argument("--out", default=str(Path(__file__).with_name("training_speed.csv")))
    args = ap.parse_args()
    device = torch.device(args.device)
    X = mnist_tensors()["train_x"].to(device)
    peaks = [gemm_peak(device)]  # measured again between the parts and at the end: the median is used
    print(f"machine: {machine(device)}; fp32 GEMM peak (2048^3, median): {peaks[0]:.0f} GFLOP/s")
    rows, plain = measure(args, device, X, peaks)
    peak = statistics.median(peaks)
    print(
        f"fp32 GEMM peak, median of {len(peaks)} measurements ({', '.join(f'{p:.0f}' for p in peaks)}): "
        f"{peak:.0f} GFLOP/s"
    )
    memory = peak_memory_gib() if device.type == "cpu" else torch.cuda.max_memory_allocated() / 2**30

    write_table(args.out, rows, peak, plain, memory, device)
    print(f"\npeak memory ({'process RSS' if device.type == 'cpu' else 'CUDA allocated'}): {memory:.2f} GiB")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
