"""Argument checks whose errors name the parameter, the value given and what is allowed."""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Integral, Real


def check_choice(name: str, value: object, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
    return value  # type: ignore[return-value]


def check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}={value!r} must be a real number, got {type(value).__name__}")
    try:
        plain = float(value)
    except OverflowError:  # an integer too large for a float
        plain = math.inf
    if not math.isfinite(plain):
        raise ValueError(f"{name}={value!r} must be finite")
    return plain


def check_nonnegative(name: str, value: object) -> float:
    v = check_number(name, value)
    if v < 0:
        raise ValueError(f"{name}={value!r} must be >= 0")
    return v


def check_positive(name: str, value: object) -> float:
    v = check_number(name, value)
    if v <= 0:
        raise ValueError(f"{name}={value!r} must be > 0")
    return v


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name}={value!r} must be an integer, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}={value!r} must be >= 1")
    return int(value)


def check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name}={value!r} must be an integer, got {type(value).__name__}")
    return int(value)
