"""The plan option `precision_bits` (mpc backend): its name, its allowed values, and the
headroom check the plan applies to it. Pure arithmetic: the kernels that re-encode shares
at another precision are the mpc backend's (`secinfer.backends.mpc.kernels.precision`).

A run encodes every secret with f fractional bits (`--precision-bits`, DEFAULT_BITS) in
CrypTen's 64-bit ring; a node whose plan choice sets `precision_bits` = b runs at b.
Precision costs no bytes (the ring is 64 bits whatever b is) but headroom. A product of
value v is formed as v 2^(2b) before its truncation, and CrypTen's two-party truncation
then fails (an error of about 2^(64-2b) in value) with probability about

    v 2^(2b - 63) per element:  2^-31 v at b = 16, 2^-23 v at b = 20, 2^-15 v at b = 24.

Guard (at plan time, `check_headroom`): the largest product a node forms, V, from its
calibrated interval (`LARGEST_PRODUCT`: x^2 for GELU, the variance for LayerNorm, 1 for
softmax, whose kernel squares x / 2^n and multiplies values in [0, 1], the interval's
largest magnitude otherwise) must keep that probability at most 2^-20 per element:
V 2^(2b) <= 2^43. The calibration is the model owner's sample: inputs far beyond it can
still fail, as they can at 16 bits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

OPTION = "precision_bits"
"""The plan option's name (a choice's `options[OPTION]`)."""
DEFAULT_BITS = 16
"""CrypTen's fractional bits when no --precision-bits is given."""
MIN_BITS, MAX_BITS = 16, 24
"""Below 16 the kernels' public constants (rounded to 2^-16) would not be representable;
above 24 a product has less than 2^15 of headroom."""
SAFE_PRODUCT_BITS = 43
"""V 2^(2b) <= 2^43: truncation failure probability at most 2^-20 per element."""


def check_bits(bits: Any, where: str) -> int:
    """The option's value as an int in [MIN_BITS, MAX_BITS], or ValueError naming it."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(
            f"{where}: precision_bits={bits!r}; give an integer from {MIN_BITS} to {MAX_BITS}"
        )
    return bits


def _largest_magnitude(interval: list[float]) -> float:
    return max(abs(float(v)) for v in interval)


LARGEST_PRODUCT: dict[str, Callable[[list[float]], float]] = {
    "gelu": lambda interval: _largest_magnitude(interval) ** 2,
    "softmax": lambda interval: 1.0,
    "layer_norm": lambda interval: max(1.0, float(interval[1])),
}
"""function -> the largest product value its mpc kernel forms, from its calibrated
interval (the kernels' docstrings derive these); others: the interval's largest |v|."""


def largest_product(function: str, interval: list[float]) -> float:
    """The largest product value the mpc kernel of `function` forms on `interval`."""
    rule = LARGEST_PRODUCT.get(function)
    return rule(interval) if rule else max(1.0, _largest_magnitude(interval))


def max_bits_for(largest: float) -> int:
    """The most fractional bits with largest 2^(2b) <= 2^SAFE_PRODUCT_BITS (may be < 16)."""
    bits = MAX_BITS
    while bits > 0 and largest * 4.0**bits > 2.0**SAFE_PRODUCT_BITS:
        bits -= 1
    return bits


def check_headroom(bits: int, function: str, interval: list[float] | None, where: str) -> None:
    """Refuse a precision at which the node's largest product would fail truncation with
    probability above 2^-20 per element (module docstring)."""
    if not interval:
        return
    largest = largest_product(function, interval)
    if largest * 4.0**bits > 2.0**SAFE_PRODUCT_BITS:
        most = max_bits_for(largest)
        advice = f"use at most {most} bits" if most >= MIN_BITS else "leave it at 16 bits"
        raise ValueError(
            f"{where}: precision_bits={bits} is too many for its calibrated range (largest "
            f"product about {largest:.3g}: truncation would fail with probability "
            f"{min(1.0, largest * 2.0 ** (2 * bits - 63)):.1e} per element); {advice}"
        )


__all__ = [
    "DEFAULT_BITS",
    "MAX_BITS",
    "MIN_BITS",
    "OPTION",
    "SAFE_PRODUCT_BITS",
    "check_bits",
    "check_headroom",
    "largest_product",
    "max_bits_for",
]
