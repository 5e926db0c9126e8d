"""Sign, step and maximum by composite polynomials: comparisons for CKKS, which has none.

Cheon, Kim, Kim and Lee (ASIACRYPT 2020) iterate one fixed odd polynomial

    f_n(t) = sum_{i=0}^{n} binom(2i, i) / 4^i * t (1 - t^2)^i        (degree 2n + 1)

which maps [-1, 1] onto itself, is increasing there, fixes -1, 0 and 1, and pulls every
t != 0 towards sign(t): near 0 it multiplies by f_n'(0) = (2n + 1) binom(2n, n) / 4^n
(15/8 for n = 2, 35/16 for n = 3), near 1 the distance to 1 goes to its (n + 1)-th power.
`CompositeSign(bound, resolution, error)` scales x by 1 / bound and applies f_n k times,
k the fewest for which F = f_n^k satisfies

    |F(x / bound) - sign(x)| <= error      for resolution <= |x| <= bound

Certificate: F is odd and increasing on [-1, 1] with F(1) = 1, so on [r, 1] its distance
to 1 is largest at r = resolution / bound, where it is computed (float64, exactly the k
compositions); |F| <= 1 on all of [-bound, bound], and F(0) = 0. Inputs beyond `bound`
are not covered (f_n grows like t^(2n+1) outside [-1, 1]).

Depth: k ceil(log2(2n + 2)) levels (3 per iteration for n = 3), no comparison.
`maximum(a, b) = (a + b) / 2 + (a - b) sign(a - b) / 2` then errs by at most
max(resolution, error * bound) / 2 and never exceeds the larger input (|F| <= 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from approximations.errors import ApproximationError
from approximations.polynomial import Polynomial

MAX_ITERATIONS = 64


def odd_sign_polynomial(n: int) -> list[float]:
    """Power-basis coefficients of f_n (module docstring), lowest first."""
    if n < 1:
        raise ApproximationError(f"n={n}: f_n needs n >= 1")
    coefficients = [0.0] * (2 * n + 2)
    for i in range(n + 1):
        weight = math.comb(2 * i, i) / 4**i
        for j in range(i + 1):  # t (1 - t^2)^i = sum_j binom(i, j) (-1)^j t^(2j + 1)
            coefficients[2 * j + 1] += weight * math.comb(i, j) * (-1) ** j
    return coefficients


@dataclass(frozen=True)
class CompositeSign:
    """sign(x) within `error` for `resolution` <= |x| <= `bound` (module docstring)."""

    bound: float
    resolution: float
    error: float = 1e-3
    n: int = 3

    def __post_init__(self) -> None:
        if not (0 < self.resolution < self.bound and math.isfinite(self.bound)):
            raise ApproximationError(
                f"resolution={self.resolution}, bound={self.bound}: need 0 < resolution < bound"
            )
        if not 0 < self.error < 1:
            raise ApproximationError(f"error={self.error}: need 0 < error < 1")
        if self.iterations > MAX_ITERATIONS:  # pragma: no cover - needs resolution ~ 1e-30
            raise ApproximationError(
                f"resolution / bound = {self.resolution / self.bound:.3g} needs more than "
                f"{MAX_ITERATIONS} compositions"
            )

    @cached_property
    def coefficients(self) -> list[float]:
        return odd_sign_polynomial(self.n)

    def _f(self, t: float) -> float:
        return sum(c * t**k for k, c in enumerate(self.coefficients))

    @cached_property
    def iterations(self) -> int:
        """The fewest compositions k with 1 - f_n^k(resolution / bound) <= error."""
        t, k = self.resolution / self.bound, 0
        while 1.0 - t > self.error and k <= MAX_ITERATIONS:
            t, k = self._f(t), k + 1
        return k

    @cached_property
    def max_error(self) -> float:
        """Certified: 1 - F(resolution / bound), the worst distance on the covered set."""
        t = self.resolution / self.bound
        for _ in range(self.iterations):
            t = self._f(t)
        return max(1.0 - t, 0.0)

    @cached_property
    def polynomials(self) -> tuple[Polynomial, ...]:
        """The k stages: f_n on [-bound, bound] (the scaling folded in), then on [-1, 1]."""
        first = Polynomial.from_coefficients(
            [c / self.bound**k for k, c in enumerate(self.coefficients)],
            (-self.bound, self.bound),
            reference="sign",
        )
        rest = Polynomial.from_coefficients(self.coefficients, (-1.0, 1.0), reference="sign")
        return (first, *[rest] * (self.iterations - 1))

    @property
    def depth(self) -> int:
        return sum(p.depth for p in self.polynomials)

    def __call__(self, x: Any, apply: Any = None) -> Any:
        """F(x / bound); `apply(x, polynomial)` evaluates one stage (default: in torch), so
        the same schedule runs on encrypted tensors."""
        for polynomial in self.polynomials:
            x = polynomial(x) if apply is None else apply(x, polynomial)
        return x

    def step(self, x: Any, apply: Any = None) -> Any:
        """[x > 0] as (1 + F) / 2: within error / 2 for |x| >= resolution, 1/2 at 0."""
        return (self(x, apply) + 1.0) * 0.5

    def maximum(self, a: Any, b: Any, apply: Any = None) -> Any:
        """max(a, b) within `maximum_error`, never above the true maximum."""
        d = a - b
        return (a + b) * 0.5 + d * self(d, apply) * 0.5

    @property
    def maximum_error(self) -> float:
        return 0.5 * max(self.resolution, self.max_error * self.bound)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "CompositeSign",
            "bound": self.bound,
            "resolution": self.resolution,
            "error": self.error,
            "n": self.n,
            "iterations": self.iterations,
            "depth": self.depth,
            "max_error": self.max_error,
        }
