"""CUDA graphs for the engine's training step: one whole step captured once, then replayed.

Why: on a GPU a step of the book's shapes (784 -> 64, batch 128) is a few dozen kernels of a few
MFLOP each, and launching them from Python costs more than running them (about 1 ms a step on an
H200, the GPU idle in between). A CUDA graph records the kernels of one step once
(``torch.cuda.graph``) and launches them all with one call, so a step costs what its kernels take.

What: ``epoch_steps`` gives ``engine._train_epoch`` a ``GraphStep`` for a stack whose data sit on
a CUDA device, and None anywhere else (the CPU path never comes here). ``GraphStep.step`` trains
one full-size minibatch:

- the first ``WARMUP_STEPS`` steps of a stack run eagerly on a side stream, as PyTorch's recipe
  asks (lazy set-up such as cuBLAS's workspace for that stream happens before capture). They are
  the epoch's real steps with the eager path's kernels, counted once;
- the next step is captured on that stream (capturing runs nothing) and then replayed for its own
  minibatch; every later full minibatch is one ``copy_`` of its sample indices into the graph's
  static index buffer and one replay. Inside the graph the step's loss terms are added into a
  static sums tensor, which ``begin_epoch`` zeroes and ``_train_epoch`` uses as the epoch's sums.

The short last minibatch (n % batch_size samples, another shape) runs eagerly, as before. So the
graph replays the eager path's kernels in the eager path's order: in float64 the weights and
histories agree with eager CUDA training (tests/test_cuda_graphs.py holds them to 1e-12).

A graph holds the addresses of what it was captured with. ``GraphStep.matches`` compares the
objects the step uses (the data, the stack's tensors, the optimizer's state, every attribute of
the kind) with those at capture, so a stack that changed (runs leaving it after divergence:
``RunStack.keep`` and ``StackedOptimizer.keep`` make new tensors) is warmed up and captured again.

Switch: ``ENCODER_STUDY_CUDA_GRAPHS=0`` (or false, off, no) in the environment turns the fast path
off; it is read at every epoch. A kind that synchronises with the host inside its step, or keeps
state by rebinding an attribute rather than updating a tensor in place, cannot be replayed:
``EAGER_KINDS`` names a kind of the package that trains eagerly, with why (the TopK kinds: their
steps are written to be capturable, ``TopKKind.sync_free``, and wait for a GPU run to show it),
and a kind may declare ``cuda_graphs = False`` (or True) as a class attribute. Every
other kind is tried; if its capture fails, or its step rebinds an attribute of the kind while
being captured (state that a replay would leave stale), the attributes are put back (capture ran
no kernel, so nothing else changed), and that kind trains eagerly from then on, with one warning.
"""

from __future__ import annotations

import os
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from ..book.storage import warn
from ..models.kinds.topk import TopKKind

FLAG = "ENCODER_STUDY_CUDA_GRAPHS"
WARMUP_STEPS = 3  # eager steps on the side stream before a capture (PyTorch's examples use 3)

EAGER_KINDS: dict[type, str] = {
    TopKKind: (
        "its step (and BatchTopK's, a subclass) reads nothing on the host on a GPU and updates its "
        "state in place (TopKKind.sync_free; checked on the meta device and bit for bit against the "
        "CPU path), but has not yet been captured and replayed on a GPU: it stays eager until a "
        "device check (benchmarks/cuda/graph_check.sh) shows replay equal to eager"
    ),
}
"""Kinds (and their subclasses) that always train eagerly, with the reason."""

captures: Counter[str] = Counter()  # graphs captured, by kind name (for the tests and the benchmark)
replays: Counter[str] = Counter()  # steps replayed, by kind name
_failed: dict[type, str] = {}  # kinds whose capture failed in this process, with why
_runners: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # RunStack -> its GraphStep
_backends: dict[torch.device, _CudaBackend] = {}


def enabled() -> bool:
    """Whether the fast path is on: unless ``ENCODER_STUDY_CUDA_GRAPHS`` is 0, false, off or no."""
    return os.environ.get(FLAG, "1").strip().lower() not in ("0", "false", "off", "no")


def eager_reason(kind: object) -> str | None:
    """Why a kind (class or instance) trains eagerly on CUDA, or None if its step is replayed."""
    cls = kind if isinstance(kind, type) else type(kind)
    declared = getattr(cls, "cuda_graphs", None)
    if declared is not None:
        return None if declared else f"{cls.__name__} declares cuda_graphs = False"
    for eager, why in EAGER_KINDS.items():
        if issubclass(cls, eager):
            return why
    return _failed.get(cls)


class _CudaBackend:
    """The CUDA side of ``GraphStep``: a side stream for warm-up and capture, and the capture."""

    def __init__(self, device: torch.device) -> None:
        self.stream = torch.cuda.Stream(device)

    @contextmanager
    def side_stream(self) -> Iterator[None]:
        """Run the block on the side stream, ordered after and before the current stream's work."""
        here = torch.cuda.current_stream(self.stream.device)
        self.stream.wait_stream(here)
        try:
            with torch.cuda.stream(self.stream):
                yield
        finally:
            here.wait_stream(self.stream)

    def capture(self, step: Callable[[], None]) -> Callable[[], None]:
        """Record ``step``'s kernels (none runs) into a graph; its replay, on the current stream."""
        here = torch.cuda.current_stream(self.stream.device)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                step()
        except BaseException:
            torch.cuda.set_stream(here)  # a failed capture_end leaves the capture stream current
            raise
        return graph.replay


def _backend_for(device: torch.device) -> _CudaBackend | None:
    """The graph backend of a device: CUDA's, or None (every other device trains eagerly)."""
    if device.type != "cuda":
        return None
    if device not in _backends:
        _backends[device] = _CudaBackend(device)
    return _backends[device]


def _frozen(value: object) -> object:
    """``value`` with its containers (dicts, lists, tuples) copied and the objects in them kept."""
    if isinstance(value, dict):
        return {k: _frozen(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_frozen(v) for v in value)
    return value


def _same(a: object, b: object) -> bool:
    """Whether two frozen values hold the same objects: tensors (and modules, layouts...) by
    identity, containers entry by entry, plain values (numbers, strings, configs) by equality."""
    if a is b:
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (torch.Tensor, torch.nn.Module)) or isinstance(b, (torch.Tensor, torch.nn.Module)):
        return False
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 (an object whose == is not a plain truth value)
        return False


def _state_key(stack, opt, X: torch.Tensor, batch_size: int) -> dict:
    """Everything a captured step reads or writes, frozen: the graph fits while this is unchanged."""
    return _frozen(
        {
            "data": X,
            "batch_size": batch_size,
            "layout": stack.layout,
            "params": stack.params,
            "buffers": stack.buffers,
            "opt": vars(opt),
            "kind": vars(stack.kind),
        }
    )


def _changed(before: dict, after: dict) -> list[str]:
    """The entries (``kind.idle``, ``params``) in which two state keys differ."""
    missing = object()
    names = []
    for section in before.keys() | after.keys():
        old, new = before.get(section, missing), after.get(section, missing)
        if section == "kind" and isinstance(old, dict) and isinstance(new, dict):
            for n in old.keys() | new.keys():
                if not _same(old.get(n, missing), new.get(n, missing)):
                    names.append(f"kind.{n}")
        elif not _same(old, new):
            names.append(section)
    return sorted(names)


def _restore(kind: object, attributes: dict) -> None:
    """Put a kind's attributes back as frozen in ``attributes`` (added ones removed)."""
    for name in set(vars(kind)) - set(attributes):
        delattr(kind, name)
    for name, value in attributes.items():
        if not _same(vars(kind)[name], value):
            setattr(kind, name, value)


class GraphStep:
    """One stack's training step on full-size minibatches: eager warm-up, capture, then replays.

    Holds no reference to the stack (``_runners`` is keyed by it, weakly), only to the tensors
    the graph reads and writes, so a graph lives as long as its stack.
    """

    def __init__(self, stack, opt, X: torch.Tensor, batch_size: int, backend) -> None:
        self.backend, self.batch_size, self.name = backend, batch_size, stack.kind.name
        self.sums = torch.zeros(len(stack.kind.terms) + 1, len(stack), device=X.device, dtype=X.dtype)
        self.idx: torch.Tensor | None = None  # the static index buffer (S, batch_size), made at step 1
        self.key = _state_key(stack, opt, X, batch_size)
        self.warm = 0  # warm-up steps done
        self.replay: Callable[[], None] | None = None
        self.failed = False

    def matches(self, stack, opt, X: torch.Tensor, batch_size: int) -> bool:
        """Whether this step (warmed up or captured) still fits the stack, its optimizer and data."""
        return not self.failed and _same(self.key, _state_key(stack, opt, X, batch_size))

    def begin_epoch(self) -> torch.Tensor:
        """The epoch's sums of loss terms (1 + len(terms), R), zeroed: the steps add into it."""
        return self.sums.zero_()

    def step(self, stack, opt, X: torch.Tensor, idx: torch.Tensor) -> None:
        """One training step on the minibatches X[idx], idx (S, batch_size); its loss terms added
        into ``sums``."""
        if self.replay is not None:
            self.idx.copy_(idx)
            self.replay()
            replays[self.name] += 1
        elif self.failed:
            self.sums += stack.step(X, idx, opt)
        elif self.warm < WARMUP_STEPS:
            if self.idx is None:
                self.idx = torch.empty(idx.shape, dtype=idx.dtype, device=idx.device)
            with self.backend.side_stream():
                self.sums += stack.step(X, idx, opt)
            self.warm += 1
            self.key = _state_key(stack, opt, X, self.batch_size)  # lazy set-up done: what capture sees
        else:
            self._capture(stack, opt, X, idx)
            self.step(stack, opt, X, idx)  # this minibatch: replayed, or eager if the capture failed

    def _capture(self, stack, opt, X: torch.Tensor, idx: torch.Tensor) -> None:
        self.idx.copy_(idx)
        before = _state_key(stack, opt, X, self.batch_size)
        weak, sums, static_idx = weakref.ref(stack), self.sums, self.idx

        def one_step() -> None:
            sums.add_(weak().step(X, static_idx, opt))

        try:
            replay = self.backend.capture(one_step)
        except Exception as e:  # noqa: BLE001 (whatever the kind did that a graph cannot hold)
            why = f"its step could not be captured ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        else:
            rebound = _changed(before, _state_key(stack, opt, X, self.batch_size))
            why = f"its step rebinds {', '.join(rebound)} (not updated in place)" if rebound else None
        if why is not None:
            _restore(stack.kind, before["kind"])
            self.failed = True
            _failed[type(stack.kind)] = why
            warn(f"CUDA graphs: the {self.name!r} kind trains eagerly on CUDA: {why} (set {FLAG}=0 to skip)")
            return
        self.replay, self.key = replay, before
        captures[self.name] += 1


def epoch_steps(stack, opt, X: torch.Tensor, batch_size: int) -> GraphStep | None:
    """The stack's ``GraphStep`` for this epoch (captured again if the stack changed), or None
    where every step runs eagerly: not on CUDA, switched off, or a kind that cannot be replayed."""
    backend = _backend_for(X.device)
    if backend is None or not enabled() or eager_reason(stack.kind) is not None:
        return None
    runner = _runners.get(stack)
    if runner is None or not runner.matches(stack, opt, X, batch_size):
        runner = _runners[stack] = GraphStep(stack, opt, X, batch_size, backend)
    return runner


__all__ = ["EAGER_KINDS", "FLAG", "GraphStep", "eager_reason", "enabled", "epoch_steps"]
