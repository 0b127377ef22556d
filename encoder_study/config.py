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

from .kinds import KINDS
from .losses import LossConfig
from .validation import check_choice, check_int, check_nonnegative, check_positive, check_positive_int

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
        if self.batch_size < kind.min_batch:
            raise ValueError(
                f"batch_size={self.batch_size} is not allowed for model={self.model!r}: its loss takes a "
                f"variance over each minibatch, which needs at least {kind.min_batch} samples"
            )
        kind.check_config(self)

    def as_dict(self) -> dict:
        return asdict(self)

    def with_(self, **changes) -> RunConfig:
        return replace(self, **changes)


def resolve_device(device: str) -> torch.device:
    """The torch device of a RunConfig's ``device`` field."""
    check_choice("device", device, DEVICES)
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but torch.cuda.is_available() is False")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
