"""Checks of user inputs against an exported program's placeholders (count, dtype, shape).

Symbolic sizes are checked against the program's range constraints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from secinfer.errors import UserError


class ShapeMismatch(UserError):
    """Inputs whose shape the program does not accept (a deferred model re-exports on it)."""


def expected_inputs(program: torch.export.ExportedProgram) -> list[Any]:
    """Fake values (or constants) of the program's user inputs, in signature order."""
    values = {n.name: n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder"}
    return [values.get(name) for name in program.graph_signature.user_inputs]


def check_count_and_types(inputs: tuple[Any, ...], names: list[str], path: Path) -> None:
    """UserError unless `inputs` are tensors, as many as `names` (when names are known)."""
    if names and len(inputs) != len(names):
        raise UserError(
            f"{path}: the model takes {len(names)} input(s) ({', '.join(names)}), got {len(inputs)}"
        )
    for index, value in enumerate(inputs):
        if not isinstance(value, torch.Tensor):
            name = names[index] if names else f"#{index}"
            raise UserError(f"input {name}: expected a tensor, got {type(value).__name__}")


def check_tensor(name: str, got: torch.Tensor, want: torch.Tensor, ranges: dict) -> None:
    """UserError unless `got` has the dtype, rank, fixed sizes and size ranges of `want`."""
    if got.dtype != want.dtype:
        raise UserError(
            f"input {name}: dtype {_dtype(got.dtype)}, the model wants {_dtype(want.dtype)}; "
            f"convert it (numpy: x.astype('{_dtype(want.dtype)}'))"
        )
    sizes = [static_size(d) for d in want.shape]
    wanted = "(" + ", ".join("*" if w is None else str(w) for w in sizes) + ")"
    fixed_ok = got.dim() == want.dim() and all(
        w is None or g == w for g, w in zip(got.shape, sizes, strict=True)
    )
    if not fixed_ok:
        raise ShapeMismatch(
            f"input {name}: shape {tuple(got.shape)}, the model wants {wanted} (* any size)"
        )
    for axis, (size, dim) in enumerate(zip(got.shape, want.shape, strict=True)):
        low, high = bounds(dim, ranges)
        if (high is not None and size > high) or (low is not None and low > 2 and size < low):
            allowed = f"{low if low is not None and low > 2 else 1} to {high or 'any'}"
            raise ShapeMismatch(
                f"input {name}: dimension {axis} is {size} (shape {tuple(got.shape)}), "
                f"the model accepts {allowed}"
            )


def static_size(dim: Any) -> int | None:
    """A fixed size as an int (also a SymInt specialised to a number); None when symbolic."""
    if isinstance(dim, int):
        return dim
    expr = getattr(getattr(dim, "node", None), "expr", None)
    return int(expr) if expr is not None and expr.is_number else None


def bounds(dim: Any, ranges: dict) -> tuple[int | None, int | None]:
    """(lower, upper) of a symbolic size from the range constraints; None when unbounded."""
    expr = getattr(getattr(dim, "node", None), "expr", None)
    if expr is None or expr not in ranges:
        return None, None
    value_range = ranges[expr]
    return _finite(value_range.lower), _finite(value_range.upper)


def _finite(bound: Any) -> int | None:
    """`bound` as an int, or None for infinity."""
    try:
        return int(bound)
    except (TypeError, ValueError, AttributeError, OverflowError):
        return None


def _dtype(dtype: torch.dtype) -> str:
    """'float32' for torch.float32."""
    return str(dtype).removeprefix("torch.")
