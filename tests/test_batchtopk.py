"""BatchTopK: the selection is over the whole minibatch, and the inference threshold follows the
smallest activation kept in training."""

import torch

from encoder_study.config import RunConfig
from encoder_study.engine import RunStack, train_group
from encoder_study.kinds.batchtopk import THRESHOLD_DECAY


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
