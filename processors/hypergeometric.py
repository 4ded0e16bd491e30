"""Gauss's hypergeometric function 2F1 of one real argument, in plain Python floats.

The P(alive) models' expected purchases (and Pareto/NBD's P(alive)) need 2F1(a, b; c; z)
at 0 <= z < 1. For one customer a few values are enough, and loading scipy for them would
cost more than everything else a read of one customer does. This module sums the
defining power series, after Euler's transformation when c - a - b <= -1, which is what
scipy's ``hyp2f1`` (the Cephes algorithm) does for the same arguments; every case the
series cannot settle to about 1e-12 (parameters at or near non-positive integers, terms
that cancel, z close to 1 with an integer c - a - b) goes to scipy, loaded only then.

References
----------
Abramowitz, M. and Stegun, I. A. (1964), Handbook of Mathematical Functions, 15.1.1 (the
series) and 15.3.3 (Euler's transformation).
"""

from __future__ import annotations

import math

#: The unit roundoff of a double: a term below this share of the sum no longer changes it.
UNIT_ROUNDOFF = 2.0**-53
#: A parameter this close to an integer counts as that integer.
NEAR_INTEGER = 1e-13
#: The series is kept when its estimated relative error is below this.
TRUSTED_ERROR = 1e-12
MAX_TERMS = 10_000


def hyp2f1(a: float, b: float, c: float, z: float) -> float:
    """2F1(a, b; c; z) for 0 <= z < 1; other z, and the cases the series cannot settle,
    are scipy's."""
    if z == 0.0:
        return 1.0
    value = _in_floats(a, b, c, z) if 0.0 < z < 1.0 else None
    if value is not None and math.isfinite(value):
        return value
    from scipy.special import hyp2f1 as reference

    return float(reference(a, b, c, z))


def _in_floats(a: float, b: float, c: float, z: float) -> float | None:
    """The value for 0 < z < 1 where the series settles it; None where it does not."""
    if (a == 0 or b == 0) and c != 0:
        return 1.0
    # a or b a non-positive integer: a polynomial, whose series ends (or whose terms
    # vanish) after that many terms
    polynomial = _non_positive_integer(a) or _non_positive_integer(b)
    d = c - a - b
    if d <= -1.0 and not polynomial:
        # 15.3.3: the transformed function's series has c-a-b >= 1
        return _euler(d, z) * hyp2f1(c - a, c - b, c, z)
    if abs(b - c) < NEAR_INTEGER or abs(a - c) < NEAR_INTEGER or _non_positive_integer(c):
        return None
    if polynomial:
        return _series(a, b, c, z, always=True)
    if _non_positive_integer(c - a) or _non_positive_integer(c - b):
        return None
    if z > 0.9 and abs(d - round(d)) <= UNIT_ROUNDOFF:
        return None  # near z = 1 an integer c-a-b needs the psi-function expansion
    return _series(a, b, c, z)


def _euler(d: float, z: float) -> float:
    """(1-z)^d, infinite where it overflows (scipy then gives the value)."""
    try:
        return math.pow(1.0 - z, d)
    except OverflowError:
        return math.inf


def _non_positive_integer(v: float) -> bool:
    return v <= 0 and abs(v - round(v)) < NEAR_INTEGER


def _series(a: float, b: float, c: float, z: float, always: bool = False) -> float | None:
    """The sum of 15.1.1 when its estimated relative error is below
    :data:`TRUSTED_ERROR` (or ``always``, for a polynomial); otherwise None."""
    if abs(b) > abs(a):
        a, b = b, a
    ending = _non_positive_integer(b) and abs(b) < abs(a)
    if ending:
        a, b = b, a
    if (abs(a) > abs(c) + 1 or ending) and abs(c - a) > 2 and abs(a) > 2:
        return None  # a large against c: the terms cancel, a recurrence in a is needed
    total, term, largest, k = 1.0, 1.0, 0.0, 0.0
    for n in range(1, MAX_TERMS + 1):
        if abs(c + k) < NEAR_INTEGER:
            return None
        term = term * ((a + k) * (b + k) * z / ((c + k) * (k + 1.0)))
        total += term
        largest = max(largest, abs(term))
        k += 1.0
        if total != 0 and abs(term / total) <= UNIT_ROUNDOFF:
            error = UNIT_ROUNDOFF * largest / abs(total) + UNIT_ROUNDOFF * n
            return total if always or error < TRUSTED_ERROR else None
    return None
