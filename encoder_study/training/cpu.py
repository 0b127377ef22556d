"""CPU arithmetic settings that training depends on: denormals flushed on every thread, and
torch's transcendental functions warmed up once per process (``import encoder_study`` does it)."""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


def settle_cpu_math() -> None:
    """Warm up torch's CPU transcendentals once per process.

    Seen with torch 2.13.0 (CPU, 2 OpenMP threads): the first parallel call of exp, log or sqrt in
    a fresh process sometimes computes the second thread's half with a low-accuracy path (relative
    error 1.5e-4 instead of 6e-8); every later call is exact. That alone made float32 results
    differ between identical runs. Two warm-up calls on a tensor large enough to run in parallel
    make every later call exact and reproducible (tests/test_reproducibility.py checks it in
    fresh processes).
    """
    w = torch.rand(1 << 15, generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        torch.exp(w), torch.log(w + 1.0), torch.sqrt(w)


@functools.cache
def _openmp_runtime() -> ctypes.CDLL | None:
    """The GNU OpenMP runtime torch runs its CPU threads on, if it is that one (Linux wheels)."""
    libs = sorted(Path(torch.__file__).parent.joinpath("lib").glob("libgomp*.so*"))
    try:
        return ctypes.CDLL(str(libs[0]) if libs else "libgomp.so.1")
    except OSError:
        return None


def _set_flush_denormal_on_every_thread(on: bool) -> None:
    """``torch.set_flush_denormal`` on this thread and on each of torch's OpenMP worker threads.

    The flag lives in each thread's floating-point control register and torch sets it only on
    the calling thread, so the other threads' halves of every parallel op kept computing with
    denormals. An empty OpenMP parallel region (libgomp's ``GOMP_parallel``, the entry point
    compilers emit for ``#pragma omp parallel``) runs the call on every thread of the pool that
    torch's parallel ops use. Without libgomp only the calling thread is set.
    """
    if sys.is_finalizing():
        # a flush_denormals() entered and never left, closed at interpreter exit: torch's worker
        # threads are gone and an OpenMP region would wait for them forever; nothing to restore
        return
    gomp = _openmp_runtime()
    if gomp is None or torch.get_num_threads() == 1:
        torch.set_flush_denormal(on)
        return
    callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _: torch.set_flush_denormal(on))
    gomp.GOMP_parallel(callback, None, ctypes.c_uint(torch.get_num_threads()), ctypes.c_uint(0))


@contextmanager
def flush_denormals() -> Iterator[None]:
    """Treat denormal floats as zero while training (CPU), on every thread.

    Adam's moment estimates of units that stop receiving gradient decay geometrically into the
    denormal range, where x86 arithmetic is many times slower (benchmarks/README.md). Values
    below 1e-38 become 0, which moves no result that matters.
    """
    _set_flush_denormal_on_every_thread(True)
    try:
        yield
    finally:
        _set_flush_denormal_on_every_thread(False)
