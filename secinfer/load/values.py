"""The values of the data owner's inputs, checked before anything is shared or encrypted.

One check (`check_values`) on every backend and entry point: every input holds at least one
value, every value is finite, and, on a secure backend, every floating-point value lies
within what the backend can hold (`ValueLimit`, from `backend_limit`, `mpc_limit` or
`he_limit`). The first offending value is named with its position and the limit, in one
line (`UserError`: exit 2).

The limits:

  plain, approx   finite values (no bound: float64 holds what the model holds).
  mpc             |x| < 2^(63 - 2b) with b fractional bits (`--precision-bits`, default 16:
                  2^31). CrypTen encodes x as round(x 2^b) in a 64-bit ring; a product of
                  two encoded values is formed at scale 2^(2b) before its truncation, so an
                  input must leave room for one product with a factor of magnitude up to 1
                  (a weight, say): |x| 2^(2b) < 2^63. Beyond 2^(63 - b) the encoding itself
                  wraps around silently (the 1e30 input that came back as 3.5e9). Values
                  near the bound still fail CrypTen's two-party truncation with
                  probability about |v| 2^(2b - 63) per product of value v: the bound is
                  what the ring holds, not a promise of accuracy.
  he              |x| <= R = 2^mask_bits (`protocols.he.refresh.default_mask_bits`: 2^17 for
                  the default chain [60, 40, 40, 60] at scale 2^40). After its last rescale
                  a CKKS ciphertext holds |m| < 2^(q_0 bits - scale bits - 1) = 4R; a refresh
                  adds a mask of up to R, and the client accepts a decrypted value only
                  within 2R (`he_session._plausible`). An input within R survives both; a
                  value of 1e30 used to come back as "a ciphertext not made under this key".

Integer inputs are token ids (one-hot under both secure backends, range-checked against the
vocabulary there) or 0/1 masks: they are checked for emptiness only (integers are finite),
not against the bound, which a large vocabulary's ids may exceed at many fractional bits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from secinfer.errors import UserError

DEFAULT_PRECISION_BITS = 16
"""CrypTen's fractional bits when no --precision-bits is given (`secinfer eval -b mpc`)."""


@dataclass(frozen=True)
class ValueLimit:
    """|x| must stay within `bound` (strictly below it when `strict`) on `backend`;
    `reason` says why, for the error line."""

    backend: str
    bound: float = math.inf
    strict: bool = False
    reason: str = ""

    def accepted(self) -> str:
        """What the backend takes, in words: 'finite numbers' and the bound with its reason."""
        if math.isinf(self.bound):
            return "finite numbers"
        exponent = math.log2(self.bound)
        power = f"2^{exponent:g}" if exponent.is_integer() else f"{self.bound:g}"
        sign = "<" if self.strict else "<="
        return f"finite numbers with |x| {sign} {power} = {self.bound:.3g} ({self.reason})"

    def exceeded(self, magnitude: np.ndarray) -> np.ndarray:
        """Where |x| is beyond the bound."""
        return magnitude >= self.bound if self.strict else magnitude > self.bound


def mpc_limit(precision_bits: int = DEFAULT_PRECISION_BITS) -> ValueLimit:
    """|x| < 2^(63 - 2 precision_bits): room for one product in the 64-bit ring (module
    docstring)."""
    return ValueLimit(
        "mpc",
        math.ldexp(1.0, 63 - 2 * precision_bits),
        strict=True,
        reason=f"{precision_bits} fractional bits in a 64-bit ring, with room for one product",
    )


def he_limit(params: Any = None) -> ValueLimit:
    """|x| <= 2^mask_bits for CKKS `params` (a `protocols.he.params.CkksParams`; default:
    the server's `he_session.DEFAULT_PARAMS`), the refresh mask's bound (module docstring)."""
    from protocols.he.refresh import default_mask_bits

    if params is None:
        from secinfer.backends.he.session import DEFAULT_PARAMS

        params = DEFAULT_PARAMS
    first, scale = params.coeff_mod_bit_sizes[0], params.scale_bits
    mask_bits = default_mask_bits(first, scale)
    return ValueLimit(
        "he",
        math.ldexp(1.0, mask_bits),
        reason=f"CKKS at scale 2^{scale} holds |x| < 2^{first - scale - 1} at its last level "
        f"and a refresh adds a mask of up to 2^{mask_bits}",
    )


def backend_limit(backend: str, precision_bits: int = DEFAULT_PRECISION_BITS) -> ValueLimit:
    """The limit of `backend` (plain, approx, mpc, he); see the module docstring."""
    if backend == "mpc":
        return mpc_limit(precision_bits)
    if backend == "he":
        return he_limit()
    return ValueLimit(backend)


def check_values(
    inputs: Sequence[Any],
    names: Sequence[str],
    limit: ValueLimit | None = None,
    *,
    prefix: str = "input ",
) -> None:
    """UserError naming the first input that is empty, or its first value (C order) that
    is not finite or beyond `limit` (floating-point inputs only), with its index.

    `inputs` are torch tensors or numpy arrays; `names[i]` names `inputs[i]` (an index when
    `names` is shorter); `prefix` starts the message ('input ', or 'DATA file.npz: array ').
    Nothing is copied for numpy arrays and CPU tensors except the boolean masks.
    """
    limit = limit or ValueLimit("")
    for index, value in enumerate(inputs):
        name = names[index] if index < len(names) else f"#{index}"
        array = _as_numpy(value)
        if array.size == 0:
            raise UserError(
                f"{prefix}{name}: shape {tuple(array.shape)} holds no values; give at least "
                "one value (one row)"
            )
        if array.dtype.kind not in "fc":
            continue
        bad = ~np.isfinite(array)
        if not math.isinf(limit.bound):
            with np.errstate(invalid="ignore"):
                bad |= limit.exceeded(np.abs(array))
        if not bad.any():
            continue
        position = np.unravel_index(int(np.argmax(bad.reshape(-1))), array.shape)
        found = array[position]
        problem = "is not a finite number" if not np.isfinite(found) else "is beyond the limit"
        where = ", ".join(str(int(i)) for i in position)
        who = f"the {limit.backend} backend" if limit.backend else "secinfer"
        raise UserError(
            f"{prefix}{name}: {name}[{where}] = {_show(found)} {problem}; {who} accepts "
            f"{limit.accepted()}"
        )


def _show(value: Any) -> str:
    """A value for the error line: 'nan', '-inf', '1e+30', '(1+2j)'."""
    if isinstance(value, complex | np.complexfloating):
        return str(complex(value))
    return f"{float(value):.6g}"


def _as_numpy(value: Any) -> np.ndarray:
    """A numpy view of a torch tensor (bfloat16 as float32) or an array as it is."""
    if isinstance(value, np.ndarray):
        return value
    import torch

    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        return tensor.numpy()
    return np.asarray(value)


__all__ = [
    "ValueLimit",
    "backend_limit",
    "check_values",
    "he_limit",
    "mpc_limit",
]
