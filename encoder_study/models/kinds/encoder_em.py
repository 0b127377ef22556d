"""Ours trained by an explicit, generalised EM instead of plain gradient descent.

For any distribution q over the K units, -log sum_j exp(-a_j) <= sum_j q_j a_j + sum_j q_j log q_j,
with equality at q = r = softmax(-a). So L_lse is the minimum over q of an auxiliary function U,
and EM alternates: the E-step sets q to the responsibilities of the current parameters, the
M-step lowers U (plus the InfoMax terms, which do not involve q) with q held fixed. The gradient
of U at the parameters of the E-step equals L_lse's (both are r): the paper's claim that gradient
descent on L_lse is implicit EM is that one step of this EM, with an E-step before every step, is
one step of gradient descent.

Here the E-step's parameters are kept as buffers (``estep_weight``, ``estep_bias``): q for a
minibatch is softmax(-a(x; E-step parameters)), what an E-step over the whole training set at that
moment would have given those samples. Every ``estep_every`` optimizer steps they are set to the
current parameters; in between, the optimizer's steps are M-steps on U with q fixed (a generalised
EM: U is lowered, not minimised). ``estep_every=1`` is plain gradient descent on the paper's
objective. Logged: "lse" is L_lse at the current parameters (what gradient descent lowers),
"em_gap" is U - L_lse = the summed KL(q || r) of the minibatch (0 right after an E-step), and
"total" is what the M-step lowers: lambda_lse (L_lse + em_gap) + lambda_var L_var + lambda_tc L_tc.
Notebook 10 compares it with gradient descent from the same start.
"""

from __future__ import annotations

import torch

from ..losses import TERMS, combined_loss_and_grad, neg_lse_and_exp
from .base import ACTIVATION_GRADS, ACTIVATIONS, Knob, Params
from .encoder import Encoder, EncoderKind


class EMEncoder(Encoder):
    """The encoder with its last E-step's parameters beside it (buffers, not trained) and the
    optimizer steps taken since that E-step."""

    def __init__(self, input_dim: int = 784, hidden_dim: int = 64, activation: str = "relu") -> None:
        super().__init__(input_dim, hidden_dim, activation)
        self.register_buffer("estep_weight", self.linear.weight.detach().clone())
        self.register_buffer("estep_bias", self.linear.bias.detach().clone())
        self.register_buffer("steps_since_estep", torch.zeros(()))


class EncoderEMKind(EncoderKind):
    """Training stacks of the encoder by generalised EM, each run with its own E-step interval."""

    name, terms, module = "encoder_em", (*TERMS, "em_gap"), EMEncoder
    user_name = None  # the notebooks' training rule, not a kind ``fit`` offers
    buffers = ("estep_weight", "estep_bias", "steps_since_estep")
    per_run_state = ("lambdas", "estep_every")
    knobs = EncoderKind.knobs + (
        Knob(
            "estep_every",
            "optimizer steps between E-steps (1: plain gradient descent)",
            type=int,
            default=1,
            minimum=1,
        ),
    )

    def __init__(self, configs: list, layout, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(configs, layout, device, dtype)
        self.estep_every = self.per_run([dict(c.knobs)["estep_every"] for c in configs])

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        if config.loss.wr != 0:
            raise ValueError(f"lambda_wr={config.loss.wr} is not allowed for model={cls.name!r} (leave it 0)")

    @classmethod
    def build(cls, input_dim: int, config) -> EMEncoder:
        return EMEncoder(input_dim, config.hidden_dim, config.activation)

    def loss_and_grads(self, params: Params, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], Params]:
        W, b = params["linear.weight"], params["linear.bias"]
        act = ACTIVATIONS[self.activation]
        scale = 1.0 if self.reduction == "sum" else 1.0 / x.shape[-2]
        with torch.no_grad():
            z = self.layout.linear(x, W, b)
            a = act(z)
            a_estep = act(self.layout.linear(x, params["estep_weight"], params["estep_bias"]))
            _, e, sums = neg_lse_and_exp(a_estep)
            q = e.div_(sums)  # the E-step's responsibilities for these samples
            infomax = {**self.lambdas, "lse": torch.zeros_like(self.lambdas["lse"])}  # L_lse's part is U's
            out, grad_a = combined_loss_and_grad(a, infomax, self.reduction)  # out["lse"]: L_lse here
            bound = ((q * a).sum((-2, -1)) + torch.special.xlogy(q, q).sum((-2, -1))) * scale  # U
            grad_a.add_(q.mul_(self.lambdas["lse"].view(-1, 1, 1) * scale))  # dU/da = q, held fixed
            W_grad, b_grad = self.layout.linear_grads(ACTIVATION_GRADS[self.activation](z, grad_a), x)
        out["em_gap"] = bound - out["lse"]
        out["total"] = out["total"] + self.lambdas["lse"] * bound
        return out, {"linear.weight": W_grad, "linear.bias": b_grad}

    @torch.no_grad()
    def after_step(self, params: Params) -> None:
        steps = params["steps_since_estep"]
        steps.add_(1)
        due = steps >= self.estep_every
        for estep, now in (("estep_weight", "linear.weight"), ("estep_bias", "linear.bias")):
            shape = (-1,) + (1,) * (params[now].dim() - 1)
            params[estep].copy_(torch.where(due.view(shape), params[now], params[estep]))
        steps.masked_fill_(due, 0.0)
