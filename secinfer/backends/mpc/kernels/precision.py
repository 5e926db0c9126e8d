"""Fixed-point precision per node on the `mpc` backend (plan option `precision_bits`).

A run encodes every secret with f fractional bits (`--precision-bits`, 16 by default) in
CrypTen's 64-bit ring. A nonlinear node whose plan choice sets `precision_bits` = b runs
at b instead: its secret inputs are re-encoded (b > f: shares times 2^(b-f), local and
exact; b < f: local truncation, error about 2^-b), the kernel runs with every product
truncated by 2^b, and its output returns to f bits (local truncation). No communication.

More bits make small quantities exact (a LayerNorm of variance 1e-3, a softmax weight);
fewer keep kernels that square large inputs safe (GELU squares x itself). The option's
allowed values and the plan's headroom check (what a precision costs in truncation
failures) are pure arithmetic and live in the core: `secinfer.core.precision`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from secinfer.backends.mpc.kernels.values import is_secret
from secinfer.core.precision import OPTION
from secinfer.core.registry import Call


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


__all__ = ["at_precision", "bits_of", "reencoded"]
