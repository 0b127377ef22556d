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

from .base import ACTIVATIONS, Knob, Params
from .sae import SAEKind


class SAEDecoderNormKind(SAEKind):
    """Training stacks of the decoder-norm-weighted L1 SAE, each run with its own l1; one batched
    forward for the stack, gradients by autograd."""

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

    def loss_and_grads(self, params: Params, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], Params]:
        a = ACTIVATIONS[self.activation](
            self.layout.linear(x, params["encoder.weight"], params["encoder.bias"])
        )
        Wd = params["decoder.weight"]  # (R, D, K): column j is latent j's direction
        x_hat = torch.baddbmm(params["decoder.bias"].unsqueeze(1), a, Wd.transpose(1, 2))
        mse = (x_hat - self.layout.run_inputs(x)).square().mean((1, 2))
        weighted = (a.abs() * Wd.norm(dim=1, keepdim=True)).mean((1, 2))
        total = mse + self.l1 * weighted
        names = list(params)
        grads = torch.autograd.grad(total.sum(), [params[n] for n in names])
        return {"total": total.detach(), "mse": mse.detach(), "l1": weighted.detach()}, dict(
            zip(names, grads)
        )
