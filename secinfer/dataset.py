"""Labelled data for `secinfer eval`: a `.npz` with arrays `inputs` and `labels`, or a
directory of such shards, read one shard at a time (memory stays flat as the set grows).

`inputs` is the model's first input, batch first; `labels` integer class indices, one per
row. A text model's attention mask is all ones unless the shard has an `attention_mask`
array. Files are read with `numpy.load(allow_pickle=False)`: nothing is unpickled.

Every shard's `inputs` are checked when the data set is opened, before any row is shared or
encrypted: finite, and within the backend's `limit` (`secinfer.load.values`).
"""

from __future__ import annotations

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
    inputs: tuple[torch.Tensor, ...]
    labels: torch.Tensor


@dataclass(frozen=True)
class Dataset:
    """The shard files of a data set, checked for their arrays and row counts."""

    files: tuple[Path, ...]
    rows: int

    def batches(self, batch_size: int, input_names: list[str]) -> Iterator[Batch]:
        """Batches of at most `batch_size` rows, shard by shard, in file order."""
        for path in self.files:
            with np.load(path, allow_pickle=False) as shard:
                inputs, labels = shard["inputs"], shard["labels"]
                mask = shard["attention_mask"] if "attention_mask" in shard.files else None
                for start in range(0, len(labels), batch_size):
                    rows = slice(start, start + batch_size)
                    yield Batch(_model_inputs(inputs[rows], mask, rows, input_names),
                                torch.from_numpy(labels[rows].astype(np.int64)))  # fmt: skip


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
