"""Fixed-point precision per node on the `mpc` backend (plan option `precision_bits`).

A run encodes every secret with f fractional bits (`--precision-bits`, 16 by default) in
CrypTen's 64-bit ring. A nonlinear node whose plan choice sets `precision_bits` = b runs
at b instead: its secret inputs are re-encoded (b > f: shares times 2^(b-f), local and
exact; b < f: local truncation, error about 2^-b), the kernel runs with every product
truncated by 2^b, and its output returns to f bits (local truncation). No communication.

Why: precision costs no bytes here (the ring is 64 bits whatever b is) but headroom. A
product of value v is formed as v 2^(2b) before its truncation, and CrypTen's two-party
truncation then fails (an error of about 2^(64-2b) in value) with probability about

    v 2^(2b - 63) per element:  2^-31 v at b = 16, 2^-23 v at b = 20, 2^-15 v at b = 24.

More bits make small quantities exact (a LayerNorm of variance 1e-3, a softmax weight);
fewer keep kernels that square large inputs safe (GELU squares x itself).

Guard (at plan time, `check_headroom`): the largest product a node forms, V, from its
calibrated interval (`LARGEST_PRODUCT`: x^2 for GELU, the variance for LayerNorm, 1 for
softmax, whose kernel squares x / 2^n and multiplies values in [0, 1], the interval's
largest magnitude otherwise) must keep that probability at most 2^-20 per element:
V 2^(2b) <= 2^43. The calibration is the model owner's sample: inputs far beyond it can
still fail, as they can at 16 bits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from secinfer.backends.mpc.kernels.values import is_secret
from secinfer.core.registry import Call

MIN_BITS, MAX_BITS = 16, 24
"""Below 16 the kernels' public constants (rounded to 2^-16) would not be representable;
above 24 a product has less than 2^15 of headroom."""
OPTION = "precision_bits"


def check_bits(bits: Any, where: str) -> int:
    """The option's value as an int in [MIN_BITS, MAX_BITS], or ValueError naming it."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(
            f"{where}: precision_bits={bits!r}; give an integer from {MIN_BITS} to {MAX_BITS}"
        )
    return bits


SAFE_PRODUCT_BITS = 43
"""V 2^(2b) <= 2^43: truncation failure probability at most 2^-20 per element."""


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


def bits_of(value: Any) -> int:
    return int(value.encoder.scale).bit_length() - 1


def reencoded(value: Any, bits: int) -> Any:
    """A secret at `bits` fractional bits (a copy; public values pass unchanged)."""
    if not is_secret(value) or bits_of(value) == bits:
        return value
    from protocols.mpc.crypten_setup import import_crypten

    out = value.clone()
    out._tensor.encode_(import_crypten().encoder.FixedPointEncoder(precision_bits=bits))
    return out


def _map(value: Any, bits: int) -> Any:
    if isinstance(value, list | tuple):
        return type(value)(_map(v, bits) for v in value)
    return reencoded(value, bits)


def at_precision(kernel: Callable[[Call], Any]) -> Callable[[Call], Any]:
    """Run `kernel` at its choice's `precision_bits` (when set), then return the output
    at the precision of the node's first secret input."""

    @functools.wraps(kernel)
    def run(call: Call) -> Any:
        options = call.choice.options if call.choice is not None else {}
        bits = options.get(OPTION)
        secrets = [a for a in call.args if is_secret(a)]
        if bits is None or not secrets:
            return kernel(call)
        base = bits_of(secrets[0])
        kwargs = {k: _map(v, bits) for k, v in call.kwargs.items()}
        inner = Call(call.target, _map(call.args, bits), kwargs, call.choice, call.stats)
        return _map(kernel(inner), base)

    return run


__all__ = ["MAX_BITS", "MIN_BITS", "OPTION", "at_precision", "check_bits", "check_headroom"]
