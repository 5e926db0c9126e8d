"""Softmax with only +, - and * (CKKS): a row maximum, exp by squaring, one reciprocal.

For scores x in a calibrated interval [lo, hi] (spread s = hi - lo), rows of n entries:

1. m, a stand-in for the row maximum, one of
     sign   a tournament of max(a, b) = (a + b)/2 + (a - b) F(a - b)/2 over ceil(log2 n)
            rounds, F the composite sign (`approximations.composite_sign`) on [-s, s]:
            never above the true maximum and at most `slack` = rounds * F.maximum_error
            below it (every difference of scores lies in [-s, s], and so do those of the
            partial maxima, which stay between their two inputs);
     shift  the public calibrated bound hi (no comparison at all).
2. z = x - m lies in [-s, slack] (sign) or [-s, 0] (shift); e = exp(z) by repeated
   squaring, base 1 + u + u^2/2 with u = z / 2^k (`ExpBySquaring`, order 2), k chosen so
   that its absolute error E on that interval meets the budget.
3. D = sum_j e_j, then 1/D by a polynomial guess and Goldschmidt steps (relative error
   rho) on the denominator interval, which follows from the above without calibration:
   sign: [1 - E, n (e^slack + E)] (the maximum's own term is e^(max - m) >= 1);
   shift: [e^-s - E, n (1 + E)]; widened 1 % each way for CKKS noise.
4. w = e / D as e * (1/D).

Softmax is invariant under the shift, so m only keeps the numbers in range: the result is
exact up to E and rho. Certified error per weight (absolute), with D_low the smallest
denominator the row allows (the row's sum of exp(x - max) for sign, times e^(max - hi)
for shift) and w the exact weight:

    |w' - w| <= E (1 + n w) (1 + rho) / (D_low - n E) + rho w

(`weight_error`; `max_error` is its worst case, D_low = 1 or e^-s and w = 1).

Which maximum. The shift needs no comparison but its denominators reach e^-s, where the
absolute CKKS noise (taken as NOISE per entry) is no longer small against D: it is used
only while n NOISE / e^-s stays below target / 10 (spreads up to about 5 at n = 8 for
1e-4). Otherwise the tournament, its slack chosen among SLACKS for the least total depth:
a finer sign costs levels in every round, a coarser one more squarings (positive z up to
the slack) and a wider reciprocal. Both have inputs outside [lo, hi] uncovered: the sign
polynomials grow fast beyond [-s, s].

Depth (CKKS levels, `depth`): rounds (depth(F) + 1) + (k + 2) + reciprocal (guess +
steps + 1) + 1 for the sign; the mean takes 1 level, the shift none, in place of the
rounds. Under CKKS add one level per polynomial whose interval map cannot be folded (the
first sign stage on [-s, s], a wide reciprocal guess: `protocols.he.polynomial`). Scores
to about +-40 (calibrated [-49.8, 47.8] after widening), n = 8: 67 levels here, 70
encrypted, 48 of them the tournament (3 rounds of 16; slack 1, 9 squarings, a linear
guess and 5 Goldschmidt steps); n = 128 at s = 100: 145 here, 153 encrypted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import torch

from approximations.certify import check_interval
from approximations.composite_sign import CompositeSign
from approximations.errors import ApproximationError
from approximations.iterative import ExpBySquaring, Reciprocal
from approximations.polynomial import Apply, Polynomial, direct

MAXIMA = ("auto", "sign", "mean", "shift")
"""Stand-ins for the row maximum (module docstring); "auto" picks the shallowest."""
SLACKS = (0.25, 0.5, 1.0, 2.0, 4.0)
"""Total tournament slacks tried (how far below the row maximum m may land)."""
NOISE = 1e-8
"""Absolute CKKS noise assumed per exp value when judging the shift."""
MAX_SQUARINGS = 24
MAX_SLACK = 16.0
"""Largest z = x - m allowed above 0 (exp by squaring and the reciprocal's range grow with
e^slack)."""
GUESS_DEGREES = (1, 3, 7)
MAX_STEPS = 40
DENOMINATOR_MARGIN = 1.01


@dataclass(frozen=True, eq=False)
class ExpSoftmax:
    """softmax along one axis of rows of `length` entries in `interval` (module docstring)."""

    interval: tuple[float, float]
    length: int
    mode: str  # "sign", "mean" or "shift"
    sign: CompositeSign | None  # None for the shift, and for rows of one entry
    exp: ExpBySquaring
    reciprocal: Reciprocal
    target: float
    estimate: float = math.nan
    """The error the search estimated (cheap grids); `max_error` is the certified one."""

    @classmethod
    def for_interval(
        cls,
        interval: tuple[float, float],
        length: int,
        target: float = 1e-4,
        maximum: str = "auto",
    ) -> ExpSoftmax:
        """The shallowest form whose `max_error` meets `target` (the most accurate tried if
        none does); `maximum` "sign" or "shift" forces the stand-in for the row maximum."""
        lo, hi = check_interval(interval)
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ApproximationError(f"length={length!r}: rows need at least one entry")
        if maximum not in MAXIMA:
            raise ApproximationError(f"maximum={maximum!r}: choose {', '.join(MAXIMA)}")
        if not 0 < target < 1:
            raise ApproximationError(f"target={target!r}: need 0 < target < 1")
        return _for_interval(float(lo), float(hi), length, float(target), maximum)

    # --- figures --------------------------------------------------------------------------
    @property
    def spread(self) -> float:
        return self.interval[1] - self.interval[0]

    @property
    def rounds(self) -> int:
        return math.ceil(math.log2(self.length)) if self.length > 1 else 0

    @property
    def slack(self) -> float:
        """How far below the row maximum m may land (0 for the shift)."""
        if self.mode == "mean":
            return self.spread * (self.length - 1) / self.length
        return 0.0 if self.sign is None else self.rounds * self.sign.maximum_error

    @property
    def shift(self) -> bool:
        return self.mode == "shift"

    @cached_property
    def exp_error(self) -> float:
        """E: certified absolute error of the exp on its interval."""
        return float(self.exp.max_error)

    @property
    def denominator_floor(self) -> float:
        """The least denominator any row allows, before the CKKS widening."""
        return (math.exp(-self.spread) if self.shift else 1.0) - self.exp_error

    @property
    def max_error(self) -> float:
        """Worst absolute error of a weight (module docstring), every row in the interval."""
        n, e, rho = self.length, self.exp_error, float(self.reciprocal.max_error)
        low = self.denominator_floor + self.exp_error  # the exact D_low: 1 or e^-s
        if low - n * e <= 0:
            return math.inf
        return e * (1 + n) * (1 + rho) / (low - n * e) + rho

    @property
    def depth(self) -> int:
        if self.sign is not None:
            first = self.rounds * (self.sign.depth + 1)
        else:
            first = 1 if self.mode == "mean" else 0
        return first + self.exp.depth + self.reciprocal.depth + 1

    def weight_error(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """The certified bound per weight for these scores (module docstring)."""
        x = x.double()
        top = x.amax(dim=dim, keepdim=True)
        total = torch.exp(x - top).sum(dim=dim, keepdim=True)
        w = torch.exp(x - top) / total
        low = total * torch.exp(top - self.interval[1]) if self.shift else total
        n, e, rho = self.length, self.exp_error, float(self.reciprocal.max_error)
        return e * (1 + n * w) * (1 + rho) / (low - n * e) + rho * w

    # --- evaluation -----------------------------------------------------------------------
    def maximum(self, x: Any, dim: int = -1, apply: Apply = direct) -> Any:
        """The stand-in m for the row maximum, keeping `dim` (size 1)."""
        if self.shift:
            return self.interval[1]
        if self.mode == "mean":
            return x.sum(dim, keepdim=True) * (1.0 / self.length)
        m = x
        while m.shape[dim] > 1:
            n = m.shape[dim]
            half = (n + 1) // 2
            assert self.sign is not None
            m = self.sign.maximum(m.narrow(dim, 0, half), m.narrow(dim, n - half, half), apply)
        return m

    def exponential(self, z: Any, apply: Apply = direct) -> Any:
        """exp(z) by squaring (`squared_exponential`)."""
        return squared_exponential(z, self.exp, apply)

    def __call__(self, x: Any, dim: int = -1, apply: Apply = direct) -> Any:
        if x.shape[dim] != self.length:
            raise ApproximationError(
                f"rows of {x.shape[dim]} entries; this form was made for {self.length}"
            )
        m = self.maximum(x, dim, apply)
        e = self.exponential(x - m, apply)
        total = e.sum(dim, keepdim=True)
        inverse = self.reciprocal.iterate(total, lambda b: apply(b, self.reciprocal.initial))
        return e * inverse

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "ExpSoftmax",
            "interval": list(self.interval),
            "length": self.length,
            "maximum": self.mode,
            "sign": self.sign.to_dict() if self.sign is not None else None,
            "slack": self.slack,
            "squarings": self.exp.squarings,
            "exp_error": self.exp_error,
            "reciprocal": self.reciprocal.to_dict(),
            "depth": self.depth,
            "max_error": self.max_error,
        }


def squared_exponential(z: Any, exp: ExpBySquaring, apply: Apply = direct) -> Any:
    """exp(z) by `exp`'s squarings (order 2), the base 1 + u + u^2/2 (u = z / 2^k) as one
    degree-2 polynomial of z: depth k + 2, whatever evaluates `apply`."""
    k = exp.squarings
    base = Polynomial.from_coefficients(
        [1.0, 2.0**-k, 2.0 ** (-2 * k - 1)], exp.interval, reference="exp base"
    )
    e = apply(z, base)
    for _ in range(k):
        e = e * e
    return e


# --- construction -------------------------------------------------------------------------
def _exp_estimate(form: ExpBySquaring) -> float:
    """The exp's absolute error on a 4,001-point grid of its interval (the search's
    estimate; the chosen form is certified on the dense grid)."""
    lo, hi = form.interval
    z = torch.linspace(lo, hi, 4001, dtype=torch.float64)
    return float((form(z) - torch.exp(z)).abs().max())


def exp_for(low: float, high: float, budget: float) -> tuple[ExpBySquaring, float]:
    """The fewest squarings (order 2) whose estimated error on [low, high] is <= budget,
    and that estimate."""
    for k in range(1, MAX_SQUARINGS + 1):
        if 2.0 ** (k + 1) < -low:  # the base would leave [0, 1]
            continue
        form = ExpBySquaring(squarings=k, interval=(low, high), order=2)
        error = _exp_estimate(form)
        if error <= budget:
            return form, error
    return form, error


def reciprocal_guess_error(low: float, high: float, degree: int) -> float:
    """The relative error of the best (relative-minimax) degree-d polynomial for 1/x on
    [low, high]: 2 r^(d+1) / (1 + r^(2(d+1))), r = (sqrt R - 1) / (sqrt R + 1), R =
    high / low (the classical result; degree 1: (R - 1)^2 / ((R + 1)^2 + 4R))."""
    ratio = math.sqrt(high / low)
    r = (ratio - 1) / (ratio + 1)
    return 2 * r ** (degree + 1) / (1 + r ** (2 * (degree + 1)))


def _guess_bound(low: float, high: float, degree: int) -> float:
    """`reciprocal_guess_error` with 5 % of its distance to 1 to spare."""
    return 1.0 - 0.95 * (1.0 - reciprocal_guess_error(low, high, degree))


@lru_cache(maxsize=256)
def goldschmidt_for(low: float, high: float, target: float) -> Reciprocal | None:
    """1/x on [low, high]: a relative-minimax guess of degree 1, 3 or 7 and the fewest
    Goldschmidt steps reaching `target` (a guess of relative error e0 leaves e0^(2^k)
    after k steps), the shallowest of the three; e0 from `_guess_bound` (the returned
    object certifies its own error when asked). None if MAX_STEPS do not reach it."""
    best: tuple[tuple[int, int], Reciprocal] | None = None
    for degree in GUESS_DEGREES:
        e0 = _guess_bound(low, high, degree)
        steps = 0
        while e0 ** (2**steps) > target and steps < MAX_STEPS:
            steps += 1
        if e0 ** (2**steps) > target:
            continue
        form = Reciprocal(
            interval=(low, high), iterations=steps, normalise=False, initial_degree=degree
        )
        score = (_reciprocal_depth(degree, steps), degree + 2 * steps)
        if best is None or score < best[0]:
            best = (score, form)
    return best[1] if best is not None else None


def _reciprocal_depth(degree: int, steps: int) -> int:
    return math.ceil(math.log2(degree + 1)) + steps + 1


def _candidate(
    lo: float, hi: float, n: int, target: float, mode: str, slack: float = 0.0
) -> ExpSoftmax | None:
    """The form for one stand-in of the maximum (`mode`; for "sign" a total tournament
    slack `slack`), its exp and reciprocal sized to take half the error budget each;
    None where the stand-in cannot serve (the shift's noise, a sign finer than needed)."""
    spread = hi - lo
    rounds = math.ceil(math.log2(n)) if n > 1 else 0
    sign = None
    if mode == "shift":
        floor = math.exp(-spread)
        if n * NOISE / floor > target / 10:
            return None
        exp, error = exp_for(-spread, 0.0, target * floor / (2.5 * (1 + n)))
        den = (max(floor - 2 * error, floor / 2), n * (1 + 2 * error))
    else:
        if mode == "sign" and rounds:
            step = 2 * slack / rounds
            if step >= spread / 2:  # no finer than the mean: leave it to "mean"
                return None
            sign = CompositeSign(spread, step, min(0.5, step / spread))
            slack = rounds * sign.maximum_error
        elif mode == "mean":
            slack = spread * (n - 1) / n
        else:
            slack = 0.0  # rows of one entry: m = x
        if slack > MAX_SLACK:
            return None
        exp, error = exp_for(-spread, max(slack, 1e-9), target / (2.5 * (1 + n)))
        den = (1.0 - 2 * error, n * (math.exp(slack) + 2 * error))
    reciprocal = goldschmidt_for(
        den[0] / DENOMINATOR_MARGIN, den[1] * DENOMINATOR_MARGIN, target / 2
    )
    if reciprocal is None:
        return None
    form = ExpSoftmax((lo, hi), n, mode, sign, exp, reciprocal, target)
    rho = _guess_bound(*reciprocal.interval, reciprocal.initial_degree)
    rho = rho ** (2**reciprocal.iterations)
    low = (math.exp(-spread) if mode == "shift" else 1.0) - n * error
    estimate = error * (1 + n) * (1 + rho) / low + rho if low > 0 else math.inf
    object.__setattr__(form, "estimate", estimate)
    return form


@lru_cache(maxsize=64)
def _for_interval(lo: float, hi: float, n: int, target: float, maximum: str) -> ExpSoftmax:
    tries: list[tuple[str, float]] = []
    if maximum in ("auto", "shift"):
        tries.append(("shift", 0.0))
    if maximum in ("auto", "mean") or n == 1:
        tries.append(("mean" if n > 1 else "sign", 0.0))
    if maximum in ("auto", "sign") and n > 1:
        tries.extend(("sign", slack) for slack in SLACKS)
    forms = [f for f in (_candidate(lo, hi, n, target, *t) for t in tries) if f is not None]
    if not forms:
        if maximum == "sign":  # the scores are too close for a tournament: the mean does
            return _for_interval(lo, hi, n, target, "mean")
        raise ApproximationError(
            f"softmax shift on [{lo:g}, {hi:g}] with rows of {n}: denominators down to "
            f"e^-{hi - lo:.3g} drown in CKKS noise; use the sign or mean maximum"
        )
    good = [f for f in forms if f.estimate <= target]
    if good:
        return min(good, key=lambda f: (f.depth, f.estimate))
    return min(forms, key=lambda f: f.estimate)


__all__ = ["ExpSoftmax", "goldschmidt_for"]
