"""Many runs trained as one batched program.

The paper's experiments are dozens of small runs (784 -> 64, batch 128). Trained one by one, each
step is a handful of tiny GEMMs drowned in Python and framework overhead. Here the runs of a group
(same model kind and shapes) are stacked: weights (R, K, D), one batched GEMM per layer per step
for all R runs, one optimizer update over the stack, per-run optimizers, learning rates and
hyperparameters. Runs on one seed share each minibatch (``stacking.SeedLayout``). Each run still
sees exactly what it would alone: its own initialisation (its seed), its own minibatch order
(``epoch_permutation(seed, epoch)``), its own loss, and the gradient of its own loss.

What differs between model kinds (parameters, loss terms and their gradients, what happens before
the first step and after each) lives in the kind's file under ``models/kinds/``; this module keeps what
every kind shares: data orders, seeds, the optimizer over the stack, divergence, checkpoints.

No host synchronisation inside an epoch; one per epoch to read the losses and catch a run that
diverged, which is then dropped from the stack (its last finite state kept) while the others go on.
A group can checkpoint itself and resume.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..book.data import epoch_permutation
from ..book.progress import Progress
from ..book.storage import load_or_discard, move_aside, save_tree, warn
from ..evaluation.metrics import dead_units, l0, redundancy_score
from ..models.config import ADAM_BETAS, ADAM_EPS, RunConfig, resolve_device
from ..models.kinds import KINDS, ModelKind
from ..models.model import build_run_model
from ..models.stacking import SeedLayout, gather
from . import cuda_graphs
from .cpu import flush_denormals

# 3: parameters by name, the kind's training state by name; 4: buffers; 5: safetensors + JSON, no pickle
CHECKPOINT_FORMAT = 5


@dataclass
class RunResult:
    """A finished run: its config, final weights (a state_dict on CPU), per-epoch history."""

    config: RunConfig
    state: dict[str, torch.Tensor]
    history: list[dict]
    diverged_epoch: int | None
    seconds: float = 0.0  # this run's share of its group's wall time (group time / runs in the group)
    group_size: int = 1

    def model(self) -> torch.nn.Module:
        """The trained model, rebuilt from the state."""
        kind = KINDS[self.config.model]
        input_dim = self.state[f"{kind.module.first_layer}.weight"].shape[1]
        m = build_run_model(self.config, input_dim)
        m.load_state_dict(self.state)
        return m.eval()


def to_record(r: RunResult) -> dict:
    """A result as plain data (what the run cache, a checkpoint and a Ray task hold)."""
    return {
        "config": r.config.as_dict(),
        "state": r.state,
        "history": r.history,
        "diverged_epoch": r.diverged_epoch,
        "seconds": r.seconds,
        "group_size": r.group_size,
    }


def from_record(d: dict) -> RunResult:
    """The result ``to_record`` made plain."""
    return RunResult(
        RunConfig(**d["config"]), d["state"], d["history"], d["diverged_epoch"], d["seconds"], d["group_size"]
    )


def group_key(config: RunConfig) -> tuple:
    """Runs that can share one stacked program: everything but seed, optimizer, lr and the loss weights."""
    return (
        config.model,
        config.hidden_dim,
        config.activation,
        config.epochs,
        config.batch_size,
        config.device,
        config.loss.reduction,
        config.eval_every,
    )


def fused_adam_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    m: list[torch.Tensor],
    v: list[torch.Tensor],
    step: torch.Tensor,
    lr: float,
) -> None:
    """One Adam step (betas, eps of ``config``) over lists of tensors, in place, in one kernel call.

    Relies on ``torch._fused_adam_``, the kernel behind ``torch.optim.Adam(fused=True)`` (what the
    plain loop uses): the same arithmetic, one memory pass per tensor; it reads the step count
    from a tensor (no host sync) and needs dense gradients.
    """
    torch._fused_adam_(
        params,
        grads,
        m,
        v,
        [],
        [step] * len(params),
        lr=lr,
        beta1=ADAM_BETAS[0],
        beta2=ADAM_BETAS[1],
        weight_decay=0.0,
        eps=ADAM_EPS,
        amsgrad=False,
        maximize=False,
    )


class StackedOptimizer:
    """Adam or SGD over stacked parameters (leading dim = run), each run its own optimizer and lr.

    The runs of one (optimizer, learning rate) form a bucket: an Adam bucket is one fused Adam
    call, an SGD bucket one ``add_`` per tensor, as ``torch.optim.SGD``. A bucket whose runs sit
    side by side is one slice of each parameter; otherwise a list of per-run views.
    """

    def __init__(self, params: list[torch.Tensor], rules: list[tuple[str, float]]) -> None:
        self.rules = list(rules)  # (optimizer, lr) of each run
        adam = any(kind == "adam" for kind, _ in self.rules)
        self.m = [torch.zeros_like(p) for p in params] if adam else []
        self.v = [torch.zeros_like(p) for p in params] if adam else []
        self.step_count = torch.zeros((), dtype=torch.float32, device=params[0].device)
        self._set_params(params)

    def _set_params(self, params: list[torch.Tensor]) -> None:
        self.params = params
        self._buckets: dict[tuple[str, float], list[int]] = defaultdict(list)  # (optimizer, lr) -> runs
        for r, rule in enumerate(self.rules):
            self._buckets[rule].append(r)

    @staticmethod
    def _views(ts: list[torch.Tensor], runs: list[int]) -> list[torch.Tensor]:
        """The rows ``runs`` of each stacked tensor: one slice if they are adjacent, else one view per run."""
        if runs == list(range(runs[0], runs[-1] + 1)):
            return [t[runs[0] : runs[-1] + 1] for t in ts]
        return [t[r] for t in ts for r in runs]

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        params = [p.detach() for p in self.params]
        grads = [g.contiguous() for g in grads]
        if self.m:
            self.step_count += 1
        for (kind, lr), runs in self._buckets.items():
            ps, gs = self._views(params, runs), self._views(grads, runs)
            if kind == "sgd":
                for p, g in zip(ps, gs):
                    p.add_(g, alpha=-lr)
            else:
                fused_adam_step(
                    ps, gs, self._views(self.m, runs), self._views(self.v, runs), self.step_count, lr
                )

    def state(self) -> dict:
        return {"step": self.step_count.clone(), "m": self.m, "v": self.v}

    def load(self, state: dict) -> None:
        self.step_count.copy_(state["step"])
        for dst, src in zip(self.m + self.v, state["m"] + state["v"]):
            dst.copy_(src)

    def keep(self, idx: list[int], params: list[torch.Tensor]) -> None:
        """Follow the stack after runs left it: new parameter tensors, their rows of the state."""
        self.rules = [self.rules[i] for i in idx]
        self.m = [m[idx] for m in self.m]
        self.v = [v[idx] for v in self.v]
        self._set_params(params)


def initial_state(config: RunConfig, input_dim: int, init: dict[str, torch.Tensor] | None = None) -> dict:
    """A run's starting state: its module initialised from its seed, then any entries of ``init``
    (a state dict, whole or in part: a pretrained encoder beside a fresh decoder) put in their
    place. A name the module does not have, or a shape that differs, is refused by name."""
    state = build_run_model(config, input_dim, config.seed).state_dict()
    for name, value in (init or {}).items():
        if name not in state:
            raise ValueError(
                f"init names {name!r}, which a {config.model!r} model does not have; "
                f"its state holds {', '.join(state)}"
            )
        if tuple(value.shape) != tuple(state[name].shape):
            raise ValueError(
                f"init[{name!r}] has shape {tuple(value.shape)}; the model's is {tuple(state[name].shape)}"
            )
        state[name] = value.detach().to(state[name].dtype).clone()
    return state


class RunStack:
    """The parameters of R runs of one group, stacked by name in their module's own layout (an
    encoder weight is (R, K, D)), the group's data orders, and its model kind's training part.
    The module's entries the kind names in ``buffers`` are stacked the same way but not trained
    (no gradient, no optimizer): per-run state the kind itself updates."""

    def __init__(
        self,
        configs: list[RunConfig],
        input_dim: int,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        init: list[dict[str, torch.Tensor] | None] | None = None,
    ) -> None:
        self.configs = list(configs)
        states = [initial_state(c, input_dim, i) for c, i in zip(configs, init or [None] * len(configs))]
        kind = KINDS[configs[0].model]

        def stacked(n: str) -> torch.Tensor:
            return torch.stack([s[n] for s in states]).to(device, dtype).contiguous()

        self.params = {n: stacked(n).requires_grad_(True) for n in states[0] if n not in kind.buffers}
        self.buffers = {n: stacked(n) for n in kind.buffers}
        self.layout = self._layout()
        self.kind: ModelKind = kind(configs, self.layout, device, dtype)

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers by name: what the kind computes with."""
        return {**self.params, **self.buffers} if self.buffers else self.params

    def __len__(self) -> int:
        return len(self.configs)

    def _layout(self) -> SeedLayout:
        device = next(iter(self.params.values())).device
        return SeedLayout(
            [c.seed for c in self.configs], torch.get_num_threads() if device.type == "cpu" else 1
        )

    def loss_and_grads(
        self, data: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-run loss terms stacked (1 + len(terms), R) as ("total", *terms), and the gradient of
        the runs' summed totals for each parameter (in ``params``' order), on the minibatches
        data[idx]: idx (S, B) holds each data order's sample indices."""
        out, grads = self.kind.loss_and_grads(self.tensors, gather(data, idx))
        terms = torch.stack([out["total"].detach()] + [out[t].detach() for t in self.kind.terms])
        return terms, [grads[n] for n in self.params]

    def step(self, data: torch.Tensor, idx: torch.Tensor, opt: StackedOptimizer) -> torch.Tensor:
        """One training step: the loss terms as ``loss_and_grads``; parameters and optimizer updated."""
        terms, grads = self.loss_and_grads(data, idx)
        self.kind.before_step(grads)
        opt.step(grads)
        self.kind.after_step(self.tensors)
        return terms

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Activations (R, N, K) for inputs (N, D) shared by every run."""
        return self.kind.encode(self.tensors, x)

    def keep(self, idx: list[int]) -> None:
        """Drop every run not in ``idx`` (a diverged run leaves the stack)."""
        t = torch.tensor(idx, device=next(iter(self.params.values())).device)
        self.configs = [self.configs[i] for i in idx]
        self.params = {n: p.detach()[t].requires_grad_(True) for n, p in self.params.items()}
        self.buffers = {n: b[t] for n, b in self.buffers.items()}
        self.layout = self._layout()
        self.kind.layout = self.layout
        self.kind.keep(t)

    def state_of(self, r: int) -> dict[str, torch.Tensor]:
        return {n: p[r].detach().cpu().clone() for n, p in self.tensors.items()}


def _epoch_orders(seeds: list[int], epoch: int, n: int, device: torch.device) -> torch.Tensor:
    """(S, n) sample orders, one per seed in ``seeds`` (a stack's ``data_seeds``)."""
    cache: dict[int, torch.Tensor] = {}
    rows = [cache.setdefault(s, epoch_permutation(s, epoch, n)) for s in seeds]
    return torch.stack(rows).to(device)


@torch.no_grad()
def _test_metrics(stack: RunStack, test_x: torch.Tensor, chunk: int = 4096) -> list[dict]:
    A = torch.cat([stack.encode(test_x[i : i + chunk]) for i in range(0, len(test_x), chunk)], dim=1).cpu()
    return [
        {"dead_units": dead_units(A[r]), "l0": l0(A[r]), "redundancy": redundancy_score(A[r])}
        for r in range(len(stack))
    ]


def _check_group_fits(
    configs: list[RunConfig], n: int, input_dim: int, dtype: torch.dtype, device: torch.device
) -> None:
    """Refuse, before any work, a group whose minibatches or memory cannot work out."""
    B, kind = configs[0].batch_size, KINDS[configs[0].model]
    if 0 < n % B < kind.min_batch:
        raise ValueError(
            f"{n} training samples with batch_size={B} leave a last minibatch of {n % B} sample(s); "
            f"model={kind.name!r} takes a variance over each minibatch, so it needs at least "
            f"{kind.min_batch}: change batch_size or the number of samples"
        )
    K = configs[0].hidden_dim
    need = group_memory_bytes(configs, input_dim, dtype)
    free = _available_memory(device)
    if free is not None and need > free:
        raise MemoryError(
            f"hidden_dim={K} with {input_dim} inputs and {len(configs)} run(s) needs about "
            f"{need / 2**30:.1f} GiB for weights, gradients and optimizer state; "
            f"{free / 2**30:.1f} GiB are available"
        )


def group_memory_bytes(configs: list[RunConfig], input_dim: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes a group's parameters take in training: weights, gradients and Adam's two moments per
    run (what the memory check holds a group to, before the data and a minibatch's activations)."""
    per_run = KINDS[configs[0].model].parameter_count(input_dim, configs[0])
    return len(configs) * per_run * 4 * torch.finfo(dtype).bits // 8


def _available_memory(device: torch.device) -> int | None:
    """Bytes available for new allocations on the device (None where it cannot be told)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def divergence_bound(config: RunConfig, train_x: torch.Tensor) -> float:
    """The largest |epoch loss| a run of this config can have and still count as training
    (its kind's rule)."""
    return KINDS[config.model].divergence_bound(config, train_x)


@dataclass
class _GroupState:
    """A group's progress through training: what a checkpoint holds besides the parameters."""

    alive: list[int]  # original index of each run still in the stack
    histories: list[list[dict]]
    finished: dict[int, RunResult] = field(default_factory=dict)
    epoch: int = 0
    elapsed: float = 0.0


def _resume(
    checkpoint: Path | None,
    configs: list[RunConfig],
    stack: RunStack,
    opt: StackedOptimizer,
    state: _GroupState,
) -> _GroupState:
    """The state saved in ``checkpoint`` (parameters and optimizer restored in place), if it is
    this group's; else ``state`` unchanged."""
    ck = load_or_discard(checkpoint, "checkpoint") if checkpoint is not None else None
    if not (
        isinstance(ck, dict)
        and ck.get("format") == CHECKPOINT_FORMAT
        and ck.get("configs") == [c.as_dict() for c in configs]
    ):
        return state
    try:
        finished = _checked_checkpoint(ck, len(configs), stack, opt)
    except (KeyError, TypeError, ValueError, IndexError) as e:  # parsed, but not a state of this group
        move_aside(checkpoint, "checkpoint", f"it does not fit this group: {e}")
        return state
    stack.keep(ck["alive"])
    opt.keep(ck["alive"], list(stack.params.values()))
    with torch.no_grad():
        for name, p in stack.tensors.items():
            p.copy_(ck["params"][name])
    opt.load(ck["opt"])
    stack.kind.load_state(ck["kind"])
    return _GroupState(ck["alive"], ck["histories"], finished, ck["epoch"], ck["elapsed"])


def _checked_checkpoint(
    ck: dict, n_runs: int, stack: RunStack, opt: StackedOptimizer
) -> dict[int, RunResult]:
    """The finished runs of a checkpoint whose every part fits this group (the runs still alive,
    each parameter's and optimizer moment's shape, the kind's state, the histories), else an error
    before anything is restored."""
    alive = ck["alive"]
    if not (isinstance(alive, list) and alive == sorted(set(alive)) and set(alive) <= set(range(n_runs))):
        raise ValueError(f"alive={alive!r} are not runs of this group")
    shapes = {n: (len(alive), *p.shape[1:]) for n, p in stack.tensors.items()}
    if {n: tuple(t.shape) for n, t in ck["params"].items()} != shapes:
        raise ValueError("its parameters are not this group's")
    moments = ck["opt"]["m"] + ck["opt"]["v"]
    wanted = [(len(alive), *p.shape[1:]) for p in opt.m + opt.v]
    if [tuple(t.shape) for t in moments] != wanted or not isinstance(ck["opt"]["step"], torch.Tensor):
        raise ValueError("its optimizer state is not this group's")
    if not all(isinstance(ck["kind"][name], torch.Tensor) for name in stack.kind.checkpointed):
        raise ValueError("its model kind's state is incomplete")
    if len(ck["histories"]) != n_runs or not isinstance(ck["epoch"], int):
        raise ValueError("its histories are not this group's")
    finished = {int(i): from_record(record) for i, record in ck["finished"]}
    if not set(finished) <= set(range(n_runs)) - set(alive):
        raise ValueError("its finished runs are not this group's")
    return finished


def _save_checkpoint(
    path: Path, configs: list[RunConfig], stack: RunStack, opt: StackedOptimizer, state: _GroupState
) -> None:
    """A checkpoint, atomically; one that cannot be written (a full disk) costs only the resume."""
    ck = {
        "format": CHECKPOINT_FORMAT,
        "configs": [c.as_dict() for c in configs],
        "alive": state.alive,
        "epoch": state.epoch,
        "params": {n: p.detach() for n, p in stack.tensors.items()},
        "opt": opt.state(),
        "kind": stack.kind.state(),
        "histories": state.histories,
        "finished": [[i, to_record(r)] for i, r in state.finished.items()],
        "elapsed": state.elapsed,
    }
    try:
        save_tree(ck, path)
    except (OSError, RuntimeError) as e:
        warn(f"could not write checkpoint {path} ({str(e)[:120]}); training goes on without it")


def _train_epoch(
    stack: RunStack, opt: StackedOptimizer, X: torch.Tensor, epoch: int, batch_size: int
) -> torch.Tensor:
    """One pass over X; the mean of each loss term per run, (1 + len(terms), R), on the host. On
    a CUDA device the full-size minibatches replay one captured step (``cuda_graphs``: the same
    kernels in the same order); the short last minibatch, and every step elsewhere, runs eagerly."""
    n = len(X)
    orders = _epoch_orders(stack.layout.data_seeds, epoch, n, X.device)
    graph = cuda_graphs.epoch_steps(stack, opt, X, batch_size)  # None on the CPU
    if graph is None:
        sums = torch.zeros(len(stack.kind.terms) + 1, len(stack), device=X.device, dtype=X.dtype)
    else:
        sums = graph.begin_epoch()  # the graph's static sums, zeroed
    steps = 0
    with flush_denormals():
        for s in range(0, n, batch_size):
            idx = orders[:, s : s + batch_size]
            if graph is not None and idx.shape[1] == batch_size:
                graph.step(stack, opt, X, idx)  # adds the step's loss terms into sums
            else:
                sums += stack.step(X, idx, opt)
            steps += 1
    return (sums / steps).cpu()  # the one host sync of the epoch


DIVERGENCE_FACTOR = 1e3  # a run diverged once |epoch loss| exceeds this many times its starting loss


def _starting_loss(stack: RunStack, X: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Each run's |total loss| on its first minibatch of epoch 0, before any step (float64 on the
    host), the scale its divergence bound is measured in. The kind's training state (counters such
    as TopK's steps since a latent fired) is put back as it was, so training is unchanged."""
    idx = _epoch_orders(stack.layout.data_seeds, 0, len(X), X.device)[:, :batch_size]
    kept = {}  # the kind's tensors, and dicts of them, as they are before the extra evaluation
    for n, v in vars(stack.kind).items():
        if isinstance(v, torch.Tensor):
            kept[n] = v.clone()
        elif isinstance(v, dict) and v and all(isinstance(t, torch.Tensor) for t in v.values()):
            kept[n] = {k: t.clone() for k, t in v.items()}
    with flush_denormals():
        terms, _ = stack.loss_and_grads(X, idx)
    vars(stack.kind).update(kept)
    return terms[0].abs().double().cpu()


def divergence_bounds(stack: RunStack, X: torch.Tensor, config: RunConfig) -> torch.Tensor:
    """Each run's divergence bound (R,): a thousand times its own starting loss, and never below
    its kind's bound (``ModelKind.divergence_bound``). Relative to the run's own scale, so data of
    any scale (1e-5 or 1e10 in mean square) and a phase that starts from a stale decoder both
    train, while a run whose loss grows a thousandfold is stopped."""
    floor = torch.full((len(stack),), divergence_bound(config, X), dtype=torch.float64)
    return torch.maximum(floor, DIVERGENCE_FACTOR * _starting_loss(stack, X, config.batch_size))


def _divergence(means: torch.Tensor, stack: RunStack, bound: torch.Tensor) -> list[str | None]:
    """Per run: None while it trains, else why it counts as diverged (which check failed, with the
    loss and the bound)."""
    params_finite = torch.stack([torch.isfinite(p.detach()).flatten(1).all(1) for p in stack.params.values()])
    params_finite = params_finite.all(0).cpu()
    reasons: list[str | None] = []
    for r in range(means.shape[1]):
        loss = float(means[0, r])
        if not bool(torch.isfinite(means[:, r]).all()):
            reasons.append(f"the epoch's loss is not finite ({loss})")
        elif not bool(params_finite[r]):
            reasons.append("the parameters are not finite")
        elif abs(loss) > float(bound[r]):
            reasons.append(
                f"|loss| {abs(loss):.4g} crossed the bound {float(bound[r]):.4g} "
                f"({DIVERGENCE_FACTOR:.0f} x the run's starting loss, or its kind's floor)"
            )
        else:
            reasons.append(None)
    return reasons


def train_group(
    configs: list[RunConfig],
    train_x: torch.Tensor,
    test_x: torch.Tensor | None = None,
    checkpoint: Path | None = None,
    checkpoint_every: int = 5,
    progress: bool = True,
    desc: str = "",
    init: list[dict[str, torch.Tensor] | None] | None = None,
) -> list[RunResult]:
    """Train runs that share a ``group_key`` as one stacked program; results in input order.
    ``init``: per config, a (partial) state to start from instead of its seed's initialisation
    (``initial_state``), for training in phases; None for none."""
    keys = {group_key(c) for c in configs}
    if len(keys) != 1:
        raise ValueError(f"configs of one group must share model, shapes and epochs; got {keys}")
    # Runs of one seed side by side (they share minibatches and a GEMM), then by learning rate; the
    # order is canonical, so the same set of runs always forms the same stack and the same numbers.
    if init is not None and len(init) != len(configs):
        raise ValueError(
            f"init has {len(init)} entries for {len(configs)} configs; give one (or None) per config"
        )
    order = sorted(
        range(len(configs)),
        key=lambda i: (
            (configs[i].seed, configs[i].lr, json.dumps(configs[i].as_dict(), sort_keys=True))
            + ((init_fingerprint(init[i]),) if init is not None else ())
        ),
    )
    device = resolve_device(configs[0].device)
    dtype = train_x.dtype if train_x.dtype == torch.float64 else torch.float32  # float64 for exactness checks
    X = train_x.to(device=device, dtype=dtype).contiguous()
    Xt = None if test_x is None else test_x.to(device=device, dtype=dtype)
    ordered = [configs[i] for i in order]
    _check_group_fits(ordered, len(X), X.shape[1], dtype, device)
    bar = Progress(
        total=configs[0].epochs,
        desc=desc or f"{configs[0].model} x{len(configs)}",
        unit="epochs",
        disable=not progress,
    )
    ordered_init = None if init is None else [init[i] for i in order]
    results = _train_stack(ordered, X, Xt, checkpoint, checkpoint_every, bar, ordered_init)
    out: list[RunResult | None] = [None] * len(configs)
    for pos, i in enumerate(order):
        out[i] = results[pos]
    return out  # type: ignore[return-value]


def _train_stack(
    configs: list[RunConfig],
    X: torch.Tensor,
    Xt: torch.Tensor | None,
    checkpoint: Path | None,
    checkpoint_every: int,
    bar: Progress,
    init: list[dict[str, torch.Tensor] | None] | None = None,
) -> list[RunResult]:
    """The epoch loop of ``train_group`` for configs in stack order, data on the device."""
    first = configs[0]
    stack = RunStack(configs, X.shape[1], X.device, X.dtype, init)
    stack.kind.prepare(stack.tensors, X)
    bound = divergence_bounds(stack, X, first)
    opt = StackedOptimizer(list(stack.params.values()), [(c.optimizer, c.lr) for c in configs])
    fresh = _GroupState(list(range(len(configs))), [[] for _ in configs])
    state = _resume(checkpoint, configs, stack, opt, fresh)
    bound = bound[state.alive]  # a resumed group may have lost runs
    if state.epoch:
        bar.update(state.epoch)  # resumed: the epochs the checkpoint had done
    last_good = [stack.state_of(r) for r in range(len(stack))]
    last_loss = float("nan")
    for epoch in range(state.epoch, first.epochs):
        t0 = time.perf_counter()
        means = _train_epoch(stack, opt, X, epoch, first.batch_size)
        reasons = _divergence(means, stack, bound)
        finite = torch.tensor([why is None for why in reasons])
        if X.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        state.elapsed += seconds
        evaluate = Xt is not None and ((epoch + 1) % first.eval_every == 0 or epoch + 1 == first.epochs)
        test = _test_metrics(stack, Xt) if evaluate else None
        current = [stack.state_of(r) for r in range(len(stack))]
        motion = parameter_motion(last_good, current, list(stack.params))
        _record_epoch(state, configs, stack.kind.terms, means, reasons, test, seconds, last_good, motion)
        if not finite.all():
            keep = [r for r in range(len(stack)) if finite[r]]
            state.alive = [state.alive[r] for r in keep]
            if not state.alive:  # every run diverged: each result says so (diverged_epoch)
                break
            stack.keep(keep)
            opt.keep(keep, list(stack.params.values()))
            bound = bound[keep]
        last_good = [current[r] for r in range(len(current)) if finite[r]]
        last_loss = float(means[0][finite].mean())
        bar.status(f"loss {last_loss:.4g}")
        bar.update()
        if checkpoint is not None and state.epoch % checkpoint_every == 0 and state.epoch < first.epochs:
            _save_checkpoint(checkpoint, configs, stack, opt, state)
    diverged = len(configs) - len(state.alive)
    bar.close(
        f"{len(configs)} run{'s' if len(configs) > 1 else ''} x {first.epochs} epochs trained in "
        f"{state.elapsed:.1f} s; final loss {last_loss:.4g} (mean over runs)"
        + (f"; {diverged} diverged" if diverged else "")
    )
    for r, orig in enumerate(state.alive):
        state.finished[orig] = RunResult(configs[orig], stack.state_of(r), state.histories[orig], None)
    results = [state.finished[i] for i in range(len(configs))]
    for res in results:
        res.seconds, res.group_size = state.elapsed / len(configs), len(configs)
    if checkpoint is not None and checkpoint.exists():
        checkpoint.unlink()
    return results


def _record_epoch(
    state: _GroupState,
    configs: list[RunConfig],
    terms: tuple[str, ...],
    means: torch.Tensor,
    reasons: list[str | None],
    test: list[dict] | None,
    seconds: float,
    last_good: list[dict[str, torch.Tensor]],
    motion: list[tuple[float, float]],
) -> None:
    """Each live run's history row of the epoch just trained; a run that diverged in it is
    finished with its last finite state, its row saying why (``diverged_because``)."""
    epoch = state.epoch + 1
    for r, orig in enumerate(state.alive):
        row = {"epoch": epoch, "total": float(means[0, r]), "seconds": seconds}
        row["param_norm"], row["param_change"] = motion[r]
        row.update({t: float(means[i + 1, r]) for i, t in enumerate(terms)})
        if test is not None and reasons[r] is None:
            row.update(test[r])
        if reasons[r] is not None:
            row["diverged"], row["diverged_because"] = True, reasons[r]
            state.finished[orig] = RunResult(configs[orig], last_good[r], state.histories[orig], epoch)
        state.histories[orig].append(row)
    state.epoch = epoch


def parameter_motion(
    before: list[dict[str, torch.Tensor]], after: list[dict[str, torch.Tensor]], names: list[str]
) -> list[tuple[float, float]]:
    """Per run: the norm of its trained parameters ``names`` taken together after an epoch, and
    how far the epoch moved them relative to where they started it, ||after - before|| / ||before||
    (float64). Training at a fixed point leaves the second near zero; growing in scale keeps it up."""
    rows = []
    for b, a in zip(before, after):
        old = torch.cat([b[n].double().flatten() for n in names])
        new = torch.cat([a[n].double().flatten() for n in names])
        rows.append((float(new.norm()), float((new - old).norm() / old.norm())))
    return rows


def init_fingerprint(init: dict[str, torch.Tensor] | None) -> str:
    """sha256 of an initial state (names, shapes, dtypes, bytes); "" for none."""
    if not init:
        return ""
    h = hashlib.sha256()
    for name in sorted(init):
        t = init[name].detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def group_runs(configs: list[RunConfig]) -> dict[tuple, list[int]]:
    """Indices of the configs, grouped by what lets them share a stack."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, c in enumerate(configs):
        groups[group_key(c)].append(i)
    return dict(groups)


def train_many(
    configs: list[RunConfig], train_x: torch.Tensor, test_x: torch.Tensor | None = None, progress: bool = True
) -> list[RunResult]:
    """Train every run, each group as one stacked program; results in input order."""
    results: list[RunResult | None] = [None] * len(configs)
    for idx in group_runs(configs).values():
        for i, res in zip(idx, train_group([configs[i] for i in idx], train_x, test_x, progress=progress)):
            results[i] = res
    return results  # type: ignore[return-value]


__all__ = [
    "RunResult",
    "RunStack",
    "StackedOptimizer",
    "divergence_bound",
    "group_key",
    "group_runs",
    "train_group",
    "train_many",
]
