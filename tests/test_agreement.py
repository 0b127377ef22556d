"""soft_nmi against hand-built cases and scikit-learn's NMI of hard clusterings."""

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from encoder_study.evaluation.agreement import hard, soft_nmi


def _one_hot(labels, k):
    return np.eye(k)[labels]


def test_identical_and_relabelled_assignments_agree_fully():
    labels = np.random.default_rng(0).integers(0, 5, 400)
    R = _one_hot(labels, 5)
    assert soft_nmi(R, R) == pytest.approx(1.0, abs=1e-12)
    assert soft_nmi(R, R[:, [3, 1, 4, 0, 2]]) == pytest.approx(1.0, abs=1e-12)  # order of components is free


def test_independent_assignments_share_nothing():
    # every pairing of 4 x 3 labels equally often: the joint is the product of the marginals
    a, b = np.meshgrid(np.arange(4), np.arange(3), indexing="ij")
    assert soft_nmi(_one_hot(a.ravel(), 4), _one_hot(b.ravel(), 3)) == pytest.approx(0.0, abs=1e-12)
    uniform = np.full((50, 6), 1 / 6)  # a soft assignment that says nothing
    assert soft_nmi(uniform, _one_hot(np.arange(50) % 3, 3)) == pytest.approx(0.0, abs=1e-12)  # float64 logs


def test_hard_assignments_match_sklearn_geometric_nmi():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 6, 1000)
    y = np.where(rng.random(1000) < 0.6, x % 4, rng.integers(0, 4, 1000))  # partly dependent
    expected = normalized_mutual_info_score(x, y, average_method="geometric")
    assert soft_nmi(_one_hot(x, 6), _one_hot(y, 4)) == pytest.approx(expected, rel=1e-12)


def test_hard_takes_the_first_of_ties_and_bad_input_is_named():
    assert (hard(np.array([[0.25, 0.25, 0.5], [0.4, 0.4, 0.2]])) == [[0, 0, 1], [1, 0, 0]]).all()
    with pytest.raises(ValueError, match="R1 must hold non-negative rows that sum to 1"):
        soft_nmi(np.array([[0.5, 0.6]]), np.array([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="same samples; got 2 and 1 rows"):
        soft_nmi(np.eye(2), np.array([[1.0, 0.0]]))
