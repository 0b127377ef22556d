"""Ours with a scale-free variance term: the paper's objective less its drive to larger activations.

The paper's L_var = -sum_j log(Var(a_j) + eps) falls without bound as the activations grow, which
is why its objective has no minimum (notebook 10). This kind replaces it by
``losses.scale_free_variance_loss``, the same term plus K log(mean_k Var(a_k) + eps): unchanged by
scaling all activations, still lowest when every unit carries the same variance. What is left to
set the scale is the log-sum-exp term, which (with the decorrelation term scale-free too) is lower
at smaller activations wherever a sample has no unit at zero. Notebook 10's bounded variant (b).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..losses import combined_loss, scale_free_variance_loss
from .base import ACTIVATIONS, Params
from .encoder import EncoderKind


class EncoderScaleFreeKind(EncoderKind):
    """Training stacks of the decoder-free encoder with the scale-free variance term in place of
    L_var (logged as "var"); knobs as the encoder's; gradient by autograd."""

    name = "encoder_scale_free"
    user_name = None  # the notebooks' variant, not a kind ``fit`` offers

    def loss_and_grads(self, params: Params, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], Params]:
        W, b = params["linear.weight"], params["linear.bias"]
        a = ACTIVATIONS[self.activation](self.layout.linear(x, W, b))
        others = replace(self.terms_in_use, var=0.0)  # every term but L_var, as the encoder has them
        out = combined_loss(a, W, others, weights=self.lambdas)
        out["var"] = scale_free_variance_loss(a)
        total = out["total"] + self.lambdas["var"] * out["var"]
        W_grad, b_grad = torch.autograd.grad(total.sum(), (W, b))
        terms = {t: out[t].detach() for t in self.terms}
        return {"total": total.detach(), **terms}, {"linear.weight": W_grad, "linear.bias": b_grad}
