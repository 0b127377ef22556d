"""The paper's baseline: the standard sparse autoencoder, MSE + L1."""

from __future__ import annotations

import torch
import torch.nn as nn

from ...book.validation import check_choice, check_positive_int
from ..stacking import linear_shared_input
from .base import ACTIVATION_GRADS, ACTIVATIONS, FirstLayer, Knob, ModelKind, Params, check_input

SAE_ACTIVATIONS = ("relu", "neg_relu")  # neg_relu = -ReLU: the author's sign comparison


class StandardSAE(FirstLayer, nn.Module):
    """Linear + ReLU encoder (or -ReLU), untied Linear decoder; loss: mean squared error + l1 * mean |a|."""

    def __init__(self, input_dim: int = 784, hidden_dim: int = 64, activation: str = "relu") -> None:
        super().__init__()
        check_positive_int("input_dim", input_dim)
        check_positive_int("hidden_dim", hidden_dim)
        self.activation_name = check_choice("activation", activation, SAE_ACTIVATIONS)
        self.input_dim, self.hidden_dim = input_dim, hidden_dim
        self.encoder = nn.Linear(input_dim, hidden_dim)
        self.decoder = nn.Linear(hidden_dim, input_dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.input_dim)
        return ACTIVATIONS[self.activation_name](self.encoder(x))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(codes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (reconstruction x_hat, activations a)."""
        a = self.encode(x)
        return self.decode(a), a


class SAEKind(ModelKind):
    """Training stacks of the L1 SAE, each run with its own l1; gradients by hand (equal to the
    plain loop's autograd through ``losses.sae_loss``: tests/test_training.py). A subclass adds
    loss terms on the activations through ``activation_terms``."""

    name, terms, module = "sae", ("mse", "l1"), StandardSAE
    per_run_state = ("l1",)
    user_name, saelens_architecture, has_decoder = "sae", "standard", True
    knobs = (Knob("l1", "weight of the L1 sparsity penalty", default=0.01, field="l1"),)

    def __init__(self, configs: list, layout, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(configs, layout, device, dtype)
        self.l1 = self.per_run([c.l1 for c in configs])
        self.activation = configs[0].activation

    @classmethod
    def check_config(cls, config) -> None:
        if config.activation not in SAE_ACTIVATIONS:
            raise ValueError(
                f"activation={config.activation!r} is not allowed for model={cls.name!r}; choose one of "
                f"{', '.join(map(repr, SAE_ACTIVATIONS))}"
            )
        cls.refuse_k(config)

    @classmethod
    def build(cls, input_dim: int, config) -> nn.Module:
        return StandardSAE(input_dim, config.hidden_dim, config.activation)

    def activation_terms(self, a: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Further loss terms on the activations a (R, B, K), with "total" their weighted sum, and
        d total / da; the L1 SAE has none."""
        return {}, None

    @torch.no_grad()
    def loss_and_grads(self, params: Params, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], Params]:
        Wd, bd = params["decoder.weight"], params["decoder.bias"]
        R, (S, B, D) = self.layout.runs, x.shape
        z = self.layout.linear(x, params["encoder.weight"], params["encoder.bias"])
        a = ACTIVATIONS[self.activation](z)
        # x_hat - x = a Wd^T + (bd - x): the GEMM accumulates onto bd - x, one pass fewer
        bd_minus_x = (bd.view(S, -1, 1, D) - x.unsqueeze(1)).view(R, B, D)
        diff = bd_minus_x.baddbmm_(a, Wd.transpose(1, 2))
        mse = torch.linalg.vector_norm(diff, dim=(1, 2)).square() / (B * D)
        sign = 1.0 if self.activation == "relu" else -1.0  # a >= 0 for ReLU, <= 0 for -ReLU
        weights = self.penalty_weights(Wd)
        weighted = a if weights is None else a * weights
        sparsity = weighted.sum((1, 2)) / a[0].numel() * sign  # mean |a| (times sign: exact), weighted
        extra, g_extra = self.activation_terms(a)
        l1 = self.l1_now()
        total = mse + l1 * sparsity
        out = {"total": total + extra.pop("total") if extra else total, "mse": mse, "l1": sparsity, **extra}
        g_xhat = diff.mul_(2.0 / (B * D))
        # d(l1 mean w|a|)/da = l1 w sign(a) / (B K): on every unit with z > 0, the only ones that pass
        scale = (sign * l1 / a[0].numel()).view(R, 1, 1)
        g_a = torch.bmm(g_xhat, Wd).add_(scale if weights is None else weights * scale)
        if g_extra is not None:
            g_a += g_extra
        W_grad, b_grad = self.layout.linear_grads(ACTIVATION_GRADS[self.activation](z, g_a), x)
        g_dec = torch.bmm(g_xhat.transpose(1, 2), a)
        if weights is not None:
            g_dec += self.penalty_weights_grad(Wd, weights, a.sum(1, keepdim=True) * scale)
        return out, {
            "encoder.weight": W_grad,
            "encoder.bias": b_grad,
            "decoder.weight": g_dec,
            "decoder.bias": g_xhat.sum(1),
        }

    def l1_now(self) -> torch.Tensor:
        """Each run's L1 weight (R,) at this step: its configured ``l1`` (a schedule overrides this)."""
        return self.l1

    def penalty_weights(self, W_dec: torch.Tensor) -> torch.Tensor | None:
        """Each latent's weight in the L1 penalty (R, 1, K), from the decoder (R, D, K); None: the
        plain L1 SAE, every latent weighted 1."""
        return None

    def penalty_weights_grad(
        self, W_dec: torch.Tensor, weights: torch.Tensor, upstream: torch.Tensor
    ) -> torch.Tensor:
        """The decoder's gradient through ``penalty_weights``, given d total / d weights (R, 1, K)."""
        raise NotImplementedError(f"model kind {self.name!r} weights its penalty but gives no gradient")

    def encode(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return ACTIVATIONS[self.activation](
            linear_shared_input(x, params["encoder.weight"], params["encoder.bias"])
        )
