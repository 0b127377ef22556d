"""encoder-study: decoder-free sparse features from log-sum-exp + InfoMax (implicit EM)."""

import torch

__version__ = "0.1.0"


def _settle_cpu_math() -> None:
    """Warm up torch's CPU transcendentals once per process.

    Seen here with torch 2.13.0 (CPU, 2 OpenMP threads): the first parallel call of exp, log or
    sqrt in a fresh process computes the second thread's half with a low-accuracy path (relative
    error 1.5e-4 instead of 6e-8) in about one process out of six; every later call is exact.
    That alone made float32 results differ between identical runs. Two warm-up calls on a
    tensor large enough to run in parallel make every later call exact and reproducible
    (tests/test_reproducibility.py checks it in fresh processes).
    """
    w = torch.rand(1 << 15, generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        torch.exp(w), torch.log(w + 1.0), torch.sqrt(w)


_settle_cpu_math()

from .api import Dictionary, fit, load  # noqa: E402  (the public API for one's own data; after the warm-up)

__all__ = ["Dictionary", "fit", "load", "__version__"]
