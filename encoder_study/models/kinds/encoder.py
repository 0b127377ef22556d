"""Ours: the decoder-free encoder, trained with log-sum-exp (implicit EM) plus InfoMax."""

from __future__ import annotations

import torch
import torch.nn as nn

from ...book.validation import check_choice, check_positive_int
from ..losses import TERMS, LossConfig, combined_loss, combined_loss_and_grad
from ..stacking import linear_shared_input
from .base import ACTIVATION_GRADS, ACTIVATIONS, FirstLayer, Knob, ModelKind, Params, check_input, log_units


class Encoder(FirstLayer, nn.Module):
    """a = activation(W x + b): one linear layer, K mixture components, no decoder.

    The activation a_j acts as component j's energy (small = good fit); responsibilities are
    softmax(-a). PyTorch's default nn.Linear initialisation, bias on (docs/paper.md).
    """

    first_layer = "linear"

    def __init__(self, input_dim: int = 784, hidden_dim: int = 64, activation: str = "relu") -> None:
        super().__init__()
        check_positive_int("input_dim", input_dim)
        check_positive_int("hidden_dim", hidden_dim)
        self.activation_name = check_choice("activation", activation, ACTIVATIONS)
        self.input_dim, self.hidden_dim = input_dim, hidden_dim
        self.linear = nn.Linear(input_dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (activations a, pre-activations z)."""
        check_input(x, self.input_dim)
        z = self.linear(x)
        return ACTIVATIONS[self.activation_name](z), z

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)[0]


class EncoderKind(ModelKind):
    """Training stacks of the decoder-free encoder, each run with its own lambdas.

    The gradient is by hand (``losses.combined_loss_and_grad``) where no run uses the weight
    redundancy term, else autograd through ``losses.combined_loss``; both equal the plain loop's
    autograd (tests/test_training.py).
    """

    name, terms, module = "encoder", TERMS, Encoder
    per_run_state = ("lambdas",)
    min_batch = 2  # the variance and correlation terms are unbiased minibatch statistics
    user_name, saelens_architecture = "ours", "standard"
    knobs = (
        Knob("lambda_lse", "weight of the log-sum-exp term", default=1.0, field="loss.lse"),
        Knob("lambda_var", "weight of the variance term", default=1.0, field="loss.var"),
        Knob("lambda_tc", "weight of the decorrelation term", default=1.0, field="loss.tc"),
    )

    def __init__(self, configs: list, layout, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(configs, layout, device, dtype)
        self.lambdas = {t: self.per_run([getattr(c.loss, t) for c in configs]) for t in TERMS}
        self.activation = configs[0].activation
        self.reduction = configs[0].loss.reduction

    @property
    def terms_in_use(self) -> LossConfig:
        """Lambda 1 for each term some run uses, 0 otherwise: what ``combined_loss`` computes."""
        used = {t: float(any(getattr(c.loss, t) != 0 for c in self.configs)) for t in TERMS}
        return LossConfig(**used, reduction=self.reduction)

    @classmethod
    def check_config(cls, config) -> None:
        check_choice("activation", config.activation, ACTIVATIONS)
        cls.refuse_k(config)

    @classmethod
    def build(cls, input_dim: int, config) -> nn.Module:
        return Encoder(input_dim, config.hidden_dim, config.activation)

    @classmethod
    def to_saelens(cls, state: Params, readout: torch.Tensor | None) -> Params:
        if readout is None:
            raise ValueError(
                f"model kind {cls.name!r} has no decoder: SAELens's W_dec, b_dec need its fitted readout"
            )
        return {
            "W_enc": state["linear.weight"].T,
            "b_enc": state["linear.bias"],
            "W_dec": readout[:-1],
            "b_dec": readout[-1],
        }

    @classmethod
    def from_saelens(cls, tensors: Params) -> tuple[Params, torch.Tensor | None]:
        state = {"linear.weight": tensors["W_enc"].T.contiguous(), "linear.bias": tensors["b_enc"]}
        return state, torch.cat([tensors["W_dec"], tensors["b_dec"][None]]).contiguous()

    @classmethod
    def gemm_flops_per_sample(cls, input_dim: int, config) -> float:
        """The first layer's forward and weight gradient (4 D K), plus, with the decorrelation term
        on, the minibatch's K x K covariance and its gradient into the activations (4 K^2), and
        with weight redundancy on, W W^T and its gradient once per step (4 K^2 D over the batch)."""
        K = config.hidden_dim
        flops = 4 * input_dim * K + (4 * K * K if config.loss.tc else 0)
        return flops + (4 * K * K * input_dim / config.batch_size if config.loss.wr else 0)

    @classmethod
    def divergence_bound(cls, config, train_x: torch.Tensor) -> float:
        """A million times the all-zero LSE value of a batch (B ln K): no working run gets near it."""
        return 1e6 * config.batch_size * log_units(config.hidden_dim)

    def loss_and_grads(self, params: Params, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], Params]:
        W, b = params["linear.weight"], params["linear.bias"]
        act = ACTIVATIONS[self.activation]
        if self.terms_in_use.wr != 0:
            out = combined_loss(act(self.layout.linear(x, W, b)), W, self.terms_in_use, weights=self.lambdas)
            W_grad, b_grad = torch.autograd.grad(out["total"].sum(), (W, b))
        else:
            with torch.no_grad():
                z = self.layout.linear(x, W, b)
                out, grad_a = combined_loss_and_grad(act(z), self.lambdas, self.reduction)
                W_grad, b_grad = self.layout.linear_grads(ACTIVATION_GRADS[self.activation](z, grad_a), x)
        return out, {"linear.weight": W_grad, "linear.bias": b_grad}

    def encode(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return ACTIVATIONS[self.activation](
            linear_shared_input(x, params["linear.weight"], params["linear.bias"])
        )
