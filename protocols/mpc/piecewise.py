"""Piecewise polynomials on secret shares, and GELU from the approximation catalog.

f(x) = sum_i I_i(x) p_i(x) with segment indicators I_i from ONE stacked comparison at the
breakpoints b_1 < ... < b_s (c_j = [x >= b_j]; I_0 = 1 - c_1, I_i = c_i - c_(i+1),
I_s = c_s), every polynomial segment evaluated from ONE shared set of terms in
t = (x - mid)/half over the hull [a, b] of the polynomial segments (Chebyshev terms T_k(t),
`polynomial.chebyshev_terms`: the products of powers of t, better conditioned; each
segment's polynomial re-expressed as a Chebyshev series in t), and ONE stacked product of
indicators by segment values.
Zero segments are dropped, constant segments are a local combination of indicators, an
identity segment is x itself: none costs a polynomial evaluation.

Products by an indicator are exact in the ring: a segment's value outside its segment
(even one that overflowed far outside the hull) is multiplied by exactly 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from approximations import Piecewise, Polynomial, catalog
from protocols.mpc.compare import linear_combination, stacked_indicators
from protocols.mpc.crypten_setup import import_crypten
from protocols.mpc.polynomial import (
    Secret,
    chebyshev_coefficients,
    chebyshev_terms,
    combine,
    degree_of,
    evaluate_polynomial,
    unit_variable,
)

GELU_METHODS = {
    "puma": "gelu.puma",
    "puma_refit": "gelu.puma_refit",
    "bolt": "gelu.bolt",
    "quad": "gelu.quad",
}
"""Method name -> catalog entry (`approximations.catalog`)."""

_TOLERANCE = 1e-12


@dataclass(frozen=True)
class _Piece:
    kind: str  # "zero" | "constant" | "identity" | "polynomial"
    index: int  # segment number (its indicator)
    lower: float
    upper: float
    coefficients: np.ndarray  # power basis in x


def _classify(piecewise: Piecewise) -> list[_Piece]:
    """Each segment's kind and power-basis coefficients, trailing terms dropped only when
    negligible on the segment: |c_k| R^k < _TOLERANCE with R the largest |x| of its finite
    bounds (at least 1). An absolute test would cut a wide segment's high terms (the
    degree-16 SiLU on [-8, 8] has c_16 about 5e-13, worth 0.004 at x = 8)."""
    pieces = []
    for i, seg in enumerate(piecewise.segments):
        coeffs = np.asarray(seg.polynomial.coefficients, dtype=np.float64)
        bounds = [abs(b) for b in (float(seg.lower), float(seg.upper)) if math.isfinite(b)]
        reach = max([1.0, *bounds])
        worth = np.abs(coeffs) * reach ** np.arange(coeffs.size)
        coeffs = coeffs[: degree_of(np.where(worth < _TOLERANCE, 0.0, coeffs)) + 1]
        if coeffs.size == 1:
            kind = "zero" if abs(coeffs[0]) < _TOLERANCE else "constant"
        elif coeffs.size == 2 and abs(coeffs[0]) < _TOLERANCE and abs(coeffs[1] - 1) < 1e-9:
            kind = "identity"
        else:
            kind = "polynomial"
        pieces.append(_Piece(kind, i, float(seg.lower), float(seg.upper), coeffs))
    return pieces


def _hull(pieces: list[_Piece], fallback: tuple[float, float]) -> tuple[float, float]:
    """The interval the shared powers are scaled to: the polynomial segments' span."""
    lows = [p.lower for p in pieces if math.isfinite(p.lower)]
    highs = [p.upper for p in pieces if math.isfinite(p.upper)]
    lo = min(lows) if lows else fallback[0]
    hi = max(highs) if highs else fallback[1]
    if any(not math.isfinite(p.lower) for p in pieces):
        lo = min(lo, fallback[0])
    if any(not math.isfinite(p.upper) for p in pieces):
        hi = max(hi, fallback[1])
    return lo, hi


def evaluate_piecewise(x: Secret, piecewise: Piecewise) -> Secret:
    """f(x) for an `approximations.Piecewise` f, on a secret x (module docstring).

    Error: f's own error (`piecewise.max_error`, e.g. 0.0075 for "gelu.puma_refit" against
    exact GELU) plus fixed point, about (sum_k |c_k| e_k + 2) 2^-16 for the segment's
    Chebyshev series c in t, e_k a few units (measured 1.4e-4 for the catalog's GELUs and
    1e-4 for its degree-13 sigmoid). The segment is
    chosen exactly: breakpoints are rounded up to the grid (`stacked_indicators`). Valid
    for any x whose polynomial-segment values stay small on their own segments; elsewhere
    they may overflow and are multiplied by exactly 0.

    Rounds: one comparison (8) + ceil(log2 d) (powers, d the largest degree) + 1
    (selection): 12 for PUMA's GELU (d = 6), 11 for BOLT's (d = 4). Bytes per element and
    party: 216 per breakpoint, 8 (j + 1) per level of terms making j new ones (56 for
    d = 6, 32 for d = 4), 16 per nonzero non-constant segment: 752 for PUMA's GELU, 496
    for BOLT's (CrypTen's x sigmoid(1.702 x): 392).
    """
    crypten = import_crypten()
    pieces = _classify(piecewise)
    if len(pieces) == 1:
        return evaluate_polynomial(x, pieces[0].coefficients)
    steps = stacked_indicators(x, list(piecewise.breakpoints))
    last = len(pieces) - 1

    def indicator(i: int) -> Secret:
        if i == 0:
            return 1 - steps[0]
        return steps[last - 1] if i == last else steps[i - 1] - steps[i]

    polys = [p for p in pieces if p.kind == "polynomial"]
    values, chosen = [], []
    if polys:
        hull = _hull(polys, piecewise.interval)
        series = [chebyshev_coefficients(p.coefficients, hull) for p in polys]
        degree = max(degree_of(c) for c in series)
        terms = chebyshev_terms(unit_variable(x, hull), degree) if degree >= 1 else []
        for p, c in zip(polys, series, strict=True):
            values.append(combine(terms, c[: degree_of(c) + 1], like=x))
            chosen.append(indicator(p.index))
    for p in pieces:
        if p.kind == "identity":
            values.append(x)
            chosen.append(indicator(p.index))
    result = None
    if values:
        result = (crypten.stack(values) * crypten.stack(chosen)).sum(0)
    constants = [p for p in pieces if p.kind == "constant"]
    if constants:
        # value_i I_i summed over constant segments, as weights on the step indicators c_j:
        # I_0 = 1 - c_1, I_i = c_i - c_(i+1), I_last = c_last.
        weights = np.zeros(last)
        offset = 0.0
        for p in constants:
            value = float(p.coefficients[0])
            if p.index == 0:
                offset += value
                weights[0] -= value
            else:
                weights[p.index - 1] += value
                if p.index < last:
                    weights[p.index] -= value
        part = linear_combination(steps, weights.tolist(), offset, like=x)
        result = part if result is None else result + part
    return result if result is not None else x * 0.0


def gelu(x: Secret, method: str = "puma_refit") -> Secret:
    """GELU(x) = x Phi(x) by a catalog approximation: `GELU_METHODS` names them.

    puma_refit  PUMA's segments (0 | cubic | sextic | x at -4, -1.95, 3), Remez
                coefficients: 0.0075 from exact GELU, plus fixed point (measured 1.4e-4;
                0.0076 in all on [-12, 12])
    puma        the same with PUMA's published coefficients: 0.0199
    bolt        0 | degree-4 minimax on [-2.7, 2.7] | x: 0.0275, two comparisons
    quad        MPCFormer's 0.125 x^2 + 0.25 x + 0.5: no comparison, one round; not GELU
                (error grows like x^2), only for models distilled with it
    Rounds and bytes: see `evaluate_piecewise` (12 rounds for puma/puma_refit, 11 for
    bolt) and `evaluate_polynomial` (1 round for quad).
    """
    if method not in GELU_METHODS:
        raise ValueError(f"method={method!r}: choose one of {', '.join(GELU_METHODS)}")
    approximation = catalog[GELU_METHODS[method]].approximation
    if isinstance(approximation, Polynomial):
        return evaluate_polynomial(x, approximation.coefficients, approximation.interval)
    if isinstance(approximation, Piecewise):
        return evaluate_piecewise(x, approximation)
    raise TypeError(f"{GELU_METHODS[method]} is a {type(approximation).__name__}")


__all__ = ["GELU_METHODS", "evaluate_piecewise", "gelu"]
