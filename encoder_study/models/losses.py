"""The objective: log-sum-exp (implicit EM) plus InfoMax volume control, and the SAE's loss.

Every loss takes activations shaped ``(..., batch, units)`` and returns one value per leading
index, so the same function serves a single run ``(B, K)`` and a stack of runs ``(R, B, K)``
trained together (see ``training/engine.py``). Conventions follow ``docs/paper.md``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..book.validation import check_choice, check_nonnegative

REDUCTIONS = ("sum", "mean")
TERMS = ("lse", "var", "tc", "wr")  # the encoder's loss terms, in LossConfig's order

VARIANCE_EPS = 1e-6  # inside the log of the variance term
CORRELATION_EPS = 1e-8  # added to each standard deviation in the correlation term


@dataclass(frozen=True)
class LossConfig:
    """The weights (lambdas) of the encoder's four loss terms and how LSE sums over a batch."""

    lse: float = 1.0
    """Log-sum-exp: -sum_batch log sum_j exp(-a_j); its gradient is each unit's responsibility."""
    var: float = 1.0
    """Variance (InfoMax): -sum_j log(Var(a_j) + eps), keeps every unit in use."""
    tc: float = 1.0
    """Decorrelation (InfoMax): squared off-diagonal correlations of the units over a batch."""
    wr: float = 0.0
    """Weight redundancy: ||W_n W_n^T - I||^2 of the unit-normalised rows (off in the paper)."""
    reduction: str = "sum"
    """"sum" over the batch (the paper's, dL/da = responsibility) or "mean"."""

    def __post_init__(self) -> None:
        for name in TERMS:
            object.__setattr__(self, name, check_nonnegative(f"lambda_{name}", getattr(self, name)))
        check_choice("reduction", self.reduction, REDUCTIONS)

    def as_dict(self) -> dict:
        return asdict(self)


def _check_activations(a: torch.Tensor, name: str = "a", min_batch: int = 1) -> None:
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(a).__name__}")
    if a.dim() < 2:
        raise ValueError(f"{name} must have shape (..., batch, units); got shape {tuple(a.shape)}")
    if a.shape[-2] < min_batch:
        raise ValueError(
            f"{name} needs a batch of at least {min_batch} samples for this loss; got shape {tuple(a.shape)}"
        )


def neg_lse_and_exp(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample -log sum_j exp(-a_j), and e = exp(a_min - a) with its row sums (softmax(-a) =
    e / sums), all shifted by the smallest a_j. (The probe's softmax cross-entropy is this on -logits.)"""
    a_min = a.amin(dim=-1, keepdim=True)
    e = torch.sub(a_min, a).exp_()
    total = e.sum(dim=-1, keepdim=True)
    return (a_min - torch.log(total)).squeeze(-1), e, total


def _neg_lse_and_softmax(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample -log sum_j exp(-a_j) and r = softmax(-a), both shifted by the smallest a_j."""
    per_sample, e, total = neg_lse_and_exp(a)
    return per_sample, e.div_(total)


class _NegLogSumExp(torch.autograd.Function):
    """Per sample -log sum_j exp(-a_j) and r = softmax(-a); the gradient is r, by hand.

    Shifting by the smallest a_j keeps both the value and r accurate in float32 even for huge
    activations (autograd of torch.logsumexp goes through exp(x - lse), which loses about
    |a| * 1e-7 of relative accuracy there). The backward is checked against finite differences
    and against autograd of the plain formula in the tests.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        per_sample, r = _neg_lse_and_softmax(a)
        ctx.save_for_backward(r)
        ctx.mark_non_differentiable(r)
        return per_sample, r

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _grad_r: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (r,) = ctx.saved_tensors
        return grad.unsqueeze(-1) * r


def lse_loss(a: torch.Tensor, reduction: str = "sum") -> tuple[torch.Tensor, torch.Tensor]:
    """L_lse = -sum_batch log sum_j exp(-a_j) and the responsibilities r = softmax(-a).

    With ``reduction="sum"`` (the paper's convention) dL/da_j = r_j exactly for every sample;
    ``"mean"`` divides by the batch size. The responsibilities are returned detached.
    """
    _check_activations(a)
    check_choice("reduction", reduction, REDUCTIONS)
    per_sample, r = _NegLogSumExp.apply(a)
    loss = per_sample.sum(-1) if reduction == "sum" else per_sample.mean(-1)
    return loss, r


def covariance(a: torch.Tensor) -> torch.Tensor:
    """Unbiased minibatch covariance of the units, (..., K, K)."""
    _check_activations(a, min_batch=2)
    centred = a - a.mean(dim=-2, keepdim=True)
    return centred.transpose(-1, -2) @ centred / (a.shape[-2] - 1)


def variance_loss(
    a: torch.Tensor, eps: float = VARIANCE_EPS, cov: torch.Tensor | None = None
) -> torch.Tensor:
    """L_var = -sum_j log(Var_batch(a_j) + eps), unbiased variance: the volume control.

    ``cov``, if given, is ``covariance(a)``: its diagonal is the variance (shared work).
    """
    if cov is None:
        _check_activations(a, min_batch=2)
    var = torch.diagonal(cov, dim1=-2, dim2=-1) if cov is not None else a.var(dim=-2, unbiased=True)
    return -torch.log(var + eps).sum(-1)


def scale_free_variance_loss(
    a: torch.Tensor, eps: float = VARIANCE_EPS, cov: torch.Tensor | None = None
) -> torch.Tensor:
    """L_var with the activation scale taken out: -sum_j log(v_j + eps) + K log(mean_k v_k + eps),
    v the units' unbiased minibatch variances. Scaling every a_j by c leaves it unchanged (up to
    eps), where the paper's L_var falls by 2 K log c: it still rewards spreading variance evenly
    over the units (it is K times the log of the arithmetic over the geometric mean of v, >= 0,
    0 when all are equal) but no longer rewards growing it. Notebook 10's bounded variant (b)."""
    if cov is None:
        _check_activations(a, min_batch=2)
    var = torch.diagonal(cov, dim1=-2, dim2=-1) if cov is not None else a.var(dim=-2, unbiased=True)
    return -torch.log(var + eps).sum(-1) + var.shape[-1] * torch.log(var.mean(-1) + eps)


def correlation_matrix(
    a: torch.Tensor, eps: float = CORRELATION_EPS, cov: torch.Tensor | None = None
) -> torch.Tensor:
    """Minibatch correlation of the units: unbiased covariance / ((std_i + eps)(std_j + eps))."""
    cov = covariance(a) if cov is None else cov
    var = torch.diagonal(cov, dim1=-2, dim2=-1)
    # sqrt with a finite gradient at 0: a unit silent on the whole batch gets zero gradient
    # from this term instead of 0 * inf = NaN
    std = torch.where(var > 0, var.clamp_min(1e-30).sqrt(), torch.zeros_like(var)) + eps
    return cov / (std.unsqueeze(-1) * std.unsqueeze(-2))


def off_diagonal_sq_sum(m: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal entries of square matrices (..., K, K)."""
    return (m**2).sum((-2, -1)) - (torch.diagonal(m, dim1=-2, dim2=-1) ** 2).sum(-1)


def correlation_loss(a: torch.Tensor, cov: torch.Tensor | None = None) -> torch.Tensor:
    """L_tc: squared off-diagonal entries of the minibatch correlation matrix, summed."""
    return off_diagonal_sq_sum(correlation_matrix(a, cov=cov))


def weight_redundancy_loss(W: torch.Tensor) -> torch.Tensor:
    """L_wr = ||W_n W_n^T - I||_F^2 with W's rows (components) normalised to unit length."""
    if not isinstance(W, torch.Tensor) or W.dim() < 2:
        raise ValueError(f"W must be a tensor of shape (..., units, inputs); got {getattr(W, 'shape', W)!r}")
    Wn = W / W.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    gram = Wn @ Wn.transpose(-1, -2)
    eye = torch.eye(W.shape[-2], dtype=W.dtype, device=W.device)
    return ((gram - eye) ** 2).sum((-2, -1))


def combined_loss(
    a: torch.Tensor,
    W: torch.Tensor,
    config: LossConfig = LossConfig(),  # noqa: B008 (frozen: one shared default cannot be mutated)
    weights: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Total objective and its terms: dict(total, lse, var, tc, wr, responsibilities).

    A term whose lambda is 0 in ``config`` is not computed (its entry is 0). For stacked runs,
    ``weights`` gives per-run lambdas as tensors broadcastable to the leading shape; ``config``
    then only says which terms any run uses (decided on the host: no device sync per step).
    """
    if not isinstance(config, LossConfig):
        raise TypeError(f"config must be a LossConfig, got {type(config).__name__}")
    used = {t: getattr(config, t) != 0 for t in TERMS}
    lam = {t: getattr(config, t) for t in TERMS} if weights is None else weights
    zero = a.new_zeros(a.shape[:-2])
    cov = covariance(a) if used["var"] and used["tc"] else None  # one covariance serves both terms
    compute = {
        "lse": lambda: lse_loss(a, config.reduction)[0],
        "var": lambda: variance_loss(a, cov=cov),
        "tc": lambda: correlation_loss(a, cov=cov),
        "wr": lambda: weight_redundancy_loss(W),
    }
    out: dict[str, torch.Tensor] = {t: compute[t]() if used[t] else zero for t in TERMS}
    total = zero
    for t in TERMS:
        if used[t]:
            total = total + lam[t] * out[t]
    with torch.no_grad():  # logged for every run, never part of the gradient when unused
        resp = torch.softmax(-a, dim=-1)
        if not used["lse"]:
            out["lse"] = lse_loss(a, config.reduction)[0]
    out["total"] = total
    out["responsibilities"] = resp
    return out


def sae_loss(
    x: torch.Tensor, x_hat: torch.Tensor, a: torch.Tensor, l1: float | torch.Tensor = 0.01
) -> dict[str, torch.Tensor]:
    """The standard SAE's loss: mean squared error over all elements + l1 * mean |a|.

    Works per run on stacks ``(..., B, D)``: means are over the last two dimensions; ``l1``
    may be a per-run tensor.
    """
    if not isinstance(l1, torch.Tensor):
        check_nonnegative("l1", l1)
    if x.shape != x_hat.shape:
        raise ValueError(
            f"x and x_hat must have the same shape; got {tuple(x.shape)} and {tuple(x_hat.shape)}"
        )
    mse = ((x_hat - x) ** 2).mean((-2, -1))
    sparsity = a.abs().mean((-2, -1))
    return {"total": mse + l1 * sparsity, "mse": mse, "l1": sparsity}


def uniform_lse_value(batch: int, units: int) -> float:
    """L_lse when every activation is 0: -batch * ln(units) (-532.3 for 128 x 64)."""
    return -batch * math.log(units)


__all__ = [
    "LossConfig",
    "combined_loss",
    "correlation_loss",
    "correlation_matrix",
    "covariance",
    "lse_loss",
    "neg_lse_and_exp",
    "off_diagonal_sq_sum",
    "sae_loss",
    "scale_free_variance_loss",
    "uniform_lse_value",
    "variance_loss",
    "weight_redundancy_loss",
]


@torch.no_grad()
def combined_loss_and_grad(
    a: torch.Tensor, weights: dict[str, torch.Tensor], reduction: str = "sum"
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The terms of ``combined_loss`` (without weight redundancy) and dL_total/da, by hand.

    The same numbers as autograd through ``combined_loss`` (tested to float64 precision), in a
    fraction of the operations: the batched engine's path for the encoder without weight
    redundancy. ``a`` is (R, B, K), in any memory layout. ``weights`` maps lse/var/tc to per-run
    lambdas of shape (R,). One difference on purpose: a unit constant over the batch gets zero
    gradient from the correlation term, where
    plain autograd through sqrt(0) would give NaN (``correlation_matrix`` guards the same way).
    """
    R, B, K = a.shape
    lam = {t: weights[t].view(R, 1, 1) for t in ("lse", "var", "tc")}
    scale = 1.0 if reduction == "sum" else 1.0 / B
    # L_lse's gradient is lam * softmax(-a) = e * (lam / sums), one pass over e
    per_sample, e, total = neg_lse_and_exp(a)
    out = {"lse": per_sample.sum(-1) * scale}
    grad = e.mul_((lam["lse"] * scale) / total)

    centred = a - a.mean(dim=1, keepdim=True)
    cov = torch.baddbmm(a.new_zeros(1, 1, 1), centred.transpose(1, 2), centred, beta=0.0, alpha=1.0 / (B - 1))
    var = torch.diagonal(cov, dim1=1, dim2=2)  # sums of squares: never negative
    var_eps = var + VARIANCE_EPS
    out["var"] = -torch.log(var_eps).sum(-1)
    # C = S / (s s^T) with s = sqrt(diag S) + eps; L_tc = sum_{i != j} C_ij^2
    root = var.sqrt()
    inv = (root + CORRELATION_EPS).reciprocal_()
    outer = inv.unsqueeze(2) * inv.unsqueeze(1)
    off = cov * outer
    off.diagonal(dim1=1, dim2=2).zero_()
    off_sq_rows = off.square().sum(2)
    out["tc"] = off_sq_rows.sum(1)
    # dL/dS: off the diagonal 2 lam_tc C_ij / (s_i s_j); on it, through v = diag S, -lam_var / (v + eps)
    # from L_var plus dL_tc/ds_k * ds_k/dv_k = (-4 lam_tc sum_j C_kj^2 / s_k) / (2 sqrt v_k), taken
    # as 0 for a unit silent on the whole batch (v_k = 0)
    tc_diag = torch.where(root > 0, off_sq_rows * inv / root, 0.0).mul_(-2.0 * lam["tc"].view(R, 1))
    dcov = off.mul_(outer).mul_(2.0 * lam["tc"])
    dcov.diagonal(dim1=1, dim2=2).copy_(tc_diag.sub_(lam["var"].view(R, 1) / var_eps))
    # S = A_c^T A_c / (B-1) with dL/dS symmetric:  dL/dA = 2 A_c dL/dS / (B-1)
    grad = grad.baddbmm_(centred, dcov, alpha=2.0 / (B - 1))
    out["wr"] = a.new_zeros(R)
    out["total"] = sum(weights[t] * out[t] for t in ("lse", "var", "tc"))
    return out, grad
