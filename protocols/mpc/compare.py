"""Comparisons on secret-shared values: batched threshold indicators, row maximum, and the
local algebra on 0/1 indicators.

CrypTen compares by converting the difference to a binary sharing (a 64-bit adder
circuit, 6 levels of AND gates) and back: one comparison is 8 rounds and about 216 bytes
sent per element and party, some 13 multiplications' worth. Comparisons against several
thresholds are therefore stacked into ONE call: the bytes add up, the rounds do not.

An indicator comes back as an integer sharing (scale 1, value exactly 0 or 1). A product
of a fixed-point value by an indicator needs no truncation and is exact in the ring, so an
indicator of 0 removes a value completely, even one that overflowed to garbage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from protocols.mpc import fss_compare
from protocols.mpc.crypten_setup import import_crypten
from protocols.mpc.polynomial import Secret, on_grid


def stacked_indicators(
    x: Secret, thresholds: Sequence[float], fss_bits: int | None = None
) -> Secret:
    """[x >= t_i] for public thresholds t_i, stacked along a new dimension 0.

    With `fss_bits` (every x - t_i within 2^(fss_bits - 1) in the ring): from the
    dealer's FSS keys (`fss_compare.at_least`: one opening of x + r, 8 bytes per element
    and one round, for all the thresholds), the same exact values.

    Thresholds are rounded UP to the 2^-16 grid: for every value on the grid (every value
    a fixed-point x can hold) x >= t and x >= ceil(t 2^16) 2^-16 agree, so the result is
    exactly the real comparison of x's fixed-point value with t. One call to
    CrypTen's comparison on the stacked differences x - t_i: rounds of one comparison
    (8), bytes of len(thresholds) comparisons. Returns an integer (scale-1) sharing of
    shape (len(thresholds), *x.shape).
    """
    if len(thresholds) == 0:
        raise ValueError("thresholds=(): need at least one threshold")
    crypten = import_crypten()
    if fss_bits is not None:
        return crypten.stack(fss_compare.at_least(x, thresholds, fss_bits))
    bits = int(x.encoder._precision_bits)
    diffs = crypten.stack([x - math.ceil(float(t) * 2**bits) / 2**bits for t in thresholds])
    return nonnegative(diffs)


def nonnegative(d: Secret) -> Secret:
    """[d >= 0] as an integer (scale-1) sharing, at any fixed-point precision of d.

    CrypTen 0.4.1's comparison turns the sign bit back into arithmetic shares at the
    *configured* precision and multiplies by (configured scale // d's scale): 0 when d
    carries more fractional bits than the run (a node at its own `precision_bits`), so
    every comparison would say "d >= 0". The sign of a ring element does not depend on
    its scale, so the comparison runs on a scale-1 view of the same shares. Costs as
    CrypTen's comparison (8 rounds, about 216 bytes per element and party).
    """
    crypten = import_crypten()
    view = d.clone()
    view._tensor.encoder = crypten.encoder.FixedPointEncoder(precision_bits=0)
    return view.ge(0)


def indicators(x: Secret, thresholds: Sequence[float], fss_bits: int | None = None) -> list[Secret]:
    """[x >= t] for each public threshold t, from ONE stacked comparison.

    Same cost and exactness as `stacked_indicators`; returns one integer (scale-1)
    sharing of x's shape per threshold. With `fss_bits` (every x - t within
    2^(fss_bits - 1) in the ring), from the dealer's FSS keys instead
    (`fss_compare.at_least`: one opening of 8 bytes per element, one round).
    """
    if fss_bits is not None:
        return fss_compare.at_least(x, thresholds, fss_bits)
    stacked = stacked_indicators(x, thresholds)
    return [stacked[i] for i in range(len(thresholds))]


def relu(x: Secret, fss_bits: int | None = None) -> Secret:
    """max(x, 0) = x [x >= 0]: one comparison and one exact product (the indicator is an
    integer sharing), or with `fss_bits` (|X| < 2^(fss_bits - 1)) from the dealer's FSS
    keys (`fss_compare.relu`: 8 + 1/8 bytes per element, 2 rounds)."""
    if fss_bits is not None:
        return fss_compare.relu(x, fss_bits)
    return x * nonnegative(x)


def relu_and_clipped_abs(
    x: Secret, clip: float, fss_bits: int | None = None
) -> tuple[Secret, Secret]:
    """(max(x, 0), min(|x|, clip)) from the indicators [x >= -c], [x >= 0], [x >= c]:
    relu = [x >= 0] x and min(|x|, c) = ([0 <= x < c] - [-c <= x < 0]) x + c [|x| >= c]
    (c = clip on the fixed-point grid). With CrypTen: one stacked comparison of three
    thresholds (8 rounds, about 650 bytes) and one stacked exact product (1 round). With
    `fss_bits` (|X| + C < 2^(fss_bits - 1)): the dealer's FSS keys
    (`fss_compare.relu_and_clipped_abs`: 8 + 3/8 bytes per element, 2 rounds)."""
    if fss_bits is not None:
        return fss_compare.relu_and_clipped_abs(x, clip, fss_bits)
    if not clip > 0:
        raise ValueError(f"clip={clip!r}: must be positive")
    crypten = import_crypten()
    low, zero, high = stacked_indicators(x, [-clip, 0.0, clip])
    selected = x.unsqueeze(0) * crypten.stack([zero, zero * 2 - low - high])
    outside = linear_combination(crypten.stack([low, high]), [-clip, clip], clip, like=x)
    return selected[0], selected[1] + outside


def times_public_integers(x: Secret, factors: torch.Tensor) -> Secret:
    """x * k for a public integer tensor k (broadcast to x's shape): exact and local.

    The shares are multiplied in the ring with no truncation, so k = 0 gives exactly 0
    (a public 0/1 mask drops positions without error) and the encoding scale is kept.
    """
    out = x.clone()
    share = out.share
    out.share = share * factors.to(torch.long).to(share.device).expand(share.shape)
    return out


def linear_combination(
    stacked: Secret, weights: Sequence[float], constant: float, like: Secret
) -> Secret:
    """constant + sum_j weights[j] stacked[j] as a fixed-point sharing (like `like`'s).

    `stacked` is an integer (scale-1) sharing such as `stacked_indicators` returns. The
    weights are rounded to the 2^-16 grid and applied as integers to the shares, so the
    result is exact on that grid (powers of two from 2^-16 up are exact). Local.
    """
    crypten = import_crypten()
    bits = int(like.encoder._precision_bits)
    if len(weights) != stacked.size(0):
        raise ValueError(f"{len(weights)} weights for {stacked.size(0)} stacked indicators")
    integers = torch.tensor([round(float(w) * 2**bits) for w in weights], dtype=torch.long)
    integers = integers.view(len(weights), *([1] * (stacked.dim() - 1)))
    out = times_public_integers(stacked, integers).sum(0)
    out.encoder = crypten.encoder.FixedPointEncoder(precision_bits=bits)
    return out + on_grid(constant, bits)


def maximum(x: Secret, dim: int = -1, keepdim: bool = False, fss_bits: int | None = None) -> Secret:
    """max of x along `dim` by a tournament: ceil(log2 n) levels for n entries.

    Each level splits the remaining entries into halves a, b (an odd one waits) and keeps
    b + [a >= b] (a - b): one comparison and one product per level, so n - 1 comparisons
    and n - 1 products per row in ceil(log2 n) (8 + 1) rounds. Exact: the result is one of
    the inputs (no approximation, no truncation). CrypTen's own `max(dim)` returns the same
    value but also computes a tie-broken one-hot argmax, about twice the bytes (measured on
    rows of 128: 670 against 232 bytes per element and party).

    With `fss_bits` (every difference a - b within 2^(fss_bits - 1) in the ring), each
    level keeps b + relu(a - b) from the dealer's FSS keys (`relu`: 8 + 1/8 bytes per
    pair, 2 rounds) instead of a comparison and a product.
    """
    crypten = import_crypten()
    dim = dim % x.dim()
    current = x
    while current.size(dim) > 1:
        n = current.size(dim)
        half = n // 2
        a, b, rest = current.split([half, half, n - 2 * half], dim=dim)
        winner = b + relu(a - b, fss_bits)
        current = winner if n == 2 * half else crypten.cat([winner, rest], dim=dim)
    return current if keepdim else current.squeeze(dim)


__all__ = [
    "indicators",
    "linear_combination",
    "maximum",
    "nonnegative",
    "relu",
    "relu_and_clipped_abs",
    "stacked_indicators",
    "times_public_integers",
]
