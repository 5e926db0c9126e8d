"""Fixed-point precision per node on the `mpc` backend (plan option `precision_bits`).

A run encodes every secret with f fractional bits (`--precision-bits`, 16 by default) in
CrypTen's 64-bit ring. A nonlinear node whose plan choice sets `precision_bits` = b runs
at b instead: its secret inputs are re-encoded (b > f: shares times 2^(b-f), local and
exact; b < f: local truncation, error about 2^-b), the kernel runs with every product
truncated by 2^b, and its output returns to f bits (local truncation). No communication.

Why: precision costs no bytes here (the ring is 64 bits whatever b is) but headroom. A
value v is held as v 2^b and a product as x y 2^(2b) before truncation, so

    |x y| < 2^(63 - 2b):  2^31 at b = 16, 2^27 at 18, 2^23 at 20, 2^15 at 24,

and CrypTen's two-party truncation fails (an error of about 2^(64-b)) with probability
about |v| 2^(b-63) per product of value v. More bits make small quantities exact (a
LayerNorm of variance 1e-3, a softmax denominator's reciprocal); fewer keep large ones
safe (GELU inputs of 30, attention scores of 50 before max subtraction).

Guard: the model owner's calibration bounds each node's input; a node is refused (at plan
time, `check_headroom`) when its calibrated interval's largest magnitude M, squared,
would not fit: M^2 2^(2b) >= 2^62. Values inside a kernel may still exceed M (LayerNorm's
sum of squares is n times the variance); the kernels' docstrings give those magnitudes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from secinfer.kernels.mpc_values import is_secret
from secinfer.registry import Call

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


def check_headroom(bits: int, interval: list[float] | None, where: str) -> None:
    """Refuse a precision whose products of calibrated-size values would wrap around."""
    if not interval:
        return
    largest = max(abs(float(v)) for v in interval)
    if largest * largest * 4.0**bits >= 2.0**62:
        raise ValueError(
            f"{where}: precision_bits={bits} leaves products of its calibrated values (up to "
            f"{largest:.3g}) no room in the 64-bit ring; use at most "
            f"{max_bits_for(largest)} bits"
        )


def max_bits_for(largest: float) -> int:
    """The most fractional bits with largest^2 2^(2b) < 2^62."""
    bits = MAX_BITS
    while bits > 0 and largest * largest * 4.0**bits >= 2.0**62:
        bits -= 1
    return bits


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
