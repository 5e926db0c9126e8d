"""Sign, step and maximum by composite polynomials: comparisons for CKKS, which has none.

Every stage is an odd polynomial s that increases on [0, 1] from s(0) = 0 to s(1) = 1, so
it maps [-1, 1] onto itself and pulls each t != 0 towards sign(t). Two stages are used:

    f_n(t) = sum_{i=0}^{n} binom(2i, i) / 4^i * t (1 - t^2)^i   (Cheon, Kim, Kim and Lee,
             ASIACRYPT 2020; degree 2n + 1, n = 3: 3 levels). Flat at 1 (derivatives up
             to order n vanish), so near 1 the distance to 1 goes to its (n + 1)-th power;
             near 0 it multiplies by f_3'(0) = 35/16.
    steep    degree 15 (4 levels): the largest slope at 0 of any odd polynomial of that
             degree increasing on [0, 1] with s(1) = 1 (a linear programme on a grid of
             s' >= 1e-3, solved once and cached, then checked on a grid 50 times finer):
             s'(0) = 5.38, against 35/16 for f_3 in 3 levels.

`CompositeSign(bound, resolution, error)` scales x by 1 / bound and applies a schedule of
stages chosen greedily (the larger gain per level at the current worst point: steep while
values are small, f_3 to finish), until

    |F(x / bound) - sign(x)| <= error      for resolution <= |x| <= bound

Certificate: each stage is odd and increasing on [-1, 1] and fixes 1, so their composite F
is too; on [r, 1] its distance to 1 is largest at r = resolution / bound, where it is
computed in float64 through exactly the stages used. |F| <= 1 on all of [-bound, bound]
and F(0) = 0. Inputs beyond `bound` are not covered (the stages grow fast outside [-1, 1]).
With f_3 alone a resolution / bound of 4e-4 needed 36 levels; with the steep stage, 23.

`maximum(a, b) = (a + b) / 2 + (a - b) sign(a - b) / 2` then errs by at most
max(resolution, error * bound) / 2 and never exceeds the larger input (|F| <= 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import numpy as np

from approximations.errors import ApproximationError
from approximations.polynomial import Polynomial

MAX_STAGES = 64
STEEP_DEGREE = 15
FINISH_N = 3
MIN_SLOPE = 1e-3


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


@lru_cache(maxsize=4)
def steep_sign_polynomial(degree: int = STEEP_DEGREE) -> tuple[float, ...]:
    """Power-basis coefficients (lowest first) of the steep stage of odd `degree`: the
    linear programme max s'(0) subject to s(1) = 1 and s'(x) >= MIN_SLOPE on 4,001 points
    of [0, 1] (the margin keeps s' positive between the points). ApproximationError if the
    result is not increasing on a 200,001-point grid."""
    from scipy.optimize import linprog

    if degree < 3 or degree % 2 == 0:
        raise ApproximationError(f"degree={degree}: the steep stage needs an odd degree >= 3")
    powers = np.arange(1, degree + 1, 2)
    x = np.linspace(0.0, 1.0, 4001)
    derivative = powers * x[:, None] ** (powers - 1)
    objective = np.zeros(len(powers))
    objective[0] = -1.0
    solved = linprog(
        objective,
        A_ub=-derivative,
        b_ub=-np.full(len(x), MIN_SLOPE),
        A_eq=np.ones((1, len(powers))),
        b_eq=[1.0],
        bounds=[(None, None)] * len(powers),
    )
    if solved.status != 0:  # pragma: no cover - the programme is feasible (f_n is a point)
        raise ApproximationError(f"steep sign polynomial: {solved.message}")
    mixed = solved.x
    dense = np.linspace(0.0, 1.0, 200_001)
    slope = (powers * mixed) @ (dense[None, :] ** (powers[:, None] - 1))
    if slope.min() <= 0 or not math.isclose(mixed.sum(), 1.0, abs_tol=1e-12):
        raise ApproximationError("steep sign polynomial: not increasing on [0, 1]")
    out = np.zeros(degree + 1)
    out[powers] = mixed
    out[powers[-1]] += 1.0 - out.sum()  # s(1) = 1 to the last bit
    return tuple(float(c) for c in out)


@dataclass(frozen=True)
class _Stage:
    coefficients: tuple[float, ...]
    depth: int

    def __call__(self, t: float) -> float:
        return sum(c * t**k for k, c in enumerate(self.coefficients))


def _stages() -> tuple[_Stage, _Stage]:
    steep = steep_sign_polynomial(STEEP_DEGREE)
    finish = tuple(odd_sign_polynomial(FINISH_N))
    return (
        _Stage(steep, math.ceil(math.log2(STEEP_DEGREE + 1))),
        _Stage(finish, math.ceil(math.log2(2 * FINISH_N + 2))),
    )


@dataclass(frozen=True)
class CompositeSign:
    """sign(x) within `error` for `resolution` <= |x| <= `bound` (module docstring)."""

    bound: float
    resolution: float
    error: float = 1e-3

    def __post_init__(self) -> None:
        if not (0 < self.resolution < self.bound and math.isfinite(self.bound)):
            raise ApproximationError(
                f"resolution={self.resolution}, bound={self.bound}: need 0 < resolution < bound"
            )
        if not 0 < self.error < 1:
            raise ApproximationError(f"error={self.error}: need 0 < error < 1")
        if len(self.schedule) > MAX_STAGES:  # pragma: no cover - needs resolution ~ 1e-30
            raise ApproximationError(
                f"resolution / bound = {self.resolution / self.bound:.3g} needs more than "
                f"{MAX_STAGES} stages"
            )

    @cached_property
    def schedule(self) -> tuple[_Stage, ...]:
        """Stages in order: at the worst point t, the one with the larger gain per level
        (growth of t while t < 1/2, then shrinkage of 1 - t), until 1 - t <= error."""

        def gain(stage: _Stage, t: float) -> float:
            after = stage(t)
            if t < 0.5:
                return math.log(after / t) / stage.depth
            return (math.log(1.0 - t) - math.log(max(1.0 - after, 1e-300))) / stage.depth

        t, chosen = self.resolution / self.bound, []
        while 1.0 - t > self.error and len(chosen) <= MAX_STAGES:
            stage = max(_stages(), key=lambda s: gain(s, t))
            t = stage(t)
            chosen.append(stage)
        return tuple(chosen)

    @property
    def iterations(self) -> int:
        return len(self.schedule)

    @cached_property
    def max_error(self) -> float:
        """Certified: 1 - F(resolution / bound), the worst distance on the covered set."""
        t = self.resolution / self.bound
        for stage in self.schedule:
            t = stage(t)
        return max(1.0 - t, 0.0)

    @cached_property
    def polynomials(self) -> tuple[Polynomial, ...]:
        """The stages as polynomials: the first on [-bound, bound] (the scaling folded in),
        the others on [-1, 1]."""
        out = []
        for i, stage in enumerate(self.schedule):
            scale = self.bound if i == 0 else 1.0
            interval = (-scale, scale)
            power = [c / scale**k for k, c in enumerate(stage.coefficients)]
            out.append(Polynomial.from_coefficients(power, interval, reference="sign"))
        return tuple(out)

    @property
    def depth(self) -> int:
        return sum(stage.depth for stage in self.schedule)

    def __call__(self, x: Any, apply: Any = None) -> Any:
        """F(x / bound); `apply(x, polynomial)` evaluates one stage (default: in torch), so
        the same schedule runs on encrypted tensors."""
        for polynomial in self.polynomials:
            x = polynomial(x) if apply is None else apply(x, polynomial)
        return x

    def step(self, x: Any, apply: Any = None) -> Any:
        """[x > 0] as (1 + F) / 2: within error / 2 for |x| >= resolution, 1/2 at 0. The
        affine map is folded into the last stage (no extra level)."""
        *stages, last = self.polynomials
        halved = [0.5 * c for c in last.chebyshev]
        halved[0] += 0.5
        for polynomial in (*stages, Polynomial(tuple(halved), last.interval, reference="step")):
            x = polynomial(x) if apply is None else apply(x, polynomial)
        return x

    def maximum(self, a: Any, b: Any, apply: Any = None) -> Any:
        """max(a, b) within `maximum_error`, never above the true maximum: one level more
        than F (the halving of a - b runs beside it)."""
        d = a - b
        return (a + b) * 0.5 + (d * 0.5) * self(d, apply)

    @property
    def maximum_error(self) -> float:
        return 0.5 * max(self.resolution, self.max_error * self.bound)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "CompositeSign",
            "bound": self.bound,
            "resolution": self.resolution,
            "error": self.error,
            "stages": [len(s.coefficients) - 1 for s in self.schedule],
            "depth": self.depth,
            "max_error": self.max_error,
        }
