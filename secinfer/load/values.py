"""The values of the data owner's inputs, checked before anything is shared or encrypted.

One check (`check_values`) on every backend and entry point: every input holds at least one
value, every value is finite, and, on a secure backend, every floating-point value lies
within what the backend can hold (a `ValueLimit`). The first offending value is named with
its position and the limit, in one line (`UserError`: exit 2).

The limits are the backends' own numbers (`Backend.value_limit`, `secinfer.backends.base`):
plain and approx take any finite value (float64 holds what the model holds); mpc bounds
|x| by its fixed-point ring (`secinfer.backends.mpc.limits`), he by its refresh mask
(`secinfer.backends.he.limits`).

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


__all__ = ["ValueLimit", "check_values"]
