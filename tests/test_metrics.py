"""Metrics on hand-built inputs with known answers and against float64 references."""

import math

import numpy as np
import pytest
import torch

from encoder_study.evaluation import metrics as M


def test_dead_units_and_firing():
    A = torch.stack(
        [torch.zeros(100), torch.full((100,), 5.0), torch.rand(100) * 10, torch.rand(100) * 0.1], 1
    )
    assert M.dead_units(A) == 3  # constant zero, constant 5, and a unit of variance < 0.01
    freq = M.firing_frequency(torch.tensor([[0.0, 1.0], [0.02, 1.0], [0.0, 0.0], [0.005, 1.0]]))
    assert freq.tolist() == [0.25, 0.75]


def test_redundancy_hand_cases():
    x = torch.randn(500)
    assert M.redundancy_score(torch.stack([x, x], 1)) == pytest.approx(2.0, abs=1e-9)
    assert M.redundancy_score(torch.stack([x, torch.zeros(500)], 1)) == 0.0
    A = torch.randn(1000, 6, dtype=torch.float64)
    c = np.corrcoef(A.numpy(), rowvar=False)
    assert M.redundancy_score(A) == pytest.approx((c**2).sum() - 6, rel=1e-9)
    y = torch.randn(50, 1).repeat(1, 64)
    assert M.redundancy_score(y) == pytest.approx(64 * 63, rel=1e-9)  # the maximum


def test_entropy_usage_effective_rank():
    assert M.responsibility_entropy(torch.zeros(10, 64)) == pytest.approx(math.log(64), abs=1e-12)
    one_hot = torch.full((4, 8), 1e4)
    one_hot[:, 3] = 0
    assert M.responsibility_entropy(one_hot) == pytest.approx(0.0, abs=1e-12)
    u = M.usage_distribution(one_hot)
    assert u[3] == pytest.approx(1.0) and u.sum() == pytest.approx(1.0)
    assert M.effective_rank(torch.eye(16)) == pytest.approx(16.0, rel=1e-12)
    assert M.effective_rank(torch.outer(torch.randn(10), torch.randn(7))) == pytest.approx(1.0, abs=1e-6)
    assert M.effective_rank(torch.diag(torch.tensor([1.0, 1.0, 0.0]))) == pytest.approx(2.0)


def test_l0_and_reconstruction():
    A = torch.tensor([[0.0, 0.5, 0.011], [0.009, 0.0, 0.0]])
    assert M.l0(A) == pytest.approx(1.0)
    W = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    X = torch.tensor([[1.0, 4.0, 3.0]])
    a = torch.tensor([[1.0, 2.0]])  # W^T a = [1, 4, 0]: error 9
    assert M.reconstruction_mse(X, a, W) == pytest.approx(9.0)


def test_readout_fvu_exact_and_null():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(400, 10, generator=g, dtype=torch.float64)
    P = torch.randn(10, 10, generator=g, dtype=torch.float64)
    A = X @ P + 3.0  # invertible affine map of X: a perfect linear readout exists
    exact = M.fit_linear_readout(A[:300], X[:300], ridge=0.0)
    assert M.fvu(X[300:], M.apply_linear_readout(A[300:], exact)) < 1e-12
    # the chosen penalty (at least 1e-8 of the mean diagonal) shrinks the exact map by about that
    # over the weakest direction's share of the diagonal: FVU of order its square, far below 1e-6
    assert M.readout_fvu(A[:300], X[:300], A[300:], X[300:]) < 1e-6
    noise = torch.randn(400, 5, generator=g, dtype=torch.float64)  # features unrelated to X
    assert M.readout_fvu(noise[:300], X[:300], noise[300:], X[300:]) == pytest.approx(1.0, abs=0.1)
    assert M.fvu(X, X.mean(0).expand_as(X)) == pytest.approx(1.0)


def test_linear_readout_with_ridge_zero_is_the_minimum_norm_least_squares_solution():
    """A design with a dead unit and a duplicated unit (rank-deficient): numpy's SVD lstsq of
    the whole design is the reference."""
    g = torch.Generator().manual_seed(2)
    A = torch.rand(500, 6, generator=g, dtype=torch.float64)
    A[:, 0] = 0.0
    A[:, 5] = 3 * A[:, 4]
    X = torch.randn(500, 7, generator=g, dtype=torch.float64)
    design = np.hstack([A.numpy(), np.ones((500, 1))])
    expected = np.linalg.lstsq(design, X.numpy(), rcond=None)[0]
    np.testing.assert_allclose(M.fit_linear_readout(A, X, ridge=0.0).numpy(), expected, atol=1e-10)


def test_linear_readout_chooses_its_ridge_as_sklearn_ridgecv_does():
    """sklearn's RidgeCV (efficient leave-one-out over the same absolute penalties, bias
    unpenalised) is the independent reference for both the chosen penalty and the map."""
    from sklearn.linear_model import RidgeCV

    g = torch.Generator().manual_seed(3)
    A = torch.rand(400, 8, generator=g, dtype=torch.float64)
    A[:, 0] = 0.0  # a dead unit
    X = A[:, 1:4] @ torch.randn(3, 5, generator=g, dtype=torch.float64) + torch.randn(400, 5, generator=g)
    X = X.double()
    centred = A - A.mean(0)
    scale = float((centred**2).sum()) / A.shape[1]
    alphas = [r * scale for r in M.READOUT_RIDGES]
    reference = RidgeCV(alphas=alphas, fit_intercept=True).fit(A.numpy(), X.numpy())
    ours = M.fit_linear_readout(A, X).numpy()
    np.testing.assert_allclose(ours[:-1], reference.coef_.T, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(ours[-1], reference.intercept_, rtol=1e-8, atol=1e-10)
    fixed = RidgeCV(alphas=[alphas[3]], fit_intercept=True).fit(A.numpy(), X.numpy())
    np.testing.assert_allclose(
        M.fit_linear_readout(A, X, ridge=M.READOUT_RIDGES[3])[:-1].numpy(),
        fixed.coef_.T,
        rtol=1e-8,
        atol=1e-10,
    )


@pytest.mark.parametrize("features,dims", [(3, 6), (6, 3)])  # the expanded residual, the direct one
def test_leave_one_out_errors_equal_refitting_without_each_row(features, dims):
    """The summed squared leave-one-out error, for both ways of forming the residual, against its
    definition: refit the ridge (bias unpenalised, the same absolute penalty) without each row in
    turn and predict that row."""
    g = torch.Generator().manual_seed(5)
    A = torch.rand(30, features, generator=g, dtype=torch.float64)
    X = A @ torch.randn(features, dims, generator=g, dtype=torch.float64)
    X = X + 0.3 * torch.randn(30, dims, generator=g, dtype=torch.float64)
    penalties = [1e-3, 0.1, 2.0]
    Ac, Xc = A - A.mean(0), X - X.mean(0)
    eigenvalues, V = torch.linalg.eigh(Ac.T @ Ac)
    U = Ac @ V
    ours = M._leave_one_out_errors(U, Xc, eigenvalues.clamp(min=0), U.T @ Xc, penalties)
    design = np.hstack([A.numpy(), np.ones((30, 1))])
    for penalty, error in zip(penalties, ours):
        penalty_matrix = np.diag([penalty] * features + [0.0])
        expected = 0.0
        for i in range(30):
            keep = np.arange(30) != i
            D, Y = design[keep], X.numpy()[keep]
            W = np.linalg.solve(D.T @ D + penalty_matrix, D.T @ Y)
            expected += float(((X.numpy()[i] - design[i] @ W) ** 2).sum())
        assert error == pytest.approx(expected, rel=1e-9)


def test_linear_readout_survives_units_that_fired_on_one_training_row_each():
    """Least squares fits a unit seen on one training row to that row's noise exactly; where the
    unit fires on test rows that weight wrecks the reconstruction (notebook 5's L1 SAEs with many
    nearly dead units: readout FVU 757). Such a row's leverage is 1, so leave-one-out rejects the
    small penalties and the readout stays near the fit without those units."""
    g = torch.Generator().manual_seed(4)
    X = torch.randn(3000, 6, generator=g, dtype=torch.float64)
    A = X @ torch.randn(6, 6, generator=g, dtype=torch.float64) + 0.5 * torch.randn(3000, 6, generator=g)
    rare = torch.zeros(3000, 5, dtype=torch.float64)
    for j in range(5):
        rare[10 * j, j] = 0.05  # one small firing on a training row ...
        rare[2000 + 100 * j : 2100 + 100 * j, j] = 1.0  # ... and many large ones on test rows
    A = torch.cat([A, rare], dim=1)
    train, test = slice(0, 2000), slice(2000, 3000)
    plain = M.fvu(
        X[test], M.apply_linear_readout(A[test], M.fit_linear_readout(A[train], X[train], ridge=0.0))
    )
    chosen = M.readout_fvu(A[train], X[train], A[test], X[test])
    without = M.readout_fvu(A[train, :6], X[train], A[test, :6], X[test])
    assert plain > 10 * without
    assert chosen < 1.5 * without


def test_linear_readout_refuses_a_negative_ridge():
    with pytest.raises(ValueError, match="ridge=-1"):
        M.fit_linear_readout(torch.ones(5, 2), torch.ones(5, 2), ridge=-1.0)


def test_linear_probe_on_separable_and_random_labels():
    g = torch.Generator().manual_seed(1)
    y = torch.randint(3, (600,), generator=g)
    A = torch.nn.functional.one_hot(y, 3).double() * 5 + 0.1 * torch.randn(
        600, 3, generator=g, dtype=torch.float64
    )
    assert M.linear_probe_accuracy(A[:400], y[:400], A[400:], y[400:]) == 1.0
    r = torch.randint(3, (600,), generator=g)
    assert M.linear_probe_accuracy(A[:400], r[:400], A[400:], r[400:]) < 0.5


def test_logistic_regression_matches_sklearn():
    """Same objective, solver and start as sklearn's LogisticRegression(): the same optimum, and
    the same predictions on held-out rows (sklearn is the independent reference here)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    g = torch.Generator().manual_seed(3)
    centres = torch.randn(4, 6, generator=g, dtype=torch.float64)
    y = torch.randint(4, (900,), generator=g)
    A = centres[y] + 1.5 * torch.randn(900, 6, generator=g, dtype=torch.float64)
    A[:, 2] = 7.0  # a constant feature: left unscaled, as StandardScaler does
    labels = torch.tensor([3, 5, 8, 9])[y]  # arbitrary class labels
    tr, te = M._standardise(A[:600], A[600:])
    scaler = StandardScaler().fit(A[:600].numpy())
    np.testing.assert_allclose(tr.numpy(), scaler.transform(A[:600].numpy()), atol=1e-12)
    clf = LogisticRegression(max_iter=5000).fit(tr.numpy(), labels[:600].numpy())
    Wb = M.fit_logistic_regression(tr, y[:600], 4)
    np.testing.assert_allclose(Wb[:-1].T.numpy(), clf.coef_, atol=1e-5)
    np.testing.assert_allclose(Wb[-1].numpy(), clf.intercept_, atol=1e-5)
    expected = (clf.predict(te.numpy()) == labels[600:].numpy()).mean()
    assert 0.5 < expected < 1.0  # a problem where the probe can err
    assert M.linear_probe_accuracy(A[:600], labels[:600], A[600:], labels[600:]) == expected


def test_logistic_regression_warns_when_stopped_early():
    g = torch.Generator().manual_seed(4)
    A, y = torch.randn(200, 5, generator=g, dtype=torch.float64), torch.randint(3, (200,), generator=g)
    with pytest.warns(RuntimeWarning, match="max_iter=2"):
        M.fit_logistic_regression(A, y, 3, max_iter=2)


def test_metrics_need_no_gradient():
    A = torch.rand(20, 4, requires_grad=True)
    M.redundancy_score(A), M.dead_units(A), M.l0(A), M.responsibility_entropy(A)  # noqa: B018
    assert A.grad is None


def test_metric_input_shape_error():
    with pytest.raises(ValueError, match="shape"):
        M.dead_units(torch.zeros(3))


def test_plateau_epoch_hand_cases():
    assert M.plateau_epoch([5, 4, 3, 3, 3, 3]) == 3  # no improvement after epoch 3
    assert M.plateau_epoch([1, 1, 1]) == 1
    assert M.plateau_epoch([10, 5, 2, 1, 0.5, 0.2]) == 6  # still improving at the end
    assert M.plateau_epoch([10, 0, 0.0001, 0]) == 2  # a 0.001% wiggle does not count


def test_template_correlation_hand_built():
    g = torch.Generator().manual_seed(0)
    X = torch.rand(300, 16, generator=g, dtype=torch.float64)
    assign = torch.arange(300) % 3
    onehot = torch.nn.functional.one_hot(assign, 3).double()
    templates = torch.stack([X[assign == k].mean(0) for k in range(3)])
    assert M.template_correlation(2.0 * templates + 1.0, X, onehot) == pytest.approx(1.0, abs=1e-12)
    assert M.template_correlation(-templates, X, onehot) == pytest.approx(-1.0, abs=1e-12)
    silent = torch.cat([onehot[:, :2], torch.zeros(300, 1, dtype=torch.float64)], 1)  # unit 2 answers nothing
    assert M.template_correlation(templates, X, silent) == pytest.approx(1.0, abs=1e-12)


def test_weight_input_alignment_hand_built():
    W = torch.eye(4, dtype=torch.float64) * 3.0
    X = torch.eye(4, dtype=torch.float64)[[0, 1, 2, 3, 0]] * 2.0
    own = torch.eye(4, dtype=torch.float64)[[0, 1, 2, 3, 0]]
    assert M.weight_input_alignment(W, X, own) == pytest.approx(1.0, abs=1e-12)
    other = torch.eye(4, dtype=torch.float64)[[1, 2, 3, 0, 1]]
    assert M.weight_input_alignment(W, X, other) == pytest.approx(0.0, abs=1e-12)
    assert M.weight_input_alignment(W, X, torch.full((5, 4), 0.25, dtype=torch.float64)) == pytest.approx(
        0.25
    )


def test_centre_surround_opposition_hand_built():
    side = 10
    centre = torch.zeros(side, side, dtype=torch.bool)
    centre[3:7, 3:7] = True  # the middle 40% of each side
    on_off = torch.where(centre, 1.0, -0.5).flatten()
    template = torch.where(centre, 1.0, 0.2).flatten()
    W = torch.stack([on_off, template, -on_off, template])
    assert M.centre_surround_opposition(W, side) == 0.5
    with pytest.raises(ValueError, match="side x side = 100"):
        M.centre_surround_opposition(torch.ones(2, 99), side)


def test_probe_correct_is_the_probe_accuracy_per_row():
    from encoder_study.evaluation.metrics import linear_probe_accuracy

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=g)
    A = torch.randn(300, 5, generator=g) + torch.nn.functional.one_hot(y, 5).float() * 1.5
    per_row = M.probe_correct(A[:200], y[:200], A[200:], y[200:], max_iter=200)
    assert per_row.shape == (100,) and set(np.unique(per_row)) <= {0.0, 1.0}
    assert 0.5 < per_row.mean() < 1.0  # separable enough to learn, noisy enough to miss some
    assert per_row.mean() == linear_probe_accuracy(A[:200], y[:200], A[200:], y[200:], max_iter=200)
