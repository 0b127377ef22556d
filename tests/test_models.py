import pytest
import torch

from encoder_study.model import Encoder, StandardSAE, build_model, count_parameters


def test_parameter_counts_match_the_paper():
    assert count_parameters(Encoder(784, 64)) == 50_240
    assert count_parameters(StandardSAE(784, 64)) == 101_200


def test_encoder_forward():
    m = Encoder(784, 64)
    x = torch.rand(5, 784)
    a, z = m(x)
    assert a.shape == z.shape == (5, 64)
    assert torch.allclose(z, x @ m.W.T + m.b)
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
    from encoder_study.model import TopKSAE

    m = build_model("topk", 20, 12, seed=3, k=4)
    assert isinstance(m, TopKSAE)
    x = torch.randn(50, 20)
    x_hat, a = m(x)
    z = (x - m.pre_bias) @ m.W.T + m.b
    # the reference: the 4 largest of each row, by sorting, then ReLU
    kth = z.sort(dim=1, descending=True).values[:, 3:4]
    expected = torch.where(z >= kth, z.clamp_min(0), torch.zeros_like(z))
    assert torch.equal(a, expected)
    assert ((a > 0).sum(1) <= 4).all() and ((a > 0).sum(1) == 4).any()
    assert torch.allclose(x_hat, a @ m.decoder.weight.T + m.pre_bias)
    norms = m.decoder.weight.norm(dim=0)
    assert torch.allclose(norms, torch.ones(12), atol=1e-6)
    # decoder column j points along encoder row j at the start, and the encoder bias is 0
    cos = torch.nn.functional.cosine_similarity(m.decoder.weight.T, m.W, dim=1)
    assert torch.allclose(cos, torch.ones(12), atol=1e-6) and torch.equal(m.b, torch.zeros(12))


def test_topk_bad_k_is_named():
    from encoder_study.model import TopKSAE

    with pytest.raises(ValueError, match="k=13 is not allowed with hidden_dim=12"):
        TopKSAE(20, 12, 13)
    with pytest.raises(ValueError, match="activation='identity' is not allowed for model='topk'"):
        build_model("topk", 20, 12, "identity", k=2)
