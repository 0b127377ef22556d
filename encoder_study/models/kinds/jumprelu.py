"""The JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity
with JumpReLU Sparse Autoencoders").

a = z * H(z - theta), z = W_enc x + b_enc, with a trained threshold theta_j > 0 per latent
(``log_threshold``, so theta = exp(log_threshold) stays positive); x_hat = W_dec a + b_dec. The
loss is the reconstruction's mean squared error plus ``sparsity`` times L0, the number of active
latents per sample (averaged over the minibatch): the sparsity is paid for directly, not through
an L1 proxy that also shrinks the active values.

Neither H nor L0 has a useful derivative in theta (zero almost everywhere), so theta learns through
the paper's straight-through estimator: with the rectangle kernel K(u) = 1{|u| < 1/2} and a
``bandwidth`` eps, the pseudo-derivatives are d a / d theta = -(theta / eps) K((z - theta) / eps)
and d H(z - theta) / d theta = -(1 / eps) K((z - theta) / eps); z gets the exact gradient of the
JumpReLU (the mask) and none through L0. The decoder's columns are kept at unit norm and b_dec
starts at the data mean, as the paper's setup does.

The thresholds start at ``threshold_init`` (the paper's 0.001 by default, chosen for inputs whose
mean squared norm is 1; inputs of another scale want it scaled with them). They are trained in log
space, and Adam moves a parameter by about its learning rate per step whatever the gradient's
size, so within a short budget the thresholds end near where they started: there the starting
value, more than ``sparsity``, sets how sparse the code is.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ...book.validation import check_positive_int
from ..stacking import linear_shared_input
from .base import FirstLayer, Knob, ModelKind, Params, check_input

THRESHOLD_INIT = 1e-3  # the paper's initial threshold


def _kernel(z: torch.Tensor, theta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The rectangle kernel K((z - theta) / eps) = 1{|z - theta| < eps / 2}, as z's dtype."""
    return ((z - theta).abs() < eps / 2).to(z.dtype)


class _JumpReLU(torch.autograd.Function):
    """z * H(z - theta) for z (R, B, K), theta and eps broadcast against it (R, 1, K) and (R, 1, 1);
    backward: the mask for z, the straight-through pseudo-derivative for theta."""

    @staticmethod
    def forward(ctx, z, theta, eps):  # type: ignore[override]
        ctx.save_for_backward(z, theta, eps)
        return z * (z > theta)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        z, theta, eps = ctx.saved_tensors
        d_theta = (g * (-theta / eps) * _kernel(z, theta, eps)).sum(1, keepdim=True)
        return g * (z > theta), d_theta, None


class _Step(torch.autograd.Function):
    """H(z - theta); backward: no gradient for z, the straight-through pseudo-derivative for theta."""

    @staticmethod
    def forward(ctx, z, theta, eps):  # type: ignore[override]
        ctx.save_for_backward(z, theta, eps)
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        z, theta, eps = ctx.saved_tensors
        return None, (g * (-1.0 / eps) * _kernel(z, theta, eps)).sum(1, keepdim=True), None


def _exact_log(threshold: torch.Tensor) -> torch.Tensor:
    """log(threshold), nudged by up to two units in the last place where that makes exp() give the
    threshold back exactly: the module encodes with exp(log_threshold), and a threshold read from
    SAELens's files should encode exactly as the one that was written."""
    best = threshold.log()
    for direction in (math.inf, -math.inf):
        candidate = best
        for _ in range(2):
            candidate = torch.nextafter(candidate, torch.full_like(candidate, direction))
            fixes = (best.exp() != threshold) & (candidate.exp() == threshold)
            best = torch.where(fixes, candidate, best)
    return best


class JumpReLUSAE(FirstLayer, nn.Module):
    """a = z * H(z - theta), z = W_enc x + b_enc; x_hat = W_dec a + b_dec; one threshold per latent."""

    def __init__(self, input_dim: int = 784, hidden_dim: int = 64) -> None:
        super().__init__()
        check_positive_int("input_dim", input_dim)
        check_positive_int("hidden_dim", hidden_dim)
        self.input_dim, self.hidden_dim = input_dim, hidden_dim
        self.encoder = nn.Linear(input_dim, hidden_dim)
        self.decoder = nn.Linear(hidden_dim, input_dim)
        self.log_threshold = nn.Parameter(torch.full((hidden_dim,), math.log(THRESHOLD_INIT)))
        with torch.no_grad():  # unit-norm decoder columns, the encoder their transpose, b_enc 0
            self.decoder.weight.div_(self.decoder.weight.norm(dim=0, keepdim=True))
            self.encoder.weight.copy_(self.decoder.weight.T)
            self.encoder.bias.zero_()

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.input_dim)
        z = self.encoder(x)
        return z * (z > self.threshold)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(codes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (reconstruction x_hat, activations a)."""
        a = self.encode(x)
        return self.decode(a), a


class JumpReLUKind(ModelKind):
    """Training stacks of JumpReLU SAEs, each run with its own sparsity weight and bandwidth; one
    batched forward for the stack, gradients by autograd through the straight-through functions."""

    name, terms, module = "jumprelu", ("mse", "l0"), JumpReLUSAE
    user_name, saelens_architecture, has_decoder = "jumprelu", "jumprelu", True
    knobs = (
        Knob("sparsity", "weight of the L0 penalty (active latents per sample)", default=1e-3),
        Knob(
            "bandwidth", "width of the straight-through estimator's kernel for the thresholds", default=1e-3
        ),
        Knob("threshold_init", "every threshold's value before training", default=THRESHOLD_INIT),
    )
    surrogate_gradients = ("log_threshold",)
    per_run_state = ("sparsity", "bandwidth")

    def __init__(self, configs: list, layout, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(configs, layout, device, dtype)
        own = [dict(c.knobs) for c in configs]
        self.sparsity = self.per_run([k["sparsity"] for k in own])
        self.bandwidth = self.per_run([k["bandwidth"] for k in own])

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        for name in ("bandwidth", "threshold_init"):
            if dict(config.knobs)[name] <= 0:
                raise ValueError(f"{name}={dict(config.knobs)[name]!r} must be > 0 for model='jumprelu'")

    @classmethod
    def build(cls, input_dim: int, config) -> nn.Module:
        model = JumpReLUSAE(input_dim, config.hidden_dim)
        with torch.no_grad():
            model.log_threshold.fill_(math.log(dict(config.knobs)["threshold_init"]))
        return model

    def loss_and_grads(self, params: Params, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], Params]:
        z = self.layout.linear(x, params["encoder.weight"], params["encoder.bias"])
        theta = params["log_threshold"].exp().unsqueeze(1)
        eps = self.bandwidth.view(-1, 1, 1)
        a = _JumpReLU.apply(z, theta, eps)
        l0 = _Step.apply(z, theta, eps).sum(-1).mean(-1)
        x_hat = torch.baddbmm(
            params["decoder.bias"].unsqueeze(1), a, params["decoder.weight"].transpose(1, 2)
        )
        mse = (x_hat - self.layout.run_inputs(x)).square().mean((1, 2))
        total = mse + self.sparsity * l0
        names = list(params)
        grads = torch.autograd.grad(total.sum(), [params[n] for n in names])
        return {"total": total.detach(), "mse": mse.detach(), "l0": l0.detach()}, dict(zip(names, grads))

    def encode(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        z = linear_shared_input(x, params["encoder.weight"], params["encoder.bias"])
        return z * (z > params["log_threshold"].exp().unsqueeze(1))

    @torch.no_grad()
    def prepare(self, params: Params, train_x: torch.Tensor) -> None:
        """b_dec starts at the data mean (where the reconstruction of nothing should land)."""
        params["decoder.bias"].copy_(train_x.mean(0).expand(self.layout.runs, -1))

    @torch.no_grad()
    def after_step(self, params: Params) -> None:
        """The decoder's columns back to unit norm."""
        w = params["decoder.weight"]
        w.div_(w.norm(dim=1, keepdim=True))

    @classmethod
    def to_saelens(cls, state: Params, readout: torch.Tensor | None) -> Params:
        return {**super().to_saelens(state, readout), "threshold": state["log_threshold"].exp()}

    @classmethod
    def from_saelens(cls, tensors: Params) -> tuple[Params, torch.Tensor | None]:
        if not bool((tensors["threshold"] > 0).all()):
            raise ValueError("the JumpReLU SAE's thresholds must be > 0 (it stores their logarithm)")
        state, _ = super().from_saelens(tensors)
        return {**state, "log_threshold": _exact_log(tensors["threshold"])}, None
