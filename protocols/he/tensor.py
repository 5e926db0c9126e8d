"""Encrypted tensors: a `Layout` plus a grid of CKKS ciphertexts, with torch-like operations.

`HeTensor` is what the server computes on. Operations and what they cost (L: levels; the
products `linear` and `matmul` are in `protocols.he.products`):

    a + b, a - b, -a (b encrypted or plain)         additions, 0 L
    a * c (c plain: number or tensor)               one ct-pt product per ciphertext, 1 L
    a * b (both encrypted)                          one ct-ct product per ciphertext, 1 L
    sum / mean over ciphertext axes                 additions (mean: one more product, 1 L)
    sum over a slot axis of size n                  log2(n') rotations per ciphertext
                                                    (n' = n rounded up to a power of two)
    a (op) b, b of size 1 along a slot axis of a    b spread: a mask (1 L) and log2(n')
        (a LayerNorm's mean in a row layout)         rotations per ciphertext (`spread`)
    linear(x, W, b): x @ W.T + b                    the cost model's packing for the rows
                                                    (`protocols.he.packing`):
        feature-major (features a ciphertext axis)  d_in d_out plain-scalar products summed
                                                    before one rescale per output, 1 L
        diagonal (rows w = d_in + d_out - 1 slots   per ciphertext about 2 sqrt(d_in)
        apart, x replicated inside its row)         rotations and d_in products, 1 L
    matmul(a, b), both encrypted (attention)        the diagonal method
                                                    (`protocols.he.attention`: about
                                                    2 d sqrt(L) + L rotations and L d
                                                    ct-ct products, 1 L), or b's slot axis
                                                    replicated into ciphertexts (n masks,
                                                    1 L, n - 1 + n log2 n' rotations) then
                                                    one ct-ct dot product per output, 1 L
    merge(a, axis): a ciphertext axis into slots    one rotation per ciphertext moved, 0 L
    view, permute, transpose, select, unsqueeze     bookkeeping only (`Layout`)
    relayout(a, layout)                             one client round trip (its ciphertexts
                                                    out, the target's back), fresh, clean

Operands are brought to the lowest level of the two. When a product finds no level left,
the tensor is refreshed first (`Refresher`, one client round trip; the refreshed
ciphertexts replace the old ones in place, so every holder of the tensor benefits; the
tensors a product needs refreshed at once travel in one round trip, `ensure_levels`).

Packings. Besides feature-major, tensors may sit in the extended layouts of `Layout`
(rows over ciphertexts, replicas, the skewed diagonal order of attention scores): the
diagonal methods make and read them, elementwise ops, slot sums and bookkeeping work on
them, and an op with no form for an operand's layout re-lays it out to `Layout.standard`
first (`standardized`; one round trip, in place), which is also what the kernels fall back
to on a `LayoutError`. A re-layout needs the client, so without refresh (or under the
"feature_major" policy of `protocols.he.relayout.POLICIES`) every op keeps the
feature-major path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from protocols.he.engine import Ciphertext, Engine
from protocols.he.layout import Layout, LayoutError, next_power_of_two
from protocols.he.packing import feature_major_ready, round_trip_ms
from protocols.he.rotation import reduce_step

Plain = float | int | np.ndarray | torch.Tensor
Refresher = Callable[[list[Ciphertext], Layout], list[Ciphertext]]
"""Takes a tensor's ciphertexts (any levels) and layout; returns fresh encryptions of the
layout's slots, zero elsewhere (so a refreshed tensor is clean)."""


class HeTensor:
    """An encrypted tensor on the server (module docstring)."""

    __array_ufunc__ = None  # numpy operands on the left defer to our operators

    def __init__(
        self,
        engine: Engine,
        layout: Layout,
        grid: np.ndarray,
        *,
        clean: bool,
        refresher: Refresher | None,
    ) -> None:
        if tuple(grid.shape) != layout.grid_shape:
            raise ValueError(f"grid {grid.shape} does not match layout {layout.grid_shape}")
        self.engine = engine
        self.layout = layout
        self.grid = grid
        self.clean = clean
        self.refresher = refresher

    # --- torch-like attributes ------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.layout.shape)

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return len(self.layout.shape)

    @property
    def ndim(self) -> int:
        return self.dim()

    def __repr__(self) -> str:
        return (
            f"HeTensor(shape={tuple(self.shape)}, ciphertexts={self.grid.size}, level={self.level})"
        )

    @property
    def level(self) -> int:
        return min(self.engine.level(ct) for ct in self.grid.flat)

    def _new(self, layout: Layout, grid: np.ndarray, clean: bool) -> HeTensor:
        return HeTensor(self.engine, layout, grid, clean=clean, refresher=self.refresher)

    def _map(self, fn: Callable[[Ciphertext], Ciphertext], clean: bool) -> HeTensor:
        return self._new(self.layout, _object_map(fn, self.grid), clean)

    # --- levels ----------------------------------------------------------------------------
    def ensure_level(self, levels: int = 1) -> HeTensor:
        """Refresh in place when some ciphertext has fewer than `levels` levels left."""
        return ensure_levels([self], levels)[0]

    def _check_refresh(self, levels: int) -> None:
        if levels > self.engine.top_level:
            raise DepthExhausted(
                f"an operation needs {levels} levels at once; a fresh ciphertext of this "
                f"context has {self.engine.top_level}: use a deeper modulus chain"
            )
        if self.refresher is None:
            raise DepthExhausted(
                f"an encrypted tensor of shape {tuple(self.shape)} has {self.level} levels left, "
                f"{levels} needed, and refreshing is not allowed: use a larger context or allow "
                "refresh (a client round trip)"
            )

    def _replace(self, layout: Layout, fresh: Sequence[Ciphertext]) -> None:
        grid = np.empty(len(fresh), dtype=object)
        grid[:] = list(fresh)
        self.layout = layout
        self.grid = grid.reshape(layout.grid_shape)
        self.clean = True

    def relayout(self, target: Layout) -> HeTensor:
        """In place: the same values in `target` (same shape), fresh, clean; one client round
        trip (`relayout_tensors`, `protocols.he.relayout`). Every holder of this tensor sees
        the new packing."""
        relayout_tensors([(self, target)])
        return self

    def standardized(self) -> HeTensor:
        """This tensor in a simple layout: itself when it has one, else re-laid out (in
        place) to `Layout.standard`, what ops without a form for extended layouts need."""
        if not self.layout.simple:
            self.relayout(Layout.standard(self.layout.shape, self.engine.slots))
        return self

    def feature_major(self) -> HeTensor:
        """This tensor with its last axis in ciphertexts: itself when its layout is simple
        with a last ciphertext axis, else re-laid out (in place) to `Layout.standard`
        (what code outside the kernels that slices the feature axis needs)."""
        if not feature_major_ready(self.layout):
            self.relayout(Layout.standard(self.layout.shape, self.engine.slots))
        return self

    @property
    def policy(self) -> str:
        """The run's packing policy (`protocols.he.relayout.POLICIES`): "auto" when the
        refresher can re-lay out, "feature_major" otherwise."""
        if not can_relayout(self.refresher):
            return "feature_major"
        return str(getattr(self.refresher, "policy", "auto"))

    # --- shape bookkeeping -----------------------------------------------------------------
    def permute(self, dims: Sequence[int]) -> HeTensor:
        dims = [d % self.dim() for d in dims]
        layout = self.layout.permute(dims)
        order = [g for d in dims for g in self.layout.grid_axes_of(d)]
        return self._new(layout, np.transpose(self.grid, order) if order else self.grid, self.clean)

    def transpose(self, a: int, b: int) -> HeTensor:
        dims = list(range(self.dim()))
        a, b = a % self.dim(), b % self.dim()
        dims[a], dims[b] = dims[b], dims[a]
        return self.permute(dims)

    def reshape(self, shape: Sequence[int]) -> HeTensor:
        """A view. Views a simple layout cannot express (a slot axis merged with a
        ciphertext axis) give a composite axis (`Layout.regroup`) when the run can
        re-lay out later (policy "auto"); `LayoutError` otherwise."""
        shape = list(shape)
        if -1 in shape:
            known = math.prod(n for n in shape if n != -1)
            shape[shape.index(-1)] = math.prod(self.layout.shape) // max(known, 1)
        try:
            layout = self.layout.reshape(tuple(shape))
        except LayoutError:
            if self.policy != "auto":
                raise
            layout = self.layout.regroup(tuple(shape))
        return self._new(layout, self.grid.reshape(layout.grid_shape), self.clean)

    view = reshape

    def unsqueeze(self, dim: int) -> HeTensor:
        layout = self.layout.unsqueeze(dim)
        return self._new(layout, self.grid.reshape(layout.grid_shape), self.clean)

    def squeeze(self, dim: int | None = None) -> HeTensor:
        dims = range(self.dim()) if dim is None else [dim % self.dim()]
        shape = [n for a, n in enumerate(self.layout.shape) if not (a in dims and n == 1)]
        return self.reshape(shape)

    def select(self, dim: int, index: int) -> HeTensor:
        layout, taken = self.layout.select_grid(dim, index)
        grid = self.grid
        for axis, entry in sorted(taken, reverse=True):
            grid = np.take(grid, entry, axis=axis)
        return self._new(layout, np.asarray(grid, dtype=object).reshape(layout.grid_shape), False)

    def slice(self, dim: int, start: int, end: int, step: int = 1) -> HeTensor:
        dim %= self.dim()
        n = self.layout.shape[dim]
        indices = range(*slice(start, end, step).indices(n))
        if len(indices) == n:
            return self
        source = self.standardized() if self.layout.composite(dim) else self
        layout = source.layout
        if layout.strides[dim] is not None:
            if len(indices) != 1:
                raise LayoutError(f"slicing the slot axis {dim} to {len(indices)} entries")
            return source.select(dim, indices[0]).unsqueeze(dim)
        (axis,) = layout.grid_axes_of(dim)
        grid = np.take(source.grid, list(indices), axis=axis)
        shape = list(layout.shape)
        shape[dim] = len(indices)
        out = Layout(tuple(shape), layout.strides, layout.offset, layout.parts, layout.replicas)
        return self._new(out, grid, source.clean)

    def narrow(self, dim: int, start: int, length: int) -> HeTensor:
        """torch.narrow: entries start .. start + length - 1 of `dim` (bookkeeping)."""
        return self.slice(dim, start, start + length)

    def expand(self, shape: Sequence[int]) -> HeTensor:
        if not self.layout.simple:
            return self.standardized().expand(shape)
        shape = [
            self.layout.shape[i - (len(shape) - self.dim())] if n == -1 else n
            for i, n in enumerate(shape)
        ]
        target = self
        while target.dim() < len(shape):
            target = target.unsqueeze(0)
        grid = np.broadcast_to(
            target.grid, [n for a, n in enumerate(shape) if target.layout.strides[a] is None]
        )
        for a, n in enumerate(shape):
            if target.layout.strides[a] is not None and target.layout.shape[a] != n:
                raise LayoutError("expand along a slot axis")
        layout = Layout(tuple(shape), target.layout.strides, target.layout.offset)
        return self._new(layout, np.array(grid, dtype=object), target.clean)

    # --- elementwise -----------------------------------------------------------------------
    def __neg__(self) -> HeTensor:
        return self._map(self.engine.negate, self.clean)

    def __add__(self, other: Any) -> HeTensor:
        return _binary(self, other, "add")

    __radd__ = __add__

    def __sub__(self, other: Any) -> HeTensor:
        return _binary(self, other, "sub")

    def __rsub__(self, other: Any) -> HeTensor:
        return _binary(-self, other, "add")

    def __mul__(self, other: Any) -> HeTensor:
        return _binary(self, other, "mul")

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> HeTensor:
        if isinstance(other, HeTensor):
            raise TypeError("division by an encrypted tensor: use a reciprocal approximation")
        return _binary(self, 1.0 / as_plain(other), "mul")

    def square(self) -> HeTensor:
        self.ensure_level(1)
        return self._map(self.engine.square, self.clean)

    def __pow__(self, exponent: int) -> HeTensor:
        return power(self, exponent)

    def copy(self) -> HeTensor:
        return self._new(self.layout, self.grid.copy(), self.clean)

    # --- reductions ------------------------------------------------------------------------
    def sum(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> HeTensor:
        dims = range(self.dim()) if dim is None else ([dim] if isinstance(dim, int) else dim)
        dims = sorted({d % self.dim() for d in dims}, reverse=True)
        out = self
        skewed_rows = self.layout.skew is not None and self.layout.skew[1] in dims
        if (
            skewed_rows
            or any(self.layout.composite(d) for d in dims)
            or not all(slot_room(self.layout, d, self.engine.slots) for d in dims)
        ):
            out = self.standardized()
        for d in dims:
            out = out._sum_ct(d) if out.layout.strides[d] is None else out._sum_slot(d)
        if not keepdim:
            for d in dims:
                out = out.squeeze(d)
        return out

    def mean(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> HeTensor:
        dims = range(self.dim()) if dim is None else ([dim] if isinstance(dim, int) else dim)
        count = math.prod(self.layout.shape[d % self.dim()] for d in dims)
        return self.sum(dim, keepdim) * (1.0 / count)

    def _reduced(self, dim: int) -> Layout:
        """The layout with axis `dim` summed to size 1 (at the axis's first entry)."""
        layout = self.layout
        shape = list(layout.shape)
        shape[dim] = 1
        return Layout(tuple(shape), layout.strides, layout.offset, layout.parts, None, layout.skew)

    def _sum_ct(self, dim: int) -> HeTensor:
        (axis,) = self.layout.grid_axes_of(dim)
        moved = np.moveaxis(self.grid, axis, -1)
        out = np.empty(moved.shape[:-1], dtype=object)
        for index in np.ndindex(out.shape):
            out[index] = self.engine.add_many(list(moved[index]))
        layout = self._reduced(dim)
        return self._new(layout, out.reshape(layout.grid_shape), self.clean)

    def _sum_slot(self, dim: int) -> HeTensor:
        n, stride = self.layout.shape[dim], self.layout.strides[dim]
        padded = next_power_of_two(n)
        source = self if padded == n or self.clean else self.masked()
        steps = [stride * (1 << k) for k in range(int(math.log2(padded)))]

        what = f"the sum over axis {dim} (slot stride {stride}) of a {tuple(self.shape)} tensor"

        def fold(ct: Ciphertext) -> Ciphertext:
            for step in steps:
                ct = self.engine.add(ct, checked_rotate(self.engine, ct, step, what))
            return ct

        layout = self._reduced(dim)
        return self._new(layout, _object_map(fold, source.grid).reshape(layout.grid_shape), False)

    def spread(self, like: Layout) -> HeTensor | None:
        """This tensor broadcast, server-side, along the axes where it has size 1 and `like`
        a simple slot axis (stride t, n entries): masked first unless clean (1 L, only the
        entries' slots kept), then per such axis log2(n') rotations by -t, -2t, ... with
        additions, so entry 0's value fills the n' slots of the axis. Returns the tensor in
        `like`'s layout (replicas dropped; slots n .. n' - 1 junk), or None when the other
        axes do not sit as in `like` or the axis has no room (`slot_room`)."""
        nd = len(like.shape)
        if self.dim() > nd:
            return None
        view = self.reshape([1] * (nd - self.dim()) + list(self.shape))
        source = view.layout
        axes = [
            k for k in range(nd)
            if source.shape[k] == 1 and like.shape[k] > 1 and like.strides[k] is not None
            and not like.composite(k)
        ]  # fmt: skip
        if not axes or any(
            source.shape[k] != like.shape[k] for k in range(nd) if k not in axes
        ):  # only size-1 axes grow: an axis `like` lacks (an outer sum) is not dropped
            return None
        parts = source._parts()
        expanded = Layout(
            like.shape,
            tuple(like.strides[k] if k in axes else source.strides[k] for k in range(nd)),
            source.offset,
            tuple(None if k in axes else parts[k] for k in range(nd)),
        )
        target = like.without_replicas()
        if expanded != target:
            return None
        if not all(slot_room(target, k, self.engine.slots) for k in axes):
            return None
        base = view if view.clean else view.masked()
        what = f"broadcasting a {tuple(self.shape)} tensor along slot axes {axes}"
        steps = [
            -like.strides[k] * (1 << j)
            for k in axes
            for j in range(int(math.log2(next_power_of_two(like.shape[k]))))
        ]

        def fill(ct: Ciphertext) -> Ciphertext:
            for step in steps:
                ct = self.engine.add(ct, checked_rotate(self.engine, ct, step, what))
            return ct

        flat = [fill(ct) for ct in base.grid.flat]
        grid = np.empty(len(flat), dtype=object)
        grid[:] = flat
        return self._new(target, grid.reshape(target.grid_shape), False)

    # --- masks and layout moves ------------------------------------------------------------
    def slot_mask(self) -> np.ndarray:
        mask = np.zeros(self.engine.slots)
        mask[self.layout.positions().reshape(-1)] = 1.0
        return mask

    def masked(self) -> HeTensor:
        """The same values with junk slots zeroed: one plain product, 1 L (replicas are
        kept: they are used slots)."""
        self.ensure_level(1)
        if self.layout.simple:
            mask = self.slot_mask()
            return self._map(lambda ct: self.engine.mul_plain(ct, mask), True)
        placement, slots = self.layout.placement(), self.engine.slots
        flat = [
            self.engine.mul_plain(ct, placement.used(g, slots).astype(np.float64))
            for g, ct in enumerate(self.grid.flat)
        ]
        grid = np.empty(len(flat), dtype=object)
        grid[:] = flat
        return self._new(self.layout, grid.reshape(self.grid.shape), True)

    def merge(self, dim: int) -> HeTensor:
        """Move ciphertext axis `dim` into the free slots below the innermost slot axis:
        entry i of the axis rotates right by i * t, t = (smallest slot stride) / n'. Needs a
        clean tensor (masked first otherwise) and room (t >= 1)."""
        if not self.layout.simple:
            return self.standardized().merge(dim)
        n = self.layout.shape[dim]
        strides = [t for t in self.layout.strides if t is not None]
        room = min(strides) if strides else self.engine.slots
        padded = next_power_of_two(n)
        if self.layout.strides[dim] is not None or n == 1:
            return self
        if room % padded or (self.layout.offset % room):
            raise LayoutError(f"no room to merge an axis of {n} into slots (stride {room})")
        stride = room // padded
        source = self if self.clean else self.masked()
        axis = source.layout.ct_axes.index(dim)
        moved = np.moveaxis(source.grid, axis, -1)
        out = np.empty(moved.shape[:-1], dtype=object)
        what = f"merging axis {dim} of a {tuple(self.shape)} tensor into slots"
        for index in np.ndindex(out.shape):
            parts = [
                ct if i == 0 else checked_rotate(self.engine, ct, -i * stride, what)
                for i, ct in enumerate(moved[index])
            ]
            out[index] = self.engine.add_many(parts)
        strides_new = list(self.layout.strides)
        strides_new[dim] = stride
        layout = Layout(self.layout.shape, tuple(strides_new), self.layout.offset)
        return self._new(layout, out.reshape(layout.grid_shape), True)

    def split_slots(self, dim: int) -> HeTensor:
        """Slot axis `dim` (size n, stride t) becomes a ciphertext axis: ciphertext j holds
        entry j alone at the axis's first slot (offset + 0 t, the other slot axes as
        before), every other slot zero, so the result is clean. Per entry one mask product
        (1 L) and one rotation by j t. A size-1 axis (a ciphertext axis already) is
        returned as it is."""
        if not self.layout.simple:
            return self.standardized().split_slots(dim)
        what = f"moving slot axis {dim} of a {tuple(self.shape)} tensor into ciphertexts"
        return self._slots_to_ciphertexts(dim, [], what)

    def replicate(self, dim: int, extent: int | None = None, along: int | None = None) -> HeTensor:
        """Slot axis `dim` (size n, stride t) becomes a ciphertext axis; ciphertext j holds
        entry j broadcast over all n' = next_power_of_two(max(n, extent)) slots of the axis
        (positions offset + i t, i < n'), so it can meet a tensor whose slot axis of
        `extent` entries sits there (a longer one than this axis: every one of its slots
        must see the entry). With `along` (a slot stride), the entry is broadcast over the
        n' slots offset + i along instead, n' = next_power_of_two(extent or n): where another
        tensor's slot axis sits that this axis does not share a stride with (a query's rows
        against landmarks pooled from them). LayoutError when those slots would reach
        another entry's. Per entry: as `split_slots` (one mask product, 1 L, one rotation
        to the front), then log2(n') rotations with additions."""
        if not self.layout.simple:
            return self.standardized().replicate(dim, extent, along)
        n, own = self.layout.shape[dim], self.layout.strides[dim]
        if own is None:
            return self
        stride = own if along is None else along
        span = next_power_of_two(max(n, extent or 0) if along is None else (extent or n))
        positions = self.layout.positions()
        slot_axis = self.layout.slot_axes.index(dim)
        starts = np.take(positions, 0, axis=slot_axis).reshape(-1)
        reach = (starts[:, None] + stride * np.arange(span)[None, :]).reshape(-1)
        if np.unique(reach).size != reach.size or reach.max(initial=0) >= self.engine.slots:
            raise LayoutError(
                f"replicating slot axis {dim} (stride {own}) over {span} slots of stride {stride} "
                "would reach other entries' slots"
            )
        what = f"replicating slot axis {dim} (stride {own}) of a {tuple(self.shape)} tensor"
        steps = [-stride * (1 << k) for k in range(int(math.log2(span)))]
        return self._slots_to_ciphertexts(dim, steps, what)

    def _slots_to_ciphertexts(self, dim: int, steps: list[int], what: str) -> HeTensor:
        """Slot axis `dim` of a simple layout into a ciphertext axis: per entry j, the
        entry's slots masked (1 L) and rotated by j t to the axis's first slot, then for
        every step s of `steps` the ciphertext plus itself rotated by s (`replicate`'s
        broadcast; clean only without steps)."""
        n, stride = self.layout.shape[dim], self.layout.strides[dim]
        assert stride is not None
        self.ensure_level(1)
        positions = self.layout.positions()
        slot_axis = self.layout.slot_axes.index(dim)
        masks = []
        for j in range(n):
            mask = np.zeros(self.engine.slots)
            mask[np.take(positions, j, axis=slot_axis).reshape(-1)] = 1.0
            masks.append(mask)

        def pick(ct: Ciphertext, j: int) -> Ciphertext:
            picked = self.engine.mul_plain(ct, masks[j])
            if j:
                picked = checked_rotate(self.engine, picked, j * stride, what)
            for step in steps:
                picked = self.engine.add(picked, checked_rotate(self.engine, picked, step, what))
            return picked

        grid = np.empty((*self.grid.shape, n), dtype=object)
        for index in np.ndindex(self.grid.shape):
            for j in range(n):
                grid[(*index, j)] = pick(self.grid[index], j)
        strides = list(self.layout.strides)
        strides[dim] = None
        layout = Layout(self.layout.shape, tuple(strides), self.layout.offset)
        grid = np.moveaxis(grid, -1, layout.ct_axes.index(dim))
        return self._new(layout, grid, not steps)


class DepthExhausted(ValueError):
    """A product needs a level that neither the context nor a refresh can give."""


class RotationKeyError(ValueError):
    """A rotation whose Galois key the context does not hold (the key plan missed it)."""


def checked_rotate(engine: Engine, ct: Ciphertext, step: int, what: str) -> Ciphertext:
    """`engine.rotate(ct, step)`: every rotation of this module goes through here, so a dry
    run (`protocols.he.dry`) sees each of them. A missing Galois key raises
    `RotationKeyError` naming the step (as SEAL gets it) and `what` rotated."""
    try:
        return engine.rotate(ct, step)
    except ValueError as exc:
        if "Galois key" not in str(exc):
            raise
        raise RotationKeyError(
            f"{what}: the rotation by {reduce_step(step, engine.slots)} slots has no Galois "
            f"key in the client's public context ({exc}); the keys come from a dry run of the "
            "same tensor code (secinfer.backends.he.inputs.rotation_plan), which did not see "
            "this step"
        ) from None


# --- helpers ------------------------------------------------------------------------------
def _object_map(fn: Callable[[Ciphertext], Ciphertext], grid: np.ndarray) -> np.ndarray:
    out = np.empty(grid.shape, dtype=object)
    for index in np.ndindex(grid.shape):
        out[index] = fn(grid[index])
    return out


def as_plain(value: Any) -> float | np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().double().numpy()
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return float(value)
    return value if isinstance(value, np.ndarray) else float(value)


def _aligned_axes(layout: Layout, ndim: int) -> Layout:
    while len(layout.shape) < ndim:
        layout = layout.unsqueeze(0)
    return layout


def grid_view(t: HeTensor, out: Layout) -> np.ndarray:
    """t's grid broadcast to `out`'s ciphertext axes (t aligned to out's number of axes)."""
    layout = _aligned_axes(t.layout, len(out.shape))
    grid = t.grid.reshape(layout.grid_shape)
    index = [layout.ct_axes.index(a) if a in layout.ct_axes else None for a in out.ct_axes]
    # axes of `out` that are ciphertext axes of t keep their grid axis; slot axes of t that
    # are ciphertext axes of out have size 1 in t (layout normalisation)
    expanded = grid
    shape = []
    for a in out.ct_axes:
        shape.append(layout.shape[a] if a in layout.ct_axes else 1)
    order = [i for i in index if i is not None]
    expanded = np.transpose(grid, order) if order else grid
    return np.broadcast_to(expanded.reshape(shape), out.grid_shape)


def result_layout(a: Layout, b_shape: tuple[int, ...], b_layout: Layout | None) -> Layout:
    """The layout of a slot-wise a (op) b; b is plain when `b_layout` is None (a plain operand
    is encoded slot by slot, so it broadcasts along anything)."""
    ndim = max(len(a.shape), len(b_shape))
    la = _aligned_axes(a, ndim)
    lb = _aligned_axes(b_layout, ndim) if b_layout is not None else None
    shape_b = (1,) * (ndim - len(b_shape)) + tuple(b_shape)
    shape = tuple(max(x, y) for x, y in zip(la.shape, shape_b, strict=False))
    for k in range(ndim):
        if la.shape[k] != shape_b[k] and 1 not in (la.shape[k], shape_b[k]):
            raise ValueError(f"shapes {la.shape} and {shape_b} do not broadcast")
    strides: list[int | None] = []
    for k in range(ndim):
        ta = la.strides[k]
        tb = lb.strides[k] if lb is not None else None
        if lb is not None:
            if ta is not None and tb is not None and ta != tb:
                raise LayoutError(f"axis {k} sits in slots with strides {ta} and {tb}")
            if (ta is not None and tb is None) or (tb is not None and ta is None):
                raise LayoutError(
                    f"axis {k} is in slots in one encrypted operand and not in the other "
                    f"(shapes {la.shape}, {lb.shape})"
                )
        strides.append(ta if ta is not None else tb)
    offset = la.offset
    if lb is not None and lb.offset != la.offset and (la.slot_axes or not lb.slot_axes):
        raise LayoutError(f"operands at slot offsets {la.offset} and {lb.offset}")
    if lb is not None and not la.slot_axes:
        offset = lb.offset
    return Layout(shape, tuple(strides), offset)


def _binary(a: HeTensor, b: Any, op: str) -> HeTensor:
    engine = a.engine
    if isinstance(b, HeTensor):
        if a.layout.shape != b.layout.shape and a.policy == "auto":
            spread = b.spread(a.layout)
            if spread is not None:
                b = spread
            else:
                spread = a.spread(b.layout)
                a = spread if spread is not None else a
        if not (a.layout.simple and b.layout.simple):
            broadcast = _ct_broadcast(a, b, op)
            if broadcast is not None:
                return broadcast
            same = _common_packing(a, b)
            if same is not None:
                return _gridwise(a, b, same, op)
        try:
            out = result_layout(a.layout, tuple(b.layout.shape), b.layout)
        except LayoutError:
            # a size-1 axis against a slot axis (one token's row against its context),
            # under any policy: spread server-side, or else standardise
            spread_b = b.spread(a.layout) if a.layout.shape != b.layout.shape else None
            spread_a = (
                a.spread(b.layout)
                if spread_b is None and a.layout.shape != b.layout.shape
                else None
            )
            if spread_b is not None or spread_a is not None:
                a, b = spread_a or a, spread_b or b
            elif (outer := _outer_operands(a, b)) is not None:
                a, b = outer
            elif not standardize([a, b]):
                raise
            out = result_layout(a.layout, tuple(b.layout.shape), b.layout)
        if op == "mul":
            ensure_levels([a, b], 1)
        ga, gb = grid_view(a, out), grid_view(b, out)
        fn = {"add": engine.add, "sub": engine.sub, "mul": engine.mul}[op]
        grid = np.empty(out.grid_shape, dtype=object)
        for index in np.ndindex(out.grid_shape):
            x, y = ga[index], gb[index]
            grid[index] = engine.square(x) if (op == "mul" and x is y) else fn(x, y)
        clean = a.clean and b.clean if op != "mul" else (a.clean or b.clean)
        return a._new(out, grid, clean)
    plain = as_plain(b)
    if op == "sub":
        plain = -plain
        op = "add"
    if isinstance(plain, float):
        if op == "add" and plain == 0.0:
            return a
        if op == "mul" and plain == 1.0:
            return a
        if op == "mul":
            a.ensure_level(1)
        fn = engine.add_plain if op == "add" else engine.mul_plain
        return a._map(lambda ct: fn(ct, plain), a.clean and op == "mul")
    if not a.layout.simple:
        shape = np.broadcast_shapes(tuple(a.layout.shape), plain.shape)
        if shape == tuple(a.layout.shape):
            return _plain_placed(a, np.broadcast_to(plain, shape), op)
        a = a.standardized()
    out = result_layout(a.layout, tuple(plain.shape), None)
    values = np.broadcast_to(
        plain.reshape((1,) * (len(out.shape) - plain.ndim) + plain.shape), out.shape
    )
    if op == "mul":
        a.ensure_level(1)
    ga = grid_view(a, out)
    positions = out.positions().reshape(-1)
    grid = np.empty(out.grid_shape, dtype=object)
    slot_order = list(out.ct_axes) + list(out.slot_axes)
    arranged = np.transpose(values, slot_order).reshape((*out.grid_shape, -1))
    clean = a.clean
    for index in np.ndindex(out.grid_shape):
        entries = arranged[index]
        first = float(entries[0])
        if np.all(entries == first):
            factor: float | np.ndarray = first
            if op == "add":
                clean = False
        else:
            factor = np.zeros(engine.slots)
            factor[positions] = entries
        fn = engine.add_plain if op == "add" else engine.mul_plain
        grid[index] = fn(ga[index], factor)
    return a._new(out, grid, clean)


def _outer_operands(a: HeTensor, b: HeTensor) -> tuple[HeTensor, HeTensor] | None:
    """(a, b) made to meet slot for slot when each has a slot axis where the other has size
    1 (an outer sum, (n, 1) + (1, m)): the operand with fewer such entries moves those slot
    axes into ciphertexts (`HeTensor.split_slots`: 1 L, one rotation per entry) and is then
    spread along the other's slot axes (`HeTensor.spread`: log2 n rotations per
    ciphertext); the other operand is untouched. None when neither way fits (the slot
    axes they share sit differently, or the spread has no room)."""
    nd = max(a.dim(), b.dim())
    views = [t.reshape([1] * (nd - t.dim()) + list(t.shape)) for t in (a, b)]

    def lone_slot_axes(t: HeTensor, other: HeTensor) -> list[int]:
        return [k for k in range(nd)
                if t.layout.strides[k] is not None and other.layout.shape[k] == 1]  # fmt: skip

    ways = []
    for i in (0, 1):
        small, big = views[i], views[1 - i]
        axes = lone_slot_axes(small, big)
        if axes and lone_slot_axes(big, small):
            entries = math.prod(small.layout.shape[k] for k in axes)
            ways.append((entries * math.prod(small.layout.grid_shape), i, axes))
    for _, i, axes in sorted(ways):
        small, big = views[i], views[1 - i]
        if not (small.layout.simple and big.layout.simple):
            return None
        moved = small
        for k in axes:
            moved = moved.split_slots(k)
        grow = [k for k in range(nd) if moved.layout.shape[k] == 1 and big.layout.shape[k] > 1
                and big.layout.strides[k] is not None]  # fmt: skip
        source = [big.layout if k in grow else moved.layout for k in range(nd)]
        like = Layout(
            tuple(source[k].shape[k] for k in range(nd)),
            tuple(source[k].strides[k] for k in range(nd)),
            moved.layout.offset,
        )
        spread = moved.spread(like)
        if spread is not None:
            return (big, spread) if i else (spread, big)
    return None


def _common_packing(a: HeTensor, b: HeTensor) -> Layout | None:
    """Two encrypted operands, one of them in an extended layout: their common layout when
    they have one (layouts equal but for replicas; otherwise, for equal shapes, one
    operand re-laid out in place to the other's layout, whichever round trip moves fewer
    ciphertexts back), or None after re-laying the extended ones out to `Layout.standard`
    (shapes that broadcast: the simple-layout path takes it from there)."""
    if a.layout == b.layout:
        return a.layout
    if a.layout.without_replicas() == b.layout.without_replicas():
        return a.layout.without_replicas()
    if a.layout.shape != b.layout.shape:
        relayout_tensors(
            [(t, Layout.standard(t.layout.shape, t.engine.slots)) for t in (a, b)
             if not t.layout.simple]
        )  # fmt: skip
        return None
    # one operand moves to the other's layout (replicas dropped), the cheaper way round
    # (`packing.round_trip_ms`: the ciphertexts sent and received)
    size = [math.prod(t.layout.grid_shape) for t in (a, b)]
    if round_trip_ms(size[0], size[1]) <= round_trip_ms(size[1], size[0]):
        a.relayout(b.layout.without_replicas())
    else:
        b.relayout(a.layout.without_replicas())
    return a.layout


def _ct_broadcast(a: HeTensor, b: HeTensor, op: str) -> HeTensor | None:
    """a (op) b when one operand's layout is the other's with some ciphertext axes reduced
    to size 1 (a per-row value times skewed attention scores, say): its ciphertext is
    reused along those axes, no round trip. None when the layouts are not so related."""
    if a.layout.shape == b.layout.shape:
        return None
    for big, small in ((a, b), (b, a)):
        nd = big.dim()
        if small.dim() > nd:
            continue
        view = small.reshape([1] * (nd - small.dim()) + list(small.shape))
        axes = [k for k in range(nd) if view.layout.shape[k] == 1 and big.layout.shape[k] > 1]
        layout = big.layout.without_replicas()
        if not axes or any(layout.strides[k] is not None or layout.composite(k) for k in axes):
            continue
        shape = tuple(1 if k in axes else n for k, n in enumerate(layout.shape))
        reduced = Layout(shape, layout.strides, layout.offset, layout.parts, None, layout.skew)
        if view.layout.without_replicas() != reduced:
            continue
        if op == "mul":
            ensure_levels([big, view], 1)
        grid_small = view.grid.reshape(reduced.grid_shape)
        sized = [1 if any(g in layout.grid_axes_of(k) for k in axes) else n
                 for g, n in enumerate(layout.grid_shape)]  # fmt: skip
        spread = np.broadcast_to(grid_small.reshape(sized), layout.grid_shape)
        pairs = (
            zip(a.grid.flat, spread.flat, strict=True)
            if big is a
            else zip(spread.flat, b.grid.flat, strict=True)
        )
        fn = {"add": a.engine.add, "sub": a.engine.sub, "mul": a.engine.mul}[op]
        flat = [fn(x, y) for x, y in pairs]
        grid = np.empty(len(flat), dtype=object)
        grid[:] = flat
        clean = a.clean and b.clean if op != "mul" else (a.clean or b.clean)
        return a._new(layout, grid.reshape(layout.grid_shape), clean)
    return None


def _gridwise(a: HeTensor, b: HeTensor, layout: Layout, op: str) -> HeTensor:
    """a (op) b ciphertext by ciphertext, both in `layout`."""
    engine = a.engine
    if op == "mul":
        ensure_levels([a, b], 1)
    fn = {"add": engine.add, "sub": engine.sub, "mul": engine.mul}[op]
    flat = []
    for x, y in zip(a.grid.flat, b.grid.flat, strict=True):
        flat.append(engine.square(x) if (op == "mul" and x is y) else fn(x, y))
    grid = np.empty(len(flat), dtype=object)
    grid[:] = flat
    clean = a.clean and b.clean if op != "mul" else (a.clean or b.clean)
    return a._new(layout, grid.reshape(layout.grid_shape), clean)


def _plain_placed(a: HeTensor, values: np.ndarray, op: str) -> HeTensor:
    """a (op) a plain tensor of a's shape, laid out by a's placement (any layout; replicas
    get their entry's value): per ciphertext one scalar when its entries agree, else a
    slot vector (zero on unused slots: a product also zeroes the junk)."""
    engine = a.engine
    if op == "mul":
        a.ensure_level(1)
    placement, slots = a.layout.placement(), engine.slots
    flat_values = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
    fn = engine.add_plain if op == "add" else engine.mul_plain
    clean = True  # every ciphertext's junk stays zero (all of them: the tensor is clean)
    out = []
    for g, ct in enumerate(a.grid.flat):
        entries = flat_values[placement.groups[g][0]]
        factor: float | np.ndarray
        if entries.size and np.all(entries == entries[0]):
            factor = float(entries[0])  # the junk is multiplied, or shifted
            clean = clean and a.clean and op == "mul"
        else:
            factor = placement.vector(flat_values, g, slots)  # zero on the junk
            clean = clean and (a.clean or op == "mul")
        out.append(fn(ct, factor))
    grid = np.empty(len(out), dtype=object)
    grid[:] = out
    return a._new(a.layout, grid.reshape(a.grid.shape), clean)


def standardize(tensors: Sequence[Any]) -> bool:
    """Re-lay out, in one round trip, every encrypted tensor of `tensors` whose layout is
    not `Layout.standard` (the fallback of ops that found no form for their operands'
    layouts). False when there is none to move or the run cannot re-lay out."""
    moves = [
        (t, Layout.standard(t.layout.shape, t.engine.slots))
        for t in tensors
        if isinstance(t, HeTensor)
        and t.layout != Layout.standard(t.layout.shape, t.engine.slots)
        and can_relayout(t.refresher)
    ]
    if not moves:
        return False
    relayout_tensors(moves)
    return True


def slot_room(layout: Layout, dim: int, slots: int) -> bool:
    """Whether the slots a slot sum over `dim` reads past the axis (entries n .. n' - 1,
    n' = next_power_of_two(n), at the axis's stride) hold no other entry, in every
    ciphertext: taken as true for simple layouts of power-of-two strides (`Layout.rows`
    and `Layout.standard` pad every slot axis to a power of two), checked on the
    placement otherwise (rows d_in + d_out - 1 slots apart)."""
    n, stride = layout.shape[dim], layout.strides[dim]
    padded = next_power_of_two(n)
    powers = all(t is None or t == next_power_of_two(t) for t in layout.strides)
    if stride is None or padded == n or (layout.simple and powers):
        return True
    placement = layout.placement()
    first = np.moveaxis(np.arange(placement.count).reshape(layout.shape), dim, 0)[0]
    first = first.reshape(-1)
    for ct in np.unique(placement.cts[first]):
        used = placement.groups[ct][1]
        starts = placement.slots[first[placement.cts[first] == ct]]
        past = (starts[:, None] + stride * np.arange(n, padded)[None, :]).reshape(-1)
        if np.intersect1d(past, used).size or past.max(initial=0) >= slots:
            return False
    return True


def can_relayout(refresher: Any) -> bool:
    """Whether `refresher` can move tensors to another packing (a round trip)."""
    return bool(getattr(refresher, "can_relayout", False))


def ensure_levels(tensors: Sequence[HeTensor], levels: int | Sequence[int] = 1) -> list[HeTensor]:
    """Refresh in place every tensor with fewer levels left than it needs (`levels`, one
    count for all or one per tensor): all of them in one round trip when the refresher
    can (a re-layout to their own layouts), else one round trip each. Returns `tensors`."""
    needs = [levels] * len(tensors) if isinstance(levels, int) else list(levels)
    short: list[HeTensor] = []
    for t, need in zip(tensors, needs, strict=True):
        if t.level < need and not any(t is s for s in short):
            t._check_refresh(need)
            short.append(t)
    if not short:
        return list(tensors)
    if can_relayout(short[0].refresher) and (len(short) > 1 or not short[0].layout.simple):
        relayout_tensors([(t, t.layout) for t in short])
        return list(tensors)
    for t in short:
        assert t.refresher is not None
        t._replace(t.layout, t.refresher(list(t.grid.flat), t.layout))
    return list(tensors)


def relayout_tensors(pairs: Sequence[tuple[HeTensor, Layout]]) -> None:
    """Every tensor of `pairs` re-laid out in place to its target, all in one round trip
    (`protocols.he.relayout`); a tensor listed twice goes once (its first target).
    Raises LayoutError when the run cannot re-lay out (refresh is off)."""
    unique: list[tuple[HeTensor, Layout]] = []
    for t, target in pairs:
        if target.shape != t.layout.shape:
            raise ValueError(f"relayout: target {target.shape} for a {t.layout.shape} tensor")
        if not any(t is u for u, _ in unique):
            unique.append((t, target))
    if not unique:
        return
    refresher = unique[0][0].refresher
    if not can_relayout(refresher):
        shape = tuple(unique[0][0].layout.shape)
        raise LayoutError(
            f"moving a {shape} tensor to another packing needs a client round trip (a "
            "re-layout at a refresh), and refresh is off"
        )
    parts = [(list(t.grid.flat), t.layout, target) for t, target in unique]
    for (t, target), fresh in zip(unique, refresher.relayout(parts), strict=True):
        t._replace(target, fresh)


def power(x: HeTensor, exponent: int) -> HeTensor:
    """x^k for an integer k >= 1 by repeated squaring: ceil(log2 k) levels for k a power of two."""
    if not isinstance(exponent, int) or exponent < 1:
        raise ValueError(f"power {exponent!r}: only positive integer exponents on ciphertexts")
    result: HeTensor | None = None
    base = x
    k = exponent
    while k:
        if k & 1:
            result = base if result is None else result * base
        k >>= 1
        if k:
            base = base.square()
    assert result is not None
    return result
