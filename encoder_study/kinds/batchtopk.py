"""The BatchTopK sparse autoencoder (Bussmann, Leask and Nanda 2024, "BatchTopK Sparse
Autoencoders"): TopK taken over a whole minibatch instead of each sample."""

from __future__ import annotations

import torch
import torch.nn as nn

from .base import Params
from .topk import TopKKind, TopKSAE

THRESHOLD_DECAY = 0.99  # the inference threshold's running average forgets at this rate per step


class BatchTopKSAE(TopKSAE):
    """The TopK SAE's parameters (unit-norm decoder columns, b_pre) plus one number, ``threshold``.

    Training keeps the k x B largest pre-activations of a minibatch of B samples (so a sample may
    use more or fewer than k latents, k on average); a single sample has no batch, so inference
    keeps every pre-activation above ``threshold``, a running average of the smallest activation
    kept in training (a JumpReLU with one threshold for all latents).
    """

    def __init__(self, input_dim: int = 784, hidden_dim: int = 64, k: int = 16) -> None:
        super().__init__(input_dim, hidden_dim, k)
        self.register_buffer("threshold", torch.zeros(()))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = self.pre_activations(x)
        return torch.where(z > self.threshold, z, 0.0).relu()


class BatchTopKKind(TopKKind):
    """Training stacks of BatchTopK SAEs: the TopK SAE's loss, AuxK and decoder constraint, with
    the selection over each run's whole minibatch; ``threshold`` is a buffer the kind updates after
    every step (the first steps average the minima so far, then an exponential average with
    ``THRESHOLD_DECAY``)."""

    name, module = "batchtopk", BatchTopKSAE
    buffers = ("threshold",)
    per_run_state = ("k", "idle", "last_min")
    checkpointed = ("idle", "steps")

    def __init__(self, configs: list, layout, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(configs, layout, device, dtype)
        self.steps = torch.zeros((), dtype=torch.long, device=device)
        self.last_min = torch.zeros(len(configs), dtype=dtype, device=device)

    @classmethod
    def build(cls, input_dim: int, config) -> nn.Module:
        return BatchTopKSAE(input_dim, config.hidden_dim, config.k)

    def _topk_per_run(self, z: torch.Tensor) -> torch.Tensor:
        """Per run, the k_r x B largest entries of its (B, K) pre-activations kept, then ReLU; the
        smallest kept activation of each run is remembered for the threshold."""
        R, B, K = z.shape
        flat = z.reshape(R, B * K)
        values, idx = flat.topk(int(self.k.max()) * B, dim=-1)
        keep = torch.arange(values.shape[-1], device=z.device) < (self.k * B).view(-1, 1)
        kept = torch.where(keep, values.relu(), 0.0)
        with torch.no_grad():
            self.last_min = torch.where(keep, values.detach().relu(), float("inf")).min(1).values
        return torch.zeros_like(flat).scatter(-1, idx, kept).view(R, B, K)

    def encode(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """Inference: each run's pre-activations above its threshold."""
        z = self._pre_activations(params, x.expand(self.layout.runs, -1, -1))
        return torch.where(z > params["threshold"].view(-1, 1, 1), z, 0.0).relu()

    @torch.no_grad()
    def after_step(self, params: Params) -> None:
        super().after_step(params)
        self.steps += 1
        rate = torch.clamp(1.0 / self.steps.to(self.dtype), min=1 - THRESHOLD_DECAY)
        params["threshold"].add_((self.last_min - params["threshold"]) * rate)
