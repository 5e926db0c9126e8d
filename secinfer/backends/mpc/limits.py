"""What the `mpc` backend can hold: the bound on the data owner's values (`ValueLimit`).

|x| < 2^(63 - 2b) with b fractional bits (`--precision-bits`, default 16: 2^31). CrypTen
encodes x as round(x 2^b) in a 64-bit ring; a product of two encoded values is formed at
scale 2^(2b) before its truncation, so an input must leave room for one product with a
factor of magnitude up to 1 (a weight, say): |x| 2^(2b) < 2^63. Beyond 2^(63 - b) the
encoding itself wraps around silently (the 1e30 input that came back as 3.5e9). Values
near the bound still fail CrypTen's two-party truncation with probability about
|v| 2^(2b - 63) per product of value v: the bound is what the ring holds, not a promise of
accuracy.
"""

from __future__ import annotations

import math

from secinfer.core.precision import DEFAULT_BITS
from secinfer.load.values import ValueLimit


def mpc_limit(precision_bits: int = DEFAULT_BITS) -> ValueLimit:
    """|x| < 2^(63 - 2 precision_bits): room for one product in the 64-bit ring (module
    docstring)."""
    return ValueLimit(
        "mpc",
        math.ldexp(1.0, 63 - 2 * precision_bits),
        strict=True,
        reason=f"{precision_bits} fractional bits in a 64-bit ring, with room for one product",
    )


__all__ = ["mpc_limit"]
