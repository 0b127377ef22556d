"""What the Ray executor costs per group of runs, against the local executor, side by side in one run.

    python benchmarks/ray_overhead.py [--repeats 5] [--out benchmarks/ray_overhead.csv]

For groups of 1, 4 and 12 encoder runs (784 -> 64, batch 128, MNIST) and 1 or 3 epochs, each
trained into an empty run cache by ``run_experiments`` with the local executor and with the Ray
executor (a local cluster of this machine's cores, started once before the timings), the median
wall time over the repeats; their difference is Ray's overhead for one call of
``run_experiments`` with one group (the data put into the object store, the task started and
fed, the results back). Also the time to put the training data into the
object store once. On one machine Ray cannot be faster (the same cores train); on a cluster a
group pays off when the time it saves by running beside others exceeds this overhead.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import torch

from encoder_study.book.data import mnist_tensors
from encoder_study.models.config import RunConfig
from encoder_study.training.executors import ray_started
from encoder_study.training.runs import run_experiments


def wall(configs: list[RunConfig], X: torch.Tensor, executor: str) -> float:
    """Seconds for run_experiments to train the group into an empty cache."""
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        run_experiments(configs, X, cache=cache, executor=executor, progress=False)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).with_name("ray_overhead.csv")))
    args = ap.parse_args()
    import ray

    X = mnist_tensors()["train_x"]
    t0 = time.perf_counter()
    ray_started()
    start_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    ray.get(ray.put(X))
    put_seconds = time.perf_counter() - t0
    print(
        f"local cluster started in {start_seconds:.1f} s; "
        f"MNIST train set into the object store in {put_seconds:.2f} s"
    )
    rows = []
    for runs in (1, 4, 12):
        for epochs in (1, 3):
            configs = [RunConfig(seed=s, epochs=epochs, device="cpu") for s in range(1, runs + 1)]
            wall(configs, X, "ray")  # warm-up: a worker process with torch imported
            times = {ex: [] for ex in ("local", "ray")}
            for _ in range(args.repeats):
                for ex in times:  # alternating, so drifts of the machine touch both alike
                    times[ex].append(wall(configs, X, ex))
            local, remote = statistics.median(times["local"]), statistics.median(times["ray"])
            rows.append((runs, epochs, local, remote, remote - local))
            print(
                f"{runs:>3} runs x {epochs} epochs: local {local:.2f} s, ray {remote:.2f} s, "
                f"overhead {remote - local:+.2f} s",
                flush=True,
            )
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "runs",
                "epochs",
                "local_seconds",
                "ray_seconds",
                "overhead_seconds",
                "repeats",
                "cluster_start_seconds",
                "data_put_seconds",
                "threads",
            ]
        )
        for r in rows:
            w.writerow(
                [
                    r[0],
                    r[1],
                    f"{r[2]:.3f}",
                    f"{r[3]:.3f}",
                    f"{r[4]:.3f}",
                    args.repeats,
                    f"{start_seconds:.2f}",
                    f"{put_seconds:.3f}",
                    torch.get_num_threads(),
                ]
            )
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
