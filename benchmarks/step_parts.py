"""Where a training step of the encoder's stack goes on the CPU, and what fusing its objective buys.

    python benchmarks/step_parts.py [--steps 200] [--out benchmarks/step_parts.csv]

The speed issue asks the CPU engine for 60% of the fp32 GEMM peak with 24 encoder runs on 24
seeds and 70% on 3 shared seeds (784 -> 64, batch 128). This splits one step of those two stacks,
as the engine runs it (``RunStack.step``: the minibatches gathered, the first layer, the objective
and its gradient by hand, the weight gradient, one fused Adam call), into parts, so that each
target can be held against what the parts leave:

- the step's median wall time over ``--steps`` steps, unprofiled;
- the same steps under ``torch.profiler``, each operator's own time summed into parts: the first
  layer's forward GEMM with the units' covariance (one operator, ``baddbmm``), the weight-gradient
  GEMM, the gather of the minibatch rows, Adam, the gradient through the covariance, and every
  elementwise or reducing operator (the objective's passes, the activation and its gradient, the
  loss sums);
- the two first-layer GEMMs' time at this run's GEMM peak (a 2048^3 product), the floor the
  targets are counted against.

Then the objective with its gradient (``losses.combined_loss_and_grad`` and the ReLU's gradient on
a (24, 128, 64) stack) eager and compiled by ``torch.compile`` (inductor's fused C++ loops), side
by side, taking turns: the speed issue names compiling the step as one way to fewer passes over
the minibatch.
"""

from __future__ import annotations

import argparse
import csv
import functools
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from training_speed import gemm_peak

from encoder_study.book.data import epoch_permutation, mnist_tensors
from encoder_study.book.record import cpu_model
from encoder_study.models.config import LossConfig, RunConfig
from encoder_study.models.kinds.base import ACTIVATION_GRADS
from encoder_study.models.losses import combined_loss_and_grad
from encoder_study.training.cpu import flush_denormals
from encoder_study.training.engine import RunStack, StackedOptimizer

D, K, B, RUNS = 784, 64, 128, 24
PARTS = (
    "first layer forward and the units' covariance (baddbmm)",
    "first layer weight gradient (bmm)",
    "gather of the minibatch rows",
    "Adam (one fused call)",
    "gradient through the covariance (baddbmm_)",
    "elementwise and reductions",
)

PART_OF_OPERATOR = {
    "aten::baddbmm": PARTS[0],
    "aten::bmm": PARTS[1],
    "aten::index_select": PARTS[2],
    "aten::_fused_adam_": PARTS[3],
    "aten::baddbmm_": PARTS[4],
}
NO_WORK = {  # views and allocations: no arithmetic, no memory pass
    f"aten::{op}"
    for op in "view as_strided slice transpose select empty empty_strided detach alias unsqueeze squeeze "
    "diagonal expand reshape t lift_fresh resolve_conj resolve_neg".split()
}


def stack_of(seeds: int, X: torch.Tensor) -> tuple[RunStack, StackedOptimizer, torch.Tensor]:
    """24 encoder runs on ``seeds`` data orders (runs on one seed differ in their LSE weight), their
    Adam, and epoch 0's sample orders, one row per minibatch row of the stack's layout."""
    configs = [RunConfig(seed=1 + i % seeds, loss=LossConfig(lse=1.0 + i // seeds)) for i in range(RUNS)]
    configs.sort(key=lambda c: c.seed)  # as engine.train_group orders a stack
    stack = RunStack(configs, D, X.device)
    opt = StackedOptimizer(list(stack.params.values()), [("adam", c.lr) for c in configs])
    orders = torch.stack([epoch_permutation(s, 0, len(X)) for s in stack.layout.data_seeds])
    return stack, opt, orders


def part_of(name: str) -> str | None:
    """The part an operator's own time counts towards (None: a view or bookkeeping, no work). The
    forward GEMM and the covariance are both ``baddbmm``: telling them apart needs the profiler's
    ``record_shapes``, which slowed the gather here 5-10x (6-15 ms against 0.8-1.2 ms a step without it)."""
    return PART_OF_OPERATOR.get(name, None if name in NO_WORK else PARTS[5])


def measure_layout(seeds: int, X: torch.Tensor, steps: int) -> tuple[float, dict[str, float]]:
    """The step's median milliseconds, and each part's milliseconds a step under the profiler."""
    stack, opt, orders = stack_of(seeds, X)
    batches = [orders[:, s : s + B] for s in range(0, steps * B, B)]
    times = []
    with flush_denormals(), torch.no_grad():
        for idx in batches[:20]:  # warm-up
            stack.step(X, idx, opt)
        for idx in batches:
            t = time.perf_counter()
            stack.step(X, idx, opt)
            times.append(time.perf_counter() - t)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for idx in batches:
                stack.step(X, idx, opt)
    parts = dict.fromkeys(PARTS, 0.0)
    for event in prof.key_averages():
        part = part_of(event.key)
        if part is not None:
            parts[part] += event.self_cpu_time_total / 1e3 / steps
    return statistics.median(times) * 1e3, parts


def objective_and_grad(z: torch.Tensor, lambdas: dict[str, torch.Tensor]) -> torch.Tensor:
    """What the engine computes between the two first-layer GEMMs: ReLU, the objective's terms and
    dL/da by hand, and dL/dz."""
    _, grad_a = combined_loss_and_grad(torch.relu(z), lambdas, "sum")
    return ACTIVATION_GRADS["relu"](z, grad_a)


def median_ms(fns: list, z: torch.Tensor, rounds: int = 7, reps: int = 100) -> list[float]:
    """Each function's median milliseconds, the functions taking turns round by round, so that a
    change in the host's speed during the measurement falls on all of them alike."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for fn, spent in zip(fns, times):
            fn(z)
            for _ in range(reps):
                t = time.perf_counter()
                fn(z)
                spent.append(time.perf_counter() - t)
    return [statistics.median(spent) * 1e3 for spent in times]


def compiled_objective() -> list[dict]:
    """The objective with its gradient, eager against ``torch.compile``, and how far they differ."""
    z = torch.randn(RUNS, B, K, generator=torch.Generator().manual_seed(0))
    lambdas = {t: torch.ones(RUNS) for t in ("lse", "var", "tc")}
    eager = functools.partial(objective_and_grad, lambdas=lambdas)
    layout = "objective on (24, 128, 64)"
    try:
        start = time.perf_counter()
        fused = torch.compile(eager, dynamic=False)
        compiled_grad = fused(z)
        compile_s = time.perf_counter() - start
        eager_grad = eager(z)
        gap = ((compiled_grad - eager_grad).abs().max() / eager_grad.abs().max()).item()
        note = f"compile {compile_s:.1f} s; largest gradient difference {gap:.1e} of the largest entry"
        eager_ms, fused_ms = median_ms([eager, fused], z)
    except Exception as e:  # noqa: BLE001 (no C++ compiler, or inductor refuses: a row that says so)
        note, fused_ms = f"torch.compile failed: {type(e).__name__}: {str(e)[:200]}", float("nan")
        (eager_ms,) = median_ms([eager], z)
    return [
        {"layout": layout, "part": "eager", "ms_per_step": eager_ms},
        {"layout": layout, "part": "torch.compile", "ms_per_step": fused_ms, "note": note},
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200, help="training steps timed and profiled per layout")
    ap.add_argument("--out", default=str(Path(__file__).with_name("step_parts.csv")))
    args = ap.parse_args()
    X = mnist_tensors()["train_x"]
    if not 1 <= args.steps <= len(X) // B:
        ap.error(f"--steps={args.steps}: between 1 and {len(X) // B} (the full minibatches of one epoch)")
    machine = f"{cpu_model()}, {torch.get_num_threads()} threads"
    peaks = [gemm_peak(torch.device("cpu"))]
    rows = []
    for seeds in (RUNS, 3):
        layout = f"{RUNS} runs on {seeds} seeds"
        step_ms, parts = measure_layout(seeds, X, args.steps)
        peaks.append(gemm_peak(torch.device("cpu")))
        rows.append({"layout": layout, "part": "step (unprofiled)", "ms_per_step": step_ms})
        rows += [{"layout": layout, "part": p, "ms_per_step": ms} for p, ms in parts.items()]
    peak = statistics.median(peaks)
    floor_ms = 4 * RUNS * B * D * K / (peak * 1e9) * 1e3  # the two first-layer GEMMs at the peak
    for row in rows:
        if row["part"] == "step (unprofiled)":
            share = floor_ms / row["ms_per_step"]
            row["note"] = f"the first layer's GEMMs at the peak: {floor_ms:.2f} ms = {share:.1%} of the step"
    rows += compiled_objective()
    print(f"machine: {machine}; fp32 GEMM peak, median of {len(peaks)}: {peak:.0f} GFLOP/s")
    for row in rows:
        print(f"  {row['layout']:28s} {row['part']:44s} {row['ms_per_step']:7.3f} ms  {row.get('note', '')}")
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, ["layout", "part", "ms_per_step", "note", "gemm_peak_gflops", "machine"])
        w.writeheader()
        for row in rows:
            ms = f"{row['ms_per_step']:.4f}"
            w.writerow({**row, "ms_per_step": ms, "gemm_peak_gflops": f"{peak:.1f}", "machine": machine})
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
