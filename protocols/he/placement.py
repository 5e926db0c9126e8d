"""Entries of encrypted tensors placed into a new layout: the one primitive of gathers.

Every structural op with public arguments (index, gather, index_select, cat, stack,
split, repeat, a slice or selection of slots, ...) is a map from the entries of its result
to entries of its operands, or to public values. `place` takes such a map (`Sources`) and
builds the result:

  1. Each operand entry sits in ciphertext G (its grid index) at slot P (`Layout`).
  2. The result's layout (`choose_layout`, unless given): an axis along which the slots of
     the largest operand's entries step by one positive stride d (most often, when the
     steps differ) is a slot axis of stride d; the others are ciphertext axes; the offset
     keeps the first such entry in place. If two entries would share a slot, or a slot
     axis padded to a power of two would reach another's entries (slot sums and
     replication fold over the padding), or the span outgrows the ciphertext, the slot
     axes are packed afresh (innermost stride kept, each axis padded to a power of two,
     offset 0).
  3. Each result ciphertext is a sum of groups, one per (operand, ciphertext G, shift):
     the operand's ciphertext rotated by shift = P - T (T: the entry's slot in the result).
     A group is multiplied by its 0/1 slot mask (one plain product, 1 level) only when
     something else shares its ciphertext (another group or a public value) and the
     operand's junk, replicas or other entries could land on the others' slots; public values
     are added as a slot vector (no level).

So a selection along ciphertext axes is a grid selection (no ciphertext operation); a
selection of slots that keeps them in an arithmetic progression is bookkeeping (a new
stride or offset); anything else costs one rotation per distinct shift and, where
entries from several ciphertexts meet in one, one level. A result ciphertext holding only
public values is an encryption of zero (the engine's, at the operands' level) plus them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from protocols.he.engine import Ciphertext
from protocols.he.layout import Layout, LayoutError, next_power_of_two
from protocols.he.tensor import HeTensor, checked_rotate


@dataclass
class Sources:
    """Where each entry of a result of shape `part.shape` comes from.

    `part[e]` is the index in `tensors` of the operand entry e comes from, or -1 for a
    public value `plain[e]`; `flat[e]` is the entry's flat (C-order) index in that operand."""

    tensors: list[HeTensor]
    part: np.ndarray
    flat: np.ndarray
    plain: np.ndarray | None = None

    @classmethod
    def take(cls, tensor: HeTensor, flat: np.ndarray) -> Sources:
        """Every entry from `tensor`: `flat` holds flat indices of its entries."""
        flat = np.asarray(flat, dtype=np.int64)
        return cls([tensor], np.zeros(flat.shape, dtype=np.int64), flat)


def entry_slots(layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """(grid flat index, slot) of every entry of `layout`, two arrays of its shape."""
    shape = layout.shape
    grid = np.zeros(shape, dtype=np.int64)
    slot = np.full(shape, layout.offset, dtype=np.int64)
    factor = 1
    for a in reversed(range(len(shape))):
        view = [1] * len(shape)
        view[a] = shape[a]
        coordinate = np.arange(shape[a], dtype=np.int64).reshape(view)
        if layout.strides[a] is None:
            grid = grid + coordinate * factor
            factor *= shape[a]
        else:
            slot = slot + coordinate * layout.strides[a]
    return grid, slot


def _step(slot: np.ndarray, mine: np.ndarray, axis: int) -> int | None:
    """The most frequent positive slot step between neighbours along `axis` that both come
    from the reference operand (`mine`); ties go to the smallest; None without any."""
    if slot.shape[axis] < 2:
        return None
    lo = [slice(None)] * slot.ndim
    hi = [slice(None)] * slot.ndim
    lo[axis], hi[axis] = slice(0, -1), slice(1, None)
    both = mine[tuple(lo)] & mine[tuple(hi)]
    steps = (slot[tuple(hi)] - slot[tuple(lo)])[both]
    steps = steps[steps > 0]
    if steps.size == 0:
        return None
    values, counts = np.unique(steps, return_counts=True)
    return int(values[np.argmax(counts)])  # np.unique sorts: argmax takes the smallest tie


def _fits(layout: Layout, slots: int) -> bool:
    """Every slot axis has its power-of-two padding to itself (slot sums and replication
    fold over next_power_of_two(n) entries, `protocols.he.tensor`), within the slots."""
    padded = Layout(tuple(next_power_of_two(n) for n in layout.shape), layout.strides, 0)
    positions = padded.positions().reshape(-1) + layout.offset
    if layout.offset < 0 or int(positions.max(initial=0)) >= slots:
        return False
    return np.unique(positions).size == positions.size


def choose_layout(shape: tuple[int, ...], mine: np.ndarray, slot: np.ndarray, slots: int) -> Layout:
    """The result's layout from the slots of the reference operand's entries (`mine`:
    which result entries come from it; `slot`: their slots): module docstring, step 2."""
    strides: list[int | None] = [_step(slot, mine, a) for a in range(len(shape))]
    first = tuple(int(i[0]) for i in np.nonzero(mine))
    placed = sum(first[a] * t for a, t in enumerate(strides) if t)
    layout = Layout(shape, tuple(strides), int(slot[first]) - placed)
    if _fits(layout, slots):
        return layout
    # packed afresh: the slot axes in the order of their strides, innermost stride kept
    order = sorted((t, a) for a, t in enumerate(layout.strides) if t is not None)
    fresh: list[int | None] = [None] * len(shape)
    stride = order[0][0] if order else 1
    for _, a in order:
        fresh[a] = stride
        stride *= next_power_of_two(shape[a])
    packed = Layout(shape, tuple(fresh), 0)
    if packed.span() > slots:
        raise LayoutError(
            f"a result of shape {shape} needs {packed.span()} slots per ciphertext in this "
            f"packing, a ciphertext has {slots}"
        )
    return packed


def place(sources: Sources, layout: Layout | None = None) -> HeTensor:
    """The result that `sources` describes, in `layout` (default: `choose_layout`); module
    docstring for what it costs."""
    tensors = sources.tensors
    shape = tuple(int(n) for n in sources.part.shape)
    first = tensors[0]
    engine = first.engine
    slots = engine.slots
    part = np.asarray(sources.part, dtype=np.int64)
    grid_of = np.full(shape, -1, dtype=np.int64)
    slot_of = np.full(shape, -1, dtype=np.int64)
    for k, tensor in enumerate(tensors):
        mine = part == k
        grid, slot = entry_slots(tensor.layout)
        chosen = np.asarray(sources.flat, dtype=np.int64)[mine]
        grid_of[mine] = grid.reshape(-1)[chosen]
        slot_of[mine] = slot.reshape(-1)[chosen]
    if layout is None:
        counts = [int((part == k).sum()) for k in range(len(tensors))]
        reference = part == int(np.argmax(counts))
        layout = choose_layout(shape, reference, slot_of, slots)
    elif layout.shape != shape:
        raise ValueError(f"layout {layout.shape} for a result of shape {shape}")
    target_grid, target_slot = entry_slots(layout)
    rows = _plan_rows(tensors, part, grid_of, slot_of, target_grid, target_slot, slots)
    for k in {row.operand for row in rows if row.masked}:
        tensors[k].ensure_level(1)
    plain = np.asarray(sources.plain, dtype=np.float64) if sources.plain is not None else None
    flat_grid, flat_slot = target_grid.reshape(-1), target_slot.reshape(-1)
    public = np.flatnonzero(part.reshape(-1) < 0)
    public_at: dict[int, list[int]] = {}
    for entry, g in zip(public.tolist(), flat_grid[public].tolist(), strict=True):
        public_at.setdefault(g, []).append(entry)
    by_target: dict[int, list[_Row]] = {}
    for row in rows:
        by_target.setdefault(row.target, []).append(row)
    grid = np.empty(max(1, math.prod(layout.grid_shape)), dtype=object)
    for g in range(grid.size):
        terms: list[Ciphertext] = []
        for row in by_target.get(g, []):
            ct = tensors[row.operand].grid.flat[row.source]
            if row.shift:
                what = f"placing entries of a {tuple(tensors[row.operand].shape)} tensor"
                ct = checked_rotate(engine, ct, row.shift, what)
            if row.masked:
                mask = np.zeros(slots)
                mask[row.slots] = 1.0
                ct = engine.mul_plain(ct, mask)
            terms.append(ct)
        here = np.asarray(public_at.get(g, []), dtype=np.int64)
        if not terms:  # public values only: an encryption of zero carries them
            any_ct = first.grid.flat[0]
            terms = [engine.sub(any_ct, any_ct)]
        ct = engine.add_many(terms)
        if here.size and plain is not None:
            vector = np.zeros(slots)
            vector[flat_slot[here]] = plain.reshape(-1)[here]
            ct = engine.add_plain(ct, vector)
        grid[g] = ct
    clean = all(row.clean for row in rows)
    return HeTensor(
        engine, layout, grid.reshape(layout.grid_shape), clean=clean, refresher=first.refresher
    )


@dataclass
class _Row:
    """One term of a result ciphertext: operand `operand`'s ciphertext `source` rotated by
    `shift`, supplying the result slots `slots`, masked or not, junk-free or not."""

    target: int
    operand: int
    source: int
    shift: int
    slots: np.ndarray
    masked: bool
    clean: bool


def _plan_rows(
    tensors: list[HeTensor],
    part: np.ndarray,
    grid_of: np.ndarray,
    slot_of: np.ndarray,
    target_grid: np.ndarray,
    target_slot: np.ndarray,
    slots: int,
) -> list[_Row]:
    """The terms of every result ciphertext, and which of them need their mask: a term
    shares its ciphertext with another term or a public value, and its operand's junk or
    other entries (the operand's used slots, shifted: `landing`, which holds the term's
    own slots) land on the others' slots."""
    flat_part = part.reshape(-1)
    encrypted = np.flatnonzero(flat_part >= 0)
    tg, ts = target_grid.reshape(-1), target_slot.reshape(-1)
    columns = [
        tg[encrypted],
        flat_part[encrypted],
        grid_of.reshape(-1)[encrypted],
        (slot_of.reshape(-1)[encrypted] - ts[encrypted]) % slots,
    ]
    sizes = [int(c.max(initial=0)) + 1 for c in columns]
    key = np.zeros(encrypted.size, dtype=np.int64)
    for column, size in zip(columns, sizes, strict=True):  # one integer per term (< 2^63)
        key = key * size + column
    if math.prod(sizes) >= 2**62:
        raise LayoutError(f"placement of {encrypted.size} entries: too many terms to index")
    keys, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(keys) + 1))
    terms = np.bincount(columns[0][first], minlength=int(tg.max(initial=0)) + 1)
    public_targets = set(tg[flat_part < 0].tolist())
    positions = [t.layout.positions().reshape(-1) for t in tensors]
    # replicas sit beyond `positions` (its first copies): for the masks they are junk
    pure = [t.clean and t.layout.replicas is None for t in tensors]
    landings: dict[tuple[int, int], np.ndarray] = {}
    occupied: dict[int, np.ndarray] = {}
    rows = []
    for index, at in enumerate(first.tolist()):
        g, k, source, s = (int(c[at]) for c in columns)
        mine = ts[encrypted[order[bounds[index] : bounds[index + 1]]]]
        landing = landings.get((k, s))
        if landing is None:
            landing = landings[(k, s)] = (positions[k] - s) % slots
        whole = mine.size == landing.size  # mine is within landing: equal sizes, equal sets
        masked = False
        if terms[g] > 1 or g in public_targets:
            if not occupied:  # the entries of each result ciphertext, by one sort
                by_grid = np.argsort(tg, kind="stable")
                starts = np.searchsorted(tg[by_grid], np.arange(int(tg.max()) + 2))
            if g not in occupied:
                used = np.zeros(slots, dtype=bool)
                used[ts[by_grid[starts[g] : starts[g + 1]]]] = True
                occupied[g] = used
            spills = int(occupied[g][landing].sum()) > mine.size
            masked = spills or not pure[k]
        clean = masked or (pure[k] and whole)
        rows.append(_Row(g, k, source, s, mine, masked, clean))
    return rows
