"""encoder-study: decoder-free sparse features from log-sum-exp + InfoMax (implicit EM)."""

from .cpu import settle_cpu_math

__version__ = "0.1.0"


settle_cpu_math()  # before any other torch work: see cpu.settle_cpu_math

from .api import Dictionary, fit, load  # noqa: E402  (the public API for one's own data; after the warm-up)

__all__ = ["Dictionary", "fit", "load", "__version__"]
