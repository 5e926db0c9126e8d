"""Labelled data for `secinfer eval`: a `.npz` with arrays `inputs` and `labels`, or a
directory of such shards, read one shard at a time (memory stays flat as the set grows).

`inputs` is the model's first input, batch first; `labels` integer class indices, one per
row. A text model's attention mask is all ones unless the shard has an `attention_mask`
array. Files are read with `numpy.load(allow_pickle=False)`: nothing is unpickled.

Every shard's `inputs` are checked when the data set is opened, before any row is shared or
encrypted: finite, and within the backend's `limit` (`secinfer.load.values`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from secinfer.errors import UserError
from secinfer.load.values import ValueLimit, check_values

REQUIRED = ("inputs", "labels")


@dataclass(frozen=True)
class Batch:
    """One batch: the model's inputs (possibly padded, see `BatchShape`) and the labels of
    its real rows only; the first `rows` rows of the inputs are the real ones."""

    inputs: tuple[torch.Tensor, ...]
    labels: torch.Tensor

    @property
    def rows(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class BatchShape:
    """How a data set streams into a model: `size` rows per batch; a batch of fewer than
    `least` rows (a shard's last) is padded to `least` with copies of its first row (inside
    every calibrated interval, as a real row is), which no total counts."""

    size: int
    least: int = 1


BatchAxis = int | tuple[int | None, int | None] | None
"""A model's batch axis: a fixed size, a symbolic size's (low, high) bounds (None when
unbounded), or None when unknown (as `InputSpec.dims[0]`)."""


MAX_PADDED_BATCH = 4096
"""Largest batch a last batch is padded to (a peer's announced static batch included)."""


def batch_shape(axis: BatchAxis, batch_size: int, *, explicit: bool | None = None) -> BatchShape:
    """The `BatchShape` for a model whose batch axis is `axis` (`batch_axis`).

    A static batch axis of b rows (a model exported with batch 1, say): batches of exactly
    b, the last padded. A symbolic one with bounds: `batch_size` clamped into them, and
    batches below a lower bound above 2 padded to it. When `batch_size` does not fit: an
    `explicit` one (the user gave --batch-size) is a UserError naming the sizes that do; a
    default one (explicit False) is replaced silently; one of unknown origin (None: a
    party's option) is replaced with a note on stderr.
    """
    if axis is None:
        return BatchShape(batch_size)
    if isinstance(axis, int):
        low, high = axis, axis
    else:
        low = axis[0] if axis[0] is not None and axis[0] > 2 else 1
        high = axis[1]
    if low > MAX_PADDED_BATCH:  # the axis may come from a peer (architecture, HE server)
        raise UserError(
            f"the model takes batches of at least {low} rows; secinfer pads a last batch to "
            f"at most {MAX_PADDED_BATCH}: export the model with a smaller or dynamic batch"
        )
    size = max(low, batch_size if high is None else min(batch_size, high))
    if size != batch_size and explicit is not False:
        fits = f"exactly {low}" if low == high else f"{low} to {high if high else 'any'}"
        why = "a static batch axis" if low == high else "its batch axis' bounds"
        if explicit:
            raise UserError(
                f"--batch-size {batch_size}: the model takes batches of {fits} rows ({why}); "
                f"give --batch-size {size} or leave it out (the data streams in batches of "
                f"{size}, the last one padded)"
            )
        print(
            f"note: the model takes batches of {fits} rows ({why}): the data streams in "
            f"batches of {size}, not {batch_size}",
            file=sys.stderr,
            flush=True,
        )
    return BatchShape(size, low)


def batch_axis(program: torch.export.ExportedProgram | None) -> BatchAxis:
    """The batch axis (axis 0) of `program`'s first tensor input, None if it has none."""
    from secinfer.load.checks import bounds, expected_inputs, static_size

    if program is None:
        return None
    first = next((v for v in expected_inputs(program) if isinstance(v, torch.Tensor)), None)
    if first is None or first.dim() == 0:
        return None
    size = static_size(first.shape[0])
    return size if size is not None else bounds(first.shape[0], program.range_constraints)


def batch_axis_json(axis: BatchAxis) -> int | dict[str, int | None] | None:
    """`axis` as JSON (how an HE server announces it): a size, {"min", "max"}, or null."""
    if axis is None or isinstance(axis, int):
        return axis
    return {"min": axis[0], "max": axis[1]}


def parse_batch_axis(data: object) -> BatchAxis:
    """The inverse of `batch_axis_json` for a peer's message; ValueError when malformed."""

    def size(value: object) -> bool:
        return type(value) is int and 0 < value < 1 << 31

    if data is None or size(data):
        return data  # type: ignore[return-value]
    if isinstance(data, dict) and set(data) == {"min", "max"}:
        low, high = data["min"], data["max"]
        if all(v is None or size(v) for v in (low, high)):
            return (low, high)  # type: ignore[return-value]
    raise ValueError(f"a batch axis must be a size or {{min, max}}, got {str(data)[:80]}")


@dataclass(frozen=True)
class Dataset:
    """The shard files of a data set, checked for their arrays and row counts."""

    files: tuple[Path, ...]
    rows: int

    def batches(self, shape: int | BatchShape, input_names: list[str]) -> Iterator[Batch]:
        """Batches of at most `shape` rows (an int: `BatchShape(int)`), shard by shard, in
        file order; a batch below `shape.least` rows padded (`BatchShape`)."""
        shape = shape if isinstance(shape, BatchShape) else BatchShape(shape)
        for path in self.files:
            with np.load(path, allow_pickle=False) as shard:
                inputs, labels = shard["inputs"], shard["labels"]
                mask = shard["attention_mask"] if "attention_mask" in shard.files else None
                for start in range(0, len(labels), shape.size):
                    rows = slice(start, start + shape.size)
                    model_inputs = _model_inputs(inputs[rows], mask, rows, input_names)
                    yield Batch(tuple(padded(t, shape.least) for t in model_inputs),
                                torch.from_numpy(labels[rows].astype(np.int64)))  # fmt: skip


def padded(t: torch.Tensor, rows: int) -> torch.Tensor:
    """`t` with at least `rows` rows: copies of its first row appended."""
    if t.shape[0] >= rows:
        return t
    return torch.cat([t, t[:1].expand(rows - t.shape[0], *t.shape[1:])])


def _model_inputs(
    inputs: np.ndarray, mask: np.ndarray | None, rows: slice, names: list[str]
) -> tuple[torch.Tensor, ...]:
    first = torch.from_numpy(np.ascontiguousarray(inputs))
    if names[1:2] == ["attention_mask"]:
        second = torch.ones_like(first) if mask is None else torch.from_numpy(mask[rows])
        return (first, second)
    return (first,)


def check_labels(labels: torch.Tensor, classes: int, seen: int) -> None:
    """UserError naming the first label outside [0, classes) (`seen`: rows before these)."""
    bad = (labels < 0) | (labels >= classes)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise UserError(
            f"DATA: label {int(labels[row])} at row {seen + row} is outside the model's "
            f"{classes} classes [0, {classes})"
        )


def open_dataset(path: str | Path, limit: ValueLimit | None = None) -> Dataset:
    """Check `path` (a `.npz` or a directory of them) and count its rows; UserError naming
    the problem and the fix otherwise. Every shard's inputs must be finite and within
    `limit` (None: finite only); the error names the shard, the row and the value."""
    path = Path(path)
    if path.is_dir():
        files = tuple(sorted(path.glob("*.npz")))
        if not files:
            raise UserError(f"DATA {path}: a directory without .npz shards")
    elif path.is_file():
        if path.suffix != ".npz":
            raise UserError(f"DATA {path}: give a .npz file (arrays 'inputs' and 'labels')")
        files = (path,)
    else:
        raise UserError(f"DATA {path}: no such file or directory")
    rows = sum(_check_shard(f, limit) for f in files)
    if rows == 0:
        raise UserError(f"DATA {path}: the data set is empty (0 labelled rows)")
    return Dataset(files, rows)


def _check_shard(path: Path, limit: ValueLimit | None) -> int:
    try:
        with np.load(path, allow_pickle=False) as shard:
            missing = [k for k in REQUIRED if k not in shard.files]
            if missing:
                raise UserError(
                    f"DATA {path}: no array {', '.join(map(repr, missing))} (has "
                    f"{', '.join(shard.files) or 'none'}); save with "
                    "numpy.savez(path, inputs=..., labels=...)"
                )
            inputs, labels = shard["inputs"], shard["labels"]
    except UserError:
        raise
    except Exception as exc:  # numpy's errors for damaged or pickled archives
        raise UserError(f"DATA {path}: not a readable .npz ({type(exc).__name__}: {exc})") from None
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise UserError(
            f"DATA {path}: labels must be a 1-D integer array, got {labels.dtype} {labels.shape}"
        )
    if inputs.dtype.kind not in "iuf" or len(inputs) != len(labels):
        raise UserError(
            f"DATA {path}: {len(inputs)} input rows ({inputs.dtype}) for {len(labels)} labels"
        )
    if len(labels):
        check_values([inputs], ["inputs"], limit, prefix=f"DATA {path}: array ")
    return len(labels)
