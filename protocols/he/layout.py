"""Where the entries of an encrypted tensor live: which axes are packed into CKKS slots.

A `Layout` of a logical tensor of shape (n_0, ..., n_k) says, for every axis, either
"slot axis with stride t" or "ciphertext axis". The ciphertext axes, in axis order, index a
grid of ciphertexts (a numpy object array); inside each ciphertext, entry idx sits in slot

    offset + sum over slot axes a of idx[a] * stride[a].

Slots that no entry uses are "junk": zero when the tensor is `clean` (freshly encrypted,
or masked), arbitrary otherwise. Axes of size 1 are always ciphertext axes (a selected or
summed slot axis moves into `offset`), so two layouts agree on the slots of the axes they
share exactly when their strides and offsets agree.

Shape operations (view, permute, transpose, unsqueeze, squeeze, select) change only this
bookkeeping and the grid, never a ciphertext. Feature-major is the usual layout: rows
(batch, tokens) in slots, features as ciphertexts, so that a linear layer is sums of
plain-scalar products (no rotation) and a reduction over features is ciphertext additions.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np


class LayoutError(ValueError):
    """An operation that this packing cannot express without moving slots."""


def next_power_of_two(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


@dataclass(frozen=True)
class Layout:
    """Logical shape, per-axis slot stride (None: ciphertext axis), slot offset."""

    shape: tuple[int, ...]
    strides: tuple[int | None, ...]
    offset: int = 0

    def __post_init__(self) -> None:
        if len(self.shape) != len(self.strides):
            raise ValueError(f"layout: {len(self.shape)} axes but {len(self.strides)} strides")
        pairs = zip(self.shape, self.strides, strict=True)
        strides = tuple(None if n == 1 else t for n, t in pairs)
        object.__setattr__(self, "strides", strides)
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))

    # --- derived ---------------------------------------------------------------------------
    @property
    def ct_axes(self) -> tuple[int, ...]:
        return tuple(a for a, t in enumerate(self.strides) if t is None)

    @property
    def slot_axes(self) -> tuple[int, ...]:
        return tuple(a for a, t in enumerate(self.strides) if t is not None)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[a] for a in self.ct_axes)

    def positions(self) -> np.ndarray:
        """Slot index of every slot-axis entry: an int array shaped like the slot axes."""
        pos = np.full([self.shape[a] for a in self.slot_axes], self.offset, dtype=np.int64)
        for k, a in enumerate(self.slot_axes):
            view = [1] * len(self.slot_axes)
            view[k] = self.shape[a]
            pos = pos + (np.arange(self.shape[a]) * self.strides[a]).reshape(view)
        return pos

    def span(self) -> int:
        """One past the largest slot index used."""
        return int(self.positions().max()) + 1 if self.slot_axes else self.offset + 1

    def slot_key(self) -> tuple:
        """What two operands must share to be combined slot-wise."""
        return (self.offset, tuple((a, self.strides[a]) for a in self.slot_axes))

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "strides": list(self.strides), "offset": self.offset}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Layout:
        if not isinstance(data, dict) or set(data) != {"shape", "strides", "offset"}:
            raise ValueError("layout: expected keys shape, strides, offset")
        return cls(tuple(data["shape"]), tuple(data["strides"]), int(data["offset"]))

    # --- constructors ----------------------------------------------------------------------
    @classmethod
    def rows(cls, shape: tuple[int, ...], slot_axes: int, inner: int = 1) -> Layout:
        """The first `slot_axes` axes in slots (row-major, each padded to a power of two),
        the rest ciphertext axes; `inner` (a power of two) leaves that many slots per row
        free for ciphertext axes merged later (`tensor.merge`)."""
        strides: list[int | None] = [None] * len(shape)
        stride = next_power_of_two(inner)
        for a in reversed(range(slot_axes)):
            strides[a] = stride
            stride *= next_power_of_two(shape[a])
        return cls(tuple(shape), tuple(strides))

    # --- shape bookkeeping -----------------------------------------------------------------
    def permute(self, dims: list[int]) -> Layout:
        return Layout(
            tuple(self.shape[d] for d in dims), tuple(self.strides[d] for d in dims), self.offset
        )

    def unsqueeze(self, dim: int) -> Layout:
        dim = dim % (len(self.shape) + 1)
        return Layout(
            (*self.shape[:dim], 1, *self.shape[dim:]),
            (*self.strides[:dim], None, *self.strides[dim:]),
            self.offset,
        )

    def select(self, dim: int, index: int) -> tuple[Layout, int | None]:
        """Drop axis `dim` at `index`: (layout, grid index to take on that axis or None when
        the axis is a slot axis, whose selection only moves the offset)."""
        dim %= len(self.shape)
        index %= self.shape[dim]
        stride = self.strides[dim]
        offset = self.offset + (index * stride if stride is not None else 0)
        layout = Layout(
            self.shape[:dim] + self.shape[dim + 1 :],
            self.strides[:dim] + self.strides[dim + 1 :],
            offset,
        )
        return layout, (None if stride is not None else index)

    def reshape(self, shape: tuple[int, ...]) -> Layout:
        """The layout of a view: groups of consecutive axes map to groups; a group may mix only
        ciphertext axes, or be one slot axis (plus size-1 axes), or split/merge slot axes whose
        strides nest (stride_outer = size_inner * stride_inner)."""
        groups = _reshape_groups(self.shape, shape)
        strides: list[int | None] = []
        for old, new in groups:
            old_slots = [a for a in old if self.strides[a] is not None]
            if not old_slots:
                strides += [None] * len(new)
                continue
            if len(old_slots) != len(old) and any(
                self.shape[a] > 1 for a in old if self.strides[a] is None
            ):
                raise LayoutError(
                    f"view {self.shape} -> {shape}: merges slot and ciphertext axes {list(old)}"
                )
            inner = self.strides[old_slots[-1]]
            for a, b in itertools.pairwise(old_slots):
                if self.strides[a] != self.shape[b] * self.strides[b]:
                    raise LayoutError(
                        f"view {self.shape} -> {shape}: slot axes {a}, {b} do not nest"
                    )
            sizes = [shape[i] for i in new if shape[i] > 1]
            if any(n != next_power_of_two(n) for n in sizes[1:]):
                raise LayoutError(
                    f"view {self.shape} -> {shape}: splits a slot axis into inner sizes "
                    f"{sizes[1:]} that are not powers of two (slot reductions and "
                    "replication assume power-of-two rows)"
                )
            stride = inner
            group: list[int | None] = []
            for n in reversed([shape[i] for i in new]):
                group.append(stride if n > 1 else None)
                stride *= n
            strides += reversed(group)
        return Layout(tuple(shape), tuple(strides), self.offset)


def _reshape_groups(
    old: tuple[int, ...], new: tuple[int, ...]
) -> list[tuple[list[int], list[int]]]:
    """Pair minimal runs of old and new axes with equal products (size-1 axes attach to the
    run on their left, or the first run)."""
    if math.prod(old) != math.prod(new):
        raise LayoutError(f"view {old} -> {new}: sizes differ")
    if not old or not new:  # to or from a 0-d tensor: every axis has size 1
        return [(list(range(len(old))), list(range(len(new))))]
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(old) or j < len(new):
        go, gn = [], []
        po = pn = 1
        while True:
            if po == pn and go and gn:
                break
            if (po <= pn and i < len(old)) or j >= len(new):
                go.append(i)
                po *= old[i]
                i += 1
            else:
                gn.append(j)
                pn *= new[j]
                j += 1
        while i < len(old) and old[i] == 1 and (j >= len(new) or new[j] != 1):
            go.append(i)
            i += 1
        while j < len(new) and new[j] == 1 and (i >= len(old) or old[i] != 1):
            gn.append(j)
            j += 1
        groups.append((go, gn))
    return groups
