"""Builders only the tests use (the book and the API go through RunConfig, the engine and
mnist_tensors): a model of a kind by name, MNIST as minibatch loaders, a small synthetic mixture."""

from __future__ import annotations

import torch

from encoder_study.book.data import TensorLoader, mnist_tensors
from encoder_study.book.validation import check_int, check_nonnegative, check_positive_int
from encoder_study.models.config import RunConfig
from encoder_study.models.model import build_run_model


def build_model(
    kind: str, input_dim: int, hidden_dim: int, activation: str = "relu", seed: int | None = None, k: int = 0
) -> torch.nn.Module:
    """A model of a registered kind; with ``seed`` its initialisation is that seed's. ``k``: TopK's."""
    return build_run_model(
        RunConfig(model=kind, hidden_dim=hidden_dim, activation=activation, k=k), input_dim, seed
    )


def get_mnist(batch_size: int = 128, flatten: bool = True) -> tuple[TensorLoader, TensorLoader]:
    """(train_loader, test_loader) over real MNIST; train shuffled per epoch, test in order."""
    t = mnist_tensors()
    if not flatten:
        t["train_x"], t["test_x"] = t["train_x"].view(-1, 1, 28, 28), t["test_x"].view(-1, 1, 28, 28)
    return (
        TensorLoader(t["train_x"], t["train_y"], batch_size, shuffle=True, seed=0),
        TensorLoader(t["test_x"], t["test_y"], batch_size, shuffle=False),
    )


def get_synthetic(
    n_samples: int = 4096, n_features: int = 32, n_components: int = 8, noise: float = 0.1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample one of ``n_components`` unit-norm, non-negative prototypes (a block of
    features each, with weak random overlap) times an intensity in [1, 1.2], plus Gaussian noise
    of std ``noise``. Returns (data (N, D), components (K, D))."""
    check_positive_int("n_samples", n_samples)
    check_positive_int("n_features", n_features)
    check_positive_int("n_components", n_components)
    check_nonnegative("noise", noise)
    check_int("seed", seed)
    if n_components > n_features:
        raise ValueError(f"n_components={n_components} must not exceed n_features={n_features}")
    g = torch.Generator().manual_seed(seed)
    comps = 0.15 * torch.rand(n_components, n_features, generator=g)
    block = n_features // n_components
    for k in range(n_components):
        comps[k, k * block : (k + 1) * block] += 1.0
    comps = comps / comps.norm(dim=1, keepdim=True)
    labels = torch.randint(n_components, (n_samples,), generator=g)
    scale = 1.0 + 0.2 * torch.rand(n_samples, 1, generator=g)
    data = scale * comps[labels] + noise * torch.randn(n_samples, n_features, generator=g)
    return data, comps
