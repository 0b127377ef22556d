"""What defines a training run: ``RunConfig`` (one run of any model kind, the encoder's lambdas in
its ``LossConfig``, which the objective's module ``losses.py`` defines), its defaults
(docs/paper.md) and where a run computes.

A frozen dataclass whose fields are checked on construction, so a value no run can use is refused
by name before any work. A model kind's own fields (``k`` for the TopK SAE, the activation) are
checked by that kind (``kinds/``, whose registry this module reads).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

import torch

from ..book.validation import check_choice, check_int, check_nonnegative, check_positive, check_positive_int
from .kinds import KINDS, user_kinds
from .losses import LossConfig

OPTIMIZERS = ("adam", "sgd")
DEVICES = ("auto", "cpu", "cuda")
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run; the same seed and config give the same numbers."""

    model: str = "encoder"
    """A registered model kind (``kinds.KINDS``): "encoder" (ours), "sae" (L1 SAE), "topk" (TopK SAE),
    "batchtopk" (BatchTopK SAE), "sae_infomax" (an SAE whose loss adds LSE + InfoMax)."""
    hidden_dim: int = 64
    """Units (features, latents) of the first layer."""
    activation: str = "relu"
    """The encoder's activation ("relu", "identity", "softplus"); the SAEs take "relu" only."""
    loss: LossConfig = field(default_factory=LossConfig)
    """The encoder's lambdas (a dict of them is accepted)."""
    l1: float = 0.01
    """The L1 SAE's sparsity weight."""
    k: int = 0
    """Active latents per sample: exactly for the TopK SAE, on average over a minibatch for the
    BatchTopK SAE (0 for every other kind)."""
    optimizer: str = "adam"
    """"adam" (betas 0.9, 0.999, eps 1e-8) or "sgd" (no momentum)."""
    lr: float = 1e-3
    """Learning rate."""
    epochs: int = 100
    """Passes over the training data."""
    batch_size: int = 128
    """Samples per minibatch (the last minibatch of an epoch may be smaller)."""
    seed: int = 1
    """Seeds the initialisation and the minibatch order of every epoch."""
    device: str = "auto"
    """"cpu", "cuda", or "auto" (CUDA when available)."""
    eval_every: int = 10
    """Test-set metrics every this many epochs (and at the last)."""
    knobs: tuple[tuple[str, float], ...] = ()
    """Knobs of the kind that RunConfig has no field for (a kind added outside the package declares
    them with ``Knob(field="")``), as (name, value) pairs; a dict is accepted."""

    def __post_init__(self) -> None:
        check_choice("model", self.model, KINDS)
        if isinstance(self.loss, dict):
            unknown = sorted(set(self.loss) - {f.name for f in fields(LossConfig)})
            if unknown:
                raise TypeError(
                    f"loss={self.loss!r}: unknown term(s) {unknown}; "
                    f"LossConfig takes {[f.name for f in fields(LossConfig)]}"
                )
            object.__setattr__(self, "loss", LossConfig(**self.loss))
        if not isinstance(self.loss, LossConfig):
            raise TypeError(f"loss must be a LossConfig or a dict of lambdas, got {type(self.loss).__name__}")
        checks = {
            "hidden_dim": check_positive_int,
            "k": check_int,
            "l1": check_nonnegative,
            "lr": check_positive,
            "epochs": check_positive_int,
            "batch_size": check_positive_int,
            "seed": check_int,
            "eval_every": check_positive_int,
        }
        for name, check in checks.items():  # NumPy scalars and ints for floats become plain Python numbers
            object.__setattr__(self, name, check(name, getattr(self, name)))
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("device", self.device, DEVICES)
        kind = KINDS[self.model]
        object.__setattr__(self, "knobs", _own_knobs(kind, self.knobs))
        if self.batch_size < kind.min_batch:
            raise ValueError(
                f"batch_size={self.batch_size} is not allowed for model={self.model!r}: its loss takes a "
                f"variance over each minibatch, which needs at least {kind.min_batch} samples"
            )
        kind.check_config(self)

    def as_dict(self) -> dict:
        return {**asdict(self), "knobs": dict(self.knobs)}

    def with_(self, **changes) -> RunConfig:
        return replace(self, **changes)

    def training(self) -> dict:
        """The settings of training that a saved dictionary records beside its knobs."""
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "lr": self.lr,
            "seed": self.seed,
            "activation": self.activation,
        }


def _own_knobs(kind, given: object) -> tuple[tuple[str, float], ...]:
    """``RunConfig.knobs`` checked against the kind's own knobs (``Knob(field="")``): defaults
    filled in, unknown names and bad values refused by name."""
    own = {k.name: k for k in kind.knobs if not k.field}
    pairs = dict(given.items() if isinstance(given, dict) else given)
    unknown = sorted(set(pairs) - set(own))
    if unknown:
        raise ValueError(
            f"knobs={pairs!r}: model={kind.name!r} has no knob {unknown}; its own knobs: {sorted(own)}"
        )
    values = {}
    for name, knob in own.items():
        if name not in pairs and knob.default is None:
            raise ValueError(f"model={kind.name!r} needs knobs={{{name!r}: ...}} ({knob.doc})")
        values[name] = knob.check(pairs.get(name, knob.default), kind.name)
    return tuple(sorted(values.items()))


def saved_run_config(kind: str, hidden_dim: int, knobs: dict, training: dict) -> RunConfig:
    """The RunConfig a saved dictionary records: its kind (as users name it), width, knobs and
    ``RunConfig.training()``'s fields (a KeyError names a missing one)."""
    if not isinstance(training, dict):
        raise TypeError(f"training={training!r} must be a mapping of training settings")
    if not isinstance(knobs, dict):
        raise TypeError(f"knobs={knobs!r} must be a mapping of knob names to values")
    settings = {name: training[name] for name in ("epochs", "seed", "batch_size", "lr", "optimizer")}
    return run_config_for(
        kind, knobs, hidden_dim=hidden_dim, activation=training.get("activation", "relu"), **settings
    )


def run_config_for(kind: str, knobs: dict, **settings) -> RunConfig:
    """The RunConfig of a kind named as users name it (``kinds.user_kinds``), its knobs by name
    (each checked, defaults filled in) and the other settings (RunConfig's fields)."""
    kinds = user_kinds()
    check_choice("kind", kind, kinds)
    return RunConfig(model=kinds[kind].name, **kinds[kind].config_fields(knobs), **settings)


def resolve_device(device: str) -> torch.device:
    """The torch device of a RunConfig's ``device`` field."""
    check_choice("device", device, DEVICES)
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but torch.cuda.is_available() is False")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
