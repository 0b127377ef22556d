"""A model kind added the way the README says, for the tests: this one file plus one registry line
(``kinds.register(TanhEncoderKind)`` in the test that uses it). The encoder with a = tanh(W x + b),
trained with the paper's objective through the default (autograd) training path."""

from __future__ import annotations

import torch
import torch.nn as nn

from encoder_study.models.kinds.base import FirstLayer, ModelKind
from encoder_study.models.losses import TERMS, LossConfig, combined_loss


class TanhEncoder(FirstLayer, nn.Module):
    first_layer = "linear"

    def __init__(self, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(input_dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.linear(x)
        return torch.tanh(z), z

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)[0]


class TanhEncoderKind(ModelKind):
    name, terms, module = "tanh_encoder", TERMS, TanhEncoder
    per_run_state = ("lambdas",)

    def __init__(self, configs, layout, device, dtype) -> None:
        super().__init__(configs, layout, device, dtype)
        self.lambdas = {t: self.per_run([getattr(c.loss, t) for c in configs]) for t in TERMS}

    @classmethod
    def build(cls, input_dim: int, config) -> nn.Module:
        return TanhEncoder(input_dim, config.hidden_dim)

    def run_loss(self, r, params, output, x):
        used = LossConfig(**{t: float(any(getattr(c.loss, t) for c in self.configs)) for t in TERMS})
        out = combined_loss(
            output[0], params["linear.weight"], used, weights={t: self.lambdas[t][r] for t in TERMS}
        )
        return {t: out[t] for t in ("total", *TERMS)}

    def encode(self, params, x):
        return torch.tanh(
            torch.baddbmm(
                params["linear.bias"].unsqueeze(1),
                x.expand(self.layout.runs, -1, -1),
                params["linear.weight"].transpose(1, 2),
            )
        )
