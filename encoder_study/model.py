"""The decoder-free encoder and the standard sparse autoencoder it is compared with."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .validation import check_choice, check_positive_int

ACTIVATIONS = {"relu": F.relu, "identity": lambda z: z, "softplus": F.softplus}
MODEL_KINDS = ("encoder", "sae")


def _check_input(x: torch.Tensor, input_dim: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] != input_dim:
        raise ValueError(f"x must have shape (..., {input_dim}); got {tuple(x.shape)}")


class Encoder(nn.Module):
    """a = activation(W x + b): one linear layer, K mixture components, no decoder.

    The activation a_j acts as component j's energy (small = good fit); responsibilities are
    softmax(-a). PyTorch's default nn.Linear initialisation, bias on (PAPER.md).
    """

    def __init__(self, input_dim: int = 784, hidden_dim: int = 64, activation: str = "relu") -> None:
        super().__init__()
        check_positive_int("input_dim", input_dim)
        check_positive_int("hidden_dim", hidden_dim)
        self.activation_name = check_choice("activation", activation, ACTIVATIONS)
        self.input_dim, self.hidden_dim = input_dim, hidden_dim
        self.linear = nn.Linear(input_dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (activations a, pre-activations z)."""
        _check_input(x, self.input_dim)
        z = self.linear(x)
        return ACTIVATIONS[self.activation_name](z), z

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)[0]

    @property
    def W(self) -> torch.Tensor:
        """Component weights, (hidden_dim, input_dim): row j is component j's prototype."""
        return self.linear.weight

    @property
    def b(self) -> torch.Tensor:
        return self.linear.bias

    def get_weights(self) -> torch.Tensor:
        """A detached copy of W."""
        return self.W.detach().clone()


class StandardSAE(nn.Module):
    """The paper's baseline: Linear + ReLU encoder, untied Linear decoder, MSE + L1 loss."""

    def __init__(self, input_dim: int = 784, hidden_dim: int = 64) -> None:
        super().__init__()
        check_positive_int("input_dim", input_dim)
        check_positive_int("hidden_dim", hidden_dim)
        self.input_dim, self.hidden_dim = input_dim, hidden_dim
        self.encoder = nn.Linear(input_dim, hidden_dim)
        self.decoder = nn.Linear(hidden_dim, input_dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.input_dim)
        return F.relu(self.encoder(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (reconstruction x_hat, activations a)."""
        a = self.encode(x)
        return self.decoder(a), a

    @property
    def W(self) -> torch.Tensor:
        """Encoder weights, (hidden_dim, input_dim), shown as the SAE's features."""
        return self.encoder.weight

    @property
    def b(self) -> torch.Tensor:
        return self.encoder.bias

    def get_weights(self) -> torch.Tensor:
        return self.W.detach().clone()


def build_model(kind: str, input_dim: int, hidden_dim: int, activation: str = "relu", seed: int | None = None) -> nn.Module:
    """Construct a model; with ``seed`` its initialisation is that seed's, whatever came before."""
    check_choice("model", kind, MODEL_KINDS)
    if seed is not None:
        torch.manual_seed(seed)
    if kind == "encoder":
        return Encoder(input_dim, hidden_dim, activation)
    if activation != "relu":
        raise ValueError(f"activation={activation!r} is not allowed for model='sae'; the SAE uses 'relu'")
    return StandardSAE(input_dim, hidden_dim)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
