"""Comparison and selection gates from a dealer's keys: what two parties compute on
additive shares in Z_(2^64) (CrypTen's ring) after opening one masked value.

The dealer draws a mask r, uniform in Z_(2^64), per element, and shares it. Online each
party sends its share of x + r (`masked_share`), both add the two: x^ = x + r is public
and uniform (it says nothing about x). Then:

    less_than(x^, c) -> shares of [x < c]   (c a public constant, x - c an n-bit signed value)

by the sign of y = x - c, whose mask is r too (y + r = x^ - c): with y^ = (x^ - c) mod 2^n
split into its top bit and the n - 1 low bits,

    MSB(y) = top(y^) xor r_(n-1) xor [low(y^) < low(r)]

(the borrow of the low bits' subtraction). The dealer's DCF (`protocols.mpc.fss.dcf`) on
alpha = low(r) with payload beta = 1 - 2 r_(n-1), plus shares of r_(n-1), gives shares of
d = r_(n-1) xor [low(y^) < low(r)] = r_(n-1) + beta [..]; then MSB(y) = top + d (1 - 2 top)
is linear in them with public coefficients. One key serves every threshold c (a key
shares the function on the whole domain; evaluating it at more public points reveals
nothing), so k comparisons of one x cost one opening. Exact whenever |x - c| < 2^(n-1)
(x and c in the ring's integers: fixed-point values times 2^f); beyond, the sign wraps:
callers take n from the calibrated interval with a margin.

    select(b, x^) -> shares of b x   (b a shared bit, x opened as x^ = x + r)

with the dealer's shares of a mask bit r_b and of r_b r: each party sends the low bit of
its share of b + r_b (one bit), both learn b^ = b xor r_b, and with x = x^ - r,
b = b^ + (1 - 2 b^) r_b,

    b x = b^ x^ - b^ r + (1 - 2 b^)(x^ r_b - r_b r)

linear in the shares of r, r_b and r_b r. ReLU(x) = select([x >= 0], x): one 64-bit and
one 1-bit opening, two rounds, where CrypTen's comparison decomposes 64 bits (about 6
rounds and 216 bytes per element in our measurements).

Keys are per element and per use: a select key (r_b, r_b r) must not be used twice. The
dealer makes them (`protocols.mpc.fss.dealing.deal`); the parties read theirs
(`dealing.receive`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocols.mpc.fss import dcf

RING_BITS = 64
_ONE = np.uint64(1)


@dataclass(frozen=True)
class SignKey:
    """One party's key for comparisons of N elements whose differences to the thresholds
    are `bits`-bit signed values: its share of the mask r, its share of r's bit bits - 1,
    and its DCF key (module docstring)."""

    party: int
    bits: int
    mask: np.ndarray
    top: np.ndarray
    dcf: dcf.DcfKey

    def nbytes(self) -> int:
        return int(self.mask.nbytes + self.top.nbytes + self.dcf.nbytes())


@dataclass(frozen=True)
class SelectKey:
    """One party's key for one select of N elements against the mask of a `SignKey`: its
    shares of the mask bit r_b and of r_b r."""

    party: int
    bit: np.ndarray
    product: np.ndarray

    def nbytes(self) -> int:
        return int(self.bit.nbytes + self.product.nbytes)


def masked_share(key: SignKey, x_share: np.ndarray) -> np.ndarray:
    """What a party sends to open x^ = x + r: its share of x plus its share of r."""
    with np.errstate(over="ignore"):
        return np.asarray(x_share, dtype=np.uint64) + key.mask


def less_than(key: SignKey, opened: np.ndarray, threshold: int | np.ndarray) -> np.ndarray:
    """This party's share (uint64) of [x < threshold] from x^ = x + r (module docstring);
    `threshold` in the ring's integers (a fixed-point value times 2^f, as int), one for
    all or one per element."""
    n, low_bits = key.bits, key.bits - 1
    c = np.asarray(threshold, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        y = (np.asarray(opened, dtype=np.uint64) - c) & np.uint64((1 << n) - 1)
        top = y >> np.uint64(low_bits)
        low = y & np.uint64((1 << low_bits) - 1)
        d = key.top + dcf.evaluate(key.dcf, np.broadcast_to(low, key.mask.shape))
        share = d * (_ONE - np.uint64(2) * top)
        return share + top if key.party == 0 else share


def complement(party: int, share: np.ndarray) -> np.ndarray:
    """This party's share of 1 - b from its share of a bit b (party 0 adds the 1)."""
    with np.errstate(over="ignore"):
        return (_ONE - share) if party == 0 else (np.uint64(0) - share)


def bit_share(key: SelectKey, b_share: np.ndarray) -> np.ndarray:
    """What a party sends to open b^ = b xor r_b: the low bit of its share of b + r_b."""
    with np.errstate(over="ignore"):
        return ((np.asarray(b_share, dtype=np.uint64) + key.bit) & _ONE).astype(np.uint8)


def select(key: SelectKey, sign: SignKey, opened_bit: np.ndarray, opened: np.ndarray) -> np.ndarray:
    """This party's share of b x from b^ (`opened_bit`, the xor of both `bit_share`s) and
    x^ = x + r (`opened`, against `sign`'s mask r) (module docstring)."""
    b = np.asarray(opened_bit, dtype=np.uint64)
    x = np.asarray(opened, dtype=np.uint64)
    with np.errstate(over="ignore"):
        flip = _ONE - np.uint64(2) * b
        share = flip * (x * key.bit - key.product) - b * sign.mask
        return share + b * x if key.party == 0 else share


__all__ = [
    "RING_BITS",
    "SelectKey",
    "SignKey",
    "bit_share",
    "complement",
    "less_than",
    "masked_share",
    "select",
]
