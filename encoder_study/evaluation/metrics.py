"""What a trained model is judged by. Everything here runs without gradients, in float64
where sums over many samples are taken. ``A`` is a matrix of activations (samples x units)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.optimize
import torch
from threadpoolctl import threadpool_limits

from ..book.validation import check_positive_int
from ..models.losses import neg_lse_and_exp, off_diagonal_sq_sum, weight_redundancy_loss

ACTIVE_THRESHOLD = 0.01  # L0 and firing frequency: a unit is active when a > 0.01
DEAD_VARIANCE = 0.01  # a unit is dead when its activation's variance over the test set < 0.01


def _with_bias_column(A: torch.Tensor) -> torch.Tensor:
    """[A, 1]: the design of an affine map, its bias as the last coefficient row."""
    return torch.cat([A, torch.ones(len(A), 1, dtype=A.dtype, device=A.device)], dim=1)


def _as64(A, min_samples: int = 1) -> torch.Tensor:
    """A as a float64 matrix, or an error: a metric of NaN activations would be a silent 0."""
    A = torch.as_tensor(A)
    if A.dim() != 2:
        raise ValueError(f"expected a matrix (samples, units); got shape {tuple(A.shape)}")
    if len(A) < min_samples:
        raise ValueError(f"this metric needs at least {min_samples} samples; got {len(A)}")
    A = A.detach().to(torch.float64)
    if not bool(torch.isfinite(A).all()):
        raise ValueError(
            "the activations hold NaN or infinite values (a diverged run?); no metric of them is meaningful"
        )
    return A


@torch.no_grad()
def features(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    """Activations a of every row of x, in chunks, as a float32 tensor on x's device."""
    return torch.cat([model.encode(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def dead_units(A, threshold: float = DEAD_VARIANCE) -> int:
    """Units whose activation variance over the samples is below ``threshold`` (docs/paper.md)."""
    return int((_as64(A, min_samples=2).var(dim=0) < threshold).sum())


@torch.no_grad()
def firing_frequency(A, threshold: float = ACTIVE_THRESHOLD) -> np.ndarray:
    """Per unit, the share of samples on which it is active (a > threshold)."""
    return (_as64(A) > threshold).double().mean(dim=0).numpy()


@torch.no_grad()
def l0(A, threshold: float = ACTIVE_THRESHOLD) -> float:
    """Mean number of active units (a > threshold) per sample."""
    return float((_as64(A) > threshold).sum(dim=1).double().mean())


@torch.no_grad()
def correlation(A) -> torch.Tensor:
    """Correlation matrix of the units over the samples; a constant unit correlates 0 with all."""
    A = _as64(A)
    c = A - A.mean(dim=0)
    cov = c.T @ c / (len(A) - 1)
    std = cov.diagonal().clamp_min(0).sqrt()
    inv = torch.where(std > 0, 1.0 / std, torch.zeros_like(std))
    return cov * inv[:, None] * inv[None, :]


@torch.no_grad()
def redundancy_score(A) -> float:
    """Squared Frobenius norm of the off-diagonal part of Corr(A); at most K(K-1)."""
    return float(off_diagonal_sq_sum(correlation(A)))


@torch.no_grad()
def weight_redundancy(W) -> float:
    """||W_n W_n^T - I||_F^2 over the unit-normalised rows of W."""
    return float(weight_redundancy_loss(torch.as_tensor(W).detach().to(torch.float64)))


@torch.no_grad()
def effective_rank(M) -> float:
    """exp(entropy of the singular values normalised to sum 1) (Roy & Vetterli 2007)."""
    s = torch.linalg.svdvals(_as64(M))
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def responsibilities(A) -> torch.Tensor:
    return torch.softmax(-_as64(A), dim=1)


@torch.no_grad()
def responsibility_entropy(A) -> float:
    """Mean over samples of H(softmax(-a)) in nats; ln K means every sample is shared evenly."""
    r = responsibilities(A)
    return float(-(r * torch.log(r.clamp_min(1e-300))).sum(dim=1).mean())


@torch.no_grad()
def silent_responsibility_share(A) -> np.ndarray:
    """Per sample, the share of its responsibility softmax(-a) that goes to units with a = 0
    exactly (a ReLU unit that is off): (samples,), 0 where no unit is off. With ReLU, the units
    that do not respond to a sample are its most responsible ones, each as much as the others."""
    r = responsibilities(A)
    return (r * (_as64(A) == 0)).sum(dim=1).numpy()


@torch.no_grad()
def usage_distribution(A) -> np.ndarray:
    """Mean responsibility of each component over the samples (sums to 1): how the data is shared."""
    return responsibilities(A).mean(dim=0).numpy()


@torch.no_grad()
def reconstruction_mse(X, A, W) -> float:
    """Mean over samples of ||x - W^T a||^2: reconstruction through the encoder's own weights."""
    X, A, W = _as64(X), _as64(A), _as64(W)
    return float(((X - A @ W) ** 2).sum(dim=1).mean())


@torch.no_grad()
def fvu(X, X_hat) -> float:
    """Fraction of variance unexplained: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2."""
    X, X_hat = _as64(X), _as64(X_hat)
    return float(((X - X_hat) ** 2).sum() / ((X - X.mean(dim=0)) ** 2).sum())


READOUT_RIDGES = (1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 1e-1)  # relative to the mean diagonal of the Gram


@torch.no_grad()
def fit_linear_readout(A_train, X_train, ridge: float | None = None) -> torch.Tensor:
    """Ridge-regularised affine map from features to inputs, fitted on train: (K + 1, D), bias last.

    The penalty is ``ridge`` times the mean diagonal of the centred features' Gram matrix (so one
    value means the same at any activation scale); the bias is not penalised. Without ``ridge``,
    it is the value from READOUT_RIDGES with the least leave-one-out squared error, computed
    exactly from one eigendecomposition (each row's residual over one minus its leverage): plain
    least squares gives a unit that fired on a handful of training rows whatever weight fits
    those rows exactly, and that weight wrecks the test rows where the unit fires (a readout FVU
    in the hundreds for SAEs with many nearly dead units); a row fitted by its own unit alone has
    leverage near 1, so leave-one-out sees the damage. ``ridge=0`` gives the minimum-norm least
    squares solution (thin QR, then an SVD solve of the small triangle).
    """
    A, X = _as64(A_train), _as64(X_train)
    if ridge is not None and not (math.isfinite(ridge) and ridge >= 0):
        raise ValueError(
            f"ridge={ridge!r}: must be a finite number >= 0, or None to choose it by leave-one-out"
        )
    if ridge == 0:
        design = _with_bias_column(A)
        Q, R = torch.linalg.qr(design)
        cutoff = torch.finfo(torch.float64).eps * max(design.shape)
        return torch.linalg.lstsq(R, Q.T @ X, rcond=cutoff, driver="gelsd").solution
    mean_a, mean_x = A.mean(dim=0), X.mean(dim=0)
    Ac, Xc = A - mean_a, X - mean_x
    eigenvalues, V = torch.linalg.eigh(Ac.T @ Ac)
    eigenvalues = eigenvalues.clamp(min=0)  # a Gram matrix has none below 0 but rounding's
    scale = float(eigenvalues.sum()) / A.shape[1] or 1.0  # the mean diagonal (the trace / K)
    projected = V.T @ (Ac.T @ Xc)  # (K, D)
    if ridge is None:
        penalties = [r * scale for r in READOUT_RIDGES]
        errors = _leave_one_out_errors(Ac @ V, Xc, eigenvalues, projected, penalties)
        ridge = READOUT_RIDGES[errors.index(min(errors))]
    M = V @ (projected / (eigenvalues + ridge * scale)[:, None])
    return torch.cat([M, (mean_x - mean_a @ M)[None]])


def _leave_one_out_errors(
    U: torch.Tensor, Xc: torch.Tensor, eigenvalues: torch.Tensor, projected: torch.Tensor, penalties: list
) -> list[float]:
    """Per absolute penalty, the summed squared leave-one-out residual of the ridge fit: each row's
    residual over (1 - leverage), the leverage including the unpenalised bias's 1/n (inf where a
    row is fitted by itself alone: leverage 1).

    U = Ac V (n, K) holds the rows in the Gram's eigenbasis and ``projected`` = U^T Xc (K, D). With
    fewer features than input dimensions (MNIST: 64 against 784) a row's squared residual is
    expanded, |x|^2 - 2 z.(P x) + z^T (P P^T) z with z the row's penalised coordinates, so each
    penalty costs n K^2 instead of an n x D residual (n K D, and passes over n D numbers); the
    expansion loses about eps |x|^2 per row to cancellation, far below the differences between
    penalties. Otherwise the residual is formed directly.
    """
    expand = U.shape[1] < Xc.shape[1]
    if expand:
        row_norms, cross, gram = Xc.square().sum(1), Xc @ projected.T, projected @ projected.T
    errors = []
    for penalty in penalties:
        Z = U / (eigenvalues + penalty)
        if expand:
            squared = (row_norms - 2 * (Z * cross).sum(1) + ((Z @ gram) * Z).sum(1)).clamp(min=0)
        else:
            squared = (Xc - Z @ projected).square().sum(1)
        leverage = (U * Z).sum(1) + 1.0 / len(U)
        error = float((squared / (1.0 - leverage) ** 2).sum())
        errors.append(error if math.isfinite(error) else math.inf)
    return errors


@torch.no_grad()
def apply_linear_readout(A, M: torch.Tensor) -> torch.Tensor:
    """The inputs a fitted readout ``M`` (from fit_linear_readout) rebuilds from features A (float64)."""
    return _with_bias_column(_as64(A)) @ M


@torch.no_grad()
def readout_fvu(A_train, X_train, A_test, X_test) -> float:
    """FVU on test of a (ridge) linear readout fitted on train features: a fair
    reconstruction score for a model without a decoder (and, beside its decoder, for an SAE)."""
    return fvu(X_test, apply_linear_readout(A_test, fit_linear_readout(A_train, X_train)))


def _standardise(A_train, A_test) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and scale each feature by its training mean and standard deviation (float64); a
    feature constant up to rounding keeps scale 1 (sklearn's StandardScaler rule)."""
    tr, te = _as64(A_train).cpu(), _as64(A_test).cpu()
    mean, var = tr.mean(0), tr.var(0, correction=0)
    n, eps = len(tr), torch.finfo(torch.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2
    std = torch.where(constant, 1.0, var.sqrt())
    return (tr - mean) / std, (te - mean) / std


def fit_logistic_regression(
    A: torch.Tensor, y: torch.Tensor, n_classes: int, max_iter: int = 5000, tol: float = 1e-4
) -> torch.Tensor:
    """Multinomial logistic regression with an unpenalised bias, ``(features + 1, classes)``.

    The objective and solver are sklearn's ``LogisticRegression()`` (C = 1): mean cross-entropy
    + ||W||^2 / (2 n), minimised from zero by scipy's L-BFGS-B with sklearn's options, so both
    take the same iterates. Only the loss and gradient move to torch (float64), which here is
    about 5x faster than sklearn's, and scipy's BLAS is held to one thread: its spinning OpenBLAS
    threads fought torch's for the two cores (one probe 3.3 s, 0.6 s with one BLAS thread).
    """
    check_positive_int("max_iter", max_iter)
    n, f = A.shape
    A1 = _with_bias_column(A)
    onehot = torch.nn.functional.one_hot(y, n_classes).to(A.dtype)
    l2 = 1.0 / n

    def loss_and_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        Wb = torch.from_numpy(w).view(f + 1, n_classes)  # sklearn's F-ordered (classes, f + 1)
        Z = A1 @ Wb
        neg_lse, E, total = neg_lse_and_exp(-Z)  # log sum_c exp(Z_c) = -neg_lse, E / total = softmax(Z)
        loss = -(neg_lse.sum() + (Z * onehot).sum()) / n
        G = torch.mm(A1.T, E.div_(total).sub_(onehot)).div_(n)
        W = Wb[:f]
        G[:f].add_(W, alpha=l2)
        return float(loss + 0.5 * l2 * W.square().sum()), G.reshape(-1).numpy()

    with threadpool_limits(limits=1, user_api="blas"):
        res = scipy.optimize.minimize(
            loss_and_grad,
            np.zeros((f + 1) * n_classes),
            method="L-BFGS-B",
            jac=True,
            options={"maxiter": max_iter, "maxls": 50, "gtol": tol, "ftol": 64 * np.finfo(float).eps},
        )
    if res.status == 1:
        warnings.warn(
            f"logistic regression stopped at max_iter={max_iter} before converging",
            RuntimeWarning,
            stacklevel=2,
        )
    return torch.from_numpy(res.x).view(f + 1, n_classes)


@torch.no_grad()
def probe_correct(A_train, y_train, A_test, y_test, max_iter: int = 5000) -> np.ndarray:
    """Per test row, 1.0 where a multinomial logistic regression fitted on standardised train
    features (sklearn's default LogisticRegression, see ``fit_logistic_regression``) predicts its
    label, else 0.0. Their mean is the probe accuracy; kept per row, they let an interval resample
    the test rows, paired across models scored on the same rows."""
    check_positive_int("max_iter", max_iter)  # before any work (probe_max_iter in the notebooks)
    tr, te = _standardise(A_train, A_test)
    classes, y = torch.unique(torch.as_tensor(y_train).cpu(), return_inverse=True)
    Wb = fit_logistic_regression(tr, y, len(classes), max_iter=max_iter)
    pred = classes[(te @ Wb[:-1] + Wb[-1]).argmax(1)]
    return (pred == torch.as_tensor(y_test).cpu()).double().numpy()


def linear_probe_accuracy(A_train, y_train, A_test, y_test, max_iter: int = 5000) -> float:
    """Test accuracy of the linear probe: the mean of ``probe_correct``."""
    return float(probe_correct(A_train, y_train, A_test, y_test, max_iter).mean())


NEVER_FIRES = 0.001  # firing-frequency rule: a unit active on < 0.1% of samples is dead


@torch.no_grad()
def activation_summary(A, W) -> dict:
    """The per-run numbers every notebook reports, from test-set activations A and weights W.

    ``dead_units`` is the paper's variance rule; ``dead_by_firing`` counts units active on fewer
    than 0.1% of samples, a rule that does not depend on the activations' scale; ``never_fires``
    the units active on no sample at all.
    """
    freq = firing_frequency(A)
    return {
        "dead_units": dead_units(A),
        "dead_by_firing": int((freq < NEVER_FIRES).sum()),
        "never_fires": int((freq == 0).sum()),
        "redundancy": redundancy_score(A),
        "weight_redundancy": weight_redundancy(W),
        "effective_rank": effective_rank(W),
        "responsibility_entropy": responsibility_entropy(A),
        "l0": l0(A),
        "mean_activation": float(_as64(A).mean()),
        "mean_firing_frequency": float(freq.mean()),
    }


def plateau_epoch(losses, tol: float = 1e-3) -> int:
    """The epoch (1-based) after which the loss never again improves on its best by more than
    ``tol`` x its total improvement: where training stops learning, by a scale-free rule."""
    losses = np.asarray(losses, dtype=np.float64)
    span = max(abs(losses[0] - losses.min()), 1e-12)
    best_after = np.minimum.accumulate(losses[::-1])[::-1]  # the best loss from each epoch on
    still = np.nonzero(losses - best_after > tol * span)[0]
    return int(still[-1] + 2) if len(still) else 1


def improvement_epoch(losses, fraction: float = 0.9) -> int:
    """The first epoch (1-based) by which the loss has made ``fraction`` of its whole decrease,
    from the first epoch's value to the best one: how fast a run learns, by a scale-free rule.

    Unlike ``plateau_epoch`` it tells runs apart that are all still improving at the end (it
    measures speed, not arrival: the decrease is counted up to where training stopped).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction!r} must be in (0, 1]")
    losses = np.asarray(losses, dtype=np.float64)
    if len(losses) == 0 or not np.isfinite(losses).all():
        raise ValueError("losses must be a non-empty sequence of finite values")
    decrease = losses[0] - losses.min()
    if decrease <= 0:
        return 1
    reached = np.nonzero(losses[0] - losses >= fraction * decrease)[0]
    return int(reached[0] + 1)


# -- geometry of the weights: are they prototypes of the inputs they answer to? ---------------------


def _pearson_rows(P: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of P with the same row of Q (0 where a row is constant)."""
    P, Q = P - P.mean(1, keepdim=True), Q - Q.mean(1, keepdim=True)
    denom = P.norm(dim=1) * Q.norm(dim=1)
    return torch.where(denom > 0, (P * Q).sum(1) / denom.clamp_min(1e-300), 0.0)


@torch.no_grad()
def template_correlation(W, X, weights) -> float:
    """Mean over units k of the correlation (over input dimensions) between unit k's weight vector
    and its template: the mean of the inputs weighted by ``weights[:, k]`` (responsibilities, or
    the unit's own activations: the inputs it answers to). 1 when every unit's weights are a
    scaled, shifted copy of its template ("prototypes"); units with zero total weight are left out."""
    W, X, G = _as64(W), _as64(X), _as64(weights)
    mass = G.sum(0)
    used = mass > 0
    templates = (G[:, used].T @ X) / mass[used].unsqueeze(1)
    return float(_pearson_rows(W[used], templates).mean()) if used.any() else float("nan")


@torch.no_grad()
def weight_input_alignment(W, X, R) -> float:
    """Mean over samples of sum_k R[n, k] cos(x_n, w_k): how well the units responsible for an
    input (rows of R sum to 1) point along it."""
    W, X, R = _as64(W), _as64(X), _as64(R)
    Wn = W / W.norm(dim=1, keepdim=True).clamp_min(1e-300)
    Xn = X / X.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return float(((Xn @ Wn.T) * R).sum(1).mean())


@torch.no_grad()
def centre_surround_opposition(W, side: int = 28, centre_fraction: float = 0.4) -> float:
    """The share of units whose mean weight over the centre of the image (the middle
    ``centre_fraction`` of each side) and over the rest have opposite signs: ON-centre/OFF-surround
    detectors (or the reverse), as opposed to templates whose weights keep one sign."""
    W = _as64(W)
    if W.shape[1] != side * side:
        raise ValueError(
            f"W has {W.shape[1]} inputs; centre_surround_opposition needs side x side = {side * side}"
        )
    img = W.view(-1, side, side)
    margin = round(side * (1 - centre_fraction) / 2)
    mask = torch.zeros(side, side, dtype=torch.bool)
    mask[margin : side - margin, margin : side - margin] = True
    centre, surround = img[:, mask].mean(1), img[:, ~mask].mean(1)
    return float(((centre * surround) < 0).double().mean())
