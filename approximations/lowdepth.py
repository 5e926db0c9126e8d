"""Chebyshev series evaluated in logarithmic depth, with +, - and * only.

`Polynomial.__call__` uses Clenshaw's recurrence: d products in sequence, so a degree-d
polynomial exported with `torch.export` and run under HE costs d levels. `evaluate` computes
the same p(x) = sum_k c_k T_k(t), t = (2x - a - b) / (b - a), by baby steps and giant steps:

  baby steps   T_1 .. T_{m-1} (m a power of two near sqrt(d + 1)), T_j at depth ceil(log2 j)
               from T_2k = 2 T_k^2 - 1 and T_2k+1 = 2 T_k T_k+1 - T_1;
  giant steps  T_m, T_2m, T_4m, ... by doubling;
  division     p = q T_n + r for the largest giant n <= deg p, since
               T_{n+j} = 2 T_n T_j - T_{n-j}: q = c_n + sum_{j>=1} 2 c_{n+j} T_j and
               r = sum_{k<n} c_k T_k - sum_{j>=1} c_{n+j} T_{n-j}; recursively, down to
               leaves sum_{j<m} c_j T_j (one scalar product each).

Depth (products of any kind, scalar ones included, counted from x): 1 for t, then about
ceil(log2(d + 1)) + 1; `depth(d)` gives it exactly for this schedule. Doubling uses
s + s rather than 2 s, so that no scalar product is spent on it. Any operand supporting
+, - and * with floats works (torch tensors, `DepthProbe`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from approximations import coefficients as coef
from approximations.polynomial import Polynomial


def evaluate(poly: Polynomial, x: Any) -> Any:
    """p(x) for `poly` (any interval), in logarithmic depth."""
    return evaluate_chebyshev(poly.chebyshev[: poly.degree + 1], poly.interval, x)


def evaluate_chebyshev(chebyshev: Sequence[float], interval: tuple[float, float], x: Any) -> Any:
    """sum_k chebyshev[k] T_k(t(x)) on `interval` (see the module docstring)."""
    c = [float(v) for v in chebyshev]
    while len(c) > 1 and c[-1] == 0.0:
        c.pop()
    degree = len(c) - 1
    if degree == 0:
        return x * 0.0 + c[0]
    scale, offset = coef.affine_map(interval)
    t = x * scale + offset
    if degree == 1:
        return t * c[1] + c[0]
    baby = _baby_size(degree)
    powers = _baby_steps(t, baby)
    giants = {baby: powers[baby]}
    n = baby
    while 2 * n <= degree:
        giants[2 * n] = _double(giants[n])
        n *= 2
    return _divide_and_evaluate(np.asarray(c), powers, giants, baby)


def depth(degree: int) -> int:
    """Products in sequence from x to p(x) under this schedule (the affine map included)."""
    probe = evaluate_chebyshev([1.0] * (degree + 1), (-1.0, 1.0), DepthProbe(0))
    return probe.depth if isinstance(probe, DepthProbe) else 0


def _baby_size(degree: int) -> int:
    """m = 2^ceil(l / 2) with l = ceil(log2(d + 1)): about sqrt(d + 1) baby steps."""
    levels = max(1, math.ceil(math.log2(degree + 1)))
    return 2 ** math.ceil(levels / 2)


def _baby_steps(t: Any, m: int) -> dict[int, Any]:
    """T_1 .. T_m (T_m is also the first giant step)."""
    powers: dict[int, Any] = {1: t}
    for j in range(2, m + 1):
        half = j // 2
        if j % 2 == 0:
            powers[j] = _double(powers[half])
        else:
            product = powers[half] * powers[half + 1]
            powers[j] = product + product - t
    return powers


def _double(u: Any) -> Any:
    """T_2k = 2 T_k^2 - 1."""
    square = u * u
    return square + square - 1.0


def _divide_and_evaluate(
    c: np.ndarray, powers: dict[int, Any], giants: dict[int, Any], baby: int
) -> Any:
    degree = len(c) - 1
    if degree < baby:
        return _leaf(c, powers)
    n = max(g for g in giants if g <= degree)
    q = np.zeros(degree - n + 1)
    r = c[:n].copy()
    q[0] = c[n]
    for j in range(1, degree - n + 1):
        q[j] = 2.0 * c[n + j]
        r[n - j] -= c[n + j]
    quotient = _divide_and_evaluate(q, powers, giants, baby)
    remainder = _divide_and_evaluate(_trim(r), powers, giants, baby)
    return quotient * giants[n] + remainder


def _trim(c: np.ndarray) -> np.ndarray:
    nonzero = np.flatnonzero(c != 0.0)
    return c[: nonzero[-1] + 1] if nonzero.size else c[:1]


def _leaf(c: np.ndarray, powers: dict[int, Any]) -> Any:
    """c_0 + sum_{j>=1} c_j T_j: one scalar product per term."""
    total: Any = None
    for j in range(1, len(c)):
        if c[j] != 0.0:
            term = powers[j] * float(c[j])
            total = term if total is None else total + term
    if total is None:
        return powers[1] * 0.0 + float(c[0])
    return total + float(c[0])


class DepthProbe:
    """A stand-in operand that tracks multiplicative depth: a product (by a value or a
    constant) is one more than its deepest factor; additions take the deepest operand."""

    def __init__(self, depth: int) -> None:
        self.depth = depth

    @staticmethod
    def _of(value: Any) -> int | None:
        return value.depth if isinstance(value, DepthProbe) else None

    def __mul__(self, other: Any) -> DepthProbe:
        other_depth = self._of(other)
        return DepthProbe(max(self.depth, other_depth or 0) + 1)

    __rmul__ = __mul__

    def __add__(self, other: Any) -> DepthProbe:
        return DepthProbe(max(self.depth, self._of(other) or 0))

    __radd__ = __add__
    __sub__ = __add__
    __rsub__ = __add__
