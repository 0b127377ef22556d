"""The paper's objective inside an SAE: MSE + L1 + the LSE and InfoMax terms on the SAE's own
activations (the author's "SAE + LSE+InfoMax regulariser"; their weight w is the lambdas here)."""

from __future__ import annotations

import torch

from ..losses import combined_loss_and_grad
from .base import log_units
from .sae import SAEKind

INFOMAX_TERMS = ("lse", "var", "tc")


class SAEInfoMaxKind(SAEKind):
    """Training stacks of the L1 SAE whose loss also holds lambda_lse L_lse + lambda_var L_var +
    lambda_tc L_tc of its activations (``RunConfig.loss``; weight redundancy not allowed), each
    run with its own l1 and lambdas; gradient by hand (``losses.combined_loss_and_grad`` added to
    the SAE's)."""

    name, terms = "sae_infomax", ("mse", "l1", *INFOMAX_TERMS)
    per_run_state = ("l1", "lambdas")
    user_name, knobs = None, ()  # the notebooks' hybrid (its lambdas in RunConfig.loss), not fit's
    min_batch = 2  # its variance and correlation terms are unbiased minibatch statistics

    def __init__(self, configs: list, layout, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(configs, layout, device, dtype)
        self.lambdas = {t: self.per_run([getattr(c.loss, t) for c in configs]) for t in INFOMAX_TERMS}
        self.reduction = configs[0].loss.reduction

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        if config.activation != "relu":
            raise ValueError(
                f"activation={config.activation!r} is not allowed for model='sae_infomax'; it uses 'relu'"
            )
        if config.loss.wr != 0:
            raise ValueError(
                f"lambda_wr={config.loss.wr} is not allowed for model='sae_infomax' (leave it 0)"
            )

    @classmethod
    def divergence_bound(cls, config, train_x: torch.Tensor) -> float:
        """The SAE's bound plus the encoder's (its LSE and InfoMax terms are sums over the batch
        and the units, far larger than the reconstruction's mean)."""
        return super().divergence_bound(config, train_x) + 1e6 * config.batch_size * log_units(
            config.hidden_dim
        )

    def activation_terms(self, a: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        out, grad = combined_loss_and_grad(a, self.lambdas, self.reduction)
        return {"total": out["total"], **{t: out[t] for t in INFOMAX_TERMS}}, grad
