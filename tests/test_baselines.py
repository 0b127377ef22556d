"""The classical feature maps of notebooks 7 and 9, against hand-computed answers and independent
computations (numpy's SVD for PCA), on small inputs."""

import numpy as np
import pytest

from encoder_study.evaluation import baselines as B


def _rows(n=300, d=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, d)), rng.random((n // 3, d))


def test_signed_parts_splits_a_code_into_its_positive_and_negative_halves():
    S = np.array([[1.5, -2.0], [0.0, 3.0]])
    np.testing.assert_array_equal(B.signed_parts(S), [[1.5, 0.0, 0.0, 2.0], [0.0, 3.0, 0.0, 0.0]])


def test_pca_scores_match_numpys_svd_up_to_sign():
    X, Xt = _rows()
    codes = B.pca(X, Xt, 4)
    U, s, Vt = np.linalg.svd(X - X.mean(0), full_matrices=False)
    reference = (Xt - X.mean(0)) @ Vt[:4].T
    np.testing.assert_allclose(np.abs(codes.test), np.abs(reference), rtol=1e-8, atol=1e-10)
    assert codes.n_params == 4 * 12 + 12
    halves = B.pca_relu(X, Xt, 4)
    assert halves.train.shape == (300, 4) and (halves.train >= 0).all()


def test_random_relu_units_fire_on_half_the_training_rows_and_follow_the_seed():
    X, Xt = _rows(n=301)
    codes = B.random_relu(X, Xt, 8, seed=3)
    np.testing.assert_array_equal((codes.train > 0).sum(0), np.full(8, 150))  # the median row sits at 0
    np.testing.assert_array_equal(codes.test, B.random_relu(X, Xt, 8, seed=3).test)
    assert not np.array_equal(codes.test, B.random_relu(X, Xt, 8, seed=4).test)


def test_kmeans_triangle_on_two_separated_clusters():
    """Points on two far-apart centroids at distance L: a point at its centroid has distances (0, L),
    mean L/2, so its triangle features are (L/2, 0)."""
    X = np.array([[0.0, 0.0]] * 20 + [[10.0, 0.0]] * 20)
    codes = B.kmeans_triangle(X, np.array([[0.0, 0.0], [10.0, 0.0]]), 2, seed=0)
    assert sorted(codes.test[0]) == pytest.approx([0.0, 5.0]) and sorted(codes.test[1]) == pytest.approx(
        [0.0, 5.0]
    )
    assert codes.test[0].argmax() != codes.test[1].argmax()


def test_gaussian_mixture_features_are_responsibilities_and_their_floored_logs():
    X, Xt = _rows()
    mixture = B.gaussian_mixture(X, Xt, 3, seed=0, pca_dims=4)
    np.testing.assert_allclose(mixture.test.sum(1), 1.0, rtol=1e-12)
    logs = B.log_responsibilities(mixture, X, Xt)
    np.testing.assert_allclose(logs.test, np.log(np.maximum(mixture.test, B.LOG_FLOOR)), rtol=1e-12)
    assert logs.n_params == mixture.n_params


def test_lasso_penalty_brackets_the_target_l0():
    """The L0 falls as the penalty grows: half the penalty found gives at least the target, twice
    it at most."""
    X, Xt = _rows(n=400, d=10)
    dl = B.dictionary_learning(X, 8, alpha=0.1, epochs=2, seed=0)
    penalty = B.lasso_penalty_for_l0(dl, Xt, target_l0=3.0)

    def l0_at(alpha):
        dl.set_params(transform_alpha=alpha)
        return (dl.transform(Xt) > 0.01).sum(1).mean()

    assert l0_at(penalty / 2) >= 3.0 >= l0_at(penalty * 2)


def test_lasso_penalty_takes_the_smallest_bound_for_a_target_l0_out_of_reach():
    """A dictionary of 4 atoms cannot code a row with more than 4 active atoms: a target of 6 gets
    the smallest penalty of the bounds, the densest codes in reach."""
    X, Xt = _rows(n=400, d=10)
    dl = B.dictionary_learning(X, 4, alpha=0.1, epochs=2, seed=0)
    assert B.lasso_penalty_for_l0(dl, Xt, target_l0=6.0, bounds=(1e-4, 10.0)) == 1e-4
    assert B.lasso_penalty_for_l0(dl, Xt, target_l0=0.5, bounds=(1e-4, 10.0)) > 1e-4


def test_nmf_and_ica_give_non_negative_codes_of_the_asked_width():
    X, Xt = _rows()
    for codes in (B.nmf(X, Xt, 6, samples=200), B.ica(X, Xt, 6, seed=0)):
        assert codes.train.shape == (300, 6) and codes.test.shape == (100, 6)
        assert (codes.test >= 0).all() and codes.train.dtype == np.float64


def test_bad_settings_are_refused_by_name():
    X, _ = _rows()
    with pytest.raises(ValueError, match="pca_dims"):
        B.gaussian_mixture(X, X, 3, seed=0, pca_dims=0)
    with pytest.raises(ValueError, match="target_l0"):
        B.lasso_penalty_for_l0(B.dictionary_learning(X, 4, 0.1, 1, 0), X, target_l0=0)
