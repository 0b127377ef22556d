"""Where the groups of runs that the run cache lacks are trained: in this process, or on a Ray cluster.

``run_experiments`` (runs.py) decides which groups need training and keeps the run cache. With the
``local`` executor it trains them itself, one after another, checkpointing each. ``ray`` sends each
group to a Ray cluster as one task (the data go to the cluster once, through Ray's object store) and
hands every finished group back to the driver as it arrives, so the driver caches it at once;
a group whose task keeps failing is reported by name after the others have finished.

The executor is chosen by the ``executor`` argument of ``run_experiments`` or the environment
variable ENCODER_STUDY_EXECUTOR (``local`` by default). ENCODER_STUDY_RAY_ADDRESS names an
existing cluster (``ray start --head`` prints it); without it a local cluster with this machine's
cores is started. A task computes with the driver's thread count (part of the run cache's key,
and what makes a group's numbers the same as the local executor's on the same machine).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from .config import RunConfig, resolve_device
from .engine import RunResult, train_group
from .progress import Progress
from .validation import check_choice

if TYPE_CHECKING:
    from .runs import GroupJob

EXECUTORS = ("local", "ray")
EXECUTOR_ENV, RAY_ADDRESS_ENV = "ENCODER_STUDY_EXECUTOR", "ENCODER_STUDY_RAY_ADDRESS"
RAY_RETRIES = 2  # a failed task is run again this many times before its group is reported


class GroupsFailed(RuntimeError):
    """Some groups could not be trained; the others finished (and were handed back)."""

    def __init__(self, failures: dict[str, str]) -> None:
        self.failures = failures
        lines = "; ".join(f"{name}: {error}" for name, error in failures.items())
        super().__init__(f"{len(failures)} group(s) failed after {RAY_RETRIES} retries: {lines}")


def executor_name(executor: str | None) -> str:
    """The executor asked for, else the environment's, else ``local``."""
    name = executor if executor is not None else os.environ.get(EXECUTOR_ENV, "") or "local"
    return check_choice("executor", name, EXECUTORS)


Done = Callable[["GroupJob", list[RunResult]], None]  # called in the driver with each finished group


def _train_group_task(
    configs: list[dict],
    train_x: torch.Tensor,
    test_x: torch.Tensor | None,
    threads: int,
    init: list[dict[str, torch.Tensor] | None] | None = None,
) -> list[dict]:
    """A Ray task: one group trained in a worker, with the driver's thread count; plain records back."""
    from .runs import to_record  # in the worker process

    torch.set_num_threads(threads)
    results = train_group([RunConfig(**c) for c in configs], train_x, test_x, progress=False, init=init)
    return [to_record(r) for r in results]


def quiet_ray():
    """The ``ray`` module, imported without the notices it prints in a notebook kernel (tqdm's
    IProgress warning, a hint to install ipywidgets), which would land in the record."""
    logging.getLogger("ray.widgets.util").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import ray
    return ray


def ray_started():
    """The ``ray`` module, connected to the cluster at ENCODER_STUDY_RAY_ADDRESS, else to a local
    one it starts (once per process)."""
    ray = quiet_ray()
    if ray.is_initialized():
        return ray
    address = os.environ.get(RAY_ADDRESS_ENV) or None
    # Ray's start-up lines stay out of the record
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, **quiet)
    return ray


def run_ray(
    jobs: list[GroupJob], train_x: torch.Tensor, test_x: torch.Tensor | None, done: Done, progress: bool
) -> None:
    """Train each job as a Ray task; ``done`` receives each group as it finishes (in the driver).

    Every task asks for the driver's thread count in CPUs, and for one GPU where its runs are on
    CUDA. The data are put into the object store once and every task reads them from there.
    A task that raises or whose worker dies is run again up to RAY_RETRIES times; a group that
    still fails is named in the ``GroupsFailed`` raised once every other group is done.
    """
    from .runs import from_record  # runs imports this module

    ray = ray_started()
    threads = torch.get_num_threads()
    train_ref = ray.put(train_x.cpu())
    test_ref = ray.put(None if test_x is None else test_x.cpu())
    task = ray.remote(max_retries=RAY_RETRIES, retry_exceptions=True)(_train_group_task)
    pending = {}
    for job in jobs:
        gpus = 1 if resolve_device(job.configs[0].device).type == "cuda" else 0
        ref = task.options(num_cpus=threads, num_gpus=gpus).remote(
            [c.as_dict() for c in job.configs], train_ref, test_ref, threads, job.init
        )
        pending[ref] = job
    failures: dict[str, str] = {}
    bar = Progress(total=len(jobs), desc="groups on the Ray cluster", unit="groups", disable=not progress)
    for ref, job in _as_completed(pending):
        try:
            done(job, [from_record(d) for d in ray.get(ref)])
        except ray.exceptions.RayError as e:
            failures[job.name] = _first_line(e)
        bar.status(f"{len(failures)} failed" if failures else "")
        bar.update()
    bar.close(f"{len(jobs) - len(failures)} of {len(jobs)} groups trained on the Ray cluster")
    if failures:
        raise GroupsFailed(failures)


def _as_completed(pending: dict) -> Iterator[tuple[object, GroupJob]]:
    """(task reference, job) pairs in the order the tasks finish."""
    ray = quiet_ray()
    refs = list(pending)
    while refs:
        ready, refs = ray.wait(refs, num_returns=1)
        yield ready[0], pending[ready[0]]


def _first_line(error: BaseException) -> str:
    """The cause of a task's failure in one line (Ray wraps it in its own traceback)."""
    cause = getattr(error, "cause", None) or error
    text = f"{type(cause).__name__}: {cause}" if cause is not error else str(error)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(error).__name__
