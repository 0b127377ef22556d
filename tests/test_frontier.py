"""Matched-L0 readings against hand-computed answers."""

import math

import numpy as np
import pytest

from encoder_study.evaluation.frontier import REACH, match_l0, value_at_l0


def test_between_points_the_reading_is_linear_in_log_l0():
    # log10 L0 = 1, 2; target 10 ** 1.5 sits halfway
    assert value_at_l0([10.0, 100.0], [1.0, 3.0], 10**1.5) == pytest.approx(2.0, rel=1e-12)
    assert value_at_l0([100.0, 10.0], [3.0, 1.0], 10**1.25) == pytest.approx(1.5, rel=1e-12)  # order free
    assert value_at_l0([10.0, 100.0, 1000.0], [1.0, 3.0, 4.0], 10**2.5) == pytest.approx(3.5, rel=1e-12)
    m = match_l0([10.0, 100.0], 100.0)
    assert m is not None and not m.extrapolated and m.of([1.0, 3.0]) == pytest.approx(3.0)


def test_just_beyond_the_range_the_end_segment_is_extended_and_flagged():
    target = 120.0
    m = match_l0([10.0, 100.0], target)
    assert m is not None and m.extrapolated
    expected = 1.0 + 2.0 * (math.log(target) - math.log(10.0)) / math.log(10.0)
    assert m.of([1.0, 3.0]) == pytest.approx(expected, rel=1e-12)
    assert match_l0([10.0, 100.0], 100.0 * REACH * 1.001) is None
    assert match_l0([10.0, 100.0], 10.0 / REACH / 1.001) is None
    assert match_l0([10.0, 100.0], 120.0, reach=1.0) is None


def test_no_extrapolation_further_than_the_end_segment_itself():
    """Notebook 6's JumpReLU: L0 7.07 and 7.47 read at 8 gave a probe accuracy of 107%. The end
    segment spans log(7.47 / 7.07) = 0.055; 8 lies 0.069 beyond it: no value. Within the span it
    is read as before (7.8 lies 0.043 beyond)."""
    assert match_l0([7.07, 7.47], 8.0) is None
    assert match_l0([7.47, 7.07], 6.55) is None  # below the range as well (0.076 below 7.07)
    m = match_l0([7.07, 7.47], 7.8)
    assert m is not None and m.extrapolated
    expected = (math.log(7.8) - math.log(7.07)) / (math.log(7.47) - math.log(7.07))
    assert m.weight == pytest.approx(expected, rel=1e-12)


def test_unlimited_reach_places_a_knob_far_beyond_the_measured_points():
    """reach=inf (notebook 5 placing a knob it will measure) lifts both limits: the end segment
    L0 7.07 to 7.47 extended to 20, flagged, with the weight of the straight line in log L0."""
    m = match_l0([7.07, 7.47], 20.0, reach=math.inf)
    assert m is not None and m.extrapolated and (m.lo, m.hi) == (0, 1)
    expected = (math.log(20.0) - math.log(7.07)) / (math.log(7.47) - math.log(7.07))
    assert m.weight == pytest.approx(expected, rel=1e-12)
    assert match_l0([7.07, 7.47], 20.0, reach=3.0) is None


def test_collapsed_and_missing_points_are_left_out():
    assert np.isnan(value_at_l0([10.0, 0.0], [1.0, 2.0], 5.0))  # one usable point only
    assert value_at_l0([10.0, np.nan, 100.0, 0.0], [1.0, 9.0, 3.0, 9.0], 10**1.5) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="reach=0.5"):
        match_l0([1.0, 2.0], 1.5, reach=0.5)


def test_arrays_per_point_are_read_elementwise_with_the_same_weights():
    per_context = np.array([[1.0, 2.0, 3.0], [3.0, 6.0, 9.0]])  # two points, three contexts
    m = match_l0([10.0, 100.0], 10**1.5)
    np.testing.assert_allclose(m.of(per_context), [2.0, 4.0, 6.0], rtol=1e-12)
    assert m.of(per_context).mean() == pytest.approx(value_at_l0([10.0, 100.0], per_context.mean(1), 10**1.5))


def test_series_are_read_by_position_not_label():
    import pandas as pd

    l0s = pd.Series([10.0, 100.0], index=[7, 3])
    values = pd.Series([1.0, 3.0], index=[7, 3])
    assert value_at_l0(l0s, values, 10**1.5) == pytest.approx(2.0)
