"""Ours with a scale-free variance term: the paper's objective less its drive to larger activations.

The paper's L_var = -sum_j log(Var(a_j) + eps) falls without bound as the activations grow, which
is why its objective has no minimum (notebook 10). This kind replaces it by
``losses.scale_free_variance_loss``, the same term plus K log(mean_k Var(a_k) + eps): unchanged by
scaling all activations, still lowest when every unit carries the same variance. What is left to
set the scale is the log-sum-exp term, which (with the decorrelation term scale-free too) is lower
at smaller activations wherever a sample has no unit at zero. Notebook 10's bounded variant (b).
"""

from __future__ import annotations

import torch

from ..losses import VARIANCE_EPS, combined_loss_and_grad
from .base import ACTIVATION_GRADS, ACTIVATIONS, Params
from .encoder import EncoderKind


class EncoderScaleFreeKind(EncoderKind):
    """Training stacks of the decoder-free encoder with the scale-free variance term in place of
    L_var (logged as "var"); knobs as the encoder's (weight redundancy not allowed).

    The gradient is the encoder's by hand plus the added term's: d/dv_j of K log(mean v + eps) is
    1 / (mean v + eps) for every unit, and v = diag(A_c^T A_c) / (B - 1), so it adds
    2 lambda_var A_c / ((mean v + eps)(B - 1)) to dL/da (held to finite differences by the tests).
    """

    name = "encoder_scale_free"
    user_name = None  # the notebooks' variant, not a kind ``fit`` offers

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        if config.loss.wr != 0:
            raise ValueError(f"lambda_wr={config.loss.wr} is not allowed for model={cls.name!r} (leave it 0)")

    def loss_and_grads(self, params: Params, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], Params]:
        W, b = params["linear.weight"], params["linear.bias"]
        with torch.no_grad():
            z = self.layout.linear(x, W, b)
            a = ACTIVATIONS[self.activation](z)
            out, grad_a = combined_loss_and_grad(a, self.lambdas, self.reduction)
            centred = a - a.mean(dim=-2, keepdim=True)
            mean_var = centred.square().sum(-2).mean(-1) / (a.shape[-2] - 1) + VARIANCE_EPS  # (R,)
            added = a.shape[-1] * torch.log(mean_var)
            out["var"] = out["var"] + added
            out["total"] = out["total"] + self.lambdas["var"] * added
            coef = 2.0 * self.lambdas["var"] / (mean_var * (a.shape[-2] - 1))
            grad_a.add_(centred.mul_(coef.view(-1, 1, 1)))
            W_grad, b_grad = self.layout.linear_grads(ACTIVATION_GRADS[self.activation](z, grad_a), x)
        return out, {"linear.weight": W_grad, "linear.bias": b_grad}
