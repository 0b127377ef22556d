"""Dictionaries compared at matched sparsity, by one rule everywhere in the book.

A model trained at a few settings of its sparsity knob gives a few (L0, value) points; SAE
evaluations compare models at equal L0, so each value is read off the model's curve at a target
L0: linearly in log L0 between the two measured points around the target. Beyond the measured
range the end segment is extended by at most a factor ``REACH`` in L0, and no further than the
segment's own length in log L0 (two nearly equal L0s give a slope that says nothing about what lies
beyond them), and the reading is flagged as extrapolated (a TopK SAE asked for k = 180 may measure
179.96); further out there is no value.
The reading is a fixed weighting of two measured points, so it applies to per-context arrays as
well as to single numbers, which keeps paired bootstrap intervals paired.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

REACH = 1.25  # how far beyond its measured L0 range a model's curve is extended


@dataclass(frozen=True)
class L0Match:
    """How a target L0 is read off measured points: (1 - weight) * value[lo] + weight * value[hi],
    ``lo`` and ``hi`` indexing the points as given."""

    lo: int
    hi: int
    weight: float
    extrapolated: bool

    def of(self, values) -> np.ndarray | float:
        """The reading of ``values`` (one entry, number or array, per measured point, in the order
        the L0s were given: a pandas Series is taken by position, not by its labels)."""
        values = values.to_numpy() if hasattr(values, "to_numpy") else values
        low, high = np.asarray(values[self.lo], dtype=float), np.asarray(values[self.hi], dtype=float)
        out = (1 - self.weight) * low + self.weight * high
        return float(out) if out.ndim == 0 else out


def match_l0(l0s, target: float, reach: float = REACH) -> L0Match | None:
    """Where ``target`` falls on the curve of the measured ``l0s`` (points with a non-finite or
    non-positive L0 are left out: a collapsed dictionary is not a point of the frontier); None
    with fewer than two points, a target more than ``reach`` times beyond the measured range, or a
    target beyond the end segment by more than that segment's length in log L0. ``reach=inf``
    lifts both limits: for placing a knob setting that will then be measured (notebook 5), never
    for reading off a value."""
    if reach < 1:
        raise ValueError(f"reach={reach!r} must be >= 1 (1: no extrapolation)")
    l0s = np.asarray(l0s, dtype=float)
    usable = np.flatnonzero(np.isfinite(l0s) & (l0s > 0))
    if len(usable) < 2 or not target > 0:
        return None
    order = usable[np.argsort(l0s[usable], kind="stable")]
    x, t = np.log(l0s[order]), np.log(target)
    if not x[0] - np.log(reach) <= t <= x[-1] + np.log(reach):
        return None
    j = int(np.clip(np.searchsorted(x, t), 1, len(x) - 1))  # the segment holding t, or the end one
    span = x[j] - x[j - 1]
    beyond = max(x[0] - t, t - x[-1], 0.0)
    if beyond > span and math.isfinite(reach):  # extrapolating further than the segment it extends
        return None
    weight = float((t - x[j - 1]) / span) if span > 0 else 0.0
    return L0Match(int(order[j - 1]), int(order[j]), weight, bool(beyond > 0))


def value_at_l0(l0s, values, target: float, reach: float = REACH) -> float:
    """``values`` read off at L0 = ``target`` (NaN where ``match_l0`` finds no reading)."""
    match = match_l0(l0s, target, reach)
    return np.nan if match is None else float(match.of(values))
