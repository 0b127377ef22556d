"""Many runs trained as one batched program.

The paper's experiments are dozens of small runs (784 -> 64, batch 128). Trained one by one, each
step is a handful of tiny GEMMs drowned in Python and framework overhead. Here the runs of a group
(same model kind, optimizer and shapes) are stacked: weights (R, K, D), one batched GEMM per layer
per step for all R runs, one optimizer update over the stack, per-run learning rates and lambdas
as tensors. Each run still sees exactly what it would alone: its own initialisation (its seed),
its own minibatch order (``epoch_permutation(seed, epoch)``), its own loss; the losses are summed
only to call backward once, and the sum's gradient with respect to run r's weights is run r's own.

No host synchronisation inside an epoch; one per epoch to read the losses and catch a run that
diverged, which is then dropped from the stack (its last finite state kept) while the others go on.
A group can checkpoint itself and resume.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .data import epoch_permutation
from .losses import TERMS, LossConfig, combined_loss, combined_loss_and_grad, sae_loss
from .metrics import dead_units, l0, redundancy_score
from .model import ACTIVATIONS, build_model, topk_relu
from .training import ADAM_BETAS, ADAM_EPS, RunConfig, flush_denormals, resolve_device

SAE_TERMS = ("mse", "l1")
TOPK_TERMS = ("mse", "auxk")
AUXK_COEF = 1 / 32  # Gao et al.'s weight of the AuxK loss
AUXK_MAX = 256  # AuxK reconstructs the residual with the top min(256, hidden/2) dead latents
# dL/dz from dL/da for each activation a = f(z), for the engine's hand-derived backward pass
ACTIVATION_GRADS = {
    "relu": lambda z, g: torch.where(z > 0, g, 0.0),
    "identity": lambda z, g: g,
    "softplus": lambda z, g: g * torch.sigmoid(z),
}


@dataclass
class RunResult:
    """A finished run: its config, final weights (a state_dict on CPU), per-epoch history."""

    config: RunConfig
    state: dict[str, torch.Tensor]
    history: list[dict]
    diverged_epoch: int | None
    seconds: float  # this run's share of its group's wall time (group time / runs in the group)
    group_size: int = 1

    def model(self) -> torch.nn.Module:
        """The trained model, rebuilt from the state."""
        input_dim = self.state["linear.weight" if self.config.model == "encoder" else "encoder.weight"].shape[1]
        m = build_model(self.config.model, input_dim, self.config.hidden_dim, self.config.activation, k=self.config.k)
        m.load_state_dict(self.state)
        return m.eval()

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


def group_key(config: RunConfig) -> tuple:
    """Runs that can share one stacked program: everything but seed, lr and the loss weights."""
    return (config.model, config.hidden_dim, config.activation, config.optimizer, config.epochs,
            config.batch_size, config.device, config.loss.reduction, config.eval_every)


class StackedOptimizer:
    """Adam or SGD over stacked parameters (leading dim = run) with a learning rate per run.

    Runs with equal learning rates sit next to each other (``train_group`` orders them so), and
    each such slice gets one call of torch's fused Adam kernel: the same arithmetic as
    ``torch.optim.Adam(fused=True)`` in the plain loop, one memory pass per tensor.
    """

    def __init__(self, kind: str, params: list[torch.Tensor], lrs: list[float]) -> None:
        self.kind, self.params, self.lrs = kind, params, list(lrs)
        self.m = [torch.zeros_like(p) for p in params] if kind == "adam" else []
        self.v = [torch.zeros_like(p) for p in params] if kind == "adam" else []
        self.step_count = torch.zeros((), dtype=torch.float32, device=params[0].device)

    def _buckets(self) -> list[tuple[int, int, float]]:
        out, start = [], 0
        for i in range(1, len(self.lrs) + 1):
            if i == len(self.lrs) or self.lrs[i] != self.lrs[start]:
                out.append((start, i, self.lrs[start]))
                start = i
        return out

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        params = [p.detach() for p in self.params]
        grads = [g.contiguous() for g in grads]  # the fused kernel needs dense grads (a no-op here)
        if self.kind == "sgd":
            for s, e, lr in self._buckets():
                for p, g in zip(params, grads):
                    p[s:e].add_(g[s:e], alpha=-lr)
            return
        self.step_count += 1  # fused Adam reads the step from a tensor; no host sync
        b1, b2 = ADAM_BETAS
        for s, e, lr in self._buckets():
            sl = lambda ts: [t[s:e] for t in ts]  # noqa: E731
            torch._fused_adam_(sl(params), sl(grads), sl(self.m), sl(self.v), [],
                               [self.step_count] * len(params), lr=lr, beta1=b1, beta2=b2,
                               weight_decay=0.0, eps=ADAM_EPS, amsgrad=False, maximize=False)

    def state(self) -> dict:
        return {"step": self.step_count.clone(), "m": self.m, "v": self.v}

    def load(self, state: dict) -> None:
        self.step_count.copy_(state["step"])
        for dst, src in zip(self.m + self.v, state["m"] + state["v"]):
            dst.copy_(src)

    def keep(self, idx: list[int], params: list[torch.Tensor]) -> None:
        """Follow the stack after runs left it: new parameter tensors, their rows of the state."""
        self.params = params
        self.lrs = [self.lrs[i] for i in idx]
        self.m = [m[idx] for m in self.m]
        self.v = [v[idx] for v in self.v]


class RunStack:
    """The parameters of R runs of one group, stacked, and their batched forward pass.

    Weight matrices are held transposed, (R, in, out), so that x @ W^T is a plain batched GEMM
    and its weight gradient x^T @ dz comes out dense (the fused optimizer needs that, and a
    transposed gradient would cost a copy of every weight each step).
    """

    def __init__(self, configs: list[RunConfig], input_dim: int, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> None:
        self.configs = list(configs)
        first = configs[0]
        self.kind, self.activation, self.act = first.model, first.activation, ACTIVATIONS[first.activation]
        states = [build_model(c.model, input_dim, c.hidden_dim, c.activation, c.seed, k=c.k).state_dict()
                  for c in configs]
        self.names = list(states[0])
        self.params = [torch.stack([s[n].T if s[n].dim() == 2 else s[n] for s in states]).to(device, dtype)
                       .contiguous().requires_grad_(True) for n in self.names]
        as_tensor = lambda vals: torch.tensor(vals, dtype=dtype, device=device)  # noqa: E731
        self.seeds = [c.seed for c in configs]
        self.lambdas = {t: as_tensor([getattr(c.loss, t) for c in configs]) for t in TERMS}
        self.l1 = as_tensor([c.l1 for c in configs])
        self._set_terms_in_use()
        self.reduction = first.loss.reduction
        self.terms = {"encoder": TERMS, "sae": SAE_TERMS, "topk": TOPK_TERMS}[self.kind]
        # TopK: k, AuxK's k, and per latent the training samples seen since it last fired
        self.k = torch.tensor([c.k for c in configs], device=device)
        self.k_aux = max(1, min(AUXK_MAX, first.hidden_dim // 2))
        self.idle = torch.zeros(len(configs), first.hidden_dim, dtype=torch.long, device=device)
        self.dead_after = 0  # samples without firing after which a latent counts as dead (train_group sets it)

    def __len__(self) -> int:
        return len(self.configs)

    @property
    def named(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.params))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Activations (R, B, K) for inputs (R, B, D), or for shared inputs (B, D)."""
        if self.kind == "topk":
            return self._topk_per_run(self._topk_pre_activations(x))
        Wt, b = self.params[0], self.params[1]
        if x.dim() == 2:
            return self.act(torch.matmul(x, Wt) + b.unsqueeze(1))
        return self.act(torch.baddbmm(b.unsqueeze(1), x, Wt))

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-run loss terms, each (R,), for per-run minibatches x (R, B, D)."""
        if self.kind == "topk":
            return self._topk_losses(x)[0]
        a = self.encode(x)
        if self.kind == "encoder":
            return combined_loss(a, self.params[0].transpose(1, 2), self.loss_config, weights=self.lambdas)
        Wd_t, bd = self.params[2], self.params[3]
        x_hat = torch.baddbmm(bd.unsqueeze(1), a, Wd_t)
        return sae_loss(x, x_hat, a, self.l1)

    def _topk_pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        P = self.named
        return torch.baddbmm(P["encoder.bias"].unsqueeze(1), x - P["pre_bias"].unsqueeze(1), P["encoder.weight"])

    def _topk_per_run(self, z: torch.Tensor) -> torch.Tensor:
        """topk_relu with each run's own k: the top max(k) per row, the ranks past run r's k zeroed."""
        values, idx = z.topk(int(self.k.max()), dim=-1)
        keep = torch.arange(values.shape[-1], device=z.device) < self.k.view(-1, 1, 1)
        return torch.zeros_like(z).scatter(-1, idx, torch.where(keep, values.relu(), 0.0))

    def _topk_losses(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """MSE (mean over all elements) + AUXK_COEF x AuxK, and the activations.

        AuxK (Gao et al.): the dead latents' top-k_aux pre-activations reconstruct the main
        reconstruction's residual (held fixed), so latents that stopped firing get a gradient.
        With no dead latent it is a constant with no gradient.
        """
        P = self.named
        z = self._topk_pre_activations(x)
        a = self._topk_per_run(z)
        x_hat = torch.baddbmm(P["pre_bias"].unsqueeze(1), a, P["decoder.weight"])
        mse = (x_hat - x).square().mean((1, 2))
        dead = self.idle >= self.dead_after if self.dead_after > 0 else torch.zeros_like(self.idle, dtype=torch.bool)
        a_aux = topk_relu(z.masked_fill(~dead.unsqueeze(1), float("-inf")), self.k_aux)
        auxk = (torch.bmm(a_aux, P["decoder.weight"]) - (x - x_hat).detach()).square().mean((1, 2))
        return {"total": mse + AUXK_COEF * auxk, "mse": mse, "auxk": auxk}, a

    @property
    def analytic(self) -> bool:
        """Whether a hand-derived gradient applies: the SAE, or the encoder without weight
        redundancy. Both equal autograd's (tested); they skip its graph and many small ops."""
        return self.kind == "sae" or self.loss_config.wr == 0

    def loss_and_grads(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """Per-run loss terms and the gradient of their sum with respect to each parameter."""
        if self.kind == "topk":
            return self._topk_loss_and_grads(x)
        if not self.analytic:
            out = self.losses(x)
            return out, list(torch.autograd.grad(out["total"].sum(), self.params))
        with torch.no_grad():
            if self.kind == "sae":
                return self._sae_loss_and_grads(x)
            Wt, b = self.params
            z = torch.baddbmm(b.unsqueeze(1), x, Wt)
            out, grad_a = combined_loss_and_grad(self.act(z), self.lambdas, self.reduction)
            grad_z = ACTIVATION_GRADS[self.activation](z, grad_a)
            return out, [torch.bmm(x.transpose(1, 2), grad_z), grad_z.sum(1)]

    def _sae_loss_and_grads(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """MSE (mean over all elements) + l1 * mean|a|, and its gradients, by hand."""
        We_t, be, Wd_t, bd = self.params
        R, B, D = x.shape
        z = torch.baddbmm(be.unsqueeze(1), x, We_t)
        a = torch.relu(z)
        diff = torch.baddbmm(bd.unsqueeze(1), a, Wd_t).sub_(x)
        mse = diff.square().sum((1, 2)) / (B * D)
        sparsity = a.sum((1, 2)) / a[0].numel()  # a >= 0, so mean |a| = mean a
        out = {"total": mse + self.l1 * sparsity, "mse": mse, "l1": sparsity}
        g_xhat = diff.mul_(2.0 / (B * D))
        g_a = torch.bmm(g_xhat, Wd_t.transpose(1, 2)).add_(torch.sign(a) * (self.l1 / a[0].numel()).view(R, 1, 1))
        g_z = torch.where(z > 0, g_a, 0.0)
        return out, [torch.bmm(x.transpose(1, 2), g_z), g_z.sum(1), torch.bmm(a.transpose(1, 2), g_xhat), g_xhat.sum(1)]

    def _topk_loss_and_grads(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """Autograd gradients, with each decoder column's component along itself removed (the
        step then moves along the unit sphere, to first order); updates the idle counts."""
        out, a = self._topk_losses(x)
        grads = list(torch.autograd.grad(out["total"].sum(), self.params))
        with torch.no_grad():
            i = self.names.index("decoder.weight")
            w = self.params[i]
            grads[i] = grads[i] - (grads[i] * w).sum(-1, keepdim=True) * w
            fired = (a > 0).any(1)
            self.idle = torch.where(fired, 0, self.idle + x.shape[1])
        return out, grads

    @torch.no_grad()
    def prepare(self, train_x: torch.Tensor) -> None:
        """Data-dependent initialisation before the first step: the TopK SAE's b_pre = the mean
        of the training data, and its dead-latent horizon = one epoch of samples."""
        if self.kind == "topk":
            self.named["pre_bias"].copy_(train_x.mean(0).expand(len(self), -1))
            self.dead_after = len(train_x)

    @torch.no_grad()
    def after_step(self) -> None:
        """Project back onto the constraint set: the TopK SAE's decoder columns to unit norm."""
        if self.kind == "topk":
            w = self.named["decoder.weight"]
            w.div_(w.norm(dim=-1, keepdim=True))

    def keep(self, idx: list[int]) -> None:
        """Drop every run not in ``idx`` (a diverged run leaves the stack)."""
        t = torch.tensor(idx, device=self.l1.device)
        self.idle, self.k = self.idle[t], self.k[t]
        self.configs = [self.configs[i] for i in idx]
        self.seeds = [self.seeds[i] for i in idx]
        self.params = [p.detach()[t].requires_grad_(True) for p in self.params]
        self.l1 = self.l1[t]
        self.lambdas = {k: v[t] for k, v in self.lambdas.items()}
        self._set_terms_in_use()

    def _set_terms_in_use(self) -> None:
        """A LossConfig whose lambda is 1 for each term some run uses, 0 otherwise (host-side)."""
        used = {t: float(any(getattr(c.loss, t) != 0 for c in self.configs)) for t in TERMS}
        self.loss_config = LossConfig(**used, reduction=self.configs[0].loss.reduction)

    def state_of(self, r: int) -> dict[str, torch.Tensor]:
        return {n: (p[r].T if p.dim() == 3 else p[r]).detach().cpu().contiguous().clone()
                for n, p in zip(self.names, self.params)}


def _epoch_orders(seeds: list[int], epoch: int, n: int, device: torch.device) -> torch.Tensor:
    """(R, n) sample orders; runs with the same seed share one permutation."""
    cache: dict[int, torch.Tensor] = {}
    rows = [cache.setdefault(s, epoch_permutation(s, epoch, n)) for s in seeds]
    return torch.stack(rows).to(device)


@torch.no_grad()
def _test_metrics(stack: RunStack, test_x: torch.Tensor, chunk: int = 4096) -> list[dict]:
    A = torch.cat([stack.encode(test_x[i:i + chunk]) for i in range(0, len(test_x), chunk)], dim=1).cpu()
    return [{"dead_units": dead_units(A[r]), "l0": l0(A[r]), "redundancy": redundancy_score(A[r])}
            for r in range(len(stack))]


def _save_atomic(obj: object, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_group(configs: list[RunConfig], train_x: torch.Tensor, test_x: torch.Tensor | None = None,
                checkpoint: Path | None = None, checkpoint_every: int = 5, progress: bool = True,
                desc: str = "") -> list[RunResult]:
    """Train runs that share a ``group_key`` as one stacked program; results in input order."""
    keys = {group_key(c) for c in configs}
    if len(keys) != 1:
        raise ValueError(f"configs of one group must share model, shapes, optimizer and epochs; got {keys}")
    # Runs with equal learning rates side by side (one fused optimizer call each); the order is
    # canonical, so the same set of runs always forms the same stack and gives the same numbers.
    order = sorted(range(len(configs)), key=lambda i: (configs[i].lr, configs[i].seed))
    if order != list(range(len(configs))):
        results = train_group([configs[i] for i in order], train_x, test_x, checkpoint, checkpoint_every,
                              progress, desc)
        out: list[RunResult | None] = [None] * len(configs)
        for pos, i in enumerate(order):
            out[i] = results[pos]
        return out  # type: ignore[return-value]
    first = configs[0]
    device = resolve_device(first.device)
    dtype = train_x.dtype if train_x.dtype == torch.float64 else torch.float32  # float64 for exactness checks
    X = train_x.to(device=device, dtype=dtype)
    Xt = None if test_x is None else test_x.to(device=device, dtype=dtype)
    n, B = len(X), first.batch_size
    stack = RunStack(configs, X.shape[1], device, dtype)
    stack.prepare(X)
    opt = StackedOptimizer(first.optimizer, stack.params, [c.lr for c in configs])
    alive = list(range(len(configs)))  # original index of each run still in the stack
    histories: list[list[dict]] = [[] for _ in configs]
    finished: dict[int, RunResult] = {}
    start_epoch, elapsed = 0, 0.0
    last_good = [stack.state_of(r) for r in range(len(stack))]

    if checkpoint is not None and checkpoint.exists():
        ck = torch.load(checkpoint, weights_only=False)
        if ck["configs"] == [c.as_dict() for c in configs]:
            stack.keep(ck["alive"])
            opt.keep(ck["alive"], stack.params)
            with torch.no_grad():
                for p, src in zip(stack.params, ck["params"]):
                    p.copy_(src)
            opt.load(ck["opt"])
            stack.idle = ck["idle"].to(device)
            alive, histories, finished = ck["alive"], ck["histories"], ck["finished"]
            start_epoch, elapsed = ck["epoch"], ck["elapsed"]
            last_good = [stack.state_of(r) for r in range(len(stack))]

    bar = tqdm(range(start_epoch, first.epochs), desc=desc or f"{first.model} x{len(configs)}",
               disable=not progress, initial=start_epoch, total=first.epochs, leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        orders = _epoch_orders(stack.seeds, epoch, n, device)
        sums = torch.zeros(len(stack.terms) + 1, len(stack), device=device, dtype=dtype)
        steps = 0
        with flush_denormals():
            for s in range(0, n, B):
                idx = orders[:, s:s + B]
                xb = X.index_select(0, idx.reshape(-1)).view(idx.shape[0], idx.shape[1], -1)
                out, grads = stack.loss_and_grads(xb)
                opt.step(grads)
                stack.after_step()
                sums += torch.stack([out["total"].detach()] + [out[t].detach() for t in stack.terms])
                steps += 1
        means = (sums / steps).cpu()  # the one host sync of the epoch
        finite = torch.isfinite(means).all(0) & torch.stack(
            [torch.isfinite(p.detach()).flatten(1).all(1) for p in stack.params]).all(0).cpu()
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_seconds = time.perf_counter() - t0
        elapsed += epoch_seconds
        evaluate = Xt is not None and ((epoch + 1) % first.eval_every == 0 or epoch + 1 == first.epochs)
        test = _test_metrics(stack, Xt) if evaluate else None
        for r, orig in enumerate(alive):
            row = {"epoch": epoch + 1, "total": float(means[0, r]), "seconds": epoch_seconds}
            row.update({t: float(means[i + 1, r]) for i, t in enumerate(stack.terms)})
            if test is not None and finite[r]:
                row.update(test[r])
            if not finite[r]:
                row["diverged"] = True
            histories[orig].append(row)
        bad = [r for r in range(len(stack)) if not finite[r]]
        for r in bad:
            orig = alive[r]
            finished[orig] = RunResult(configs[orig], last_good[r], histories[orig], epoch + 1, 0.0)
        if bad:
            keep = [r for r in range(len(stack)) if finite[r]]
            stack.keep(keep)
            opt.keep(keep, stack.params)
            alive = [alive[r] for r in keep]
            if not alive:
                break
        last_good = [stack.state_of(r) for r in range(len(stack))]
        bar.set_postfix(loss=f"{float(means[0].mean()):.4g}")
        if checkpoint is not None and ((epoch + 1) % checkpoint_every == 0) and epoch + 1 < first.epochs:
            _save_atomic({"configs": [c.as_dict() for c in configs], "alive": alive, "epoch": epoch + 1,
                          "params": [p.detach() for p in stack.params], "opt": opt.state(), "idle": stack.idle,
                          "histories": histories, "finished": finished, "elapsed": elapsed}, checkpoint)
    bar.close()
    for r, orig in enumerate(alive):
        finished[orig] = RunResult(configs[orig], stack.state_of(r), histories[orig], None, 0.0)
    share = elapsed / len(configs)
    results = [finished[i] for i in range(len(configs))]
    for res in results:
        res.seconds, res.group_size = share, len(configs)
    if checkpoint is not None and checkpoint.exists():
        checkpoint.unlink()
    return results


def group_runs(configs: list[RunConfig]) -> dict[tuple, list[int]]:
    """Indices of the configs, grouped by what lets them share a stack."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, c in enumerate(configs):
        groups[group_key(c)].append(i)
    return dict(groups)


def train_many(configs: list[RunConfig], train_x: torch.Tensor, test_x: torch.Tensor | None = None,
               progress: bool = True) -> list[RunResult]:
    """Train every run, each group as one stacked program; results in input order."""
    results: list[RunResult | None] = [None] * len(configs)
    for idx in group_runs(configs).values():
        for i, res in zip(idx, train_group([configs[i] for i in idx], train_x, test_x, progress=progress)):
            results[i] = res
    return results  # type: ignore[return-value]


__all__ = ["RunResult", "RunStack", "StackedOptimizer", "group_key", "group_runs", "train_group", "train_many"]
