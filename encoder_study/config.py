"""What defines a training run: ``LossConfig`` (the encoder's objective) and ``RunConfig`` (one
run of any model kind), their defaults (docs/paper.md) and where a run computes.

Both are frozen dataclasses whose fields are checked on construction, so a value no run can use
is refused by name before any work. A model kind's own fields (``k`` for the TopK SAE, the
activation) are checked by that kind (``kinds/``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

import torch

from .validation import check_choice, check_int, check_nonnegative, check_positive, check_positive_int

REDUCTIONS = ("sum", "mean")
TERMS = ("lse", "var", "tc", "wr")  # the encoder's loss terms, in LossConfig's order
OPTIMIZERS = ("adam", "sgd")
DEVICES = ("auto", "cpu", "cuda")
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class LossConfig:
    """The weights (lambdas) of the encoder's four loss terms and how LSE sums over a batch."""

    lse: float = 1.0
    """Log-sum-exp: -sum_batch log sum_j exp(-a_j); its gradient is each unit's responsibility."""
    var: float = 1.0
    """Variance (InfoMax): -sum_j log(Var(a_j) + eps), keeps every unit in use."""
    tc: float = 1.0
    """Decorrelation (InfoMax): squared off-diagonal correlations of the units over a batch."""
    wr: float = 0.0
    """Weight redundancy: ||W_n W_n^T - I||^2 of the unit-normalised rows (off in the paper)."""
    reduction: str = "sum"
    """"sum" over the batch (the paper's, dL/da = responsibility) or "mean"."""

    def __post_init__(self) -> None:
        for name in TERMS:
            object.__setattr__(self, name, check_nonnegative(f"lambda_{name}", getattr(self, name)))
        check_choice("reduction", self.reduction, REDUCTIONS)

    def as_dict(self) -> dict:
        return asdict(self)


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
        from .kinds import KINDS  # the registry imports this module

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
