"""BatchTopK: the selection is over the whole minibatch, and the inference threshold follows the
smallest activation kept in training."""

import pytest
import torch

from encoder_study.models.config import RunConfig
from encoder_study.models.kinds.batchtopk import THRESHOLD_DECAY, kth_largest
from encoder_study.training.engine import RunStack, train_group


def stack_of(k: int, hidden: int = 3, runs: int = 1) -> RunStack:
    configs = [
        RunConfig(model="batchtopk", seed=s + 1, hidden_dim=hidden, k=k, batch_size=2) for s in range(runs)
    ]
    return RunStack(configs, 4, torch.device("cpu"), torch.float64)


def test_selection_keeps_the_k_times_batch_largest_over_the_whole_batch():
    kind = stack_of(k=2).kind
    z = torch.tensor([[[5.0, 4.0, 3.0], [-1.0, 0.5, 0.2]]], dtype=torch.float64)  # (R=1, B=2, K=3)
    a = kind._topk_per_run(z)
    # the 4 largest of the 6: 5, 4, 3 (all in sample 0) and 0.5 (sample 1)
    expected = torch.tensor([[[5.0, 4.0, 3.0], [0.0, 0.5, 0.0]]], dtype=torch.float64)
    assert torch.equal(a, expected)
    assert float(kind.last_min[0]) == 0.5  # the smallest kept


def test_threshold_averages_the_kept_minima():
    stack = stack_of(k=1)
    kind, thr = stack.kind, stack.buffers["threshold"]
    for m in [2.0, 4.0, 6.0]:
        kind.last_min = torch.tensor([m], dtype=torch.float64)
        kind.after_step(stack.tensors)
    assert float(thr[0]) == 4.0  # 1/t weights while 1/t > 1 - decay: the plain mean of 2, 4, 6
    kind.last_min = torch.tensor([14.0], dtype=torch.float64)
    kind.after_step(stack.tensors)
    assert abs(float(thr[0]) - (4.0 + (14.0 - 4.0) * 0.25)) < 1e-12  # step 4: still the mean
    assert 1 - THRESHOLD_DECAY < 0.25


def test_trained_threshold_gives_about_k_active_latents_at_inference(mnist):
    X = mnist["train_x"][:2048]
    (res,) = train_group(
        [RunConfig(model="batchtopk", seed=1, hidden_dim=32, k=4, epochs=3)], X, progress=False
    )
    model = res.model()
    assert float(model.threshold) > 0
    l0 = (model.encode(X) > 0).sum(1).double().mean()
    # the threshold is an average of per-batch minima, so inference keeps about k latents a sample,
    # not exactly k; a broken threshold (0, or never updated) would keep all 32 or none
    assert 2.0 < float(l0) < 8.0


def test_kth_largest_is_exact_with_ties_misses_and_at_the_ends():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(50_000, generator=g)
    ranked = values.sort(descending=True).values  # the reference: a full sort
    for m in (1, 7, 500, 25_000, 49_999, 50_000):
        assert torch.equal(kth_largest(values, m, values[:2000]), ranked[m - 1]), m
    # a sample that misrepresents the values: the bracket misses and the full selection answers
    assert torch.equal(kth_largest(values, 100, values.abs()[:500] + 10.0), ranked[99])
    # ties at the cut: the m-th largest is the tied value whichever copy is counted
    tied = torch.cat([torch.full((300,), 2.0), torch.full((300,), 1.0), torch.zeros(400)])
    for m, expected in ((1, 2.0), (300, 2.0), (301, 1.0), (600, 1.0), (601, 0.0), (1000, 0.0)):
        assert float(kth_largest(tied, m, tied[::7])) == expected, m
    with pytest.raises(ValueError, match="m=0 must be in 1..1000"):
        kth_largest(tied, 0, tied)


def test_an_exact_tie_at_the_cut_keeps_every_tied_entry():
    kind = stack_of(k=1).kind
    z = torch.tensor([[[2.0, 1.0, 1.0], [1.0, -1.0, 0.0]]], dtype=torch.float64)  # k x B = 2 of 6
    a = kind._topk_per_run(z)
    # the 2nd largest is 1.0, held by three entries: all three are kept with the 2.0
    assert torch.equal(a, torch.tensor([[[2.0, 1.0, 1.0], [1.0, 0.0, 0.0]]], dtype=torch.float64))
