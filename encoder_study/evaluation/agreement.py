"""How much two soft assignments of the same samples to components agree, and the explicit-EM
mixture they are compared with.

Used to compare the decoder-free encoder's responsibilities softmax(-a) with those of a Gaussian
mixture fitted by explicit EM (notebooks 7 and 10). Both are (samples x components) matrices whose
rows sum to 1; the two may have different numbers of components and any order of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

from ..book.validation import check_positive_int


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


def soft_nmi(R1, R2, weights=None) -> float:
    """Normalised mutual information of two soft assignments (geometric normalisation).

    The joint distribution of (component under the first, component under the second) is
    P = R1^T R2 / n: the mass of samples the first gives to i and the second to j. Then
    NMI = I(P) / sqrt(H(rows) H(columns)), 1 when one assignment determines the other, 0 when they
    are independent. For one-hot rows it is the usual NMI of two hard clusterings
    (scikit-learn's ``normalized_mutual_info_score`` with ``average_method="geometric"``).
    ``weights`` (one non-negative number per sample) weights the samples: the counts of a bootstrap
    resample give the NMI of the resampled rows without copying them.
    """
    A, B = _as_assignment(R1, "R1"), _as_assignment(R2, "R2")
    if len(A) != len(B):
        raise ValueError(f"R1 and R2 must assign the same samples; got {len(A)} and {len(B)} rows")
    if weights is None:
        P = A.T @ B / len(A)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(A),) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be {len(A)} non-negative numbers, not all 0; got shape {w.shape}")
        P = A.T @ (w[:, None] * B) / w.sum()
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


@dataclass
class PCAMixture:
    """A Gaussian mixture fitted by explicit EM in the space of the top principal components,
    with diagonal covariances: in pixel space full covariances are singular (MNIST's border pixels
    never vary) and 64 full covariances on 60,000 images overfit."""

    pca: PCA
    mixture: GaussianMixture

    def responsibilities(self, X) -> np.ndarray:
        """The posterior responsibilities (samples, components) of rows X (samples, inputs)."""
        return self.mixture.predict_proba(self.pca.transform(np.asarray(X, dtype=np.float64)))

    @property
    def n_parameters(self) -> int:
        """Numbers fitted: the mixture's means, variances and weights, and the projection."""
        m, p = self.mixture, self.pca
        return int(m.means_.size + m.covariances_.size + m.weights_.size + p.components_.size + p.mean_.size)


def fit_pca_mixture(X, components: int, pca_dims: int, seed: int, max_iter: int = 200) -> PCAMixture:
    """``components`` diagonal Gaussians fitted by EM (scikit-learn, k-means start from ``seed``,
    covariance floor 1e-3) to rows X projected on their top ``pca_dims`` principal components."""
    check_positive_int("components", components)
    check_positive_int("pca_dims", pca_dims)
    X = np.asarray(X, dtype=np.float64)
    pca = PCA(pca_dims, svd_solver="full").fit(X)
    mixture = GaussianMixture(
        components, covariance_type="diag", reg_covar=1e-3, max_iter=max_iter, random_state=seed
    )
    return PCAMixture(pca, mixture.fit(pca.transform(X)))


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float],
    n: int,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    method: str = "percentile",
) -> tuple[float, float]:
    """A bootstrap interval of ``statistic(rows)`` from ``resamples`` resamplings, with
    replacement, of the row indices 0..n-1 (a statistic of paired matrices takes the same rows of
    each: the pairing is kept). ``method="percentile"``: the quantiles of the resampled values;
    ``"basic"``: those quantiles reflected about the full-sample value (2 t - q_hi, 2 t - q_lo),
    which corrects a statistic that resampling itself biases (a mutual information computed from
    resampled rows is larger on average than from the rows drawn once, so the percentile interval
    can miss the full-sample value)."""
    check_positive_int("n", n)
    check_positive_int("resamples", resamples)
    if not 0 < level < 1:
        raise ValueError(f"level={level!r} must lie strictly between 0 and 1")
    if method not in ("percentile", "basic"):
        raise ValueError(f"method={method!r} must be 'percentile' or 'basic'")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(resamples)])
    tail = (1 - level) / 2 * 100
    lo, hi = float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))
    if method == "basic":
        full = float(statistic(np.arange(n)))
        return 2 * full - hi, 2 * full - lo
    return lo, hi
