"""The classical feature maps the book sets beside the learned dictionaries: notebook 7's controls
and the sparse coding that notebooks 7 and 9 both use.

Each ``fit`` function fits on the training rows only and returns ``Codes``: the features of the
training and the test rows (float64, samples x features) and the number of fitted parameters.
They are scikit-learn's estimators with the settings the notebooks describe; what is the book's
own is small and tested: signed codes split into non-negative parts, k-means read by the
triangle rule, a ReLU of a random projection, and the lasso penalty found by bisection for a
target L0 on rows the dictionary did not learn from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import NMF, PCA, FastICA, MiniBatchDictionaryLearning
from sklearn.mixture import GaussianMixture

from ..book.validation import check_positive, check_positive_int
from .metrics import ACTIVE_THRESHOLD

LOG_FLOOR = 1e-30  # log-responsibility features floor the mixture's probabilities here


@dataclass
class Codes:
    train: np.ndarray
    test: np.ndarray
    n_params: int
    fitted: object = None  # the fitted estimator(s), for analyses that need more than the codes


def signed_parts(S: np.ndarray) -> np.ndarray:
    """A signed code as its positive and negative parts side by side: non-negative, twice as wide."""
    return np.concatenate([np.maximum(S, 0), np.maximum(-S, 0)], 1)


def pca(X: np.ndarray, X_test: np.ndarray, n_features: int) -> Codes:
    """The top principal components' scores (signed)."""
    p = PCA(n_features, svd_solver="full").fit(X)
    return Codes(p.transform(X), p.transform(X_test), p.components_.size + p.mean_.size, p)


def pca_relu(X: np.ndarray, X_test: np.ndarray, n_features: int) -> Codes:
    """Half as many principal components, each split into its positive and negative part."""
    p = PCA(n_features // 2, svd_solver="full").fit(X)
    n = p.components_.size + p.mean_.size
    return Codes(signed_parts(p.transform(X)), signed_parts(p.transform(X_test)), n, p)


def random_relu(X: np.ndarray, X_test: np.ndarray, n_features: int, seed: int) -> Codes:
    """ReLU of a random Gaussian projection (scaled by 1/sqrt(D)), each unit's bias set so that it
    fires on half the training rows: features that learned nothing."""
    g = torch.Generator().manual_seed(seed)
    W = (torch.randn(n_features, X.shape[1], generator=g, dtype=torch.float64) / X.shape[1] ** 0.5).numpy()
    b = -np.median(X @ W.T, axis=0)
    return Codes(np.maximum(X @ W.T + b, 0), np.maximum(X_test @ W.T + b, 0), W.size + b.size)


def kmeans_triangle(X: np.ndarray, X_test: np.ndarray, n_features: int, seed: int) -> Codes:
    """k-means centroids (float32, one initialisation), read by the triangle rule of Coates et
    al.: max(0, mean distance to the centroids - distance to this centroid)."""
    km = KMeans(n_features, n_init=1, random_state=seed).fit(X.astype(np.float32))

    def triangle(rows: np.ndarray) -> np.ndarray:
        d = km.transform(rows.astype(np.float32))  # distances to the centroids
        return np.maximum(d.mean(1, keepdims=True) - d, 0).astype(np.float64)

    return Codes(triangle(X), triangle(X_test), km.cluster_centers_.size, km)


def gaussian_mixture(X: np.ndarray, X_test: np.ndarray, n_features: int, seed: int, pca_dims: int) -> Codes:
    """An explicit Gaussian mixture (diagonal covariances, fitted by EM) on the top ``pca_dims``
    principal components; its features are the responsibilities. ``fitted``: (PCA, mixture)."""
    check_positive_int("pca_dims", pca_dims)
    p = PCA(pca_dims, svd_solver="full").fit(X)
    gm = GaussianMixture(n_features, covariance_type="diag", reg_covar=1e-3, max_iter=200, random_state=seed)
    gm.fit(p.transform(X))
    n = gm.means_.size + gm.covariances_.size + gm.weights_.size + p.components_.size + p.mean_.size
    return Codes(gm.predict_proba(p.transform(X)), gm.predict_proba(p.transform(X_test)), n, (p, gm))


def log_responsibilities(mixture: Codes, X: np.ndarray, X_test: np.ndarray) -> Codes:
    """The same fitted mixture's log-responsibilities (floored at LOG_FLOOR): signed features."""
    p, gm = mixture.fitted

    def log_r(rows: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(gm.predict_proba(p.transform(rows)), LOG_FLOOR))

    return Codes(log_r(X), log_r(X_test), mixture.n_params, mixture.fitted)


def dictionary_learning(
    X: np.ndarray, n_components: int, alpha: float, epochs: int, seed: int
) -> MiniBatchDictionaryLearning:
    """A dictionary learned by scikit-learn's MiniBatchDictionaryLearning (coordinate descent,
    non-negative codes, the lasso as its encoder), ``epochs`` passes over ``X``."""
    check_positive("alpha", alpha)
    check_positive_int("epochs", epochs)
    return MiniBatchDictionaryLearning(
        n_components,
        alpha=alpha,
        batch_size=256,
        max_iter=epochs,
        fit_algorithm="cd",
        positive_code=True,
        transform_algorithm="lasso_cd",
        transform_alpha=alpha,
        random_state=seed,
    ).fit(X)


LASSO_PENALTY_BOUNDS = (1e-4, 10.0)  # the lasso penalties sparse_coding_at_l0 searches between


def lasso_penalty_for_l0(
    dictionary: MiniBatchDictionaryLearning,
    X: np.ndarray,
    target_l0: float,
    steps: int = 14,
    bounds: tuple[float, float] = LASSO_PENALTY_BOUNDS,
) -> float:
    """The lasso penalty (``transform_alpha``) whose codes of ``X`` have mean L0 ``target_l0``, by
    bisection on its logarithm within ``bounds`` (the L0 falls as the penalty grows). Give rows
    the dictionary did not learn from: its own training rows are coded differently.

    A non-negative lasso's L0 has a ceiling: even at a vanishing penalty it keeps no more atoms
    than non-negative least squares does, often far fewer than the dictionary holds. A target
    above the L0 at ``bounds[0]`` gets ``bounds[0]`` itself (the densest codes in reach) rather
    than a bisection that would settle on that bound anyway; a caller tells the two apart by
    comparing the penalty returned with ``bounds[0]`` and the codes' L0 with its target."""
    check_positive("target_l0", target_l0)

    def l0_at(penalty: float) -> float:
        dictionary.set_params(transform_alpha=penalty)
        return (dictionary.transform(X) > ACTIVE_THRESHOLD).sum(1).mean()

    if l0_at(bounds[0]) <= target_l0:
        return float(bounds[0])
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if l0_at(float(np.exp(mid))) > target_l0 else (lo, mid)
    return float(np.exp((lo + hi) / 2))


def sparse_coding_at_l0(
    X: np.ndarray, X_test: np.ndarray, n_features: int, seed: int, target_l0: float, samples: int, epochs: int
) -> Codes:
    """A dictionary learned on ``samples`` training rows (drawn with ``seed``), its lasso penalty
    then set so that 2,000 training rows it did not learn from have mean L0 ``target_l0`` (or, where
    that is out of the lasso's reach, to ``LASSO_PENALTY_BOUNDS[0]``: see ``lasso_penalty_for_l0``).
    ``fitted`` is the dictionary, its ``transform_alpha`` the penalty chosen."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(X), min(samples, len(X)), replace=False)
    dl = dictionary_learning(X[chosen], n_features, alpha=1.0, epochs=epochs, seed=seed)
    unseen = np.setdiff1d(np.arange(len(X)), chosen)
    held = X[unseen[:2000]] if len(unseen) else X[chosen[:2000]]
    dl.set_params(transform_alpha=lasso_penalty_for_l0(dl, held, target_l0))
    return Codes(dl.transform(X), dl.transform(X_test), dl.components_.size, dl)


def ica(X: np.ndarray, X_test: np.ndarray, n_features: int, seed: int) -> Codes:
    """FastICA (InfoMax's classical form) with half as many components on PCA-whitened rows,
    split into positive and negative parts."""
    p = PCA(n_features // 2, whiten=True, svd_solver="full").fit(X)
    model = FastICA(whiten=False, max_iter=400, random_state=seed).fit(p.transform(X))
    train, test = (signed_parts(model.transform(p.transform(rows))) for rows in (X, X_test))
    return Codes(train, test, model.components_.size + p.components_.size + p.mean_.size, (p, model))


def nmf(X: np.ndarray, X_test: np.ndarray, n_features: int, samples: int) -> Codes:
    """Non-negative matrix factorisation (NNDSVDa start, float32) fitted on ``samples`` training
    rows drawn once (seed 0); every row coded against that dictionary."""
    rng = np.random.default_rng(0)
    sample = X[rng.choice(len(X), min(samples, len(X)), replace=False)]
    model = NMF(n_features, init="nndsvda", max_iter=400, random_state=0).fit(sample.astype(np.float32))
    train, test = (model.transform(rows.astype(np.float32)).astype(np.float64) for rows in (X, X_test))
    return Codes(train, test, model.components_.size, model)
