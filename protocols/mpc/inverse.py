"""1/x and 1/sqrt(x) on secret shares of positive x in a public interval [lo, hi].

Range normalisation (after SPU): with octaves of ratio B = 2^step (step 1 for 1/x, step 2,
even octaves, for 1/sqrt(x)), x lies in [B^(k-1), B^k) for one integer k, and

    m = x B^-k in [1/B, 1),   1/x = (1/m) 2^-k,   1/sqrt(x) = (1/sqrt m) 2^-k  (step 2).

ONE stacked comparison of x against the powers B^j inside the interval gives the
indicators c_j = [x >= B^j]; since they are monotone, k = k_lo + sum_j c_j and every
power of two of k is a telescoping LOCAL linear combination with public constants:
B^-k = B^-k_lo + sum_j c_j (B^-(j+1) - B^-j). Then a relative-minimax polynomial on the
octave (fitted once with `approximations.fit`, cached), Newton steps, a public factor
that centres the Newton step's one-sided error, and the scale back (one product).

Error: the polynomial's relative error e0 on the octave becomes e0^2 after one Newton
step for 1/x and 1.5 e0^2 for 1/sqrt(x), one-sided, then centred to half that: the
defaults give +-5.1e-5 (1/x: degree 2, one step) and +-3.4e-6 (1/sqrt x: degree 4, one
step). Fixed point then adds about 2 units of 2^-16 absolutely; a result below 2^-16 (1/x
for x > 2^16) is 0 on the grid: `shift` = g returns 2^g times the value instead, to be
multiplied and then divided by 2^g. Inputs are themselves held to 2^-16 only (relative
1.5e-2 at x = 1e-3): the kernels add their error to the value actually shared.

Valid range: 0 < lo < hi <= 2^30 (lo below 2^-16, the smallest positive fixed-point
value, is raised to it). Inputs outside the octaves covering [lo, hi] are evaluated on
the polynomial's extrapolation: a factor 2 beyond still converges with one Newton step,
much further does not.

Rounds: one comparison (8; none when [lo, hi] lies in one octave) + 1 (normalise) +
ceil(log2 degree) + 2 per Newton step + 1 (scale back): 13 for 1/x, 14 for 1/sqrt(x).
Bytes per element and party: 216 per threshold (log_B(hi/lo) of them, 19 for 1/x and 9
for 1/sqrt(x) on [1e-3, 1e3]), plus 8 to 24 per product.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from approximations import fit
from protocols.mpc.compare import linear_combination, stacked_indicators
from protocols.mpc.crypten_setup import import_crypten
from protocols.mpc.polynomial import FRACTION_BITS, Secret, evaluate_polynomial, on_grid

MAX_INPUT = 2.0**30


@dataclass(frozen=True)
class Octaves:
    """The octaves of ratio 2^step covering [lo, hi]: x in [B^(k-1), B^k), k_lo <= k <= k_hi."""

    step: int
    k_lo: int
    k_hi: int

    @classmethod
    def covering(cls, interval: tuple[float, float], step: int) -> Octaves:
        """Positive fixed-point values are >= 2^-16, so lo is raised to that silently."""
        lo, hi = max(float(interval[0]), 2.0**-FRACTION_BITS), float(interval[1])
        if not (float(interval[0]) > 0 and lo < hi <= MAX_INPUT):
            raise ValueError(
                f"interval=({interval[0]:g}, {hi:g}): expected 0 < lo < hi <= 2^30 "
                "(a positive range the fixed-point encoding holds)"
            )
        _, e_lo = math.frexp(lo)  # lo in [2^(e_lo - 1), 2^e_lo)
        mantissa, e_hi = math.frexp(hi)
        ceil_log2_hi = e_hi - 1 if mantissa == 0.5 else e_hi
        k_lo = -((-e_lo) // step)  # ceil(e_lo / step)
        k_hi = max(k_lo, -((-ceil_log2_hi) // step))
        return cls(step, k_lo, k_hi)

    @property
    def exponents(self) -> list[int]:
        """j with threshold B^j = 2^(step j): x >= B^j means k > j."""
        return list(range(self.k_lo, self.k_hi))

    @property
    def thresholds(self) -> list[float]:
        return [2.0 ** (self.step * j) for j in self.exponents]

    def scale(self, exponent: float, shift: int = 0) -> tuple[list[float], float]:
        """Weights and constant of 2^(shift + exponent k), k = k_lo + sum_j c_j, as a
        combination of the c_j: differences of the grid-rounded values, so the sum
        telescopes to exactly the rounded value of every octave."""
        value = [on_grid(2.0 ** (shift + exponent * k)) for k in range(self.k_lo, self.k_hi + 1)]
        return [b - a for a, b in itertools.pairwise(value)], value[0]


@lru_cache(maxsize=32)
def initial_guess(kind: str, degree: int, low: float | None = None) -> tuple[np.ndarray, float]:
    """(power-basis coefficients, certified relative error) of the relative-minimax
    polynomial for 1/m on [1/2, 1] (kind "reciprocal") or 1/sqrt(m) on [low, 1] ("rsqrt",
    low = 1/4 by default: even octaves; 1/16 for octaves of ratio 16)."""
    if kind == "reciprocal":
        poly = fit(lambda m: 1.0 / m, (0.5, 1.0), degree, "remez", relative=True, name="1/x")
    elif kind == "rsqrt":
        interval = (low or 0.25, 1.0)
        poly = fit(torch.rsqrt, interval, degree, "remez", relative=True, name="rsqrt")
    else:
        raise ValueError(f"kind={kind!r}: 'reciprocal' or 'rsqrt'")
    return poly.coefficients, float(poly.max_error or 0.0)


def error_bound(kind: str, degree: int, newton: int, low: float | None = None) -> float:
    """Relative error of the approximation in exact arithmetic (fixed point adds ~2^-15)."""
    _, e = initial_guess(kind, degree, low)
    for _ in range(newton):
        e = e * e if kind == "reciprocal" else 1.5 * e * e + 0.5 * e**3
    return e


def _check(degree: int, newton: int) -> None:
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise ValueError(f"degree={degree!r}: expected an integer >= 1")
    if isinstance(newton, bool) or not isinstance(newton, int) or not 0 <= newton <= 2:
        raise ValueError(f"newton={newton!r}: expected 0, 1 or 2 Newton steps")


def _normalise(
    x: Secret, octaves: Octaves, out_exponent: float, shift: int, fss_bits: int | None
) -> tuple[Secret, Secret]:
    """(m, scale): m = x B^-k on the octave, scale = 2^(shift + out_exponent k)."""
    # The normaliser B^-k shifted up so that its smallest value is on the grid.
    spare = max(0, octaves.step * octaves.k_hi - FRACTION_BITS)
    if not octaves.exponents:  # one octave: both scales are public
        k = octaves.k_lo
        m = x * 2.0 ** (-octaves.step * k)
        return m, m * 0.0 + 2.0 ** (shift + out_exponent * k)
    c = stacked_indicators(x, octaves.thresholds, fss_bits)
    weights, constant = octaves.scale(-octaves.step, spare)
    normaliser = linear_combination(c, weights, constant, like=x)
    weights, constant = octaves.scale(out_exponent, shift)
    scale = linear_combination(c, weights, constant, like=x)
    m = x * normaliser
    if spare:
        m = m.div(2**spare)
    return m, scale


def reciprocal(
    x: Secret,
    interval: tuple[float, float],
    *,
    degree: int = 2,
    newton: int = 1,
    shift: int = 0,
    fss_bits: int | None = None,
) -> Secret:
    """2^shift / x for secret x in the public interval [lo, hi] (module docstring).

    m = x 2^-k in [1/2, 1) (octave indicators: one stacked comparison against 2^j,
    j = k_lo .. k_hi - 1), y0 = p(m) with p the relative-minimax polynomial of `degree` on
    [1/2, 1], then Newton y <- 2y - m y^2 (relative error e -> e^2), result y 2^(shift-k).

    Relative error in exact arithmetic (`error_bound`, one-sided, halved by centring):
    degree 2, 1 step: 1.0e-4; degree 3, 1 step: 3.0e-6; degree 1, 2 steps: 1.2e-5. Fixed
    point adds about 2 units of 2^-16 to 2^shift / x (measured on [1e-3, 1e3]: within
    2e-4 relative + 4 units).

    Headroom: the last product multiplies y (about 2^17 as fixed point) by the secret scale
    2^(shift - k) (2^16 times the result's magnitude), and CrypTen's truncation of a
    product of magnitude 2^v fails with probability about 2^(v - 63) per element: keep
    2^shift / lo within about 2^10 (v <= 43). With shift = 10 on [1e-3, 1e3] (results up
    to 2^20) it failed about once in 6 runs of 2,001 elements.

    Rounds: 8 (comparison, none when [lo, hi] lies in one octave; 1 with `fss_bits`, the
    octave indicators then from the dealer's FSS keys, `stacked_indicators`) + 1 +
    ceil(log2 degree) + 2 per Newton step + 1: 13 with the defaults. Bytes per element and
    party: 216 per threshold (about log2(hi/lo); 8 for all with `fss_bits`) + 16
    (normalise) + 8 (degree 2) + 24 per step + 16.
    """
    _check(degree, newton)
    octaves = Octaves.covering(interval, step=1)
    coefficients, _ = initial_guess("reciprocal", degree)
    m, scale = _normalise(x, octaves, -1.0, shift, fss_bits)
    y = evaluate_polynomial(m, coefficients, interval=(0.5, 1.0))
    for _ in range(newton):
        y = y * 2 - m * y.square()
    return _centred(y, "reciprocal", degree, newton) * scale


def inv_sqrt(
    x: Secret,
    interval: tuple[float, float],
    *,
    degree: int = 4,
    newton: int = 1,
    shift: int = 0,
    step: int = 2,
    fss_bits: int | None = None,
) -> Secret:
    """2^shift / sqrt(x) for secret x in the public interval [lo, hi] (module docstring).

    `step` 4 takes octaves of ratio 16 (m in [1/16, 1)): half the thresholds, so half the
    comparison bytes, for a weaker initial guess (degree 5: 2.5e-2 relative) that needs
    `newton` = 2 (then 1.3e-6). Worth it where comparisons dominate (LayerNorm: one per
    row against 3 products per Newton step).

    Even octaves: m = x 4^-k in [1/4, 1) (one stacked comparison against 4^j), so that
    1/sqrt(x) = (1/sqrt m) 2^-k with an integer power of two for any k. y0 = p(m) with p the
    relative-minimax polynomial of `degree` on [1/4, 1], then Newton
    y <- 1.5 y - 0.5 m y^3 (relative error e -> 1.5 e^2 + 0.5 e^3), result y 2^(shift-k).

    Relative error in exact arithmetic (`error_bound`): degree 4, 1 step: 6.7e-6; degree
    3, 1 step: 7.4e-5; degree 2, 2 steps: 1.1e-6; degree 4, no step (SPU's choice): 2.1e-3.
    Fixed point adds about 2 units of 2^-16 to 2^shift / sqrt(x) (measured on [1e-3, 1e3]:
    within 5e-5 relative + 4 units).

    Rounds: 8 (comparison, none within one octave; 1 with `fss_bits`, as `reciprocal`) +
    1 + ceil(log2 degree) + 2 per Newton step + 1: 14 with the defaults. Bytes per
    element and party: 216 per threshold (about log4(hi/lo); 8 for all with `fss_bits`)
    + 16 (normalise) + 40 (degree 4) + 40 per step + 16.
    """
    _check(degree, newton)
    if step not in (2, 4):
        raise ValueError(f"step={step!r}: octaves of ratio 4 (step 2) or 16 (step 4)")
    low = 2.0**-step
    octaves = Octaves.covering(interval, step=step)
    coefficients, _ = initial_guess("rsqrt", degree, low)
    m, scale = _normalise(
        x, octaves, -step / 2, shift, fss_bits
    )  # 1/sqrt(2^(step k)) = 2^(-step k/2)
    y = evaluate_polynomial(m, coefficients, interval=(low, 1.0))
    for _ in range(newton):
        y = y * 1.5 - _m_y_cubed(m, y) * 0.5
    return _centred(y, "rsqrt", degree, newton, low) * scale


def _centred(y: Secret, kind: str, degree: int, newton: int, low: float | None = None) -> Secret:
    """After a Newton step the relative error is one-sided, in [-b, 0]; a public factor
    1 / (1 - b/2) centres it to +-b/2 (local)."""
    factor = on_grid(1.0 / (1.0 - error_bound(kind, degree, newton, low) / 2.0))
    return y if newton == 0 or factor == 1.0 else y * factor


def _m_y_cubed(m: Secret, y: Secret) -> Secret:
    """m y^3 in two rounds: [y^2, m y] as one stacked product, then their product."""
    crypten = import_crypten()
    both = crypten.stack([y, m]) * y.unsqueeze(0)
    return both[0] * both[1]


__all__ = ["Octaves", "error_bound", "initial_guess", "inv_sqrt", "reciprocal"]
