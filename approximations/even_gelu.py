"""GELU on a bounded interval through its even part: no comparison at all.

GELU(x) = x/2 + E(x) with E(x) = (x/2) erf(x / sqrt 2) = GELU(x) - x/2, which is even and
analytic, so E(x) = q(x^2) for an analytic q. A minimax polynomial q of degree k on
s in [0, B^2] gives GELU on [-B, B] with the same max error as q has on [0, B^2]:

    GELU(x) ~ x/2 + q(x^2),   error = max |q(s) - E(sqrt s)| over [0, B^2]

Secure cost: one squaring and a degree-k polynomial in s (log2 k rounds), against PUMA's
three secure comparisons. It holds only on [-B, B]: beyond it q diverges, so B comes from
calibration (the plan's interval) and inputs outside it are counted. Larger B needs a
higher degree for the same error (measured: degree 10 in s reaches 2.8e-3 at B = 8 and
2.4e-2 at B = 12), so `fit_even_gelu` returns None when no degree up to `max_degree`
meets the target, and `auto_gelu` falls back to the one-comparison `SignExpGELU`.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from approximations.fitting import fit
from approximations.polynomial import Polynomial
from approximations.sign_exp_gelu import SignExpGELU
from approximations.tail_gelu import TailGELU

TARGET = 5e-3
"""Default max error of the even form (below PUMA's 0.0075 refit and CrypTen's 0.019)."""
SAFETY = 1.5
"""`auto_gelu` fits on 1.5 times the calibrated bound: the even form fails abruptly beyond
its bound, so inputs a little past the calibrated range must still be covered."""
MAX_BOUND = 10.0
"""Above this (after SAFETY) no degree up to MAX_DEGREE reaches TARGET: `SignExpGELU`."""
DEFAULT_BOUND = 30.0
"""`SignExpGELU`'s smallest bound (its cost does not grow until 34: 9 squarings)."""
MAX_DEGREE = 12
"""Highest degree in s = x^2 tried (24 in x)."""


def even_part(s: torch.Tensor) -> torch.Tensor:
    """E(sqrt s) = GELU(sqrt s) - sqrt(s)/2 for s >= 0, in the input's dtype."""
    x = torch.sqrt(s.clamp_min(0))
    return 0.5 * x * torch.erf(x / math.sqrt(2.0))


def _bucket(bound: float) -> float:
    """Round the bound up to a quarter so that nearby calibrations share one fit."""
    return math.ceil(bound * 4) / 4


@lru_cache(maxsize=32)
def _fit(bound: float, target: float, max_degree: int) -> Polynomial | None:
    for degree in range(2, max_degree + 1):
        poly = fit(even_part, (0.0, bound * bound), degree, "remez", name="gelu_even_part")
        if poly.max_error is not None and poly.max_error <= target:
            return poly
    return None


def fit_even_gelu(
    bound: float, target: float = TARGET, max_degree: int = MAX_DEGREE
) -> Polynomial | None:
    """q with GELU(x) ~ x/2 + q(x^2) on [-B, B] (B = `bound` rounded up to 0.25) and
    certified error <= `target`, of the lowest degree that reaches it; None if none does.
    """
    if not (bound > 0 and math.isfinite(bound)):
        raise ValueError(f"bound={bound!r}: expected a positive finite number")
    return _fit(_bucket(bound), float(target), int(max_degree))


def auto_gelu(interval: tuple[float, float] | None) -> Polynomial | SignExpGELU:
    """The cheapest secure GELU form for a calibrated interval: the even form on SAFETY
    times the bound max(|lo|, |hi|) when it reaches TARGET there, else the one-comparison
    `SignExpGELU` on that bound (on DEFAULT_BOUND when the interval is unknown)."""
    if not interval:
        return SignExpGELU.for_bound(DEFAULT_BOUND)
    bound = SAFETY * max(abs(float(interval[0])), abs(float(interval[1])), 1e-3)
    even = fit_even_gelu(bound) if bound <= MAX_BOUND else None
    return even if even is not None else SignExpGELU.for_bound(max(bound, DEFAULT_BOUND))


def secure_gelu_form(
    method: str, interval: tuple[float, float] | None, cheap_comparisons: bool = False
) -> Polynomial | SignExpGELU | TailGELU:
    """The form behind the plan's GELU methods "auto", "sign_exp" (the one-comparison
    form on max(|lo|, |hi|), at least DEFAULT_BOUND) and "tail" (`TailGELU`, on every
    input). "auto" is `auto_gelu`, or with `cheap_comparisons` (comparisons from FSS keys,
    one opening for several thresholds) the tail form: about 40 bytes per element there,
    fewer than the even form's 48 and at 2.4e-4 instead of up to 5e-3."""
    if method == "tail" or (method == "auto" and cheap_comparisons):
        return TailGELU.default()
    if method == "auto":
        return auto_gelu(interval)
    if method != "sign_exp":
        raise ValueError(f"method={method!r}: expected 'auto', 'sign_exp' or 'tail'")
    bound = max(abs(float(v)) for v in interval) if interval else DEFAULT_BOUND
    return SignExpGELU.for_bound(max(bound, DEFAULT_BOUND))


def even_gelu(x: torch.Tensor, q: Polynomial) -> torch.Tensor:
    """x/2 + q(x^2): the plaintext form of the secure kernel (any dtype, autograd intact)."""
    return 0.5 * x + q(x * x)


__all__ = [
    "MAX_DEGREE",
    "TARGET",
    "auto_gelu",
    "even_gelu",
    "even_part",
    "fit_even_gelu",
    "secure_gelu_form",
]
