"""Polynomials on CKKS ciphertexts (TenSEAL `CKKSVector`) in depth ceil(log2(d + 1)).

Level accounting in TenSEAL 0.3.18 (measured, context with auto rescale / relinearise /
mod switch on, the default):

- ciphertext x ciphertext: one level (relinearise, rescale);
- ciphertext x plain scalar or vector: ONE LEVEL as well, whatever the scalar (2.0 and 1.0
  included): TenSEAL encodes it at the global scale and rescales. A scalar that encodes to
  the zero plaintext (exactly 0, or below about 2^-41 at scale 2^40) is the exception:
  no rescale, the level is kept;
- additions and subtractions (ciphertext or plain): no level;
- operands at different levels are aligned by mod-switching the higher one IN PLACE: the
  caller's ciphertext silently loses levels. This module therefore copies the higher
  operand before any mixed-level operation; the input `x` is never modified.

So a coefficient c_k cannot simply multiply x^k (that would cost ceil(log2 k) + 1 levels).
The schedule below never multiplies a scalar onto a ciphertext that is on the critical
path, and reaches the optimum ceil(log2(d + 1)) levels for every degree d >= 1.

Schedule (recursive split at powers of two, i.e. baby-step giant-step with baby step 2)
-----------------------------------------------------------------------------------
With h = 2^floor(log2 n) for a piece of degree n >= 2, split

    p = q + T_h r        (Chebyshev basis; power basis: p = q + x^h r)

with deg q < h and deg r = n - h < h. In the Chebyshev basis, from T_h T_j =
(T_(h+j) + T_(h-j)) / 2: r_0 = c_h, r_j = 2 c_(h+j) and q_(h-j) = c_(h-j) - c_(h+j)
(j >= 1), q_i = c_i otherwise: exact, no division. Leaves are c_0 + c_1 t (one
ciphertext-scalar product, level 1). Giant steps T_(2h) = 2 T_h^2 - 1 (one squaring; the
doubling is an addition, not a scalar product) sit at level log2(h). By induction a piece
of degree n < 2^m lies at level <= m, so a degree-d polynomial consumes exactly
depth = ceil(log2(d + 1)) levels (d >= 1; a constant consumes none).

Multiplications for a dense polynomial (all coefficients non-zero):
    ciphertext-ciphertext = floor(log2 d) giant squarings + one product per split whose
                            quotient r is not constant
    ciphertext-plaintext  = one per leaf of degree 1 + one per split whose r is constant
    d:      1  2  3  4  5  6  7  8  15  (2^m - 1)
    ct-ct:  0  1  2  3  4  4  5  6  10  (m - 1) + 2^(m-1) - 1
    ct-pt:  1  2  2  3  3  4  4  5   8  2^(m-1)
    depth:  1  2  2  3  3  3  3  4   4  m
(zero coefficients skip their leaves and products: an odd degree-7 polynomial needs 4
and 3.) Additions: 2 per giant step, 1 per leaf and split, 1 for x - mid.
This is the k = 2 row of `approximations.coefficients.paterson_stockmeyer_multiplications`
(about d/2 + log2 d products, against sqrt(2d) + log2 d for its best k). Larger baby
steps k save products only when scalar products are free: in TenSEAL they cost a level,
and the scalar c_j on a baby power T_j (j > k/2, already at level log2 k) would push the
whole evaluation to ceil(log2(d + 1)) + 1 levels.

The interval map and folding
----------------------------
With an interval [lo, hi], mid = (lo + hi) / 2 and half = (hi - lo) / 2, the polynomial is
evaluated as sum_k c_k T_k(t), t = (x - mid) / half (Chebyshev coefficients c_k, stable:
|T_k(t)| <= 1 on the interval). The subtraction u = x - mid is free; the division by half
would be a scalar product on the critical path (one more level). It is FOLDED instead:
the giant steps are the scaled S_h(u) = half^h T_h(u / half), computed as
S_(2h) = 2 S_h^2 - half^(2h) (no scalar product), and every quotient r is divided by
half^h before it is split further, leaves becoming (c_1 / half) u + c_0. The values are
the same; magnitudes now range over half^(+-d), so absolute errors made on small values
(coefficient encoding, rescale rounding) are amplified by up to
growth = max(half, 1/half)^d. Folding is used when growth <= FOLD_LIMIT = 2^16, e.g.
degree 7 on [-4, 4], degree 8 on [-8, 0], degree 15 on [-2, 2]; otherwise
t = u * (1/half) is formed explicitly and the evaluation costs ceil(log2(d + 1)) + 1
levels and one more ciphertext-plaintext product (e.g. degree 13 on [-4, 4]).
`plan(...).depth` states which; `fold=True/False` forces the choice.
Measured at scale 2^40 (40-bit primes), max error against the plaintext polynomial on
1024 points: growth 1 to 2^8: a few 1e-6, folded or not; degree 7 on [-4, 4]
(growth 2^14): 2.4e-5; degree 15 on [-2, 2] (growth 2^15): 1.2e-4 folded against 3e-6
unfolded (one more level). The extra error is about growth * 4e-9: the price of the
saved level; pass fold=False when it matters more than the level.
Without an interval the polynomial is evaluated in the power basis of x as given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import tenseal as ts

FOLD_LIMIT = 2.0**16
"""Largest growth max(half, 1/half)^degree for which the interval map is folded."""

Operand = Any
"""A TenSEAL `CKKSVector`, or a float64 numpy array for a plaintext dry run."""


@dataclass
class HeCost:
    """Operation counts of HE kernels.

    ct_ct_mults: ciphertext-ciphertext products (each relinearised and rescaled).
    ct_pt_mults: ciphertext products by a plain scalar or vector (each rescaled).
    additions: additions and subtractions, ciphertext or plain operand.
    rotations: slot rotations (none for polynomials).
    depth: levels consumed (drop of the ciphertext's chain index when measured).

    `a + b` is sequential composition: counts and depths add.
    """

    ct_ct_mults: int = 0
    ct_pt_mults: int = 0
    additions: int = 0
    rotations: int = 0
    depth: int = 0

    def __add__(self, other: HeCost) -> HeCost:
        if not isinstance(other, HeCost):
            return NotImplemented
        return HeCost(**{k: getattr(self, k) + getattr(other, k) for k in _FIELDS})

    def accumulate(self, other: HeCost) -> None:
        """Add `other` into this record in place (sequential composition)."""
        for k in _FIELDS:
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


_FIELDS = ("ct_ct_mults", "ct_pt_mults", "additions", "rotations", "depth")


# --- levels -----------------------------------------------------------------------------
def levels_left(vec: ts.CKKSVector) -> int:
    """Rescales still possible on `vec`: the SEAL chain index of its ciphertext's parms_id.

    A fresh ciphertext under coeff_mod_bit_sizes [q_0, ..., q_L, special] has L levels
    ([60, 40, 40, 40, 38] at N = 8192: 3); 0 means only q_0 is left (decryptable, no more
    products). For a vector split over several ciphertexts, the minimum.
    """
    data = vec.context().seal_context().data
    return min(data.get_context_data(ct.parms_id()).chain_index() for ct in vec.ciphertext())


def _level(value: Operand) -> int | None:
    return levels_left(value) if isinstance(value, ts.CKKSVector) else None


# --- the schedule -----------------------------------------------------------------------
def _trim(coefficients: np.ndarray) -> np.ndarray:
    """Drop trailing zero coefficients (keeping at least one)."""
    nonzero = np.flatnonzero(coefficients != 0.0)
    return coefficients[: int(nonzero[-1]) + 1] if nonzero.size else coefficients[:1] * 0.0


ROUNDOFF = 1e-14
"""Chebyshev coefficients below ROUNDOFF * max|c_k| are round-off (the even coefficients
of a fit to an odd function, say) and are set to zero."""


def _drop_roundoff(coefficients: np.ndarray) -> np.ndarray:
    """Zero the Chebyshev coefficients below ROUNDOFF times the largest. Kept, they would
    be encoded as the zero plaintext (scale 2^40) and cost products for nothing."""
    big = float(np.max(np.abs(coefficients))) if coefficients.size else 0.0
    return np.where(np.abs(coefficients) < ROUNDOFF * big, 0.0, coefficients)


def _depth(degree: int) -> int:
    return 0 if degree <= 0 else math.ceil(math.log2(degree + 1))


@dataclass(frozen=True)
class Schedule:
    """How a polynomial is evaluated: basis, variable, folding, predicted depth and cost.

    basis "power": p(x) = sum_k coefficients[k] x^k (no interval).
    basis "chebyshev": p(x) = sum_k coefficients[k] T_k((x - mid) / half).
    folded: the 1/half scaling is folded into the coefficients (module docstring).
    depth: levels consumed, ceil(log2(d + 1)) (+ 1 when an interval map is not folded).
    cost: predicted counts (a plaintext dry run of the same schedule).
    """

    basis: str
    coefficients: tuple[float, ...]
    mid: float = 0.0
    half: float = 1.0
    folded: bool = True
    depth: int = 0
    cost: HeCost = field(default_factory=HeCost)

    @property
    def degree(self) -> int:
        return len(self.coefficients) - 1

    def run(self, x: Operand, cost: HeCost | None = None) -> Operand:
        """Evaluate on `x` (CKKSVector or numpy array), adding operation counts to `cost`
        (its `depth` is left alone: `evaluate` measures it)."""
        return _Evaluator(self, cost if cost is not None else HeCost()).run(x)


def plan(
    coefficients: Sequence[float],
    interval: tuple[float, float] | None = None,
    *,
    fold: bool | None = None,
    chebyshev: bool = False,
) -> Schedule:
    """The schedule for p(x) = sum_k coefficients[k] x^k (power basis, lowest first).

    With `interval` = (lo, hi) it is evaluated in the Chebyshev basis of
    t = (x - mid) / half; `chebyshev=True` says `coefficients` already are the Chebyshev
    coefficients in t (as `approximations.Polynomial.chebyshev`). `fold` None chooses
    folding when max(half, 1/half)^d <= FOLD_LIMIT.
    """
    coeffs = np.asarray(coefficients, dtype=np.float64)
    if coeffs.ndim != 1 or coeffs.size == 0 or not np.all(np.isfinite(coeffs)):
        raise ValueError(f"coefficients={coefficients!r}: expected a finite 1-d sequence")
    if interval is None:
        if chebyshev:
            raise ValueError("chebyshev=True needs the interval the coefficients refer to")
        coeffs = _trim(coeffs)
        schedule = Schedule("power", tuple(coeffs.tolist()), depth=_depth(len(coeffs) - 1))
    else:
        lo, hi = (float(v) for v in interval)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"interval=({lo}, {hi}): expected finite lo < hi")
        if not chebyshev:
            from approximations.coefficients import chebyshev_from_power

            coeffs = chebyshev_from_power(coeffs, (lo, hi))
        coeffs = _trim(_drop_roundoff(np.asarray(coeffs, dtype=np.float64)))
        degree = len(coeffs) - 1
        mid, half = (lo + hi) / 2.0, (hi - lo) / 2.0
        if fold is None:
            # in logarithms: a wide interval's half^d overflows a float at high degree
            fold = degree * math.log2(max(half, 1.0 / half)) <= math.log2(FOLD_LIMIT)
        extra = 0 if (fold or half == 1.0 or degree <= 0) else 1
        schedule = Schedule(
            "chebyshev",
            tuple(coeffs.tolist()),
            mid=mid,
            half=half,
            folded=bool(fold),
            depth=_depth(degree) + extra,
        )
    predicted = HeCost()
    schedule.run(np.zeros(1), predicted)
    predicted.depth = schedule.depth
    return Schedule(**{**schedule.__dict__, "cost": predicted})


class _Evaluator:
    """Runs a `Schedule`, counting operations and guarding TenSEAL's in-place mod switch."""

    def __init__(self, schedule: Schedule, cost: HeCost) -> None:
        self.s = schedule
        self.cost = cost
        self.giants: dict[int, Operand] = {}

    # primitive operations -----------------------------------------------------------------
    @staticmethod
    def _aligned(a: Operand, b: Operand) -> tuple[Operand, Operand]:
        """Copy the higher-level operand, so TenSEAL mod-switches the copy, not a value
        that is used again (giant steps, the input)."""
        la, lb = _level(a), _level(b)
        if la is None or lb is None or la == lb:
            return a, b
        return (a.copy(), b) if la > lb else (a, b.copy())

    def mul(self, a: Operand, b: Operand) -> Operand:
        self.cost.ct_ct_mults += 1
        if a is b:
            return a.square() if isinstance(a, ts.CKKSVector) else a * a
        a, b = self._aligned(a, b)
        return a * b

    def scale(self, a: Operand, c: float) -> Operand:
        self.cost.ct_pt_mults += 1
        return a * float(c)

    def add(self, a: Operand, b: Operand) -> Operand:
        self.cost.additions += 1
        a, b = self._aligned(a, b)
        return a + b

    def shift(self, a: Operand, c: float) -> Operand:
        if c == 0.0:
            return a
        self.cost.additions += 1
        return a + float(c)

    # the schedule -----------------------------------------------------------------------------
    def run(self, x: Operand) -> Operand:
        s = self.s
        c = np.asarray(s.coefficients, dtype=np.float64)
        if s.degree == 0:  # a product by 0.0 keeps the level in TenSEAL
            return self.shift(self.scale(x, 0.0), c[0])
        if s.basis == "power":
            self.sigma = 1.0
            self.giants[1] = x
            return self.power(c)
        u = self.shift(x, -s.mid)
        if s.folded:
            self.sigma = s.half
        else:
            self.sigma = 1.0
            if s.half != 1.0:
                u = self.scale(u, 1.0 / s.half)
        self.giants[1] = u
        return self.chebyshev(c)

    def leaf(self, c: np.ndarray) -> Operand | float:
        """c_0 + c_1 v (v = x, t, or u with c_1 folded by 1/sigma): level 1."""
        if len(c) == 1 or c[1] == 0.0:
            return float(c[0])
        return self.shift(self.scale(self.giants[1], c[1] / self.sigma), c[0])

    def combine(self, q: Operand | float, giant: Operand, r: Operand | float) -> Operand:
        """q + giant * r."""
        prod = self.scale(giant, r) if isinstance(r, float) else self.mul(giant, r)
        return self.shift(prod, q) if isinstance(q, float) else self.add(prod, q)

    def power(self, c: np.ndarray) -> Operand | float:
        c = _trim(c)
        n = len(c) - 1
        if n <= 1:
            return self.leaf(c)
        h = 1 << (n.bit_length() - 1)
        return self.combine(self.power(c[:h]), self.giant(h, chebyshev=False), self.power(c[h:]))

    def chebyshev(self, c: np.ndarray) -> Operand | float:
        c = _trim(c)
        n = len(c) - 1
        if n <= 1:
            return self.leaf(c)
        h = 1 << (n.bit_length() - 1)
        r = np.empty(n - h + 1)
        r[0] = c[h]
        r[1:] = 2.0 * c[h + 1 :]
        q = c[:h].copy()
        q[h - (n - h) :] -= c[h + 1 :][::-1]  # q_(h-j) -= c_(h+j), j = 1 .. n - h
        r /= self.sigma**h
        return self.combine(self.chebyshev(q), self.giant(h, chebyshev=True), self.chebyshev(r))

    def giant(self, h: int, *, chebyshev: bool) -> Operand:
        """x^h, or S_h(u) = sigma^h T_h(u / sigma) by S_2h = 2 S_h^2 - sigma^2h: level log2 h."""
        if h not in self.giants:
            below = self.giant(h // 2, chebyshev=chebyshev)
            square = self.mul(below, below)
            if chebyshev:
                square = self.shift(self.add(square, square), -(self.sigma**h))
            self.giants[h] = square
        return self.giants[h]


# --- public entry points ----------------------------------------------------------------
def evaluate(
    x: ts.CKKSVector,
    coefficients: Sequence[float],
    *,
    interval: tuple[float, float] | None = None,
    cost: HeCost | None = None,
    fold: bool | None = None,
) -> ts.CKKSVector:
    """p(x) = sum_k coefficients[k] x^k, slot-wise, on a CKKS vector.

    With `interval` = (lo, hi) the polynomial is evaluated in the Chebyshev basis of
    t = (x - mid) / half, the map folded into the coefficients when the growth
    max(half, 1/half)^d <= FOLD_LIMIT (module docstring); without, in the power basis of x.

    Depth: ceil(log2(d + 1)) levels for degree d >= 1 (measured equal for d = 2, 3, 4, 7,
    8, 15), one more when an interval map is not folded; 0 for a constant.
    Counts (dense, folded): floor(log2 d) + #non-constant splits ciphertext products,
    #leaves + #constant splits scalar products (d = 7: 5 and 4; d = 15: 10 and 8).

    Raises ValueError, before any operation, when x has fewer levels left than needed.
    `cost`, when given, receives the counts and the measured depth (drop in chain index).
    `x` is not modified.
    """
    return _execute(x, plan(coefficients, interval, fold=fold), cost)


def evaluate_catalog(
    x: ts.CKKSVector, entry: Any, *, cost: HeCost | None = None, fold: bool | None = None
) -> ts.CKKSVector:
    """Evaluate an `approximations.Polynomial` (or a catalog `Entry` holding one) on x, in
    the Chebyshev basis on its interval, from its own Chebyshev coefficients (no round trip
    through the power basis). Depth and counts as for `evaluate`."""
    from approximations.polynomial import Polynomial

    poly = getattr(entry, "approximation", entry)
    if not isinstance(poly, Polynomial):
        raise ValueError(
            f"{getattr(entry, 'name', entry)!r}: not a single polynomial "
            f"({type(poly).__name__}); only approximations.Polynomial evaluates here"
        )
    cheb = poly.chebyshev[: poly.degree + 1]
    return _execute(x, plan(cheb, poly.interval, fold=fold, chebyshev=True), cost)


def _execute(x: ts.CKKSVector, schedule: Schedule, cost: HeCost | None) -> ts.CKKSVector:
    if not isinstance(x, ts.CKKSVector):
        raise TypeError(f"x: expected a tenseal.CKKSVector, got {type(x).__name__}")
    before = levels_left(x)
    if before < schedule.depth:
        how = "folded" if schedule.folded else "with the interval map as one more level"
        raise ValueError(
            f"polynomial of degree {schedule.degree} ({schedule.basis} basis, {how}) needs "
            f"{schedule.depth} levels but the ciphertext has {before} left: use a longer "
            "coeff_mod_bit_sizes chain (a larger poly_modulus_degree) or refresh x first"
        )
    local = HeCost()
    out = schedule.run(x, local)
    local.depth = before - levels_left(out)
    if cost is not None:
        cost.accumulate(local)
    return out


__all__ = [
    "FOLD_LIMIT",
    "HeCost",
    "Schedule",
    "evaluate",
    "evaluate_catalog",
    "levels_left",
    "plan",
]


def evaluate_approximation(x: Any, poly: Any) -> Any:
    """An `approximations.Polynomial` on `x` (an `HeTensor`, a CKKSVector or numpy), from its
    own Chebyshev coefficients: depth ceil(log2(d + 1))."""
    cheb = poly.chebyshev[: poly.degree + 1]
    return plan(cheb, poly.interval, chebyshev=True).run(x)
