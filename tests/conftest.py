"""Shared fixtures. MNIST comes from the verified cache that `make setup` builds."""

import pytest
import torch


@pytest.fixture(scope="session")
def mnist():
    from encoder_study.book.data import mnist_tensors

    return mnist_tensors()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
