"""Many runs trained as one batched program.

The paper's experiments are dozens of small runs (784 -> 64, batch 128). Trained one by one, each
step is a handful of tiny GEMMs drowned in Python and framework overhead. Here the runs of a group
(same model kind and shapes) are stacked: weights (R, K, D), one batched GEMM per layer per step
for all R runs, one optimizer update over the stack, per-run optimizers, learning rates and
lambdas. Runs on one seed share each minibatch: it is gathered once and their first layers are
one GEMM. Each run still sees exactly what it would alone: its own initialisation (its seed), its
own minibatch order (``epoch_permutation(seed, epoch)``), its own loss, and the gradient of its own
loss (by hand where derived and tested, else autograd of the per-run losses' sum). Where the
engine uses the C kernels (``fused.engine_uses_c``: by default on processors with AVX-512) the
by-hand gradients' elementwise work runs as C passes (``fused.py``) between torch's GEMMs, and so
does the first layer of runs that each have a data order of their own (the gather folded into it);
an encoder stack with as many runs on each thread takes its whole step in one C call, run by run.
Elsewhere every step is torch's.

No host synchronisation inside an epoch; one per epoch to read the losses and catch a run that
diverged, which is then dropped from the stack (its last finite state kept) while the others go on.
A group can checkpoint itself and resume.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import fused
from .data import epoch_permutation
from .losses import TERMS, LossConfig, combined_loss, combined_loss_and_grad, sae_loss
from .metrics import dead_units, l0, redundancy_score
from .model import ACTIVATIONS, build_model, topk_relu
from .progress import Progress
from .storage import load_or_discard, save_torch, warn
from .training import ADAM_BETAS, ADAM_EPS, RunConfig, flush_denormals, resolve_device

SAE_TERMS = ("mse", "l1")
TOPK_TERMS = ("mse", "auxk")
CHECKPOINT_FORMAT = 2  # 2: parameters stacked in their modules' own layout
AUXK_COEF = 1 / 32  # Gao et al.'s weight of the AuxK loss
AUXK_MAX = 256  # AuxK reconstructs the residual with the top min(256, hidden/2) dead latents
# dL/dz from dL/da for each activation a = f(z), for the engine's hand-derived backward pass
ACTIVATION_GRADS = {
    "relu": lambda z, g: torch.ops.aten.threshold_backward(g, z, 0.0),  # g where z > 0, else 0
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


def _gather(data: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The minibatches (S, B, D) of the sample indices idx (S, B), one per data order."""
    return data.index_select(0, idx.reshape(-1)).view(*idx.shape, -1)


def group_key(config: RunConfig) -> tuple:
    """Runs that can share one stacked program: everything but seed, optimizer, lr and the loss weights."""
    return (config.model, config.hidden_dim, config.activation, config.epochs,
            config.batch_size, config.device, config.loss.reduction, config.eval_every)


class StackedOptimizer:
    """Adam or SGD over stacked parameters (leading dim = run), each run its own optimizer and lr.

    The runs of one (optimizer, learning rate) form a bucket. An Adam bucket gets one call of
    torch's fused Adam kernel: the same arithmetic as ``torch.optim.Adam(fused=True)`` in the plain
    loop, one memory pass per tensor; an SGD bucket one ``add_`` per tensor, as ``torch.optim.SGD``.
    A bucket whose runs sit side by side is one slice of each parameter; otherwise (runs of one
    seed kept together, see ``RunStack``) it is a list of per-run views.
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
        p = params[0]
        self.adam = torch.tensor([kind == "adam" for kind, _ in self.rules], dtype=torch.int32, device=p.device)
        self.lr = torch.tensor([lr for _, lr in self.rules], dtype=p.dtype, device=p.device)

    def advance(self) -> int:
        """Count a step taken outside ``step`` (the C step updates the parameters itself), as
        ``step`` counts (Adam's step number; SGD keeps none); its number, at least 1."""
        if self.m:
            self.step_count += 1
        return max(1, int(self.step_count))

    @staticmethod
    def _views(ts: list[torch.Tensor], runs: list[int]) -> list[torch.Tensor]:
        """The rows ``runs`` of each stacked tensor: one slice if they are adjacent, else one view per run."""
        if runs == list(range(runs[0], runs[-1] + 1)):
            return [t[runs[0]:runs[-1] + 1] for t in ts]
        return [t[r] for t in ts for r in runs]

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        params = [p.detach() for p in self.params]
        grads = [g.contiguous() for g in grads]  # the fused kernel needs dense grads (a no-op here)
        if self.m:
            self.step_count += 1  # fused Adam reads the step from a tensor; no host sync
        b1, b2 = ADAM_BETAS
        for (kind, lr), runs in self._buckets.items():
            ps, gs = self._views(params, runs), self._views(grads, runs)
            if kind == "sgd":
                for p, g in zip(ps, gs):
                    p.add_(g, alpha=-lr)
                continue
            torch._fused_adam_(ps, gs, self._views(self.m, runs), self._views(self.v, runs), [],
                               [self.step_count] * len(ps), lr=lr, beta1=b1, beta2=b2, weight_decay=0.0,
                               eps=ADAM_EPS, amsgrad=False, maximize=False)

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


class RunStack:
    """The parameters of R runs of one group, stacked, and their batched forward pass.

    Each parameter is stacked in its module's own layout: an encoder weight is (R, K, D). Runs on
    one seed draw the same minibatches, so when every seed has the same number m of runs (kept
    side by side: ``train_group`` orders the stack by seed) a minibatch is gathered once per
    seed and the first layer of those m runs is one GEMM against their weights laid end to end,
    (m*K, D): a view, no copy. Inputs arrive as (S, B, D), one minibatch per seed; with unequal
    counts m = 1 and every run gets its own row (S = R).
    """

    def __init__(self, configs: list[RunConfig], input_dim: int, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> None:
        self.configs = list(configs)
        first = configs[0]
        self.kind, self.activation, self.act = first.model, first.activation, ACTIVATIONS[first.activation]
        states = [build_model(c.model, input_dim, c.hidden_dim, c.activation, c.seed, k=c.k).state_dict()
                  for c in configs]
        self.names = list(states[0])
        self.params = [torch.stack([s[n] for s in states]).to(device, dtype).contiguous().requires_grad_(True)
                       for n in self.names]
        as_tensor = lambda vals: torch.tensor(vals, dtype=dtype, device=device)  # noqa: E731
        self.seeds = [c.seed for c in configs]
        self._set_data_orders()
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

    def _set_data_orders(self) -> None:
        """``data_seeds``: the seed of each minibatch row (S of them); ``per_seed``: m = R / S.

        On the CPU the rows are then made a multiple of the thread count where m allows, each
        seed's runs split over several rows (its minibatch gathered once per row): a batched GEMM
        hands whole rows to threads, so 3 rows on 2 threads leave one idle a third of the time
        (measured here: about 10% of a step).
        """
        m = self.seeds.count(self.seeds[0])
        data_seeds = self.seeds[::m]
        if len(set(data_seeds)) < len(data_seeds) or self.seeds != [s for s in data_seeds for _ in range(m)]:
            m, data_seeds = 1, list(self.seeds)
        threads = torch.get_num_threads() if self.params[0].device.type == "cpu" else 1
        f = next((f for f in range(1, m + 1) if m % f == 0 and len(data_seeds) * f % threads == 0), 1)
        self.per_seed, self.data_seeds = m // f, [s for s in data_seeds for _ in range(f)]

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        """(S, B, m*F) -> (R, B, F): each seed's row split into its m runs (a copy when m > 1)."""
        if self.per_seed == 1:
            return t
        S, B, _ = t.shape
        return t.view(S, B, self.per_seed, -1).transpose(1, 2).reshape(len(self), B, -1)

    def _join(self, t: torch.Tensor) -> torch.Tensor:
        """(R, B, F) -> (S, B, m*F), the inverse of ``_split``."""
        if self.per_seed == 1:
            return t
        R, B, F = t.shape
        return t.view(-1, self.per_seed, B, F).transpose(1, 2).reshape(-1, B, self.per_seed * F)

    def run_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """(S, B, D) minibatches -> (R, B, D), each run's own (a copy when m > 1)."""
        return x if self.per_seed == 1 else x.repeat_interleave(self.per_seed, dim=0)

    def _first_layer_joined(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations for minibatches x (S, B, D) in the per-seed layout (S, B, m*K): one GEMM per seed."""
        W, b = self.params[0], self.params[1]
        S, B, D = x.shape
        return torch.baddbmm(b.view(S, 1, -1), x, W.view(S, -1, D).transpose(1, 2))

    def _first_layer(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations (R, B, K) of the encoder or SAE for minibatches x (S, B, D)."""
        return self._split(self._first_layer_joined(x))

    def _weight_grad_joined(self, grad_z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Gradient of W (R, K, D) from dL/dz in the per-seed layout (S, B, m*K): again one GEMM per seed."""
        return torch.bmm(grad_z.transpose(1, 2), x).view(len(self), -1, x.shape[-1])

    def _first_layer_grad(self, grad_z: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
        """Gradients of W (R, K, D) and b (R, K) from dL/dz (R, B, K)."""
        return [self._weight_grad_joined(self._join(grad_z), x), grad_z.sum(1)]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Activations (R, N, K) for inputs (N, D) shared by every run."""
        if self.kind == "topk":
            return self._topk_per_run(self._topk_pre_activations(x.expand(len(self), -1, -1)))
        W, b = self.params[0], self.params[1]
        R, K, D = W.shape
        return self.act(torch.addmm(b.view(1, -1), x, W.view(-1, D).T).view(-1, R, K).transpose(0, 1))

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-run loss terms, each (R,), for minibatches x (S, B, D)."""
        if self.kind == "topk":
            return self._topk_losses(x)[0]
        a = self.act(self._first_layer(x))
        if self.kind == "encoder":
            return combined_loss(a, self.params[0], self.loss_config, weights=self.lambdas)
        Wd, bd = self.params[2], self.params[3]
        x_hat = torch.baddbmm(bd.unsqueeze(1), a, Wd.transpose(1, 2))
        return sae_loss(self.run_inputs(x), x_hat, a, self.l1)

    def _topk_pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """W_enc (x - b_pre) + b_enc for per-run inputs x (R, B, D)."""
        P = self.named
        return torch.baddbmm(P["encoder.bias"].unsqueeze(1), x - P["pre_bias"].unsqueeze(1),
                             P["encoder.weight"].transpose(1, 2))

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
        x = self.run_inputs(x)
        z = self._topk_pre_activations(x)
        a = self._topk_per_run(z)
        Wd_t = P["decoder.weight"].transpose(1, 2)
        x_hat = torch.baddbmm(P["pre_bias"].unsqueeze(1), a, Wd_t)
        mse = (x_hat - x).square().mean((1, 2))
        dead = self.idle >= self.dead_after if self.dead_after > 0 else torch.zeros_like(self.idle, dtype=torch.bool)
        a_aux = topk_relu(z.masked_fill(~dead.unsqueeze(1), float("-inf")), self.k_aux)
        auxk = (torch.bmm(a_aux, Wd_t) - (x - x_hat).detach()).square().mean((1, 2))
        return {"total": mse + AUXK_COEF * auxk, "mse": mse, "auxk": auxk}, a

    @property
    def analytic(self) -> bool:
        """Whether a hand-derived gradient applies: the SAE, or the encoder without weight
        redundancy. Both equal autograd's (tested); they skip its graph and many small ops."""
        return self.kind == "sae" or self.loss_config.wr == 0

    def loss_and_grads(self, data: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-run loss terms, stacked (1 + len(terms), R) as ("total", *self.terms), and the
        gradient of the runs' summed totals with respect to each parameter, on the minibatches
        data[idx]: idx (S, B) holds each data order's sample indices (rows of its epoch order)."""
        if self.fused:
            return self._fused_loss_and_grads(data, idx)
        x = _gather(data, idx)
        if self.kind == "topk":
            out, grads = self._topk_loss_and_grads(x)
        elif not self.analytic:
            out = self.losses(x)
            grads = list(torch.autograd.grad(out["total"].sum(), self.params))
        else:
            with torch.no_grad():
                if self.kind == "sae":
                    out, grads = self._sae_loss_and_grads(x)
                else:
                    z = self._first_layer(x)
                    out, grad_a = combined_loss_and_grad(self.act(z), self.lambdas, self.reduction)
                    grads = self._first_layer_grad(ACTIVATION_GRADS[self.activation](z, grad_a), x)
        return torch.stack([out["total"].detach()] + [out[t].detach() for t in self.terms]), grads

    def stepper(self, data: torch.Tensor, opt: StackedOptimizer) -> Callable[[torch.Tensor], torch.Tensor]:
        """The training step on ``data`` while the stack and ``opt`` keep their runs: idx (S, b),
        each data order's sample indices -> the loss terms as ``loss_and_grads``; the parameters
        (and the optimizer's state) updated in place.

        Where the fused library computes the encoder's objective and the runs fill the threads
        evenly, the whole step is one C call, run by run (``fused.relu_infomax_stepper``): each
        run's minibatch and gradients stay in a core's caches between the stages instead of all
        runs' passing through memory at each (measured: see benchmarks/training_speed.py)."""
        if self.one_pass:
            c_step = fused.relu_infomax_stepper(
                data, self.params[0].detach(), self.params[1].detach(), self.lambdas, self.reduction, opt.adam, opt.lr,
                [opt.m[0], opt.v[0], opt.m[1], opt.v[1]] if opt.m else [], ADAM_BETAS, ADAM_EPS,
                self.configs[0].batch_size, self._workspace)
            m = self.per_seed  # runs on one seed: each its own row of (the same) indices
            return lambda idx: c_step(idx if m == 1 else idx.repeat_interleave(m, dim=0), opt.advance())

        def step(idx: torch.Tensor) -> torch.Tensor:
            terms, grads = self.loss_and_grads(data, idx)
            opt.step(grads)
            self.after_step()
            return terms
        return step

    @torch.no_grad()
    def _fused_loss_and_grads(self, data: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The encoder's objective or the SAE's loss through ``fused`` (the same numbers as the
        torch path below, in a few C passes). The encoder's first-layer output stays in its
        per-seed layout (no split or join copies).

        With one run per data order the first layer is C's too, the gather folded into it: 24
        such runs spend about 0.9 ms of a 4.2 ms step gathering their minibatches from memory,
        and their (128 x 784) x (784 x 64) GEMMs are too narrow for torch to hide it. With several
        runs per order the gather is a few rows and torch's wider GEMM is the faster one (both
        measured here: benchmarks/training_speed.py and the closing note of issue 4)."""
        if self.per_seed == 1:
            x, z = fused.first_layer(data, idx, self.params[0], self.params[1], self._workspace)
        else:
            x = _gather(data, idx)
            z = self._first_layer_joined(x)
        if self.kind == "sae":
            # _split may return a strided view (one data order: S = 1); the C passes read dense rows
            terms, (grad_z, grad_b, grad_wd, grad_bd) = fused.sae_loss_and_grad(
                self._split(z).contiguous(), x, self.params[2], self.params[3], self.l1, self._workspace)
            return terms, self._first_layer_grad(grad_z, x) + [grad_wd, grad_bd]
        terms, grad_z, grad_b = fused.relu_infomax_loss_and_grad(z, self.per_seed, self.lambdas, self.reduction,
                                                                 self._workspace)
        return terms, [self._weight_grad_joined(grad_z, x), grad_b]

    def _sae_loss_and_grads(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """MSE (mean over all elements) + l1 * mean|a|, and its gradients, by hand."""
        Wd, bd = self.params[2], self.params[3]
        R, (S, B, D) = len(self), x.shape
        z = self._first_layer(x)
        a = torch.relu(z)
        # x_hat - x = a Wd^T + (bd - x): the GEMM accumulates onto bd - x, one pass fewer
        bd_minus_x = (bd.view(S, -1, 1, D) - x.unsqueeze(1)).view(R, B, D)
        diff = bd_minus_x.baddbmm_(a, Wd.transpose(1, 2))
        mse = torch.linalg.vector_norm(diff, dim=(1, 2)).square() / (B * D)
        sparsity = a.sum((1, 2)) / a[0].numel()  # a >= 0, so mean |a| = mean a
        out = {"total": mse + self.l1 * sparsity, "mse": mse, "l1": sparsity}
        g_xhat = diff.mul_(2.0 / (B * D))
        # d(l1 mean|a|)/da = l1 sign(a) / (B K): on every unit with z > 0, the only ones that pass
        g_a = torch.bmm(g_xhat, Wd).add_((self.l1 / a[0].numel()).view(R, 1, 1))
        g_z = ACTIVATION_GRADS["relu"](z, g_a)
        return out, self._first_layer_grad(g_z, x) + [torch.bmm(g_xhat.transpose(1, 2), a), g_xhat.sum(1)]

    def _topk_loss_and_grads(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """Autograd gradients, with each decoder column's component along itself removed (the
        step then moves along the unit sphere, to first order); updates the idle counts."""
        out, a = self._topk_losses(x)
        grads = list(torch.autograd.grad(out["total"].sum(), self.params))
        with torch.no_grad():
            i = self.names.index("decoder.weight")
            w = self.params[i]
            grads[i] = grads[i] - (grads[i] * w).sum(1, keepdim=True) * w
            fired = (a > 0).any(1)
            self.idle = torch.where(fired, 0, self.idle + a.shape[1])
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
            w.div_(w.norm(dim=1, keepdim=True))

    def keep(self, idx: list[int]) -> None:
        """Drop every run not in ``idx`` (a diverged run leaves the stack)."""
        t = torch.tensor(idx, device=self.l1.device)
        self.idle, self.k = self.idle[t], self.k[t]
        self.configs = [self.configs[i] for i in idx]
        self.seeds = [self.seeds[i] for i in idx]
        self._set_data_orders()
        self.params = [p.detach()[t].requires_grad_(True) for p in self.params]
        self.l1 = self.l1[t]
        self.lambdas = {k: v[t] for k, v in self.lambdas.items()}
        self._set_terms_in_use()

    def _set_terms_in_use(self) -> None:
        """A LossConfig whose lambda is 1 for each term some run uses, 0 otherwise (host-side), and
        whether the fused C path (``fused.py``) computes this stack's objective."""
        used = {t: float(any(getattr(c.loss, t) != 0 for c in self.configs)) for t in TERMS}
        self.loss_config = LossConfig(**used, reduction=self.configs[0].loss.reduction)
        p = self.params[0]
        self.fused = ((self.kind == "sae" or (self.kind == "encoder" and self.activation == "relu"
                                              and self.loss_config.wr == 0))
                      and p.device.type == "cpu" and p.dtype in fused.PRECISIONS and fused.engine_uses_c())
        # the whole step in C, run by run, where the runs spread evenly over the threads (else a
        # thread would sit idle; the stage-by-stage path splits rows instead). Runs sharing a seed
        # then read their shared minibatch each, from the cache: measured as fast as their shared
        # GEMM or faster (24 runs on 3 seeds 1.10x, on 1 seed 0.99x; benchmarks/training_speed.py)
        self.one_pass = self.fused and self.kind == "encoder" and len(self) % torch.get_num_threads() == 0
        self._workspace: dict[str, torch.Tensor] = {}

    def state_of(self, r: int) -> dict[str, torch.Tensor]:
        return {n: p[r].detach().cpu().clone() for n, p in zip(self.names, self.params)}


def _epoch_orders(seeds: list[int], epoch: int, n: int, device: torch.device) -> torch.Tensor:
    """(S, n) sample orders, one per seed in ``seeds`` (a stack's ``data_seeds``)."""
    cache: dict[int, torch.Tensor] = {}
    rows = [cache.setdefault(s, epoch_permutation(s, epoch, n)) for s in seeds]
    return torch.stack(rows).to(device)


@torch.no_grad()
def _test_metrics(stack: RunStack, test_x: torch.Tensor, chunk: int = 4096) -> list[dict]:
    A = torch.cat([stack.encode(test_x[i:i + chunk]) for i in range(0, len(test_x), chunk)], dim=1).cpu()
    return [{"dead_units": dead_units(A[r]), "l0": l0(A[r]), "redundancy": redundancy_score(A[r])}
            for r in range(len(stack))]


def _save_checkpoint(state: dict, path: Path) -> None:
    """A checkpoint, atomically; one that cannot be written (a full disk) costs only the resume."""
    try:
        save_torch(state, path)
    except (OSError, RuntimeError) as e:
        warn(f"could not write checkpoint {path} ({str(e)[:120]}); training goes on without it")


def _check_group_fits(configs: list[RunConfig], n: int, input_dim: int, dtype: torch.dtype,
                      device: torch.device) -> None:
    """Refuse, before any work, a group whose minibatches or memory cannot work out."""
    B = configs[0].batch_size
    if n % B == 1:
        raise ValueError(f"{n} training samples with batch_size={B} leave a last minibatch of one sample, whose "
                         f"variance is undefined; change batch_size or the number of samples")
    K = configs[0].hidden_dim
    per_run = K * input_dim * (1 if configs[0].model == "encoder" else 2) + K + input_dim
    need = len(configs) * per_run * 4 * torch.finfo(dtype).bits // 8  # weights, gradients, two Adam moments
    free = _available_memory(device)
    if free is not None and need > free:
        raise MemoryError(f"hidden_dim={K} with {input_dim} inputs and {len(configs)} run(s) needs about "
                          f"{need / 2**30:.1f} GiB for weights, gradients and optimizer state; "
                          f"{free / 2**30:.1f} GiB are available")


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


# A run has diverged when its epoch loss or a parameter is not finite, or when its loss leaves the
# range a working run can reach: for the decoder-free encoder, |loss| above a million times the
# all-zero LSE value of a batch (B ln K); for the SAEs, a loss above a thousand times the mean
# squared input (a thousand times worse than reconstructing every input as zero).
ENCODER_DIVERGENCE_FACTOR, SAE_DIVERGENCE_FACTOR = 1e6, 1e3


def divergence_bound(config: RunConfig, train_x: torch.Tensor) -> float:
    """The largest |epoch loss| a run of this config can have and still count as training."""
    if config.model == "encoder":
        return ENCODER_DIVERGENCE_FACTOR * config.batch_size * math.log(max(config.hidden_dim, 2))
    return SAE_DIVERGENCE_FACTOR * float(train_x.double().square().mean())


def train_group(configs: list[RunConfig], train_x: torch.Tensor, test_x: torch.Tensor | None = None,
                checkpoint: Path | None = None, checkpoint_every: int = 5, progress: bool = True,
                desc: str = "") -> list[RunResult]:
    """Train runs that share a ``group_key`` as one stacked program; results in input order."""
    keys = {group_key(c) for c in configs}
    if len(keys) != 1:
        raise ValueError(f"configs of one group must share model, shapes and epochs; got {keys}")
    # Runs of one seed side by side (they share minibatches and a GEMM), then by learning rate; the
    # order is canonical, so the same set of runs always forms the same stack and the same numbers.
    order = sorted(range(len(configs)), key=lambda i: (configs[i].seed, configs[i].lr,
                                                        json.dumps(configs[i].as_dict(), sort_keys=True)))
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
    X = train_x.to(device=device, dtype=dtype).contiguous()  # the C first layer reads dense rows
    Xt = None if test_x is None else test_x.to(device=device, dtype=dtype)
    n, B = len(X), first.batch_size
    _check_group_fits(configs, n, X.shape[1], dtype, device)
    bound = divergence_bound(first, X)
    stack = RunStack(configs, X.shape[1], device, dtype)
    stack.prepare(X)
    opt = StackedOptimizer(stack.params, [(c.optimizer, c.lr) for c in configs])
    alive = list(range(len(configs)))  # original index of each run still in the stack
    histories: list[list[dict]] = [[] for _ in configs]
    finished: dict[int, RunResult] = {}
    start_epoch, elapsed = 0, 0.0
    last_good = [stack.state_of(r) for r in range(len(stack))]

    ck = load_or_discard(checkpoint, "checkpoint") if checkpoint is not None else None
    if isinstance(ck, dict):
        if ck.get("format") == CHECKPOINT_FORMAT and ck["configs"] == [c.as_dict() for c in configs]:
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

    bar = Progress(total=first.epochs, initial=start_epoch, desc=desc or f"{first.model} x{len(configs)}",
                   unit="epochs", disable=not progress)
    last_loss = float("nan")
    for epoch in range(start_epoch, first.epochs):
        t0 = time.perf_counter()
        orders = _epoch_orders(stack.data_seeds, epoch, n, device)
        sums = torch.zeros(len(stack.terms) + 1, len(stack), device=device, dtype=dtype)
        steps = 0
        step = stack.stepper(X, opt)
        with flush_denormals():
            for s in range(0, n, B):
                sums += step(orders[:, s:s + B])
                steps += 1
        means = (sums / steps).cpu()  # the one host sync of the epoch
        finite = torch.isfinite(means).all(0) & (means[0].abs() <= bound) & torch.stack(
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
            alive = [alive[r] for r in keep]
            if not alive:  # every run diverged: each result says so (diverged_epoch), none is left to train
                break
            stack.keep(keep)
            opt.keep(keep, stack.params)
        last_good = [stack.state_of(r) for r in range(len(stack))]
        last_loss = float(means[0][finite].mean())
        bar.status(f"loss {last_loss:.4g}")
        bar.update()
        if checkpoint is not None and ((epoch + 1) % checkpoint_every == 0) and epoch + 1 < first.epochs:
            _save_checkpoint({"format": CHECKPOINT_FORMAT, "configs": [c.as_dict() for c in configs],
                              "alive": alive, "epoch": epoch + 1, "params": [p.detach() for p in stack.params],
                              "opt": opt.state(), "idle": stack.idle, "histories": histories,
                              "finished": finished, "elapsed": elapsed}, checkpoint)
    diverged = len(configs) - len(alive)
    bar.close(f"{len(configs)} run{'s' if len(configs) > 1 else ''} x {first.epochs} epochs trained in "
              f"{elapsed:.1f} s; final loss {last_loss:.4g} (mean over runs)"
              + (f"; {diverged} diverged" if diverged else ""))
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
