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
size. So the budget decides which knob sets the sparsity: given enough steps the thresholds travel
to where ``sparsity`` puts them (the paper's knob, and notebook 6's), while over a few hundred
steps they move by at most a factor of about exp(steps x rate) and the starting value sets it
(notebook 5's two epochs). A unit
whose pre-activations all lie more than half the bandwidth below its threshold gets no gradient at
all, so a start far above them leaves units that never learn.
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
    batched forward for the stack, gradients derived by hand (``loss_and_grads``)."""

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

    @torch.no_grad()
    def loss_and_grads(self, params: Params, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], Params]:
        """Loss terms and gradients for minibatches x (S, B, D), derived by hand in the L1 SAE's
        pattern (the residual x_hat - x formed once and scaled in place into its own gradient).

        z gets the exact gradient of the JumpReLU (the mask) and none through L0; the thresholds
        get the straight-through pseudo-derivatives of the module docstring, from both terms:
        d total / d theta = -sum over the batch of K((z - theta) / eps) (theta g_a + sparsity / B)
        / eps, with g_a = d mse / d a, and theta = exp(log_threshold) multiplies it once more."""
        W_dec, b_dec = params["decoder.weight"], params["decoder.bias"]
        R, (S, B, D) = self.layout.runs, x.shape
        z = self.layout.linear(x, params["encoder.weight"], params["encoder.bias"])
        theta = params["log_threshold"].exp().unsqueeze(1)
        eps = self.bandwidth.view(-1, 1, 1)
        mask = z > theta
        a = z * mask
        l0 = mask.sum(-1).mean(-1, dtype=z.dtype)
        # x_hat - x = a W_dec^T + (b_dec - x): the GEMM accumulates onto b_dec - x
        diff = (b_dec.view(S, -1, 1, D) - x.unsqueeze(1)).view(R, B, D).baddbmm_(a, W_dec.transpose(1, 2))
        mse = torch.linalg.vector_norm(diff, dim=(1, 2)).square() / (B * D)
        g_xhat = diff.mul_(2.0 / (B * D))
        g_a = torch.bmm(g_xhat, W_dec)
        kernel = _kernel(z, theta, eps)
        pulls = g_a.mul(theta).add_(self.sparsity.view(-1, 1, 1) / B).mul_(kernel)
        g_theta = -pulls.sum(1) / eps.view(-1, 1)
        g_enc, g_enc_bias = self.layout.linear_grads(g_a.mul_(mask), x)
        grads = {
            "encoder.weight": g_enc,
            "encoder.bias": g_enc_bias,
            "decoder.weight": torch.bmm(g_xhat.transpose(1, 2), a),
            "decoder.bias": g_xhat.sum(1),
            "log_threshold": g_theta * theta.squeeze(1),
        }
        return {"total": mse + self.sparsity * l0, "mse": mse, "l0": l0}, grads

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
