"""Where the groups of runs that the run cache lacks are trained: in this process, or on a Ray cluster.

``run_experiments`` (runs.py) forms the groups and hands them, with the run cache
(``run_cache.py``), to an executor: ``EXECUTORS[name](jobs, cache, train_x, test_x, progress)``
returns every group's results, taking each from the cache where it is there. ``local``
(``run_local``) trains the others itself, one after another, checkpointing each. ``ray``
(``run_ray``) sends each to a Ray cluster as one task (the data go to the cluster once, through
Ray's object store) and hands every finished group back to the driver as it arrives, so the driver
caches it at once; a group whose task keeps failing is reported by name after the others have
finished.

The executor is chosen by the ``executor`` argument of ``run_experiments`` or the environment
variable ENCODER_STUDY_EXECUTOR (``local`` by default). ENCODER_STUDY_RAY_ADDRESS names an
existing cluster (``ray start --head`` prints it); without it a local cluster with this machine's
cores is started. A task computes with the driver's thread count (part of the run cache's key,
and what makes a group's numbers the same as the local executor's on the same machine).

Connecting to the cluster at ENCODER_STUDY_RAY_ADDRESS gives up after ENCODER_STUDY_RAY_TIMEOUT
seconds (default 60; a positive number), with a ``ConnectionError`` that names the address, the
timeout and how to start a cluster. Left to itself, ``ray.init`` retries an address where no
cluster answers for many minutes (Ray 2.60: 20 attempts of up to about 40 s each). So first the
host:port (``ray://host:port`` too) is dialled over TCP (a closed port is refused at once), then
``ray.init`` runs in a background thread that is waited on for what is left of the timeout: a
port that accepts connections but is no cluster (a dashboard's port, a typo) times out instead
of hanging. An abandoned attempt goes on in that thread until Ray gives up on its own (it does
not keep the process from exiting); while it does, connecting again in the same process is
refused: restart the process (or the notebook's kernel) to try again.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import torch

from ..book.progress import Progress
from ..book.validation import check_choice
from ..models.config import RunConfig, resolve_device
from .engine import RunResult, from_record, to_record, train_group
from .run_cache import GroupJob, RunCache

EXECUTOR_ENV, RAY_ADDRESS_ENV = "ENCODER_STUDY_EXECUTOR", "ENCODER_STUDY_RAY_ADDRESS"
RAY_TIMEOUT_ENV, RAY_TIMEOUT_DEFAULT = "ENCODER_STUDY_RAY_TIMEOUT", 60.0  # seconds to reach a cluster
START_CLUSTER = (
    "start one on the head machine with `ray start --head --port=6379` and set "
    f"{RAY_ADDRESS_ENV}=HEAD_IP:6379, or unset {RAY_ADDRESS_ENV} to start a local cluster here"
)
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


Done = Callable[[GroupJob, list[RunResult]], None]  # called in the driver with each finished group
Found = dict[str, list[RunResult]]  # every group's results, by the job's name


def run_local(
    jobs: list[GroupJob], cache: RunCache, train_x: torch.Tensor, test_x: torch.Tensor | None, progress: bool
) -> Found:
    """Each group from the cache, else trained here (checkpointing) and cached, one after another,
    each under its lock: a second process that needs the group waits, then loads it."""
    found: Found = {}
    overall = Progress(total=len(jobs), desc="groups of runs", unit="done", disable=not progress)
    for job in jobs:
        with cache.holding(job):
            loaded = cache.cached(job)
            if loaded is None:
                _, _, checkpoint = cache.paths(job)
                if cache.fresh and checkpoint.exists():
                    checkpoint.unlink()
                loaded = train_group(
                    job.configs,
                    train_x,
                    test_x,
                    checkpoint=checkpoint,
                    progress=progress,
                    desc=job.name,
                    init=job.init,
                )
                cache.save(job, loaded, locked=True)
        found[job.name] = loaded
        overall.status(f"{cache.hits} from the run cache")
        overall.update()
    runs = sum(len(job.configs) for job in jobs)
    overall.close(
        f"{len(jobs)} group{'s' if len(jobs) > 1 else ''} of {runs} runs: "
        f"{len(jobs) - cache.hits} trained, {cache.hits} loaded from the run cache"
    )
    return found


def run_ray(
    jobs: list[GroupJob], cache: RunCache, train_x: torch.Tensor, test_x: torch.Tensor | None, progress: bool
) -> Found:
    """Each group from the cache, else trained as a task on the Ray cluster (``train_on_ray``) and
    cached by the driver as it comes back; no cluster is started when every group is cached."""
    found: Found = {}
    missing = [job for job in jobs if not cache.load_into(job, found)]
    if missing:
        train_on_ray(
            missing,
            train_x,
            test_x,
            lambda job, res: found.update({job.name: cache.save(job, res)}),
            progress,
        )
    return found


def _train_group_task(
    configs: list[dict],
    train_x: torch.Tensor,
    test_x: torch.Tensor | None,
    threads: int,
    init: list[dict[str, torch.Tensor] | None] | None = None,
) -> list[dict]:
    """A Ray task: one group trained in a worker, with the driver's thread count; plain records back."""
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
    """The ``ray`` module, connected to the cluster at ENCODER_STUDY_RAY_ADDRESS (within
    ENCODER_STUDY_RAY_TIMEOUT seconds, else a ``ConnectionError``), else to a local one it starts
    (once per process)."""
    ray = quiet_ray()
    if ray.is_initialized():
        return ray
    address = os.environ.get(RAY_ADDRESS_ENV) or None
    timeout = ray_timeout()
    # Ray's start-up lines stay out of the record
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address:
        _connect(ray, address, timeout, quiet)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, **quiet)
    return ray


def ray_timeout() -> float:
    """ENCODER_STUDY_RAY_TIMEOUT: seconds to wait for the cluster (a positive number; default 60)."""
    text = os.environ.get(RAY_TIMEOUT_ENV, "").strip()
    if not text:
        return RAY_TIMEOUT_DEFAULT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"{RAY_TIMEOUT_ENV}={text!r} is not allowed; give a positive number of seconds "
            f"(default {RAY_TIMEOUT_DEFAULT:g})"
        )
    return value


_pending_connect: tuple[str, threading.Thread] | None = None  # an attempt that outlived its timeout


def _connect(ray, address: str, timeout: float, init_kwargs: dict) -> None:
    """``ray.init(address=...)`` within ``timeout`` seconds: the port dialled first, then the
    init in a thread waited on for the rest of the time (see the module docstring)."""
    global _pending_connect
    deadline = time.monotonic() + timeout

    def unreachable(why: str) -> ConnectionError:
        return ConnectionError(
            f"could not connect to the Ray cluster at {RAY_ADDRESS_ENV}={address!r}: {why} "
            f"(timeout {timeout:g} s, {RAY_TIMEOUT_ENV}); if no cluster runs there, {START_CLUSTER}"
        )

    if _pending_connect is not None:
        earlier, thread = _pending_connect
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            raise ConnectionError(
                f"an earlier attempt to connect to the Ray cluster at {earlier!r} has not given up "
                f"yet; restart the Python process (or the notebook's kernel) to try again"
            )
        _pending_connect = None
    endpoint = _host_port(address)
    if endpoint is not None:
        try:
            socket.create_connection(endpoint, timeout=timeout).close()
        except TimeoutError:
            raise unreachable(f"{endpoint[0]}:{endpoint[1]} did not answer within {timeout:g} s") from None
        except OSError as e:
            raise unreachable(f"{endpoint[0]}:{endpoint[1]} cannot be reached ({e.strerror or e})") from None
    outcome: dict[str, BaseException | None] = {}

    def init() -> None:  # every outcome is kept, so an abandoned attempt prints nothing
        try:
            ray.init(address=address, **init_kwargs)
            outcome["error"] = None
        except BaseException as e:  # handed to the caller below
            outcome["error"] = e

    thread = threading.Thread(target=init, name="encoder-study-ray-connect", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if thread.is_alive():
        _pending_connect = (address, thread)
        raise unreachable(
            f"its port accepts connections but no Ray cluster answered within {timeout:g} s (is it the "
            f"address `ray start --head` printed, the GCS port, not the dashboard's?)"
        )
    if outcome["error"] is not None:
        error = outcome["error"]
        raise unreachable(f"{type(error).__name__}: {_first_line(error)}") from error


def _host_port(address: str) -> tuple[str, int] | None:
    """The (host, port) that ``address`` (``host:port`` or ``ray://host:port``) dials; None where
    Ray finds the cluster itself (``auto``) or the form is one this check does not know."""
    rest = address.split("://", 1)[1] if "://" in address else address
    if address == "auto" or ("://" in address and not address.startswith("ray://")):
        return None
    try:
        parts = urlsplit(f"//{rest.rstrip('/')}")
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise ValueError(
            f"{RAY_ADDRESS_ENV}={address!r} is not an address; give host:port (as `ray start --head` "
            f"prints it, e.g. 10.0.0.5:6379), ray://host:port or auto"
        )
    return host, port


def train_on_ray(
    jobs: list[GroupJob], train_x: torch.Tensor, test_x: torch.Tensor | None, done: Done, progress: bool
) -> None:
    """Train each job as a Ray task; ``done`` receives each group as it finishes (in the driver).

    Every task asks for the driver's thread count in CPUs, and for one GPU where its runs are on
    CUDA. The data are put into the object store once and every task reads them from there.
    A task that raises or whose worker dies is run again up to RAY_RETRIES times; a group that
    still fails is named in the ``GroupsFailed`` raised once every other group is done.
    """
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


# The executors, by the name run_experiments takes: each trains the groups the cache lacks and
# returns every group's results (cached ones included), by the job's name.
EXECUTORS: dict[str, Callable[..., Found]] = {"local": run_local, "ray": run_ray}
