"""The engine's CUDA-graph fast path (``encoder_study/training/cuda_graphs.py``).

On CUDA (skipped without a GPU): every registered kind trained with graphs equals eager CUDA
training in float64 (weights and histories, to 1e-12 relative), a stack that lost runs is captured
again, and the kinds that can be replayed were replayed. On the CPU: the switch, that the CPU path
never enters the graph code and is the old loop bit for bit, and the graph bookkeeping (warm-up
steps counted once, the static index buffer and sums, the eager short last minibatch, a new
capture after ``keep``, the fallback when a capture fails or a step rebinds its state) with the
CUDA graph replaced by a stand-in that runs the captured step eagerly: bit for bit the eager path.
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from ema_encoder_kind import EmaEncoderKind

from encoder_study.models import kinds
from encoder_study.models.config import RunConfig
from encoder_study.training import cuda_graphs, engine
from encoder_study.training.engine import RunStack, StackedOptimizer, train_group

BUILT_IN = sorted(n for n, k in kinds.KINDS.items() if k.__module__.startswith("encoder_study."))
REPLAYED = [n for n in BUILT_IN if cuda_graphs.eager_reason(kinds.KINDS[n]) is None]
N, D, HIDDEN, BATCH = 301, 40, 16, 32  # 9 full minibatches and a short one of 13
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def config(kind: str, **changes) -> RunConfig:
    """A small run of ``kind``; its own knobs switched on, a TopK-like kind with k = 4."""
    own = {k.name: 3 if k.type is int else 0.3 for k in kinds.KINDS[kind].knobs if not k.field}
    base = {"model": kind, "hidden_dim": HIDDEN, "epochs": 3, "batch_size": BATCH, "knobs": own}
    base.update(changes)
    try:
        return RunConfig(**base)
    except ValueError:
        return RunConfig(k=4, **base)


def group(kind: str, device: str) -> list[RunConfig]:
    """Four runs on two seeds (each seed's two share minibatches), Adam and SGD, two learning rates."""
    return [
        config(kind, device=device, seed=1),
        config(kind, device=device, seed=1, optimizer="sgd", lr=1e-4),
        config(kind, device=device, seed=2, lr=3e-3),
        config(kind, device=device, seed=2),
    ]


def data(device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(N, D, generator=g, dtype=torch.float64).to(device)


def train_by_hand(configs: list[RunConfig], X: torch.Tensor, epochs: int = 3, keep_after: int = 1):
    """The engine's epoch loop without its bookkeeping; after epoch ``keep_after`` runs 1 and 3
    leave the stack (as diverged runs do). Each epoch's means and the final tensors, on the CPU."""
    stack = RunStack(configs, X.shape[1], X.device, X.dtype)
    stack.kind.prepare(stack.tensors, X)
    opt = StackedOptimizer(list(stack.params.values()), [(c.optimizer, c.lr) for c in configs])
    means = []
    for epoch in range(epochs):
        means.append(engine._train_epoch(stack, opt, X, epoch, configs[0].batch_size))
        if epoch == keep_after:
            stack.keep([0, 2])
            opt.keep([0, 2], list(stack.params.values()))
    return means, {n: t.detach().cpu().clone() for n, t in stack.tensors.items()}


def rows(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def assert_same_histories(a: list[dict], b: list[dict], rel: float) -> None:
    """Every entry but the time equal, numbers to ``rel``."""
    assert [list(h) for h in rows(a)] == [list(h) for h in rows(b)]
    for x, y in zip(rows(a), rows(b)):
        for k in x:
            if isinstance(x[k], float):
                assert y[k] == pytest.approx(x[k], rel=rel, abs=1e-300), (k, x, y)
            else:
                assert x[k] == y[k], (k, x, y)


def assert_close(a: torch.Tensor, b: torch.Tensor, rel: float, what: str) -> None:
    scale = max(float(a.abs().max()), 1e-300)
    diff = float((a - b).abs().max())
    assert diff <= rel * scale, f"{what}: max |difference| {diff:.3g} (relative {diff / scale:.3g})"


# -- on CUDA ------------------------------------------------------------------------------------------


@cuda
@pytest.mark.parametrize("kind", BUILT_IN)
def test_graphs_equal_eager_cuda_training_float64(kind, monkeypatch):
    X = data("cuda")
    monkeypatch.setenv(cuda_graphs.FLAG, "0")
    eager = train_group(group(kind, "cuda"), X, progress=False)
    monkeypatch.setenv(cuda_graphs.FLAG, "1")
    before = cuda_graphs.replays[kind], cuda_graphs.captures[kind]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graphed = train_group(group(kind, "cuda"), X, progress=False)
    said = [str(w.message) for w in caught if "CUDA graphs" in str(w.message)]
    replayed = cuda_graphs.replays[kind] - before[0], cuda_graphs.captures[kind] - before[1]
    if kind in REPLAYED:  # 3 epochs of 9 full minibatches, the first WARMUP_STEPS eager
        expected = (3 * 9 - cuda_graphs.WARMUP_STEPS, 1)
        why = cuda_graphs.eager_reason(kinds.KINDS[kind])
        assert not said and replayed == expected, (replayed, said, why)
    else:
        assert replayed == (0, 0)
    for e, g in zip(eager, graphed):
        assert e.diverged_epoch == g.diverged_epoch
        for name in e.state:
            assert_close(e.state[name], g.state[name], 1e-12, f"{kind} {name}")
        assert_same_histories(e.history, g.history, 1e-12)


@cuda
@pytest.mark.parametrize("kind", REPLAYED)
def test_a_stack_that_lost_runs_is_captured_again_on_cuda(kind, monkeypatch):
    X = data("cuda")
    monkeypatch.setenv(cuda_graphs.FLAG, "0")
    eager_means, eager_state = train_by_hand(group(kind, "cuda"), X)
    monkeypatch.setenv(cuda_graphs.FLAG, "1")
    before = cuda_graphs.captures[kind]
    means, state = train_by_hand(group(kind, "cuda"), X)
    assert cuda_graphs.captures[kind] - before == 2  # once for four runs, once for the two left
    for e, g in zip(eager_means, means):
        assert_close(e, g, 1e-12, f"{kind} epoch means")
    for name in state:
        assert_close(eager_state[name], state[name], 1e-12, f"{kind} {name}")


@cuda
def test_float32_graphs_equal_eager_on_cuda(monkeypatch):
    X = data("cuda").float()
    monkeypatch.setenv(cuda_graphs.FLAG, "0")
    eager = train_group(group("encoder", "cuda"), X, progress=False)
    monkeypatch.setenv(cuda_graphs.FLAG, "1")
    graphed = train_group(group("encoder", "cuda"), X, progress=False)
    for e, g in zip(eager, graphed):
        for name in e.state:
            assert_close(e.state[name], g.state[name], 1e-5, f"float32 {name}")


# -- on the CPU ---------------------------------------------------------------------------------------


class StandIn:
    """CUDA's part of ``GraphStep`` on the CPU: no side stream; capturing records the step and
    runs nothing (as a CUDA capture), a replay runs it eagerly. ``run_at_capture``: the capture
    runs the step too, as a kind that rebinds its state would show it (training then differs)."""

    def __init__(self, fail: bool = False, run_at_capture: bool = False) -> None:
        self.fail, self.run_at_capture, self.captures = fail, run_at_capture, 0

    def side_stream(self):
        return contextlib.nullcontext()

    def capture(self, step):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        # A CUDA graph replays on the tensors it was captured with: every replay must find the
        # stack, its optimizer and its kind holding exactly those objects still.
        cells = dict(zip(step.__code__.co_freevars, (c.cell_contents for c in step.__closure__)))
        stack, opt, X, batch = cells["weak"](), cells["opt"], cells["X"], cells["static_idx"].shape[1]
        captured = cuda_graphs._state_key(stack, opt, X, batch)
        if self.run_at_capture:
            step()
        self.captures += 1

        def replay():
            now = cuda_graphs._state_key(cells["weak"](), opt, X, batch)
            if not cuda_graphs._same(captured, now):
                raise AssertionError(f"replayed on other objects: {cuda_graphs._changed(captured, now)}")
            step()

        return replay


@pytest.fixture
def stand_in(monkeypatch):
    """Graph steps on the CPU through ``StandIn``; a fresh record of failed kinds."""
    backend = StandIn()
    monkeypatch.setattr(cuda_graphs, "_backend_for", lambda device: backend)
    monkeypatch.setattr(cuda_graphs, "_failed", {})
    monkeypatch.delenv(cuda_graphs.FLAG, raising=False)
    return backend


@pytest.mark.parametrize(
    "value,on", [(None, True), ("1", True), ("", True), ("0", False), ("false", False), (" OFF ", False)]
)
def test_the_switch(value, on, monkeypatch):
    if value is None:
        monkeypatch.delenv(cuda_graphs.FLAG, raising=False)
    else:
        monkeypatch.setenv(cuda_graphs.FLAG, value)
    assert cuda_graphs.enabled() is on


def test_which_kinds_are_replayed_and_a_kind_may_say_it_is_not():
    assert {"encoder", "sae", "jumprelu", "encoder_em"} <= set(REPLAYED)
    for name in ("topk", "batchtopk"):  # capturable on paper, held eager until a GPU run shows it
        assert "not yet been captured" in cuda_graphs.eager_reason(kinds.KINDS[name])

    class Declared(EmaEncoderKind):
        cuda_graphs = False

    assert "cuda_graphs = False" in cuda_graphs.eager_reason(Declared)


def test_a_kind_in_eager_kinds_and_its_subclasses_are_never_captured(stand_in, monkeypatch):
    monkeypatch.setitem(cuda_graphs.EAGER_KINDS, kinds.KINDS["topk"], "held eager by this test")
    assert cuda_graphs.eager_reason(kinds.KINDS["batchtopk"]) == "held eager by this test"
    X = data()
    monkeypatch.setenv(cuda_graphs.FLAG, "0")
    eager = train_group(group("topk", "cpu"), X, progress=False)
    monkeypatch.setenv(cuda_graphs.FLAG, "1")
    replays = cuda_graphs.replays["topk"]
    graphed = train_group(group("topk", "cpu"), X, progress=False)
    assert stand_in.captures == 0 and cuda_graphs.replays["topk"] == replays
    for e, g in zip(eager, graphed):
        assert all(torch.equal(e.state[n], g.state[n]) for n in e.state)
        assert rows(e.history) == rows(g.history)


@pytest.mark.parametrize("kind", ["topk", "batchtopk"])
def test_the_topk_kinds_sync_free_way_is_their_cpu_way_bit_for_bit(kind, monkeypatch):
    # What a TopK kind runs off the CPU, and so in a CUDA graph (``sync_free``: AuxK computed every
    # step, BatchTopK's cut the smallest of an unsorted top-k), against the CPU's way (AuxK skipped
    # while no latent is dead, the cut by kth_largest), on the CPU. Rank-2 inputs: latents die
    # after the first epoch, so both AuxK cases are met; each run has its own k.
    X = data()
    X = X[:, :2] @ X[:2]
    configs = [c.with_(k=k) for c, k in zip(group(kind, "cpu"), (1, 2, 3, 4))]
    cpu_way = train_group(configs, X, progress=False)
    made = kinds.KINDS["topk"].__init__

    def sync_free_init(self, *args, **kwargs):
        made(self, *args, **kwargs)
        assert not self.sync_free  # the CPU's default
        self.sync_free = True

    monkeypatch.setattr(kinds.KINDS["topk"], "__init__", sync_free_init)
    sync_free = train_group(configs, X, progress=False)
    for e, g in zip(cpu_way, sync_free):
        assert all(torch.equal(e.state[n], g.state[n]) for n in e.state), kind
        assert rows(e.history) == rows(g.history)
    assert any(h["auxk"] != h["mse"] for r in cpu_way for h in r.history)  # AuxK did work


def old_train_epoch(stack, opt, X, epoch, batch_size):
    """``_train_epoch`` as it was before the graph path: the CPU reference."""
    n = len(X)
    orders = engine._epoch_orders(stack.layout.data_seeds, epoch, n, X.device)
    sums = torch.zeros(len(stack.kind.terms) + 1, len(stack), device=X.device, dtype=X.dtype)
    steps = 0
    with engine.flush_denormals():
        for s in range(0, n, batch_size):
            sums += stack.step(X, orders[:, s : s + batch_size], opt)
            steps += 1
    return (sums / steps).cpu()


def test_the_cpu_path_never_enters_the_graph_code_and_is_the_old_loop(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the CPU path built a graph step")

    monkeypatch.setattr(cuda_graphs, "GraphStep", refuse)
    monkeypatch.setattr(cuda_graphs, "_CudaBackend", refuse)
    monkeypatch.delenv(cuda_graphs.FLAG, raising=False)
    X = data()
    new_means, new_state = train_by_hand(group("encoder", "cpu"), X)
    monkeypatch.setattr(engine, "_train_epoch", old_train_epoch)
    old_means, old_state = train_by_hand(group("encoder", "cpu"), X)
    assert all(torch.equal(a, b) for a, b in zip(new_means, old_means))
    assert all(torch.equal(new_state[n], old_state[n]) for n in new_state)


@pytest.mark.parametrize("kind", REPLAYED)
def test_graph_bookkeeping_is_the_eager_path_bit_for_bit(kind, stand_in, monkeypatch):
    X = data()
    monkeypatch.setenv(cuda_graphs.FLAG, "0")
    eager = train_group(group(kind, "cpu"), X, progress=False)
    monkeypatch.setenv(cuda_graphs.FLAG, "1")
    replays = cuda_graphs.replays[kind]
    graphed = train_group(group(kind, "cpu"), X, progress=False)
    captured = 1 if kind in REPLAYED else 0
    assert stand_in.captures == captured
    assert cuda_graphs.replays[kind] - replays == captured * (3 * 9 - cuda_graphs.WARMUP_STEPS)
    for e, g in zip(eager, graphed):
        assert all(torch.equal(e.state[n], g.state[n]) for n in e.state), kind
        assert rows(e.history) == rows(g.history)


def test_a_stack_keeps_its_graph_step_until_it_changes_or_the_switch_is_off(stand_in, monkeypatch):
    X, configs = data(), group("encoder", "cpu")
    stack = RunStack(configs, D, X.device, X.dtype)
    opt = StackedOptimizer(list(stack.params.values()), [(c.optimizer, c.lr) for c in configs])
    first = cuda_graphs.epoch_steps(stack, opt, X, BATCH)
    assert isinstance(first, cuda_graphs.GraphStep) and cuda_graphs.epoch_steps(stack, opt, X, BATCH) is first
    assert cuda_graphs.epoch_steps(stack, opt, X, BATCH + 1) is not first  # another batch size
    again = cuda_graphs.epoch_steps(stack, opt, X, BATCH)
    stack.kind.lambdas["lse"] = stack.kind.lambdas["lse"].clone()  # the kind's state replaced
    assert cuda_graphs.epoch_steps(stack, opt, X, BATCH) is not again
    monkeypatch.setenv(cuda_graphs.FLAG, "0")
    assert cuda_graphs.epoch_steps(stack, opt, X, BATCH) is None


@pytest.mark.parametrize("kind", ["encoder", "sae", "jumprelu", "encoder_em", "topk", "batchtopk"])
def test_a_stack_that_lost_runs_is_captured_again(kind, stand_in, monkeypatch):
    for held in list(cuda_graphs.EAGER_KINDS):  # the stand-in captures the TopK kinds' steps too
        monkeypatch.delitem(cuda_graphs.EAGER_KINDS, held)
    X = data()
    monkeypatch.setenv(cuda_graphs.FLAG, "0")
    eager_means, eager_state = train_by_hand(group(kind, "cpu"), X)
    monkeypatch.setenv(cuda_graphs.FLAG, "1")
    means, state = train_by_hand(group(kind, "cpu"), X)
    assert stand_in.captures == 2
    assert all(torch.equal(a, b) for a, b in zip(eager_means, means))
    assert all(torch.equal(eager_state[n], state[n]) for n in state)


def test_a_diverged_run_leaving_the_stack_means_a_new_capture(stand_in, monkeypatch):
    X = data()
    good = config("sae", device="cpu", seed=1, optimizer="sgd", lr=1e-2)
    configs = [good, good.with_(seed=2, lr=1e8)]  # overflows within the first epoch
    monkeypatch.setenv(cuda_graphs.FLAG, "0")
    eager = train_group(configs, X, progress=False)
    monkeypatch.setenv(cuda_graphs.FLAG, "1")
    graphed = train_group(configs, X, progress=False)
    assert graphed[1].diverged_epoch == eager[1].diverged_epoch == 1 and stand_in.captures == 2
    assert all(torch.equal(eager[0].state[n], graphed[0].state[n]) for n in eager[0].state)


def test_a_failed_capture_falls_back_with_one_warning(stand_in, monkeypatch):
    stand_in.fail = True
    X = data()
    monkeypatch.setenv(cuda_graphs.FLAG, "0")
    eager = train_group(group("encoder", "cpu"), X, progress=False)
    monkeypatch.setenv(cuda_graphs.FLAG, "1")
    with pytest.warns(UserWarning, match="'encoder' kind trains eagerly on CUDA: its step could not be"):
        first = train_group(group("encoder", "cpu"), X, progress=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="CUDA graphs")  # no second one: the kind is known
        second = train_group(group("encoder", "cpu"), X, progress=False)
    assert "RuntimeError" in cuda_graphs.eager_reason(kinds.KINDS["encoder"])
    for res in (first, second):
        for e, g in zip(eager, res):
            assert all(torch.equal(e.state[n], g.state[n]) for n in e.state)


def test_a_step_that_rebinds_the_kinds_state_is_not_replayed(stand_in, monkeypatch):
    # EmaEncoderKind keeps its minibatch means in a list it rebinds every step: a replay would
    # never rebind it. The stand-in runs the step at capture, as CUDA would record it.
    kinds.register(EmaEncoderKind)
    stand_in.run_at_capture = True
    configs = [RunConfig(model="ema_encoder", hidden_dim=HIDDEN, epochs=2, batch_size=BATCH, device="cpu")]
    with pytest.warns(UserWarning, match=r"rebinds kind\.last_means"):
        train_group(configs, data(), progress=False)
    assert cuda_graphs.replays["ema_encoder"] == 0
