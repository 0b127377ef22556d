"""How much two soft assignments of the same samples to components agree.

Used to compare the decoder-free encoder's responsibilities softmax(-a) with those of a Gaussian
mixture fitted by explicit EM (notebook 7). Both are (samples x components) matrices whose rows
sum to 1; the two may have different numbers of components and any order of them.
"""

from __future__ import annotations

import numpy as np


def _as_assignment(R, name: str) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2 or len(R) == 0:
        raise ValueError(f"{name} must be a (samples, components) matrix; got shape {R.shape}")
    if not np.isfinite(R).all() or (R < 0).any() or not np.allclose(R.sum(1), 1.0, atol=1e-6):
        raise ValueError(f"{name} must hold non-negative rows that sum to 1 (responsibilities)")
    return R


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def soft_nmi(R1, R2) -> float:
    """Normalised mutual information of two soft assignments (geometric normalisation).

    The joint distribution of (component under the first, component under the second) is
    P = R1^T R2 / n: the mass of samples the first gives to i and the second to j. Then
    NMI = I(P) / sqrt(H(rows) H(columns)), 1 when one assignment determines the other, 0 when they
    are independent. For one-hot rows it is the usual NMI of two hard clusterings
    (scikit-learn's ``normalized_mutual_info_score`` with ``average_method="geometric"``).
    """
    A, B = _as_assignment(R1, "R1"), _as_assignment(R2, "R2")
    if len(A) != len(B):
        raise ValueError(f"R1 and R2 must assign the same samples; got {len(A)} and {len(B)} rows")
    P = A.T @ B / len(A)
    p, q = P.sum(1), P.sum(0)
    nz = P > 0
    mutual = float((P[nz] * np.log(P[nz] / np.outer(p, q)[nz])).sum())
    h = np.sqrt(_entropy(p) * _entropy(q))
    return max(0.0, mutual / h) if h > 0 else 0.0


def hard(R) -> np.ndarray:
    """One-hot rows at each sample's most responsible component (the first of ties)."""
    R = np.asarray(R)
    out = np.zeros(R.shape, dtype=np.float64)
    out[np.arange(len(R)), R.argmax(1)] = 1.0
    return out
