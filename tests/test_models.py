import pytest
import torch
from helpers import build_model

from encoder_study.models.model import Encoder, StandardSAE, count_parameters


def test_parameter_counts_match_the_paper():
    assert count_parameters(Encoder(784, 64)) == 50_240
    assert count_parameters(StandardSAE(784, 64)) == 101_200


def _assert_affine(out, x, W, b):
    """out = x W^T + b up to float32 rounding, against a float64 reference. A float32 sum of n
    products is within n * eps of the exact value relative to sum |x_i W_ji| (plus the bias):
    a bound from the arithmetic, whatever kernel (fused addmm or matmul then add) computed it.
    Relative error alone would not do: outputs near zero have large relative rounding."""
    x64, W64, b64 = x.double(), W.double(), b.double()
    exact = x64 @ W64.T + b64
    bound = x.shape[-1] * torch.finfo(torch.float32).eps * (x64.abs() @ W64.abs().T + b64.abs())
    assert ((out.double() - exact).abs() <= bound).all()


def test_encoder_forward():
    m = Encoder(784, 64)
    x = torch.rand(5, 784)
    a, z = m(x)
    assert a.shape == z.shape == (5, 64)
    _assert_affine(z, x, m.W, m.b)
    assert torch.equal(a, torch.relu(z))
    assert m.W.shape == (64, 784) and m.b.shape == (64,)
    assert not m.get_weights().requires_grad
    a, z = Encoder(4, 3, "identity")(torch.randn(2, 4))
    assert torch.equal(a, z) and (z < 0).any()
    sp = Encoder(4, 3, "softplus")
    a, z = sp(torch.randn(2, 4))
    assert torch.allclose(a, torch.nn.functional.softplus(z))


def test_sae_forward():
    m = StandardSAE(784, 64)
    x_hat, a = m(torch.rand(3, 784))
    assert x_hat.shape == (3, 784) and a.shape == (3, 64) and (a >= 0).all()
    assert torch.equal(m.encode(torch.zeros(1, 784)), torch.relu(m.b)[None])


def test_seeded_init_is_reproducible():
    a = build_model("encoder", 10, 4, seed=7).W
    torch.rand(100)
    assert torch.equal(a, build_model("encoder", 10, 4, seed=7).W)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="activation='tanh'.*'relu', 'identity', 'softplus'"):
        Encoder(784, 64, "tanh")
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 784\)"):
        Encoder(784, 64)(torch.zeros(2, 100))
    with pytest.raises(ValueError, match="hidden_dim=0"):
        Encoder(784, 0)
    with pytest.raises(ValueError, match="model='vae'"):
        build_model("vae", 10, 4)


def test_topk_sae_keeps_exactly_k_and_starts_tied():
    from encoder_study.models.model import TopKSAE

    m = build_model("topk", 20, 12, seed=3, k=4)
    assert isinstance(m, TopKSAE)
    x = torch.randn(50, 20)
    x_hat, a = m(x)
    z = m.pre_activations(x)
    _assert_affine(z, x - m.pre_bias, m.W, m.b)
    # the reference: the 4 largest of each row, by sorting, then ReLU (of the same z: the test is
    # about the selection, the linear layer is checked above)
    kth = z.sort(dim=1, descending=True).values[:, 3:4]
    expected = torch.where(z >= kth, z.clamp_min(0), torch.zeros_like(z))
    assert torch.equal(a, expected)
    assert ((a > 0).sum(1) <= 4).all() and ((a > 0).sum(1) == 4).any()
    _assert_affine(x_hat, a, m.decoder.weight, m.pre_bias)
    norms = m.decoder.weight.norm(dim=0)
    assert torch.allclose(norms, torch.ones(12), atol=1e-6)
    # decoder column j points along encoder row j at the start, and the encoder bias is 0
    cos = torch.nn.functional.cosine_similarity(m.decoder.weight.T, m.W, dim=1)
    assert torch.allclose(cos, torch.ones(12), atol=1e-6) and torch.equal(m.b, torch.zeros(12))


def test_topk_bad_k_is_named():
    from encoder_study.models.model import TopKSAE

    with pytest.raises(ValueError, match="k=13 is not allowed with hidden_dim=12"):
        TopKSAE(20, 12, 13)
    with pytest.raises(ValueError, match="activation='identity' is not allowed for model='topk'"):
        build_model("topk", 20, 12, "identity", k=2)
