"""The L1 SAE with the penalty weighted by each latent's decoder norm (Anthropic's April 2024
update to their SAE training): loss = MSE + l1 * mean over samples of sum_j a_j ||W_dec[:, j]||,
divided by the number of latents, so that ``l1`` means what it does for the plain L1 SAE
(``sae.py``) when every column has unit norm. Without the norm, the L1 penalty can be dodged by
shrinking a and growing the decoder's column, which is why the plain form needs a constraint on
the columns; with it, the penalty is on each latent's contribution to the reconstruction. The
module is the plain SAE's (``StandardSAE``); only the training objective differs.
"""

from __future__ import annotations

import torch

from .base import Knob
from .sae import SAEKind


class SAEDecoderNormKind(SAEKind):
    """Training stacks of the decoder-norm-weighted L1 SAE, each run with its own l1: the L1 SAE's
    hand-derived step (``SAEKind.loss_and_grads``) with each latent's penalty weighted by its
    decoder column's norm, and that norm's gradient added to the decoder's."""

    name, terms = "sae_dnorm", ("mse", "l1")
    user_name = "sae_dnorm"
    knobs = (
        Knob(
            "l1",
            "weight of the L1 penalty, each latent's weighted by its decoder norm",
            default=0.01,
            field="l1",
        ),
    )

    def penalty_weights(self, W_dec: torch.Tensor) -> torch.Tensor:
        """Each latent's decoder column norm ||W_dec[:, j]||."""
        return W_dec.norm(dim=1, keepdim=True)

    def penalty_weights_grad(
        self, W_dec: torch.Tensor, weights: torch.Tensor, upstream: torch.Tensor
    ) -> torch.Tensor:
        """d ||W_dec[:, j]|| / d W_dec[:, j] = W_dec[:, j] / ||W_dec[:, j]||, times the upstream."""
        return W_dec * (upstream / weights)
