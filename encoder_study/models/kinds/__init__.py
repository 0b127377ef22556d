"""The registry of model kinds: one file per kind, one line here per kind.

``KINDS[name]`` is a ``base.ModelKind`` subclass; ``RunConfig.model`` names one, and
``user_kinds()`` maps the names users give (``fit(kind="ours")``) to them. Everything else about
a kind (its knobs, its SAELens form) is declared in its file. To add a kind,
write ``kinds/<name>.py`` with its module and its ``ModelKind`` (see ``base.py`` and the README's
"Adding a model kind") and register it below.
"""

from __future__ import annotations

from .base import Knob, ModelKind
from .batchtopk import BatchTopKKind
from .encoder import EncoderKind
from .encoder_em import EncoderEMKind
from .encoder_scale_free import EncoderScaleFreeKind
from .encoder_unit_rows import EncoderUnitRowsKind
from .jumprelu import JumpReLUKind
from .sae import SAEKind
from .sae_dnorm import SAEDecoderNormKind
from .sae_infomax import SAEInfoMaxKind
from .topk import TopKKind

KINDS: dict[str, type[ModelKind]] = {
    "encoder": EncoderKind,
    "sae": SAEKind,
    "sae_infomax": SAEInfoMaxKind,
    "topk": TopKKind,
    "batchtopk": BatchTopKKind,
    "jumprelu": JumpReLUKind,
    "sae_dnorm": SAEDecoderNormKind,
    "encoder_unit_rows": EncoderUnitRowsKind,
    "encoder_scale_free": EncoderScaleFreeKind,
    "encoder_em": EncoderEMKind,
}


def user_kinds() -> dict[str, type[ModelKind]]:
    """The kinds a user names (``fit``, the command, saved dictionaries), by ``user_name``: the
    registry's kinds that have one, a kind registered from outside the package included."""
    return {kind.user_name: kind for kind in KINDS.values() if kind.user_name}


def register(kind: type[ModelKind]) -> type[ModelKind]:
    """Add a kind to the registry under ``kind.name`` (also usable as a class decorator)."""
    if kind.name in KINDS and KINDS[kind.name] is not kind:
        raise ValueError(
            f"a model kind named {kind.name!r} is already registered ({KINDS[kind.name].__name__})"
        )
    if kind.user_name and kind.user_name in user_kinds() and user_kinds()[kind.user_name] is not kind:
        raise ValueError(f"a model kind with user_name {kind.user_name!r} is already registered")
    KINDS[kind.name] = kind
    return kind


__all__ = ["KINDS", "Knob", "ModelKind", "register", "user_kinds"]
