"""encoder-study: decoder-free sparse features from log-sum-exp + InfoMax (implicit EM).

The public API for one's own data is ``fit``, ``load`` and ``Dictionary`` (``interface/api.py``),
loaded on first use: importing the package runs only ``training.cpu.settle_cpu_math`` (and the
docstring-only ``training/__init__.py``), so ``python -m encoder_study.<module>`` finds its module
not yet imported.
"""

import importlib

from .training.cpu import settle_cpu_math

__version__ = "0.1.0"
__all__ = ["Dictionary", "fit", "load", "__version__"]

settle_cpu_math()  # before any other torch work: see cpu.settle_cpu_math


def __getattr__(name: str) -> object:
    if name in ("Dictionary", "fit", "load"):
        return getattr(importlib.import_module(".interface.api", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
