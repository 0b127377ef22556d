"""The registry of model kinds: one file per kind, one line here per kind.

``KINDS[name]`` is a ``base.ModelKind`` subclass; ``RunConfig.model`` names one. To add a kind,
write ``kinds/<name>.py`` with its module and its ``ModelKind`` (see ``base.py`` and the README's
"Adding a model kind") and register it below.
"""

from __future__ import annotations

from .base import ModelKind
from .batchtopk import BatchTopKKind
from .encoder import EncoderKind
from .sae import SAEKind
from .sae_infomax import SAEInfoMaxKind
from .topk import TopKKind

KINDS: dict[str, type[ModelKind]] = {
    "encoder": EncoderKind,
    "sae": SAEKind,
    "sae_infomax": SAEInfoMaxKind,
    "topk": TopKKind,
    "batchtopk": BatchTopKKind,
}


def register(kind: type[ModelKind]) -> type[ModelKind]:
    """Add a kind to the registry under ``kind.name`` (also usable as a class decorator)."""
    if kind.name in KINDS and KINDS[kind.name] is not kind:
        raise ValueError(
            f"a model kind named {kind.name!r} is already registered ({KINDS[kind.name].__name__})"
        )
    KINDS[kind.name] = kind
    return kind


__all__ = ["KINDS", "ModelKind", "register"]
