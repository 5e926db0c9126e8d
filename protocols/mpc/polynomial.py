"""Polynomials on secret-shared values: log-depth powers, power-basis evaluation.

Cost model (CrypTen, two parties, Beaver triples): a product of two secret tensors is one
round in which each party opens 8 bytes per element of each operand (a square opens one
operand); products by public constants, additions and stacking are local. Every product
of two fixed-point values is followed by a local truncation (error up to about one unit of
2^-16, CrypTen's default 16 fractional bits).

Products are truncated locally by each party (SecureML's two-party trick, CrypTen's only
option with two computing parties): the result is off by up to one unit, and with
probability about |v| 2^-32 for a product of value v it is off by 2^32 instead. Kernels
therefore form their per-element products at small values (powers of a variable mapped
into [-1, 1], normalised rows), and values that may be large only where they are
discarded (a segment's polynomial far outside its segment is multiplied by an exact 0).

Fixed point holds values to 2^-16 absolutely: x^6 for x = 4 is 4096, and a coefficient
0.0018 rounded to the grid (by up to 7.6e-6) already moves that term by up to 0.03.
`evaluate_polynomial` with an interval therefore maps x to t = (x - mid) / half, |t| <= 1
on the interval, and evaluates the same polynomial in the Chebyshev basis of t:
|T_k(t)| <= 1 and the coefficients of a good approximation decay, where the power basis
of t has huge cancelling coefficients (2^(k-1) in T_k alone). Same products, same rounds
and bytes as powers of t; fixed-point error of the catalog's minimax polynomials of degree
13 to 20 on [-8, 8]: 1e-4 to 3e-4 in the Chebyshev basis against 5e-3 to 1.6 in powers of
t (simulated with one unit of error per truncation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
import torch
from numpy.polynomial import Polynomial as NpPolynomial
from numpy.polynomial import chebyshev as npcheb

from protocols.mpc.crypten_setup import import_crypten

Secret: TypeAlias = Any
"""A CrypTen MPCTensor (CrypTen ships no type information)."""

FRACTION_BITS = 16
"""CrypTen's default fixed-point precision; public constants are rounded to this grid."""


def on_grid(values: Any, bits: int = FRACTION_BITS) -> Any:
    """Round public constants to the nearest multiple of 2^-bits.

    CrypTen encodes a public float by truncating toward zero (error up to one unit);
    rounding first makes the encoding exact, so the error is at most half a unit.
    """
    scale = float(2**bits)
    if isinstance(values, torch.Tensor):
        return torch.round(values.to(torch.float64) * scale) / scale
    if isinstance(values, np.ndarray):
        return np.round(values * scale) / scale
    return round(float(values) * scale) / scale


def powers(x: Secret, degree: int) -> list[Secret]:
    """[x, x^2, ..., x^degree] in ceil(log2(degree)) rounds of multiplication.

    Level k computes every power in (2^(k-1), 2^k] at once: x^(2^(k-1) + j) =
    x^(2^(k-1)) * x^j for j = 1 .. min(2^(k-1), degree - 2^(k-1)), as ONE product of the
    stacked x^j by the broadcast x^(2^(k-1)) (level 1 is a square). Products: degree - 1;
    bytes opened per party at level k: 8 (j_max + 1) per element of x (8 at level 1).

    Error: each product adds one truncation (<= about 2^-16) to the product of the
    operands' errors; for |x| <= 1 the error of x^k is at most about k 2^-16 plus k times
    the error of x. Values must stay below 2^31 (products are formed at scale 2^32 in a
    64-bit ring; larger values wrap around silently) and a product of value v fails with
    probability about |v| 2^-32 (module docstring).
    """
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise ValueError(f"degree={degree!r}: expected an integer >= 1")
    crypten = import_crypten()
    out = [x]
    kept = _KeptTerms("powers", degree)
    while len(out) < degree:
        have = len(out)  # x^1 .. x^have are known, have = 2^(k-1)
        count = min(have, degree - have)
        top = out[-1]
        if kept.active:
            out.extend(kept.level(out, count))
        elif have == 1:
            out.append(x.square())
        elif count == 1:
            out.append(top * out[0])
        else:
            block = crypten.stack(out[:count]) * top.unsqueeze(0)
            out.extend(block[i] for i in range(count))
    return out


class _KeptTerms:
    """The products of one level, top * term_j (j = 1 .. count), with every term's Beaver
    mask kept (`protocols.mpc.reuse`, with the dealer): each term is opened once, the
    first time it is an operand, so a level opens only the terms it meets for the first
    time (8 bytes per element each) instead of count + 1 of them; one round as before.
    Over a whole evaluation of degree d, terms 1 .. ceil(d/2) are opened once each:
    8 ceil(d/2) bytes per element and party instead of about 8 (d + log2 d)."""

    def __init__(self, prefix: str, degree: int) -> None:
        from protocols.mpc import reuse

        self.active = degree >= 2 and reuse.available()
        self.prefix = reuse.new_key(prefix) if self.active else ""
        self.degree = degree

    def key(self, j: int) -> str:
        return f"{self.prefix}.{j}"

    def level(self, terms: list[Secret], count: int) -> list[Secret]:
        from protocols.mpc import reuse

        have = len(terms)
        top = terms[-1]
        items = [(top, terms[j - 1], self.key(have), self.key(j)) for j in range(1, count + 1)]
        last = have + count >= self.degree
        release = tuple(self.key(j) for j in range(1, have + 1)) if last else ()
        return reuse.products(items, release=release)


def chebyshev_terms(t: Secret, degree: int) -> list[Secret]:
    """[T_1(t), ..., T_degree(t)] (Chebyshev polynomials) in ceil(log2(degree)) rounds.

    Exactly the products of `powers`: level k forms T_h T_j for h = 2^(k-1) and
    j = 1 .. min(h, degree - h) in ONE stacked product, then locally
    T_(h+j) = 2 T_h T_j - T_(h-j) (T_0 = 1). Same rounds and bytes as `powers`.

    Error: for |t| <= 1 every |T_k| <= 1, and the error of T_k grows by about two of its
    factors' errors plus one truncation per level (a few units of 2^-16 for k <= 20);
    outside [-1, 1] the T_k grow like (2|t|)^k.
    """
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise ValueError(f"degree={degree!r}: expected an integer >= 1")
    crypten = import_crypten()
    terms = [t]
    kept = _KeptTerms("chebyshev", degree)
    while len(terms) < degree:
        have = len(terms)  # T_1 .. T_have are known, have = 2^(k-1)
        count = min(have, degree - have)
        top = terms[-1]
        if kept.active:
            products = kept.level(terms, count)
        elif have == 1:
            products = [t.square()]
        elif count == 1:
            products = [top * terms[0]]
        else:
            block = crypten.stack(terms[:count]) * top.unsqueeze(0)
            products = [block[i] for i in range(count)]
        for j, product in enumerate(products, start=1):
            below = terms[have - j - 1] if have > j else 1.0  # T_(have - j)
            terms.append(product * 2 - below)
    return terms


def power(x: Secret, exponent: int) -> Secret:
    """x^exponent by square-and-multiply in ceil(log2(exponent)) rounds.

    Round i squares x^(2^(i-1)) and, in the same stacked product, multiplies the running
    product by the square of the previous round when bit i-1 of the exponent is set; a
    last product joins the running product to the highest square when both are needed.
    Products: about log2(exponent) + popcount(exponent) - 1 (x^6: 3 products, where
    `powers(x, 6)` makes 5). Error and range as for `powers`.
    """
    if isinstance(exponent, bool) or not isinstance(exponent, int) or exponent < 1:
        raise ValueError(f"exponent={exponent!r}: expected an integer >= 1")
    crypten = import_crypten()
    square, acc = x, None  # square = x^(2^i); acc = product of the set bits below i
    bits = bin(exponent)[2:][::-1]
    for bit in bits[:-1]:
        take = bit == "1"
        if take and acc is not None:
            both = crypten.stack([square, acc]) * square.unsqueeze(0)
            square, acc = both[0], both[1]
        else:
            if take:
                acc = square
            square = square.square()
    return square if acc is None else square * acc


def unit_map(interval: tuple[float, float]) -> tuple[float, float]:
    """(mid, scale) with t = (x - mid) scale mapping [lo, hi] onto about [-1, 1].

    Both are rounded to the 2^-16 grid, so that the map the parties apply is exactly the
    one the coefficients are re-expressed for (`to_unit_interval`).
    """
    lo, hi = float(interval[0]), float(interval[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"interval=({lo}, {hi}): expected finite lo < hi")
    return on_grid((lo + hi) / 2.0), on_grid(2.0 / (hi - lo))


def to_unit_interval(coefficients: Sequence[float], interval: tuple[float, float]) -> np.ndarray:
    """Power-basis coefficients in t of p(mid + t / scale), where p has `coefficients` in x
    and (mid, scale) = `unit_map(interval)`: x in [lo, hi] is t in about [-1, 1]."""
    mid, scale = unit_map(interval)
    composed = NpPolynomial(np.asarray(coefficients, dtype=np.float64))(
        NpPolynomial([mid, 1.0 / scale])
    )
    out = np.zeros(len(coefficients), dtype=np.float64)
    out[: len(composed.coef)] = composed.coef[: len(out)]
    return out


def unit_variable(x: Secret, interval: tuple[float, float]) -> Secret:
    """t = (x - mid) scale (`unit_map`): local, one product by a public constant."""
    mid, scale = unit_map(interval)
    return (x - mid) * scale


def degree_of(coefficients: Sequence[float]) -> int:
    """Index of the last non-zero coefficient (0 for a constant)."""
    nonzero = np.flatnonzero(np.asarray(coefficients, dtype=np.float64) != 0.0)
    return int(nonzero[-1]) if nonzero.size else 0


def combine(terms: Sequence[Secret], coefficients: Sequence[float], like: Secret) -> Secret:
    """c_0 + sum_k c_k terms[k-1]: local (public coefficients; one truncation per term).

    `terms` are [t, t^2, ...] or [T_1(t), T_2(t), ...] (at least degree-many); `like`
    gives the shape of a constant.
    """
    crypten = import_crypten()
    coeffs = np.asarray(coefficients, dtype=np.float64)
    used = [k for k in range(1, len(coeffs)) if coeffs[k] != 0.0]
    constant = on_grid(float(coeffs[0]))
    if not used:
        return like * 0.0 + constant
    stacked = crypten.stack([terms[k - 1] for k in used])
    scales = torch.tensor([coeffs[k] for k in used], dtype=torch.float64)
    scales = on_grid(scales).view(len(used), *([1] * like.dim()))
    return (stacked * scales).sum(0) + constant


def chebyshev_coefficients(
    coefficients: Sequence[float], interval: tuple[float, float]
) -> np.ndarray:
    """Chebyshev coefficients c_k with p(x) = sum_k c_k T_k(t), t = (x - mid) scale
    (`unit_map(interval)`), for p given by power-basis `coefficients` in x."""
    return npcheb.poly2cheb(to_unit_interval(coefficients, interval))


def evaluate_polynomial(
    x: Secret, coefficients: Sequence[float], interval: tuple[float, float] | None = None
) -> Secret:
    """p(x) = sum_k coefficients[k] x^k on a secret x (power basis, lowest degree first).

    With `interval` = (lo, hi): t = (x - mid)/half (local) and p(x) = sum_k c_k T_k(t) with
    c = `chebyshev_coefficients(coefficients, interval)`, the T_k from
    `chebyshev_terms`. On the interval |t| <= 1 and the fixed-point error is about
    (sum_k |c_k| e_k + 2) 2^-16 with e_k a few units (module docstring). Outside it the
    value is still p(x), with |T_k(t)| growing like (2|t|)^k (keep it far below 2^31).
    Without an interval: sum_k coefficients[k] x^k from `powers(x)`, for x already small.

    Rounds: ceil(log2(degree)) multiplications; degree <= 1 is local. Bytes per element
    and party: 8 at the first level, 8 (j + 1) at a level making j new terms.
    """
    coeffs = np.asarray(coefficients, dtype=np.float64)
    if coeffs.ndim != 1 or coeffs.size == 0 or not np.all(np.isfinite(coeffs)):
        raise ValueError(f"coefficients={coefficients!r}: expected a finite 1-d sequence")
    if interval is None:
        degree = degree_of(coeffs)
        terms = powers(x, degree) if degree >= 1 else []
        return combine(terms, coeffs[: degree + 1], like=x)
    cheb = chebyshev_coefficients(coeffs, interval)
    degree = degree_of(cheb)
    terms = chebyshev_terms(unit_variable(x, interval), degree) if degree >= 1 else []
    return combine(terms, cheb[: degree + 1], like=x)


__all__ = [
    "FRACTION_BITS",
    "Secret",
    "chebyshev_coefficients",
    "chebyshev_terms",
    "combine",
    "degree_of",
    "evaluate_polynomial",
    "on_grid",
    "power",
    "powers",
    "to_unit_interval",
    "unit_map",
    "unit_variable",
]
