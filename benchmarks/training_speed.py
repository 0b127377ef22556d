"""Training speed: the plain per-run loop against the batched engine, side by side in one run.

    python benchmarks/training_speed.py [--device cpu|cuda] [--epochs 3] [--out benchmarks/training_speed.csv]

Prints run-epochs per second (one run-epoch = one run seeing all 60,000 MNIST images once,
784 -> 64, batch 128, Adam, the full objective) for the plain loop and for the engine at 1, 4,
12 and 24 runs, each run on its own seed, and again with the runs sharing 3 seeds or 1 (as in
the book: runs on one seed share minibatches and a GEMM), with the engine's fraction of this
machine's fp32 GEMM peak measured in the same run (four times, between the parts: the median),
and the process's peak memory; then the L1 SAE at the book's shape (12 runs), and the encoder
and the L1, TopK and BatchTopK SAEs at notebook 5's (576 -> 288 and 1152 on 65,536 random vectors,
batch 1024, 3 runs; the TopK kinds with k = 32, 64 and 128). Each figure is the median over the
timed epochs (the first epoch is a warm-up). A TopK kind's run-epoch counts the L1 SAE's five GEMMs.

    python benchmarks/training_speed.py --device cuda --graphs [--epochs 3] [--out ...csv]

measures instead the engine on CUDA with every step eager and with its CUDA graphs
(``encoder_study/training/cuda_graphs.py``; ENCODER_STUDY_CUDA_GRAPHS=0 and 1 in one process), side by
side: run-epochs per second of the encoder at 24 and 96 runs (``--graph-runs``), notebook 3's
groups (5 encoders, 5 L1 SAEs) and seconds per epoch at notebook 5's shapes (234,188 random
vectors, 576 -> 1152, batch 1024, one run each of the encoder, the L1 SAE and the TopK and
BatchTopK SAEs with k = 64).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from pathlib import Path

import torch

from encoder_study.book.data import mnist_tensors
from encoder_study.book.record import cpu_model, peak_memory_gib
from encoder_study.models.config import LossConfig, RunConfig
from encoder_study.models.kinds import KINDS
from encoder_study.training import cuda_graphs
from encoder_study.training.engine import train_group
from encoder_study.training.single_run import train_run

N, D, K = 60000, 784, 64
WIDTHS = (14, 9, 12, 6, 7, 15, 15)  # the printed table's columns


def flop_per_run_epoch(model: str, n: int, d: int, k: int) -> int:
    """The GEMM flops of one run-epoch (2 per multiply-add): the first layer forward and its weight
    gradient; a decoder adds its forward, its weight gradient and the gradient into the code. (Only
    the first layer's and the decoder's products: the encoder's covariance is left out, as the
    speed issue's targets count it.)"""
    return (10 if KINDS[model].has_decoder else 4) * n * d * k


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
    return f"{cpu_model()}, {torch.get_num_threads()} threads"


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
    for model in ("encoder", "sae", "topk", "batchtopk"):
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
                    **({"k": k} if any(knob.field == "k" for knob in KINDS[model].knobs) else {}),
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
        plain_shape = (rows[0][1], *rows[0][4:7])  # the plain loop's row leads: its kind and shape
        for method, model, r, orders, n, d, k, rate in rows:
            frac = rate * flop_per_run_epoch(model, n, d, k) / 1e9 / peak
            speedup = f"{rate / plain:.2f}" if (model, n, d, k) == plain_shape else ""
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


LLM_VECTORS = 234_188  # notebook 5's activations: 234,188 x 576


def graph_cases(runs: list[int], mnist: torch.Tensor, vectors: torch.Tensor) -> list[tuple]:
    """(label, model, runs, data, hidden, batch, extra RunConfig fields) of the eager/graph rows."""
    cases = [(f"encoder x{r}", "encoder", r, mnist, K, 128, {}) for r in runs]
    cases += [(f"notebook 3: {m} x5", m, 5, mnist, K, 128, {}) for m in ("encoder", "sae")]
    llm = (("encoder", {}), ("sae", {"l1": 0.1}), ("topk", {"k": 64}), ("batchtopk", {"k": 64}))
    cases += [(f"notebook 5: {m}", m, 1, vectors, 1152, 1024, extra) for m, extra in llm]
    return cases


def graph_comparison(args: argparse.Namespace, mnist: torch.Tensor, vectors: torch.Tensor) -> list[dict]:
    """Each case trained eagerly and with CUDA graphs, one after the other in this process: the
    median seconds per epoch (the first epoch, with the graph's warm-up and capture, left out).
    A case that fails is a row saying so; the CSV is written again after every case."""
    rows: list[dict] = []
    for label, model, runs, X, hidden, batch, extra in graph_cases(args.graph_runs, mnist, vectors):
        configs = [
            RunConfig(model=model, hidden_dim=hidden, batch_size=batch, epochs=args.epochs, **extra).with_(
                device=args.device, seed=1 + i
            )
            for i in range(runs)
        ]
        shape = {"case": label, "model": model, "n": len(X), "input_dim": X.shape[1], "hidden_dim": hidden}
        for method, flag in (("engine_eager", "0"), ("engine_graphs", "1")):
            os.environ[cuda_graphs.FLAG] = flag
            replayed, note = cuda_graphs.replays[model], ""
            try:
                results = train_group(configs, X, progress=False)
                seconds = statistics.median(h["seconds"] for h in results[0].history[1:])
            except Exception as e:  # noqa: BLE001 (a row that says what went wrong, and on to the next)
                seconds, note = float("nan"), f"failed: {type(e).__name__}: {str(e)[:300]}"
            if flag == "1" and not note:
                note = cuda_graphs.eager_reason(KINDS[model]) or ""
            eager = rows[-1]["seconds_per_epoch"] if flag == "1" else seconds
            rows.append(
                {
                    "method": method,
                    **shape,
                    "batch_size": batch,
                    "runs": runs,
                    "seconds_per_epoch": seconds,
                    "run_epochs_per_s": runs / seconds,
                    "speedup_vs_eager": eager / seconds,
                    "steps_replayed": cuda_graphs.replays[model] - replayed,
                    "note": note,
                }
            )
            r = rows[-1]
            print(
                f"  {method:14s} {label:24s} {r['seconds_per_epoch']:8.4f} s/epoch "
                f"{r['run_epochs_per_s']:9.2f} run-epochs/s  x{r['speedup_vs_eager']:.2f}  "
                f"replayed {r['steps_replayed']}  {note[:100]}",
                flush=True,
            )
        write_graph_table(args.out, rows, torch.device(args.device))
    os.environ.pop(cuda_graphs.FLAG, None)
    return rows


def write_graph_table(out: str, rows: list[dict], device: torch.device) -> None:
    """The eager/graph rows as CSV, each with the peak memory, the machine and torch named."""
    memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else peak_memory_gib()
    named = {"memory_gib": f"{memory:.2f}", "device": device.type, "machine": machine(device)}
    named["torch"] = torch.__version__
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, [*rows[0], *named])
        w.writeheader()
        for row in rows:
            w.writerow({**{k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()}, **named})


def graphs_main(args: argparse.Namespace, device: torch.device, X: torch.Tensor) -> None:
    """``--graphs``: the eager and graph rows, printed and written to ``args.out``."""
    V = torch.randn(LLM_VECTORS, 576, generator=torch.Generator().manual_seed(0)).to(device)
    print(f"machine: {machine(device)}, torch {torch.__version__}; the engine eager and with CUDA graphs,")
    print(f"{args.epochs} epochs each (median seconds of all but the first):")
    rows = graph_comparison(args, X, V)
    for method in ("engine_eager", "engine_graphs"):
        nb3 = [r["seconds_per_epoch"] for r in rows if r["method"] == method and "notebook 3" in r["case"]]
        print(f"notebook 3's training (5 encoders, 5 SAEs, 100 epochs), {method}: {100 * sum(nb3):.1f} s")
    print(f"written: {args.out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"]
    )
    ap.add_argument("--epochs", type=int, default=3, help="epochs per measurement (the first is a warm-up)")
    ap.add_argument("--runs", type=int, nargs="*", default=[1, 4, 12, 24])
    ap.add_argument("--out", default=None, help="the CSV (default training_speed.csv; cuda/ with --graphs)")
    ap.add_argument("--graphs", action="store_true", help="CUDA only: eager against CUDA graphs (above)")
    ap.add_argument("--graph-runs", type=int, nargs="*", default=[24, 96], help="encoder runs, with --graphs")
    args = ap.parse_args()
    if args.graphs and args.device != "cuda":
        ap.error("--graphs compares the engine's CUDA graphs with its eager steps: it needs --device cuda")
    device = torch.device(args.device)
    X = mnist_tensors()["train_x"].to(device)
    if args.graphs:
        args.out = args.out or str(Path(__file__).parent / "cuda" / "training_speed_graphs.csv")
        graphs_main(args, device, X)
        return
    args.out = args.out or str(Path(__file__).with_name("training_speed.csv"))
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
