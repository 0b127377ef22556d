"""The decoder-free encoder and the standard sparse autoencoder it is compared with."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .validation import check_choice, check_positive_int

ACTIVATIONS = {"relu": F.relu, "identity": lambda z: z, "softplus": F.softplus}
MODEL_KINDS = ("encoder", "sae", "topk")


def _check_input(x: torch.Tensor, input_dim: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] != input_dim:
        raise ValueError(f"x must have shape (..., {input_dim}); got {tuple(x.shape)}")


class _FirstLayer:
    """W, b and get_weights() of a model's first linear layer (the features every notebook
    shows): ``self.linear`` for the encoder, ``self.encoder`` for the SAEs."""

    _first_layer = "encoder"

    @property
    def W(self) -> torch.Tensor:
        """(hidden_dim, input_dim): row j is unit j's weight vector (for ours, component j's prototype)."""
        return getattr(self, self._first_layer).weight

    @property
    def b(self) -> torch.Tensor:
        return getattr(self, self._first_layer).bias

    def get_weights(self) -> torch.Tensor:
        """A detached copy of W."""
        return self.W.detach().clone()


class Encoder(_FirstLayer, nn.Module):
    """a = activation(W x + b): one linear layer, K mixture components, no decoder.

    The activation a_j acts as component j's energy (small = good fit); responsibilities are
    softmax(-a). PyTorch's default nn.Linear initialisation, bias on (docs/paper.md).
    """

    _first_layer = "linear"

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


class StandardSAE(_FirstLayer, nn.Module):
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


class TopKSAE(_FirstLayer, nn.Module):
    """TopK sparse autoencoder (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

    a = ReLU(TopK_k(W_enc (x - b_pre) + b_enc)): exactly the k largest pre-activations survive
    (fewer only where one of them is negative); x_hat = W_dec a + b_pre. The decoder's columns
    (one per latent) have unit norm, and the decoder starts as the encoder's transpose. The
    trainer (engine.py) keeps the norms at 1, sets b_pre to the data mean before the first step
    (Gao et al. use the geometric median) and adds their AuxK loss for dead latents.
    """

    def __init__(self, input_dim: int = 784, hidden_dim: int = 64, k: int = 16) -> None:
        super().__init__()
        check_positive_int("input_dim", input_dim)
        check_positive_int("hidden_dim", hidden_dim)
        check_positive_int("k", k)
        if k > hidden_dim:
            raise ValueError(f"k={k} is not allowed with hidden_dim={hidden_dim}; need 1 <= k <= hidden_dim")
        self.input_dim, self.hidden_dim, self.k = input_dim, hidden_dim, k
        self.encoder = nn.Linear(input_dim, hidden_dim)
        self.decoder = nn.Linear(hidden_dim, input_dim, bias=False)
        self.pre_bias = nn.Parameter(torch.zeros(input_dim))
        with torch.no_grad():
            self.encoder.bias.zero_()
            self.decoder.weight.copy_(self.encoder.weight.T)
            self.normalize_decoder_()

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        self.decoder.weight.div_(self.decoder.weight.norm(dim=0, keepdim=True))

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.input_dim)
        return self.encoder(x - self.pre_bias)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return topk_relu(self.pre_activations(x), self.k)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (reconstruction x_hat, activations a)."""
        a = self.encode(x)
        return self.decoder(a) + self.pre_bias, a


def topk_relu(z: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest entries of each row of z (the rest 0), then ReLU."""
    values, idx = z.topk(k, dim=-1)
    return torch.zeros_like(z).scatter(-1, idx, values.relu())


def check_activation_for(kind: str, activation: str) -> None:
    """Only the decoder-free encoder takes another activation than ReLU; the SAEs are defined with it."""
    if kind != "encoder" and activation != "relu":
        raise ValueError(f"activation={activation!r} is not allowed for model={kind!r}; it uses 'relu'")


def build_model(kind: str, input_dim: int, hidden_dim: int, activation: str = "relu", seed: int | None = None,
                k: int = 0) -> nn.Module:
    """Construct a model; with ``seed`` its initialisation is that seed's, whatever came before.
    ``k`` is the TopK SAE's number of active latents (only for kind='topk')."""
    check_choice("model", kind, MODEL_KINDS)
    check_activation_for(kind, activation)
    if seed is not None:
        torch.manual_seed(seed)
    if kind == "encoder":
        return Encoder(input_dim, hidden_dim, activation)
    if kind == "topk":
        return TopKSAE(input_dim, hidden_dim, k)
    return StandardSAE(input_dim, hidden_dim)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
