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

Extended layouts. Two further packings are needed by the diagonal (Halevi-Shoup) product
of `protocols.he.diagonal` and by re-layouts at refreshes (`protocols.he.relayout`):

- A *composite* axis is written in mixed radix over sub-axes (size, stride or None),
  outermost first, whose sizes multiply to at least its length n (the last outer digit may
  be partly unused: padding). Index i has digits i = sum_k d_k prod_{l > k} z_l; the
  digits of ciphertext sub-axes index grid axes, those of slot sub-axes add d_k t_k to
  the slot. Rows split over ciphertexts ("pages") are the composite
  ((ceil(n / r), None), (r, w)): row i on page i // r at slot (i mod r) w. A view that
  merges a slot axis with a ciphertext axis (heads in slots, head features in
  ciphertexts, viewed as one feature axis) is a composite too. `parts` holds, per axis,
  None (a simple axis, as above) or its sub-axes; the grid axes are the ciphertext
  sub-axes of all axes, in order.
- *Replicas* (axis, span): the simple slot axis `axis` (size n, stride t) is written
  cyclically, entry i also at the slots of i + m n for every m >= 1 with i + m n < span.
  The diagonal method reads its input x~[j] = x[j mod d_in] over d_in + d_out - 1 slots
  of each row, which only the client can write (it encrypts) or a re-layout produces.
  Replicas count as used slots (a refresh keeps them), reads see the first copy.
- A *skew* (a, b): the ciphertext axis a (size n) is indexed by (idx[a] - idx[b]) mod n,
  b a slot axis of the same size. The diagonal method for a product of two encrypted
  matrices (`protocols.he.attention`) leaves S[i, j] in ciphertext (j - i) mod n at row
  i's slot: attention scores in this layout are summed over keys by ciphertext additions
  and multiplied by a per-row value by reusing one ciphertext for all of them.

`placement` gives, for any layout, every entry's ciphertext and slot (and its replicas'):
what the client encrypts and decrypts through (`Codec`), and what plain operands,
masks and refreshes of extended layouts are laid out by. Ops of `protocols.he.tensor`
that have no form for an extended layout ask for a re-layout (one client round trip) to
`Layout.standard` first; `Layout.reshape` stays strict (it never makes a composite),
`Layout.regroup` is the general view.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

SubAxis = tuple[int, int | None]
"""One sub-axis of a composite axis: (size, slot stride), stride None for ciphertexts."""


class LayoutError(ValueError):
    """An operation that this packing cannot express without moving slots."""


def next_power_of_two(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


@dataclass(frozen=True)
class Layout:
    """Logical shape, per-axis slot stride (None: ciphertext axis), slot offset; `parts`
    (composite axes) and `replicas` for the extended layouts (module docstring)."""

    shape: tuple[int, ...]
    strides: tuple[int | None, ...]
    offset: int = 0
    parts: tuple[tuple[SubAxis, ...] | None, ...] = ()
    replicas: tuple[int, int] | None = None
    skew: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if len(self.shape) != len(self.strides):
            raise ValueError(f"layout: {len(self.shape)} axes but {len(self.strides)} strides")
        shape = tuple(int(n) for n in self.shape)
        if any(n < 1 for n in shape):
            raise ValueError(f"layout: sizes {shape} must be positive")
        strides = [None if n == 1 else t for n, t in zip(shape, self.strides, strict=True)]
        parts: list[tuple[SubAxis, ...] | None] = [None] * len(shape)
        if self.parts:
            if len(self.parts) != len(shape):
                raise ValueError(f"layout: {len(shape)} axes but {len(self.parts)} parts")
            for a, sub in enumerate(self.parts):
                if sub is None:
                    continue
                canonical = _canonical(tuple((int(z), t) for z, t in sub))
                if math.prod(z for z, _ in canonical) < shape[a]:
                    raise ValueError(f"layout: sub-axes {sub} hold fewer than {shape[a]} entries")
                if shape[a] == 1:
                    strides[a] = None
                elif len(canonical) == 1 and (canonical[0][1] is not None or
                                              canonical[0][0] == shape[a]):  # fmt: skip
                    strides[a] = canonical[0][1]
                else:
                    strides[a] = None
                    parts[a] = canonical
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "strides", tuple(strides))
        object.__setattr__(self, "parts", tuple(parts) if any(p for p in parts) else ())
        replicas = self.replicas
        if replicas is not None:
            axis, span = int(replicas[0]), int(replicas[1])
            axis %= max(len(shape), 1)
            if not shape or strides[axis] is None or (self.parts and parts[axis]):
                raise ValueError(f"layout: replicas of axis {axis}, which is not a slot axis")
            replicas = None if span <= shape[axis] else (axis, span)
        object.__setattr__(self, "replicas", replicas)
        skew = self.skew
        if skew is not None:
            a, b = int(skew[0]) % len(shape), int(skew[1]) % len(shape)
            composite = bool(self.parts) and (parts[a] is not None or parts[b] is not None)
            if shape[a] == 1:
                skew = None
            elif strides[a] is not None or strides[b] is None or composite or shape[a] != shape[b]:
                raise ValueError(
                    f"layout: skew ({a}, {b}) needs a ciphertext axis and a slot axis of one size"
                )
            else:
                skew = (a, b)
        object.__setattr__(self, "skew", skew)

    # --- derived ---------------------------------------------------------------------------
    @property
    def simple(self) -> bool:
        """No composite axis and no replicas: the layouts every op of `tensor` handles."""
        return not self.parts and self.replicas is None and self.skew is None

    def composite(self, axis: int) -> bool:
        return bool(self.parts) and self.parts[axis] is not None

    def axis_parts(self, axis: int) -> tuple[SubAxis, ...]:
        """The sub-axes of `axis`, outermost first (one for a simple axis)."""
        if self.composite(axis):
            return self.parts[axis]  # type: ignore[return-value]
        return ((self.shape[axis], self.strides[axis]),)

    @property
    def ct_axes(self) -> tuple[int, ...]:
        """Simple ciphertext axes (a composite axis is in neither list)."""
        return tuple(a for a, t in enumerate(self.strides) if t is None and not self.composite(a))

    @property
    def slot_axes(self) -> tuple[int, ...]:
        return tuple(a for a, t in enumerate(self.strides) if t is not None)

    @property
    def composite_axes(self) -> tuple[int, ...]:
        return tuple(a for a in range(len(self.shape)) if self.composite(a))

    def grid_axes_of(self, axis: int) -> list[int]:
        """Positions in the grid of the ciphertext sub-axes of `axis`."""
        position, out = 0, []
        for a in range(len(self.shape)):
            for _, t in self.axis_parts(a):
                if t is None:
                    if a == axis:
                        out.append(position)
                    position += 1
        return out

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(z for a in range(len(self.shape)) for z, t in self.axis_parts(a) if t is None)

    def positions(self) -> np.ndarray:
        """Slot index of every slot-axis entry: an int array shaped like the slot axes (the
        first copy of replicated entries). Simple axes only: see `placement` otherwise."""
        if self.parts:
            raise LayoutError(f"layout {self.shape} has composite axes: use placement()")
        pos = np.full([self.shape[a] for a in self.slot_axes], self.offset, dtype=np.int64)
        for k, a in enumerate(self.slot_axes):
            view = [1] * len(self.slot_axes)
            view[k] = self.shape[a]
            pos = pos + (np.arange(self.shape[a]) * self.strides[a]).reshape(view)
        return pos

    def span(self) -> int:
        """One past the largest slot index used (replicas included)."""
        if not self.simple:
            return self.placement().last_slot + 1
        return int(self.positions().max()) + 1 if self.slot_axes else self.offset + 1

    def placement(self) -> Placement:
        """Every entry's ciphertext and slot (module docstring); cached per layout."""
        return _placement(self)

    def without_replicas(self) -> Layout:
        """The same layout, replicas dropped (their slots then count as junk)."""
        if self.replicas is None:
            return self
        return Layout(self.shape, self.strides, self.offset, self.parts, None, self.skew)

    def slot_key(self) -> tuple:
        """What two operands must share to be combined slot-wise."""
        key = (self.offset, tuple((a, self.strides[a]) for a in self.slot_axes))
        if self.simple:
            return key
        return (*key, self.parts, self.replicas, self.skew)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "shape": list(self.shape),
            "strides": list(self.strides),
            "offset": self.offset,
        }
        if self.parts:
            out["parts"] = [None if p is None else [list(s) for s in p] for p in self.parts]
        if self.replicas is not None:
            out["replicas"] = list(self.replicas)
        if self.skew is not None:
            out["skew"] = list(self.skew)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Layout:
        """Inverse of `to_dict`, checked (it reads what a peer sent): integers of the right
        signs, no other keys; raises ValueError."""
        base = {"shape", "strides", "offset"}
        if (
            not isinstance(data, dict)
            or not base <= set(data)
            or not set(data) <= base | {"parts", "replicas", "skew"}
        ):
            raise ValueError("layout: expected keys shape, strides, offset (parts, replicas, skew)")
        shape, strides, offset = data["shape"], data["strides"], data["offset"]
        if not (isinstance(shape, list) and all(_count(n) for n in shape)):
            raise ValueError(f"layout: shape {shape!r} is not a list of sizes")
        if not (isinstance(strides, list) and all(t is None or _count(t) for t in strides)):
            raise ValueError(f"layout: strides {strides!r} are not positive integers or null")
        if not (_count(offset) or offset == 0):
            raise ValueError(f"layout: offset {offset!r} is not an integer >= 0")
        parts: list[tuple[SubAxis, ...] | None] = []
        for sub in data.get("parts") or []:
            if sub is None:
                parts.append(None)
                continue
            if not isinstance(sub, list) or not all(
                isinstance(s, list) and len(s) == 2 and _count(s[0]) and
                (s[1] is None or _count(s[1])) for s in sub
            ):  # fmt: skip
                raise ValueError(f"layout: parts {sub!r} are not [size, stride] pairs")
            parts.append(tuple((s[0], s[1]) for s in sub))
        replicas = data.get("replicas")
        if replicas is not None and not (
            isinstance(replicas, list) and len(replicas) == 2 and all(_count(v) or v == 0
                                                                      for v in replicas)
        ):  # fmt: skip
            raise ValueError(f"layout: replicas {replicas!r} are not [axis, span]")
        skew = data.get("skew")
        if skew is not None and not (
            isinstance(skew, list) and len(skew) == 2 and all(_count(v) or v == 0 for v in skew)
        ):
            raise ValueError(f"layout: skew {skew!r} is not [axis, axis]")
        return cls(
            tuple(shape),
            tuple(strides),
            int(offset),
            tuple(parts),
            None if replicas is None else (replicas[0], replicas[1]),
            None if skew is None else (skew[0], skew[1]),
        )

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

    @classmethod
    def standard(cls, shape: tuple[int, ...], slots: int) -> Layout:
        """Feature-major with as many axes in slots as fit: the last axis (features) in
        ciphertexts; axes k .. ndim - 2 in slots (row-major, padded to powers of two) for
        the smallest k whose padded product fits `slots`; axes before k in ciphertexts.
        What a re-layout falls back to for ops without a form for other layouts."""
        shape = tuple(int(n) for n in shape)
        if len(shape) < 2:
            return cls(shape, (None,) * len(shape))
        for k in range(len(shape) - 1):
            if math.prod(next_power_of_two(n) for n in shape[k:-1]) <= slots:
                break
        else:
            k = len(shape) - 1
        strides: list[int | None] = [None] * len(shape)
        stride = 1
        for a in reversed(range(k, len(shape) - 1)):
            strides[a] = stride
            stride *= next_power_of_two(shape[a])
        return cls(shape, tuple(strides))

    @classmethod
    def row_blocks(
        cls, shape: tuple[int, ...], width: int, slots: int, *, replicate: bool = False
    ) -> Layout:
        """Rows of a (..., n, d) tensor `width` slots apart, r = floor(S / width) rows per
        ciphertext and the next rows on further ciphertexts (pages: row i on page i // r
        at slot (i mod r) width); the last axis at stride 1 inside its row; leading axes in
        ciphertexts. `replicate`: the last axis repeated cyclically over its row's `width`
        slots (replicas of span `width`), the input of the diagonal method. A 1-d tensor is
        one row. Raises LayoutError when a row does not fit (width > S or d > width)."""
        shape = tuple(int(n) for n in shape)
        d = shape[-1]
        if width > slots or d > width:
            raise LayoutError(f"rows of {d} entries {width} slots apart do not fit {slots} slots")
        last = len(shape) - 1
        replicas = (last, width) if replicate else None
        if len(shape) == 1:
            return cls(shape, (1,), 0, (), replicas)
        per_page = slots // width
        n = shape[-2]
        parts: list[tuple[SubAxis, ...] | None] = [None] * len(shape)
        parts[-2] = ((math.ceil(n / per_page), None), (min(per_page, n), width))
        strides = (None,) * (len(shape) - 1) + (1,)
        return cls(shape, strides, 0, tuple(parts), replicas)

    # --- shape bookkeeping -----------------------------------------------------------------
    def _with(
        self,
        shape: tuple[int, ...],
        strides: tuple[int | None, ...],
        offset: int,
        parts: tuple[tuple[SubAxis, ...] | None, ...],
        replicas: tuple[int, int] | None,
        skew: tuple[int, int] | None = None,
    ) -> Layout:
        return Layout(shape, strides, offset, parts if any(parts) else (), replicas, skew)

    def _parts(self) -> tuple[tuple[SubAxis, ...] | None, ...]:
        return self.parts or (None,) * len(self.shape)

    def permute(self, dims: list[int]) -> Layout:
        parts = self._parts()
        replicas = None
        if self.replicas is not None:
            replicas = (list(dims).index(self.replicas[0]), self.replicas[1])
        skew = None
        if self.skew is not None:
            skew = (list(dims).index(self.skew[0]), list(dims).index(self.skew[1]))
        return self._with(
            tuple(self.shape[d] for d in dims),
            tuple(self.strides[d] for d in dims),
            self.offset,
            tuple(parts[d] for d in dims),
            replicas,
            skew,
        )

    def unsqueeze(self, dim: int) -> Layout:
        dim = dim % (len(self.shape) + 1)
        parts = self._parts()
        replicas = self.replicas
        if replicas is not None and replicas[0] >= dim:
            replicas = (replicas[0] + 1, replicas[1])
        skew = None
        if self.skew is not None:
            skew = (self.skew[0] + (self.skew[0] >= dim), self.skew[1] + (self.skew[1] >= dim))
        return self._with(
            (*self.shape[:dim], 1, *self.shape[dim:]),
            (*self.strides[:dim], None, *self.strides[dim:]),
            self.offset,
            (*parts[:dim], None, *parts[dim:]),
            replicas,
            skew,
        )

    def select(self, dim: int, index: int) -> tuple[Layout, int | None]:
        """Drop axis `dim` at `index`: (layout, grid index to take on that axis or None when
        the axis is a slot axis, whose selection only moves the offset). A composite axis
        may index several grid axes: `select_grid`."""
        layout, taken = self.select_grid(dim, index)
        if len(taken) > 1:
            raise LayoutError(f"selecting on the composite axis {dim}: use select_grid")
        return layout, (taken[0][1] if taken else None)

    def select_grid(self, dim: int, index: int) -> tuple[Layout, list[tuple[int, int]]]:
        """Drop axis `dim` at `index`: (layout, [(grid axis, index to take)], in grid
        order). The digits of `index` on slot sub-axes move the offset, those on ciphertext
        sub-axes pick grid entries."""
        dim %= len(self.shape)
        index %= self.shape[dim]
        if self.skew is not None and dim in self.skew:
            raise LayoutError(f"selecting on axis {dim}, one of the skewed pair {self.skew}")
        offset, taken = self.offset, []
        grid_axes = iter(self.grid_axes_of(dim))
        digits = []
        rest = index
        for size, stride in reversed(self.axis_parts(dim)):
            digits.append((rest % size, stride))
            rest //= size
        for digit, stride in reversed(digits):
            if stride is None:
                taken.append((next(grid_axes), digit))
            else:
                offset += digit * stride
        parts = self._parts()
        replicas = self.replicas
        if replicas is not None:
            axis = replicas[0]
            replicas = None if axis == dim else (axis - (axis > dim), replicas[1])
        skew = None
        if self.skew is not None:
            skew = (self.skew[0] - (self.skew[0] > dim), self.skew[1] - (self.skew[1] > dim))
        layout = self._with(
            self.shape[:dim] + self.shape[dim + 1 :],
            self.strides[:dim] + self.strides[dim + 1 :],
            offset,
            parts[:dim] + parts[dim + 1 :],
            replicas,
            skew,
        )
        return layout, taken

    def regroup(self, shape: tuple[int, ...]) -> Layout:
        """The layout of a view for any layout: groups of consecutive axes map to groups
        (`_reshape_groups`); each group's sub-axes (outermost first) are dealt to its new
        axes in order, a sub-axis split where a new axis ends inside it (a slot sub-axis
        only into power-of-two inner parts, as `reshape`). Merging a slot axis with a
        ciphertext axis gives a composite axis. A padded axis (pages whose last one is not
        full) can only be carried whole. Replicas survive when their axis is carried
        whole, and are dropped otherwise (they are then junk). Raises LayoutError."""
        shape = tuple(int(n) for n in shape)
        parts: list[tuple[SubAxis, ...] | None] = [None] * len(shape)
        replicas = None
        whole: dict[int, int] = {}  # old axis -> new axis, for axes carried whole
        for old, new in _reshape_groups(self.shape, shape):
            big_old = [a for a in old if self.shape[a] > 1]
            big_new = [b for b in new if shape[b] > 1]
            if not big_old:
                continue
            subs = [s for a in big_old for s in self.axis_parts(a) if s[0] > 1]
            padded = [a for a in big_old if math.prod(z for z, _ in self.axis_parts(a))
                      > self.shape[a]]  # fmt: skip
            if len(big_old) == 1 and len(big_new) == 1:
                parts[big_new[0]] = tuple(subs)
                whole[big_old[0]] = big_new[0]
                if self.replicas is not None and self.replicas[0] == big_old[0]:
                    replicas = (big_new[0], self.replicas[1])
                continue
            if padded:
                raise LayoutError(
                    f"view {self.shape} -> {shape}: axis {padded[0]} is split over ciphertexts "
                    "with an unfilled last one; it can only be carried whole"
                )
            if self.skew is not None and set(self.skew) & set(big_old):
                raise LayoutError(f"view {self.shape} -> {shape}: splits a skewed axis")
            for b, own in zip(big_new, _deal(subs, [shape[b] for b in big_new]), strict=True):
                parts[b] = tuple(own)
        strides = tuple(
            p[0][1] if p is not None and len(p) == 1 and p[0][1] is not None else None
            for p in parts
        )
        skew = None
        if self.skew is not None:
            skew = (whole[self.skew[0]], whole[self.skew[1]])
        return Layout(shape, strides, self.offset, tuple(parts), replicas, skew)

    def reshape(self, shape: tuple[int, ...]) -> Layout:
        """The layout of a view: groups of consecutive axes map to groups; a group may mix only
        ciphertext axes, or be one slot axis (plus size-1 axes), or split/merge slot axes whose
        strides nest (stride_outer = size_inner * stride_inner). Extended layouts:
        `regroup`."""
        if not self.simple:
            return self.regroup(tuple(shape))
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


def _count(value: Any) -> bool:
    """A positive int (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _canonical(subs: tuple[SubAxis, ...]) -> tuple[SubAxis, ...]:
    """Sub-axes without size-1 ones, adjacent ciphertext sub-axes merged, and adjacent slot
    sub-axes merged where they nest (outer stride = inner size x inner stride)."""
    out: list[SubAxis] = []
    for size, stride in subs:
        if size < 1 or (stride is not None and stride < 1):
            raise ValueError(f"layout: sub-axis ({size}, {stride})")
        if size == 1:
            continue
        if out:
            z, t = out[-1]
            if t is None and stride is None:
                out[-1] = (z * size, None)
                continue
            if t is not None and stride is not None and t == size * stride:
                out[-1] = (z * size, stride)
                continue
        out.append((size, stride))
    return tuple(out)


def _deal(subs: list[SubAxis], sizes: list[int]) -> list[list[SubAxis]]:
    """Deal sub-axes (outermost first, exact: their sizes multiply to prod(sizes)) to new
    axes of `sizes` in order, splitting a sub-axis (z, t) into (m, t z / m), (z / m, t)
    where an axis of size m ends inside it. Raises LayoutError when a size does not divide,
    or a slot sub-axis would split into an inner part that is not a power of two."""
    subs = list(subs)
    out: list[list[SubAxis]] = []
    for m in sizes:
        own: list[SubAxis] = []
        while m > 1:
            if not subs:
                raise LayoutError(f"view into sizes {sizes}: sizes differ")
            z, t = subs[0]
            if z <= m:
                if m % z:
                    raise LayoutError(f"view into sizes {sizes}: {m} does not split along {z}")
                own.append(subs.pop(0))
                m //= z
                continue
            if z % m:
                raise LayoutError(f"view into sizes {sizes}: {z} does not split into {m}")
            inner = z // m
            if t is not None and inner != next_power_of_two(inner):
                raise LayoutError(
                    f"view into sizes {sizes}: splits a slot axis into an inner size {inner} "
                    "that is not a power of two (slot reductions and replication assume "
                    "power-of-two rows)"
                )
            own.append((m, None if t is None else t * inner))
            subs[0] = (inner, t)
            m = 1
        out.append(own)
    if any(z > 1 for z, _ in subs):
        raise LayoutError(f"view into sizes {sizes}: sizes differ")
    return out


@dataclass(frozen=True)
class Placement:
    """Where every entry of a layout sits (`Layout.placement`). Entries are numbered in
    the logical row-major order; `cts[e]` is the flat grid index of entry e, `slots[e]`
    its slot. Replicas are further (entry, slot) pairs. `groups[g]` lists, for ciphertext g,
    the (entries, slots) it holds, replicas included (what an encryption writes)."""

    count: int
    cts: np.ndarray
    slots: np.ndarray
    groups: tuple[tuple[np.ndarray, np.ndarray], ...]
    last_slot: int

    def vector(self, values: np.ndarray, ct: int, slot_count: int) -> np.ndarray:
        """The full-slot vector of ciphertext `ct` holding `values` (flat, one per entry)
        at its slots, zero elsewhere."""
        entries, slots = self.groups[ct]
        out = np.zeros(slot_count)
        out[slots] = values[entries]
        return out

    def used(self, ct: int, slot_count: int) -> np.ndarray:
        """Boolean slot mask of ciphertext `ct`: the slots its entries (and replicas) use."""
        out = np.zeros(slot_count, dtype=bool)
        out[self.groups[ct][1]] = True
        return out

    def gather(self, vectors: list[np.ndarray] | np.ndarray) -> np.ndarray:
        """The entries (flat) read from one decrypted slot vector per ciphertext (first
        copies only)."""
        out = np.empty(self.count)
        for ct, vector in enumerate(vectors):
            entries, slots = self.groups[ct]
            out[entries] = np.asarray(vector)[slots]
        return out


@lru_cache(maxsize=256)
def _placement(layout: Layout) -> Placement:
    shape = layout.shape
    count = math.prod(shape)
    cts = np.zeros(count, dtype=np.int64)
    slots = np.full(count, layout.offset, dtype=np.int64)
    ndim = len(shape)
    for a in range(ndim):
        view = [1] * ndim
        view[a] = shape[a]
        index = np.broadcast_to(np.arange(shape[a]).reshape(view), shape).reshape(-1)
        if layout.skew is not None and a == layout.skew[0]:
            view_b = [1] * ndim
            view_b[layout.skew[1]] = shape[layout.skew[1]]
            other = np.broadcast_to(
                np.arange(shape[layout.skew[1]]).reshape(view_b), shape
            ).reshape(-1)
            index = (index - other) % shape[a]
        digits = []
        rest = index
        for size, stride in reversed(layout.axis_parts(a)):
            digits.append((rest % size, size, stride))
            rest = rest // size
        for digit, size, stride in reversed(digits):
            if stride is None:
                cts = cts * size + digit
            else:
                slots = slots + digit * stride
    # grid order is axis order of the ciphertext sub-axes: the running product above walks
    # them in that order, so cts is the C-order flat index into grid_shape
    entries = np.arange(count)
    all_entries, all_slots = [entries], [slots]
    if layout.replicas is not None:
        axis, span = layout.replicas
        n, stride = shape[axis], layout.strides[axis]
        view = [1] * ndim
        view[axis] = n
        index = np.broadcast_to(np.arange(n).reshape(view), shape).reshape(-1)
        m = 1
        while m * n < span:
            keep = index + m * n < span
            all_entries.append(entries[keep])
            all_slots.append(slots[keep] + m * n * stride)
            m += 1
    flat_entries = np.concatenate(all_entries)
    flat_slots = np.concatenate(all_slots)
    owner = cts[flat_entries]
    order = np.argsort(owner, kind="stable")
    total = math.prod(layout.grid_shape)
    bounds = np.searchsorted(owner[order], np.arange(total + 1))
    ordered_entries, ordered_slots = flat_entries[order], flat_slots[order]
    groups = tuple(
        (ordered_entries[bounds[g] : bounds[g + 1]], ordered_slots[bounds[g] : bounds[g + 1]])
        for g in range(total)
    )
    return Placement(count, cts, slots, groups, int(flat_slots.max(initial=layout.offset)))
