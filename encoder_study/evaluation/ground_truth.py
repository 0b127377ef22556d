"""Data whose sparse components are known, and how well a learned dictionary finds them again.

The generative model (``sparse_superposition``): K unit-norm component directions d_k in R^D,
drawn as normalised Gaussian vectors (so K may exceed D: superposition). Each sample switches each
component on independently with probability ``mean_active / K`` and gives it a magnitude drawn
uniformly from [0.5, 1.5], so its code s is sparse and non-negative; x = sum_k s_k d_k + noise,
with Gaussian noise whose RMS is ``noise`` times the clean signal's RMS.

Recovery is judged up to what no method can know: the order of the units, their scale and
(for directions) their sign. ``mean_best_cosine`` asks, for each true direction, how close the
nearest learned vector comes; ``mcc`` (mean correlation coefficient, the identifiability
literature's measure) pairs learned units with true components one to one (Hungarian algorithm
on |correlation| of their values over held-out samples) and averages the matched correlations.
``matched_cosines`` pairs the units of two dictionaries (two seeds) one to one by weight cosine:
the stability measure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..book.validation import check_int, check_nonnegative, check_positive, check_positive_int

MAGNITUDE_RANGE = (0.5, 1.5)  # an active component's coefficient, uniform on this range


@dataclass(frozen=True)
class SparseSuperposition:
    """Samples and the truth behind them."""

    x: torch.Tensor
    """(N, D) float32 samples."""
    components: torch.Tensor
    """(K, D) the true unit-norm directions."""
    codes: torch.Tensor
    """(N, K) the true non-negative coefficients (zero where a component is off)."""


def sparse_superposition(
    n_samples: int, input_dim: int, n_components: int, mean_active: float, noise: float, seed: int
) -> SparseSuperposition:
    """Draw ``n_samples`` from the model in the module docstring; the same arguments give the same
    data on any machine (torch's CPU generator, float64 arithmetic, then float32)."""
    check_positive_int("n_samples", n_samples)
    check_positive_int("input_dim", input_dim)
    check_positive_int("n_components", n_components)
    check_nonnegative("noise", noise)
    check_int("seed", seed)
    if check_positive("mean_active", mean_active) > n_components:
        raise ValueError(f"mean_active={mean_active} must be at most n_components={n_components}")
    g = torch.Generator().manual_seed(seed)
    comps = torch.randn(n_components, input_dim, generator=g, dtype=torch.float64)
    comps /= comps.norm(dim=1, keepdim=True)
    on = torch.rand(n_samples, n_components, generator=g, dtype=torch.float64) < mean_active / n_components
    lo, hi = MAGNITUDE_RANGE
    size = lo + (hi - lo) * torch.rand(n_samples, n_components, generator=g, dtype=torch.float64)
    codes = on * size
    clean = codes @ comps
    rms = clean.square().mean().sqrt()
    x = clean + noise * rms * torch.randn(n_samples, input_dim, generator=g, dtype=torch.float64)
    return SparseSuperposition(x.float(), comps.float(), codes.float())


def _unit_rows(M, name: str) -> np.ndarray:
    M = np.asarray(M.detach().cpu() if isinstance(M, torch.Tensor) else M, dtype=np.float64)
    if M.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array (vectors as rows); got shape {M.shape}")
    norms = np.linalg.norm(M, axis=1, keepdims=True)
    return M / np.where(norms > 0, norms, 1.0)


def _cosines(A, B, name_a: str, name_b: str) -> np.ndarray:
    A, B = _unit_rows(A, name_a), _unit_rows(B, name_b)
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"{name_a} and {name_b} must have the same width; got {A.shape[1]} and {B.shape[1]}")
    return A @ B.T


def mean_best_cosine(learned, true) -> float:
    """Mean over the true directions (rows of ``true``) of the largest |cosine| with any learned
    vector (rows of ``learned``): 1 when every true direction has a learned copy, up to sign."""
    return float(np.abs(_cosines(learned, true, "learned", "true")).max(0).mean())


def _hungarian(S: np.ndarray) -> np.ndarray:
    """The values of S on the one-to-one pairing of rows and columns with the largest sum
    (min(rows, cols) pairs)."""
    rows, cols = linear_sum_assignment(S, maximize=True)
    return S[rows, cols]


def mcc(learned_codes, true_codes) -> float:
    """Mean correlation coefficient: the units of ``learned_codes`` (N, K1) paired one to one with
    the components of ``true_codes`` (N, K2) to maximise the summed |Pearson correlation| over the
    N samples, and those min(K1, K2) correlations averaged. A unit or component that never varies
    correlates 0 with everything."""
    A = np.asarray(learned_codes, dtype=np.float64)
    B = np.asarray(true_codes, dtype=np.float64)
    if A.ndim != 2 or B.ndim != 2 or len(A) != len(B):
        raise ValueError(
            f"learned_codes and true_codes must be (N, K) arrays over the same N samples; got shapes "
            f"{A.shape} and {B.shape}"
        )
    A, B = A - A.mean(0), B - B.mean(0)
    na, nb = np.linalg.norm(A, axis=0), np.linalg.norm(B, axis=0)
    C = (A.T @ B) / np.outer(np.where(na > 0, na, 1.0), np.where(nb > 0, nb, 1.0))
    C[na == 0, :] = 0.0
    C[:, nb == 0] = 0.0
    return float(_hungarian(np.abs(C)).mean())


def matched_cosines(W_a, W_b) -> np.ndarray:
    """The rows of W_a paired one to one with the rows of W_b to maximise the summed (signed)
    cosine, and those cosines: two seeds' dictionaries compared unit by unit."""
    return _hungarian(_cosines(W_a, W_b, "W_a", "W_b"))
