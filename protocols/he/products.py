"""Products of encrypted tensors with a matrix: linear layers (a plain weight) and
attention's products (both operands encrypted), each by the packing the cost model picks.

    linear(x, W, b)      feature-major (d_in d_out plain-scalar products, no rotation) or
                         the diagonal method (`protocols.he.diagonal`), chosen per layer by
                         `protocols.he.packing.choose_linear` for x's rows and layout,
                         the re-layout round trip priced in
    matmul(a, b)         b plain: `linear`; both encrypted: the diagonal method of
                         `protocols.he.attention` (scores into the skewed diagonal
                         layout, weights times values back), or a token axis of b
                         replicated into ciphertexts (`HeTensor.replicate`) with one ct-ct
                         dot product per output, whichever the cost model finds cheaper;
                         operands are re-laid out in place (one round trip for both) when
                         their layouts fit neither form or the cost model says so

Costs and levels per path are in `protocols.he.tensor`'s table; every product takes one
level. Under the "feature_major" policy (or without refresh) only the feature-major
linear and the replicating attention run, on the layouts the operands have.
"""

from __future__ import annotations

import math

import numpy as np

from protocols.he.attention import product_ms, scores, scores_layout, token_layout, weighted_values
from protocols.he.diagonal import product_all
from protocols.he.engine import Ciphertext
from protocols.he.layout import Layout, LayoutError
from protocols.he.packing import (
    attention_ms,
    choose_linear,
    diagonal_input,
    diagonal_width,
    feature_major_ready,
    linear_options,
    round_trip_ms,
)
from protocols.he.tensor import (
    HeTensor,
    Plain,
    as_plain,
    can_relayout,
    checked_rotate,
    ensure_levels,
    grid_view,
    relayout_tensors,
    result_layout,
)


# --- products with a matrix ---------------------------------------------------------------
def linear(
    x: HeTensor,
    weight: Plain,
    bias: Plain | None = None,
    *,
    merge: bool = True,
    strategy: str | None = None,
) -> HeTensor:
    """x @ weight.T + bias (weight d_out x d_in) by the packing the cost model picks for
    x's rows (`protocols.he.packing.choose_linear`, under the run's policy), or the one
    named by `strategy` ("feature_major", "diagonal_bsgs"):

    - feature-major: x's last axis in ciphertexts (re-laid out to `Layout.standard` first
      when it is not); for every output feature j one `dot_plain` of the d_in input
      ciphertexts (zero weights skipped), 1 L. With `merge`, leading ciphertext axes are
      first moved into free slots (`merge`) when the layout has room, so that the
      products are paid once for all of them.
    - diagonal: x re-laid out (in place: one round trip, unless it is there already) to
      rows d_in + d_out - 1 slots apart with replicas (`packing.diagonal_input`), then
      baby-step giant-step diagonals per ciphertext (`protocols.he.diagonal`): about
      2 sqrt(d_in) rotations and d_in products each, 1 L. The output keeps the rows'
      spacing, features at stride 1 (`Layout.row_blocks`), not clean.
    """
    w = np.asarray(as_plain(weight), dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != x.shape[-1]:
        raise ValueError(f"linear: weight {w.shape} for input {tuple(x.shape)}")
    d_out, slots = w.shape[0], x.engine.slots
    movable = can_relayout(x.refresher)
    if strategy is None:
        option, reason = choose_linear(
            x.layout, d_out, slots, policy=x.policy, can_relayout=movable
        )
    else:
        found = [o for o in linear_options(x.layout, d_out, slots, movable)
                 if o.strategy == strategy]  # fmt: skip
        if not found:
            raise LayoutError(
                f"linear: strategy {strategy!r} does not apply to {x.layout} (moving it to "
                "another packing needs a round trip, which needs refresh)"
            )
        option, reason = found[0], f"forced: {found[0].describe()}"
    note = getattr(x.refresher, "note_choice", None)
    if note is not None:
        note("linear", (tuple(x.shape), d_out), option.strategy, reason)
    if option.strategy == "diagonal_bsgs":
        out = _linear_diagonal(x, w, option.relayout)
    else:
        out = _linear_feature_major(x, w, merge, option.relayout)
    if bias is not None:
        out = out + bias
    return out


def _diagonal_attention(a: HeTensor, b: HeTensor) -> HeTensor | None:
    """a @ b by the diagonal method (`protocols.he.attention`) when the run may re-lay out
    (policy "auto"), the shapes fit one of its two forms, and the cost model finds it
    cheaper than replicating a token axis (`packing.attention_ms` on the layouts that
    path would use, each side with its round trip): the scores form for a (..., L, d)
    times b (..., d, L), giving the diagonal (skewed) layout; the values form for a
    (..., L, L) times b (..., L, d), a in that layout. Operands are re-laid out in place,
    in one round trip, when they are not in the method's layouts. None: not taken."""
    if a.policy != "auto" or a.dim() != b.dim():
        return None
    nd, slots = a.dim(), a.engine.slots
    *batch, n, m = a.layout.shape
    *batch_b, m2, p = b.layout.shape
    if batch != batch_b or m != m2 or n < 2:
        return None
    skewed = a.layout.skew == (nd - 1, nd - 2)
    if skewed and n == m:
        form = "values"
    elif p == n:
        form = "scores"
    elif n == m:
        form = "values"
    else:
        return None
    width = m if form == "scores" else p
    queries = token_layout((*batch, n, width), slots, replicate=False)
    if queries is None:
        return None
    keys = token_layout((*batch, n, width), slots, replicate=True)
    assert keys is not None
    if form == "scores":
        targets = (queries, keys.permute([*range(nd - 2), nd - 1, nd - 2]))
    else:
        targets = (scores_layout(queries), keys)
    moved = [(t, target) for t, target in zip((a, b), targets, strict=True) if t.layout != target]
    cells = math.prod(queries.grid_shape) // width
    sent = sum(math.prod(t.layout.grid_shape) for t, _ in moved)
    back = sum(math.prod(target.grid_shape) for _, target in moved)
    diagonal_ms = product_ms(n, width, form, cells) + (round_trip_ms(sent, back) if moved else 0)
    other = _attention_targets(a, b)
    if other is not None:
        now = attention_ms(a.layout, b.layout)
        after = attention_ms(*other)
        replicate_ms = min(
            now if now is not None else math.inf,
            (after if after is not None else math.inf)
            + round_trip_ms(math.prod(a.layout.grid_shape) + math.prod(b.layout.grid_shape),
                            sum(math.prod(t.grid_shape) for t in other)),
        )  # fmt: skip
        if replicate_ms <= diagonal_ms:
            return None
    note = getattr(a.refresher, "note_choice", None)
    if note is not None:
        note("attention", (tuple(a.shape), tuple(b.shape)), f"diagonal_{form}",
             f"~{diagonal_ms / 1e3:.2f} s")  # fmt: skip
    relayout_tensors(moved)
    ensure_levels([a, b], 1)
    what = f"the diagonal {form} product of {tuple(a.shape)} and {tuple(b.shape)} tensors"

    def rotate(ct: Ciphertext, step: int) -> Ciphertext:
        return checked_rotate(a.engine, ct, step, what)

    outer = a.grid.shape[:-1]
    if form == "scores":
        out_layout = scores_layout(queries)
        grid = np.empty((*outer, n), dtype=object)
        for index in np.ndindex(outer):
            grid[index] = scores(a.engine, list(a.grid[index]), list(b.grid[index]), n, rotate)
    else:
        out_layout = queries
        grid = np.empty((*outer, p), dtype=object)
        for index in np.ndindex(outer):
            grid[index] = weighted_values(a.engine, list(a.grid[index]), list(b.grid[index]),
                                          rotate)  # fmt: skip
    return a._new(out_layout, grid.reshape(out_layout.grid_shape), False)


def _attention_targets(a: HeTensor, b: HeTensor) -> tuple[Layout, Layout] | None:
    """Layouts in which `matmul(a, b)` runs (`packing.attention_ms`), for operands in any
    layouts: a in `Layout.standard` (batch axes and rows in slots, c in ciphertexts); b
    with a's batch strides, the axis of its last two whose size is a's row count (the last
    one when both are) in slots at a's row stride, the other in ciphertexts. None when b
    has no axis of a's row count, its last two axes both in ciphertexts (each entry is
    then spread over a's rows)."""
    slots = a.engine.slots
    a_target = Layout.standard(a.layout.shape, slots)
    if a.dim() != b.dim():
        return None
    rows = a.layout.shape[-2]
    t_i = a_target.strides[-2]
    strides: list[int | None] = [
        t if b.layout.shape[k] == a.layout.shape[k] else None
        for k, t in enumerate(a_target.strides[:-2])
    ]
    if t_i is None:  # a single row: b's last two axes in ciphertexts
        return a_target, Layout(b.layout.shape, (*strides, None, None), a_target.offset)
    if b.layout.shape[-1] == rows:
        tail: tuple[int | None, ...] = (None, t_i)
    elif b.layout.shape[-2] == rows:
        tail = (t_i, None)
    else:  # (n, m) @ (m, k), m and k not n: every entry of b its own ciphertext, spread
        tail = (None, None)
    return a_target, Layout(b.layout.shape, (*strides, *tail), a_target.offset)


def _attention_packing(a: HeTensor, b: HeTensor) -> None:
    """Move a and b (in place, one round trip) to `_attention_targets` when they have no
    form for `matmul` as they are, or when the cost model (`packing.attention_ms` plus the
    round trip) finds the targets cheaper (policy "auto": e.g. heads moved from
    ciphertexts into slots, so that fewer ciphertexts of b are replicated)."""
    if not can_relayout(a.refresher):
        return
    targets = _attention_targets(a, b)
    if targets is None:
        return
    now = attention_ms(a.layout, b.layout)
    if now is not None and a.policy != "auto":
        return
    moved = [(t, target) for t, target in zip((a, b), targets, strict=True) if t.layout != target]
    if not moved:
        return
    if now is not None:
        after = attention_ms(*targets)
        sent = sum(math.prod(t.layout.grid_shape) for t, _ in moved)
        back = sum(math.prod(target.grid_shape) for _, target in moved)
        if after is None or after + round_trip_ms(sent, back) >= now:
            return
    note = getattr(a.refresher, "note_choice", None)
    if note is not None:
        note("attention", (tuple(a.shape), tuple(b.shape)), "relayout", "cheaper or needed")
    relayout_tensors(moved)


def _linear_feature_major(
    x: HeTensor, w: np.ndarray, merge: bool, target: Layout | None
) -> HeTensor:
    if target is not None:
        x.relayout(target)
    if not feature_major_ready(x.layout):
        raise LayoutError("linear: the feature axis is in slots; expected feature-major packing")
    if merge:
        for dim in x.layout.ct_axes[:-1]:
            try:
                x = x.merge(dim)
            except LayoutError:
                continue
    x.ensure_level(1)
    d_out = w.shape[0]
    shape = (*x.layout.shape[:-1], d_out)
    layout = Layout(shape, (*x.layout.strides[:-1], None), x.layout.offset)
    grid = np.empty(layout.grid_shape, dtype=object)
    for index in np.ndindex(x.grid.shape[:-1]):
        inputs = list(x.grid[index])
        for j in range(d_out):
            nonzero = np.flatnonzero(w[j])
            if nonzero.size == 0:
                grid[(*index, j)] = x.engine.mul_plain(inputs[0], 0.0)
                continue
            grid[(*index, j)] = x.engine.dot_plain(
                [inputs[k] for k in nonzero], [float(w[j, k]) for k in nonzero]
            )
    return x._new(layout, grid, x.clean)


def _linear_diagonal(x: HeTensor, w: np.ndarray, target: Layout | None) -> HeTensor:
    if x.dim() == 1:
        return _linear_diagonal(x.unsqueeze(0), w, target and target.unsqueeze(0)).squeeze(0)
    if target is not None:
        x.relayout(target)
    x.ensure_level(1)  # in its layout: the replicas survive a refresh
    d_out, d_in = w.shape
    slots = x.engine.slots
    width = diagonal_width(d_in, d_out)
    if x.layout != diagonal_input(x.layout.shape, d_out, slots):
        raise LayoutError(f"linear: {x.layout} is not the diagonal method's input layout")
    rows = min(slots // width, x.layout.shape[-2])
    what = f"the diagonal product of a {tuple(x.shape)} tensor by a {d_in}x{d_out} weight"
    flat = product_all(
        x.engine,
        list(x.grid.flat),
        w,
        width,
        rows,
        lambda ct, step: checked_rotate(x.engine, ct, step, what),
    )
    layout = Layout.row_blocks((*x.layout.shape[:-1], d_out), width, slots)
    grid = np.empty(len(flat), dtype=object)
    grid[:] = flat
    return x._new(layout, grid.reshape(layout.grid_shape), False)


def _single_row(a: HeTensor, b: HeTensor) -> HeTensor | None:
    """a @ b for a single row a (..., 1, c), one token's query against a key/value cache,
    as broadcast products summed over c (1 L), in the three layouts a step meets:
      c in ciphertexts, b's (c, j) in ciphertexts: one product per (c, j), no rotation;
      c in ciphertexts, b's j in slots (the keys, transposed): each a entry spread over
        b's j slots (`HeTensor.spread`: log2(j') rotations), one product per c;
      c in slots where b's c sits (attention weights against the values): one product
        per column j, then the sum over c's slots (log2(c') rotations).
    None for other layouts (the caller's general method then decides)."""
    a_c, (b_c, b_j) = a.layout.strides[-1], b.layout.strides[-2:]
    if not (a.layout.simple and b.layout.simple):
        return None
    rows, columns = a.unsqueeze(-1), b.unsqueeze(-3)  # (..., 1, c, 1), (..., 1, c, j)
    if a_c is None and b_c is None and b_j is None:
        return (rows * columns).sum(-2)
    if a_c is None and b_c is None:
        spread = rows.spread(columns.layout)
        return None if spread is None else (spread * columns).sum(-2)
    if a_c is not None and a_c == b_c and b_j is None and a.layout.offset == b.layout.offset:
        return (rows * columns).sum(-2)
    return None


def matmul(a: HeTensor, b: HeTensor | Plain) -> HeTensor:
    """a @ b. With b plain: `linear(a, b.T)`. With both encrypted (attention scores q k^T,
    weights v): a is (..., i, c) with i in slots and c in ciphertexts; b's slot axis among
    its last two must sit where a's i does; it is replicated into ciphertexts, and every
    output is one ct-ct dot product over c (module docstring). A single row (i of size 1,
    one token) and b's last two axes in ciphertexts: products summed over c, 1 L, no
    rotation."""
    if not isinstance(b, HeTensor):
        w = np.asarray(as_plain(b), dtype=np.float64)
        return linear(a, w.T if w.ndim == 2 else w[:, None].T)
    if a.dim() < 2 or b.dim() < 2:
        raise LayoutError("matmul of encrypted tensors needs at least 2 axes each")
    diagonal = _diagonal_attention(a, b)
    if diagonal is not None:
        return diagonal
    _attention_packing(a, b)
    if a.layout.shape[-2] == 1:
        single = _single_row(a, b)
        if single is not None:
            return single
    t_i = a.layout.strides[-2]
    if t_i is None or a.layout.strides[-1] is not None:
        raise LayoutError(
            f"matmul: expected a (..., i, c) with i in slots and c in ciphertexts, got strides "
            f"{a.layout.strides}"
        )
    last_two = (b.dim() - 2, b.dim() - 1)
    spread = [d for d in last_two if b.layout.strides[d] == t_i]
    along = None
    if not spread and b.layout.strides[-2:] != (None, None):
        # b's one slot axis sits elsewhere (landmarks pooled from a's rows)
        spread = [d for d in last_two if b.layout.strides[d] is not None]
        if len(spread) != 1 or not b.layout.simple:
            raise LayoutError("matmul: b has no slot axis where a's rows sit")
        along = t_i
    n_i = a.layout.shape[-2]
    if spread:
        ensure_levels([a, b], [1, 2])
        bp = b.replicate(spread[0], extent=n_i, along=along)  # over all of a's rows
        # b' seen with an explicit row axis i in slots: (..., i, c, j)
        b_shape = (*bp.layout.shape[:-2], n_i, *bp.layout.shape[-2:])
        b_layout = Layout(b_shape, (*bp.layout.strides[:-2], t_i, None, None), bp.layout.offset)
        b4 = a._new(b_layout, bp.grid.reshape(b_layout.grid_shape), False)
    else:  # b's last two in ciphertexts: each spread over a's rows (log2 n_i' rotations)
        ensure_levels([a, b], [1, 1 + (not b.clean)])
        rows = b.unsqueeze(-3)
        b_shape = (*rows.layout.shape[:-3], n_i, *rows.layout.shape[-2:])
        b4 = rows.spread(Layout(b_shape, (*rows.layout.strides[:-3], t_i, None, None),
                                rows.layout.offset))  # fmt: skip
        if b4 is None:
            raise LayoutError("matmul: b's entries have no room to spread over a's rows")
        b_layout = b4.layout
    a4 = a.unsqueeze(-1)  # (..., i, c, 1)
    out4 = result_layout(a4.layout, b_shape, b_layout)
    ga, gb = grid_view(a4, out4), grid_view(b4, out4)
    # contract over c: grid axis of out4's axis -2
    c_axis = out4.ct_axes.index(len(out4.shape) - 2)
    ga, gb = np.moveaxis(ga, c_axis, -1), np.moveaxis(gb, c_axis, -1)
    shape = out4.shape[:-2] + out4.shape[-1:]
    layout = Layout(shape, out4.strides[:-2] + out4.strides[-1:], out4.offset)
    grid = np.empty(layout.grid_shape, dtype=object)
    for index in np.ndindex(layout.grid_shape):
        grid[index] = a.engine.dot(list(ga[index]), list(gb[index]))
    return a._new(layout, grid, False)
