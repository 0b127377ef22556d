"""The single-run models of every registered kind, built by name; their classes live in ``kinds/``."""

from __future__ import annotations

import torch
import torch.nn as nn

from .config import RunConfig
from .kinds import KINDS
from .kinds.base import ACTIVATIONS
from .kinds.encoder import Encoder
from .kinds.sae import StandardSAE
from .kinds.topk import TopKSAE, topk_relu


def build_run_model(config: RunConfig, input_dim: int, seed: int | None = None) -> nn.Module:
    """The single-run module of ``config``, initialised from ``seed`` where one is given."""
    if seed is not None:
        torch.manual_seed(seed)
    return KINDS[config.model].build(input_dim, config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "ACTIVATIONS",
    "Encoder",
    "StandardSAE",
    "TopKSAE",
    "build_run_model",
    "count_parameters",
    "topk_relu",
]
