"""How the runs of a stack share minibatches: the rows of a stacked step and the first layer's GEMMs.

Runs on one seed draw the same minibatches. When every seed of a stack has the same number m of
runs, kept side by side (``engine.train_group`` orders a stack by seed), a minibatch is gathered
once per seed and the first layer of those m runs is one GEMM against their weights laid end to
end, (m*K, D): a view, no copy. Minibatches arrive as (S, B, D), one per data order; with
unequal counts m = 1 and every run has its own row (S = R).
"""

from __future__ import annotations

import torch


def gather(data: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The minibatches (S, B, D) of the sample indices idx (S, B), one per data order."""
    return data.index_select(0, idx.reshape(-1)).view(*idx.shape, -1)


class SeedLayout:
    """The data orders of a stack of runs: ``data_seeds`` (one seed per minibatch row, S of them)
    and ``per_seed`` (m, the runs that share each row's minibatch and GEMM; R = S * m)."""

    def __init__(self, seeds: list[int], threads: int = 1) -> None:
        """``threads``: on the CPU the rows are made a multiple of the thread count where m allows,
        each seed's runs split over several rows (its minibatch gathered once per row): a batched
        GEMM hands whole rows to threads, so 3 rows on 2 threads leave one idle a third of the time
        (measured: about 10% of a step)."""
        self.runs = len(seeds)
        m = seeds.count(seeds[0])
        data_seeds = seeds[::m]
        if len(set(data_seeds)) < len(data_seeds) or seeds != [s for s in data_seeds for _ in range(m)]:
            m, data_seeds = 1, list(seeds)
        f = next((f for f in range(1, m + 1) if m % f == 0 and len(data_seeds) * f % threads == 0), 1)
        self.per_seed, self.data_seeds = m // f, [s for s in data_seeds for _ in range(f)]

    def split(self, t: torch.Tensor) -> torch.Tensor:
        """(S, B, m*F) -> (R, B, F): each row split into its m runs (a copy when m > 1)."""
        if self.per_seed == 1:
            return t
        S, B, _ = t.shape
        return t.view(S, B, self.per_seed, -1).transpose(1, 2).reshape(self.runs, B, -1)

    def join(self, t: torch.Tensor) -> torch.Tensor:
        """(R, B, F) -> (S, B, m*F), the inverse of ``split``."""
        if self.per_seed == 1:
            return t
        R, B, F = t.shape
        return t.view(-1, self.per_seed, B, F).transpose(1, 2).reshape(-1, B, self.per_seed * F)

    def run_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """(S, B, D) minibatches -> (R, B, D), each run's own (a copy when m > 1)."""
        return x if self.per_seed == 1 else x.repeat_interleave(self.per_seed, dim=0)

    def linear(self, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """W x + b (R, B, K) for stacked W (R, K, D), b (R, K) and minibatches x (S, B, D):
        one GEMM per row."""
        S, B, D = x.shape
        return self.split(torch.baddbmm(b.view(S, 1, -1), x, W.view(S, -1, D).transpose(1, 2)))

    def linear_grads(self, grad_z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients of W (R, K, D) and b (R, K) of ``linear`` from dL/dz (R, B, K): one GEMM per row."""
        W_grad = torch.bmm(self.join(grad_z).transpose(1, 2), x).view(self.runs, -1, x.shape[-1])
        return W_grad, grad_z.sum(1)


def linear_shared_input(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """W x + b (R, N, K) for stacked W (R, K, D), b (R, K) and inputs x (N, D) shared by every
    run: one GEMM."""
    R, K, D = W.shape
    return torch.addmm(b.view(1, -1), x, W.view(-1, D).T).view(-1, R, K).transpose(0, 1)
