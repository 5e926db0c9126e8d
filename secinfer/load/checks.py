"""Checks of user inputs against an exported program's placeholders (count, dtype, shape).

Symbolic sizes are checked against the program's range constraints.
"""

from __future__ import annotations

from dataclasses import dataclass
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


INPUT_DTYPES = {
    name: getattr(torch, name)
    for name in ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8",
                 "uint8", "bool")
}  # fmt: skip
"""The dtypes a model input may have (by name), for inputs described in a peer's message."""

MAX_RANK = 16


@dataclass(frozen=True)
class InputSpec:
    """What one user input must be: its dtype and, per axis, a fixed size or a range.

    `dims[i]` is an int (fixed) or a (low, high) pair of a symbolic size, each None when
    unbounded. This is the public description of a program's input that the model owner
    sends to the data owner (`to_json` / `from_json`, no code), and what `check` enforces.
    """

    name: str
    dtype: str
    dims: tuple[int | tuple[int | None, int | None], ...]

    @classmethod
    def of(cls, name: str, value: torch.Tensor, ranges: dict) -> InputSpec:
        """The spec of a program placeholder's fake value under its range constraints."""
        dims: list[int | tuple[int | None, int | None]] = []
        for dim in value.shape:
            size = static_size(dim)
            dims.append(size if size is not None else bounds(dim, ranges))
        return cls(name, _dtype(value.dtype), tuple(dims))

    def check(self, got: torch.Tensor) -> None:
        """UserError unless `got` has this dtype, rank, fixed sizes and size ranges.

        A symbolic size's lower bound is enforced only above 2: export reports a minimum
        of 2 for dimensions that still accept 1.
        """
        if _dtype(got.dtype) != self.dtype:
            raise UserError(
                f"input {self.name}: dtype {_dtype(got.dtype)}, the model wants {self.dtype}; "
                f"convert it (numpy: x.astype('{self.dtype}'))"
            )
        wanted = "(" + ", ".join(str(d) if isinstance(d, int) else "*" for d in self.dims) + ")"
        fixed_ok = got.dim() == len(self.dims) and all(
            not isinstance(d, int) or g == d for g, d in zip(got.shape, self.dims, strict=True)
        )
        if not fixed_ok:
            raise ShapeMismatch(
                f"input {self.name}: shape {tuple(got.shape)}, the model wants {wanted} "
                "(* any size)"
            )
        for axis, (size, dim) in enumerate(zip(got.shape, self.dims, strict=True)):
            if isinstance(dim, int):
                continue
            low, high = dim
            if (high is not None and size > high) or (low is not None and low > 2 and size < low):
                allowed = f"{low if low is not None and low > 2 else 1} to {high or 'any'}"
                raise ShapeMismatch(
                    f"input {self.name}: dimension {axis} is {size} (shape {tuple(got.shape)}), "
                    f"the model accepts {allowed}"
                )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "dims": [d if isinstance(d, int) else {"min": d[0], "max": d[1]} for d in self.dims],
        }

    @classmethod
    def from_json(cls, data: Any) -> InputSpec:
        """Parse a peer's description; ValueError naming the field when it is malformed."""
        if not isinstance(data, dict) or set(data) != {"name", "dtype", "dims"}:
            raise ValueError("an input description needs exactly name, dtype and dims")
        name, dtype, dims = data["name"], data["dtype"], data["dims"]
        if not isinstance(name, str) or not 0 < len(name) <= 200:
            raise ValueError("an input's name must be a short string")
        if dtype not in INPUT_DTYPES:
            raise ValueError(f"input {name}: dtype {dtype!r} is not one secinfer accepts")
        if not isinstance(dims, list) or len(dims) > MAX_RANK:
            raise ValueError(f"input {name}: dims must be a list of at most {MAX_RANK} axes")
        parsed: list[int | tuple[int | None, int | None]] = []
        for dim in dims:
            if _count(dim):
                parsed.append(dim)
            elif (
                isinstance(dim, dict)
                and set(dim) == {"min", "max"}
                and all(v is None or _count(v) for v in dim.values())
            ):
                parsed.append((dim["min"], dim["max"]))
            else:
                raise ValueError(f"input {name}: a dimension must be a size or {{min, max}}")
        return cls(name, dtype, tuple(parsed))


def _count(value: Any) -> bool:
    """A non-negative int (not a bool) below 2^31."""
    return type(value) is int and 0 <= value < 1 << 31


def input_specs(program: torch.export.ExportedProgram, names: list[str]) -> list[InputSpec]:
    """The specs of the program's tensor user inputs, named by `names` (same order)."""
    expected = expected_inputs(program)
    return [
        InputSpec.of(name, want, program.range_constraints)
        for name, want in zip(names, expected, strict=True)
        if isinstance(want, torch.Tensor)
    ]


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
