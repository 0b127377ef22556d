"""A model kind with a buffer, for the tests: the encoder (ReLU, the paper's objective through
the default autograd path) whose module also keeps ``activation_ema``, a running mean of each
unit's activation that the kind updates after every step, as an inference threshold would be
(BatchTopK's). The engine must stack, checkpoint and return it, and never train it."""

from __future__ import annotations

import torch
import torch.nn as nn

from encoder_study.models.kinds.base import ModelKind
from encoder_study.models.kinds.encoder import Encoder
from encoder_study.models.losses import TERMS, LossConfig, combined_loss

EMA = 0.9


class EmaEncoder(Encoder):
    def __init__(self, input_dim: int, hidden_dim: int) -> None:
        super().__init__(input_dim, hidden_dim)
        self.register_buffer("activation_ema", torch.zeros(hidden_dim))


class EmaEncoderKind(ModelKind):
    name, terms, module = "ema_encoder", TERMS, EmaEncoder
    buffers = ("activation_ema",)
    per_run_state = ("lambdas",)

    def __init__(self, configs, layout, device, dtype) -> None:
        super().__init__(configs, layout, device, dtype)
        self.lambdas = {t: self.per_run([getattr(c.loss, t) for c in configs]) for t in TERMS}
        self.last_means: list[torch.Tensor] = []

    @classmethod
    def build(cls, input_dim: int, config) -> nn.Module:
        return EmaEncoder(input_dim, config.hidden_dim)

    def run_loss(self, r, params, output, x):
        if r == 0:
            self.last_means = []
        self.last_means.append(output[0].detach().mean(0))
        used = LossConfig(**{t: float(any(getattr(c.loss, t) for c in self.configs)) for t in TERMS})
        out = combined_loss(
            output[0], params["linear.weight"], used, weights={t: self.lambdas[t][r] for t in TERMS}
        )
        return {t: out[t] for t in ("total", *TERMS)}

    @torch.no_grad()
    def after_step(self, params) -> None:
        params["activation_ema"].mul_(EMA).add_((1 - EMA) * torch.stack(self.last_means))

    def encode(self, params, x):
        return torch.relu(
            torch.baddbmm(
                params["linear.bias"].unsqueeze(1),
                x.expand(self.layout.runs, -1, -1),
                params["linear.weight"].transpose(1, 2),
            )
        )
