"""The L1 SAE in the form of Anthropic's April 2024 update to their SAE training: the L1 penalty
weighted by each latent's decoder norm, with that update's initialisation, penalty warm-up and
gradient clipping.

loss = MSE + l1 * mean over samples of sum_j a_j ||W_dec[:, j]||, divided by the number of
latents, so that ``l1`` means what it does for the plain L1 SAE (``sae.py``) when every column has
unit norm. Without the norm, the L1 penalty can be dodged by shrinking a and growing the decoder's
column, which is why the plain form needs a constraint on the columns; with it, the penalty is on
each latent's contribution to the reconstruction, and the columns are left free.

The rest of the recipe:
- initialisation: each decoder column a random direction (Gaussian, normalised) of norm
  ``DECODER_INIT_NORM`` (the update found 0.05 to 1 to work), the encoder its transpose, both
  biases zero;
- warm-up: the L1 weight grows linearly to l1 over the first n = ``L1_WARMUP_FRACTION`` of the
  run's steps (at least one), then stays; step t pays l1 min(1, (t + 1) / n), so the first step
  already pays l1 / n where the update starts from 0 (one step's difference);
- clipping: each run's gradient, all parameters together, is scaled down to norm ``GRAD_CLIP``
  where it is longer, that norm measured on the loss in the update's units (squared error summed
  over the D input dimensions: D times this loss), so the bound on this loss's gradient is
  GRAD_CLIP / D.
Not taken:
- the update's learning-rate decay over the last 20% of steps: every kind here trains at a
  constant rate (one optimizer for all);
- its data scaling (mean norm sqrt(D)), which gives the starting norm and the clip their meaning:
  the data are the caller's. Notebook 5 scales its vectors to mean squared norm D, close to it;
  notebook 6's MNIST pixels and ``fit``'s data keep their own scale;
- its convention of reading a feature's activation as a_j ||W_dec[:, j]||: ``encode`` returns a.
The module is the plain SAE's (``StandardSAE``, and SAELens's ``standard`` architecture on
export); only the initialisation and training differ.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .base import Knob, Params
from .sae import SAEKind

DECODER_INIT_NORM = 0.1  # each decoder column's norm at initialisation
L1_WARMUP_FRACTION = 0.05  # the share of a run's steps over which the L1 weight rises to l1
GRAD_CLIP = 1.0  # each run's largest gradient norm, for the loss summed over input dimensions


class SAEDecoderNormKind(SAEKind):
    """Training stacks of the decoder-norm-weighted L1 SAE, each run with its own l1: the L1 SAE's
    hand-derived step (``SAEKind.loss_and_grads``) with each latent's penalty weighted by its
    decoder column's norm and that norm's gradient added to the decoder's, the weight warmed up
    over the first steps, and each run's gradient clipped."""

    name, terms = "sae_dnorm", ("mse", "l1")
    user_name = "sae_dnorm"
    checkpointed = ("steps",)
    knobs = (
        Knob(
            "l1",
            "weight of the L1 penalty, each latent's weighted by its decoder norm",
            default=0.01,
            field="l1",
        ),
    )

    def __init__(self, configs: list, layout, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(configs, layout, device, dtype)
        self.steps = torch.zeros((), dtype=torch.long, device=device)  # optimizer steps taken
        self.warmup_steps = 1  # set by ``prepare`` from the run's length
        self.max_grad_norm = GRAD_CLIP  # set by ``prepare``: GRAD_CLIP / D

    @classmethod
    def build(cls, input_dim: int, config) -> nn.Module:
        module = super().build(input_dim, config)
        with torch.no_grad():
            w = module.decoder.weight.normal_()  # (D, K): a column per latent
            w.mul_(DECODER_INIT_NORM / w.norm(dim=0, keepdim=True))
            module.encoder.weight.copy_(w.T)
            module.encoder.bias.zero_()
            module.decoder.bias.zero_()
        return module

    def prepare(self, params: Params, train_x: torch.Tensor) -> None:
        """The warm-up's length, a share of the run's steps (every run of a stack has the same
        epochs and batch size), and the clipping bound for inputs of train_x's dimension."""
        config = self.configs[0]
        total = config.epochs * math.ceil(len(train_x) / config.batch_size)
        self.warmup_steps = max(1, round(L1_WARMUP_FRACTION * total))
        self.max_grad_norm = GRAD_CLIP / train_x.shape[1]

    def l1_now(self) -> torch.Tensor:
        """l1 x min(1, (steps + 1) / warmup_steps): step 0 already pays l1 / warmup_steps."""
        ramp = ((self.steps + 1).to(self.dtype) / self.warmup_steps).clamp(max=1.0)
        return self.l1 * ramp

    def penalty_weights(self, W_dec: torch.Tensor) -> torch.Tensor:
        """Each latent's decoder column norm ||W_dec[:, j]||."""
        return W_dec.norm(dim=1, keepdim=True)

    def penalty_weights_grad(
        self, W_dec: torch.Tensor, weights: torch.Tensor, upstream: torch.Tensor
    ) -> torch.Tensor:
        """d ||W_dec[:, j]|| / d W_dec[:, j] = W_dec[:, j] / ||W_dec[:, j]||, times the upstream."""
        return W_dec * (upstream / weights)

    @torch.no_grad()
    def before_step(self, grads: list[torch.Tensor]) -> None:
        """Each run's gradient, over all its parameters, scaled to norm ``max_grad_norm`` where it
        is longer (a zero gradient is left as it is)."""
        norm = torch.stack([g.flatten(1).square().sum(1) for g in grads]).sum(0).sqrt()
        scale = (self.max_grad_norm / norm).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))

    @torch.no_grad()
    def after_step(self, params: Params) -> None:
        super().after_step(params)
        self.steps += 1
