"""1/sqrt(x) on a wide positive interval for CKKS: a polynomial guess, then Newton steps
whose coefficients are chosen per step (minimax), so that poor guesses converge fast.

Write t = y sqrt(x) for the current estimate y of 1/sqrt(x) (t = 1 is exact). A step

    y <- y (a - b x y^2),      i.e.  t <- g(t) = t (a - b t^2)

with Newton's a = 3/2, b = 1/2 multiplies a small t by only 3/2, so a guess off by a
factor of 1000 (a relative-minimax polynomial on a variance interval of ratio 1e6) needs
some 17 steps before the quadratic convergence starts. Knowing the range [m, M] of t
after the previous step (exactly: the guess's range is measured, each g is monotone on
the pieces below), choose (a, b) to minimise max |g(t) - 1| on [m, M]. By Chebyshev's
alternation theorem for the two functions t, t^3 the optimum equioscillates at m, at the
maximum t* of g and at M:

    S = M^2 + M m + m^2,   t* = sqrt(S / 3),   b = 2 / ((2/3) S t* + m M (M + m)),
    a = b S,   g(m) = g(M) = 1 - delta,   g(t*) = 1 + delta,

so the next range is [1 - delta, 1 + delta]. A small t now grows by a factor of up to
3 sqrt(3) = 5.2 per step instead of 3/2, and near 1 the step is Newton's (a -> 3/2,
b -> 1/2 as delta -> 0). Measured against `InverseSqrt.polynomial_only` (Newton from a
guess kept inside Newton's basin), for 1e-4 relative error: [6.4e-4, 1562] (variances
1e-3 .. 1e3 widened) 19 levels instead of 30; [0.05, 500] 13 instead of 19.

Certificate. The guess's range t0 in [m_0, M_0] is measured on a 200,001-point geometric
grid of the interval (plus a relative 1e-9 of slack each way, far above the grid's
resolution for a polynomial of degree <= 7); every later range follows exactly from the
formulas above. `max_error` is the last delta: the relative error for every input of the
interval. Inputs outside it are not covered; beyond sqrt(a/b) a step turns negative.

Depth (CKKS levels, scalar products included): the guess's ceil(log2(d + 1)), then 2 per
step: y^2 and (b x) y in parallel (b x is a scalar product of the input at level 1),
their product, beside a y. Products per step: 2 ciphertext-ciphertext, 2 by a scalar.
On a wide interval the guess's map onto [-1, 1] cannot be folded into its coefficients
and costs one level more under CKKS (`protocols.he.polynomial`): [6.4e-4, 1562.5] takes
a degree-7 guess and 8 steps, 19 levels here, 20 encrypted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
import torch

from approximations.certify import Certificate, certify, check_interval
from approximations.errors import ApproximationError
from approximations.fitting import fit
from approximations.polynomial import Apply, Polynomial, direct

GUESS_DEGREES = (1, 3, 7)
"""Guess degrees tried: the largest of each depth 1, 2, 3 (a lower degree at the same
depth only saves products)."""
MAX_STEPS = 40
GRID = 200_001
SLACK = 1e-9


def optimal_step(m: float, big_m: float) -> tuple[float, float, float, float]:
    """(a, b, low, high): the minimax step for t in [m, M] (module docstring) and the range
    [low, high] of g(t) = t (a - b t^2) over [m, M]."""
    if not 0 < m <= big_m:
        raise ApproximationError(f"range [{m:g}, {big_m:g}]: need 0 < m <= M")
    s = big_m * big_m + big_m * m + m * m
    peak = math.sqrt(s / 3.0)
    b = 2.0 / ((2.0 / 3.0) * s * peak + m * big_m * (big_m + m))
    a = b * s
    low = min(m * (a - b * m * m), big_m * (a - b * big_m * big_m))
    high = peak * (a - b * peak * peak)
    return a, b, low, high


@dataclass(frozen=True, eq=False)
class MinimaxNewtonInverseSqrt:
    """1/sqrt(x) on `interval`: y0 = initial(x), then y <- a_k y - (b_k x y)(y y) for each
    (a_k, b_k) of `steps`; relative error `max_error` on the whole interval."""

    interval: tuple[float, float]
    initial: Polynomial
    steps: tuple[tuple[float, float], ...]
    guess_range: tuple[float, float]
    ranges: tuple[tuple[float, float], ...] = field(default=())
    reference: str = "rsqrt"
    error_kind: str = "relative"
    he_compatible = True

    @classmethod
    def for_interval(
        cls, interval: tuple[float, float], target: float = 1e-4
    ) -> MinimaxNewtonInverseSqrt:
        """The shallowest configuration (guess degree in GUESS_DEGREES, then as few steps
        as reach `target`) on `interval`; among equal depths the one with fewer products."""
        lo, hi = (float(v) for v in check_interval(interval))
        if lo <= 0:
            raise ApproximationError(f"interval=({lo:g}, {hi:g}): must be positive")
        if not 0 < target < 1:
            raise ApproximationError(f"target={target!r}: need 0 < target < 1")
        return _for_interval(lo, hi, float(target))

    # --- figures --------------------------------------------------------------------------
    @property
    def iterations(self) -> int:
        return len(self.steps)

    @property
    def depth(self) -> int:
        return self.initial.depth + 2 * len(self.steps)

    @property
    def max_error(self) -> float:
        """Certified relative error on the interval (module docstring)."""
        low, high = self.ranges[-1] if self.ranges else self.guess_range
        return max(1.0 - low, high - 1.0)

    @property
    def valid_range(self) -> tuple[float, float]:
        return self.interval

    @cached_property
    def certificate(self) -> Certificate:
        """A grid check of the propagated bound (`approximations.certify`)."""
        return certify(self, torch.rsqrt, self.interval, relative=True, log_grid=True)

    # --- evaluation -----------------------------------------------------------------------
    def exact(self, x: torch.Tensor) -> torch.Tensor:
        return torch.rsqrt(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.iterate(x, direct)

    def iterate(self, x: Any, apply: Apply = direct) -> Any:
        """The steps from y0 = apply(x, initial) with +, - and * only, so an encrypted
        tensor works too (`apply` evaluates a polynomial on it)."""
        y = apply(x, self.initial)
        for a, b in self.steps:
            y = y * a - (x * b * y) * (y * y)
        return y

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "MinimaxNewtonInverseSqrt",
            "interval": list(self.interval),
            "initial_degree": self.initial.degree,
            "steps": [list(s) for s in self.steps],
            "depth": self.depth,
            "max_error": self.max_error,
        }


def _guess_range(guess: Polynomial, lo: float, hi: float) -> tuple[float, float]:
    x = torch.logspace(math.log10(lo), math.log10(hi), GRID, dtype=torch.float64)
    t = (guess(x) * x.sqrt()).numpy()
    return float(np.min(t)) * (1 - SLACK), float(np.max(t)) * (1 + SLACK)


@lru_cache(maxsize=64)
def _for_interval(lo: float, hi: float, target: float) -> MinimaxNewtonInverseSqrt:
    best: tuple[tuple[int, int, float], MinimaxNewtonInverseSqrt] | None = None
    for degree in GUESS_DEGREES:
        guess = fit(torch.rsqrt, (lo, hi), degree, "remez", relative=True, name="rsqrt guess")
        m, big_m = _guess_range(guess, lo, hi)
        if m <= 0:
            continue
        steps: list[tuple[float, float]] = []
        ranges: list[tuple[float, float]] = []
        low, high = m, big_m
        while max(1.0 - low, high - 1.0) > target and len(steps) < MAX_STEPS:
            a, b, low, high = optimal_step(low, high)
            steps.append((a, b))
            ranges.append((low, high))
        form = MinimaxNewtonInverseSqrt((lo, hi), guess, tuple(steps), (m, big_m), tuple(ranges))
        score = (form.depth, form.initial.degree + 4 * len(steps), form.max_error)
        if best is None or score < best[0]:
            best = (score, form)
    if best is None:  # pragma: no cover - a relative-minimax guess of 1/sqrt is positive
        raise ApproximationError(f"no positive guess of 1/sqrt on ({lo:g}, {hi:g})")
    return best[1]


__all__ = ["MinimaxNewtonInverseSqrt", "optimal_step"]
