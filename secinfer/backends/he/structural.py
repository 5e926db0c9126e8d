"""The `he` kernels of structural ops: public masks, public indices, joins and splits.

These ops move or select entries of encrypted tensors under public control (the model's
masks and indices, the shapes); their kernels run only when an argument is encrypted
(otherwise torch runs them, `kernels.dispatch`), and refuse, naming the op, when the
control itself is encrypted (a comparison result as a mask, encrypted indices).

  public sentinels  a plain operand meeting a ciphertext (add, sub, where, masked_fill)
                    has its sentinels (|v| >= 1e9, infinities: attention masks'
                    finfo.min) replaced by -+MASK_LIMIT = -+200 (`secinfer.core.masks`,
                    as on the mpc backend): CKKS holds |v| < 2^19 at scale 2^40. A masked
                    attention score then reaches the softmax as s - 200, s its unmasked
                    score, so after the row's shift z = x - max <= -(200 - spread): the
                    softmax's exp must be valid down to -(spread + 200), as the mpc plan's
                    exp by squaring is (`plan.mpc_softmax_exp`), and gives such z a weight
                    below exp(-200 + spread) of the row's largest (0 to float64 for spread
                    below 160); calibration never sees sentinels (`calibrate`).
  where, masked_fill  with a public mask m: where(m, a, b) = a m + b (1 - m), a plain
                    product per encrypted operand (1 level, both in parallel); all-true
                    or all-false masks cost nothing. An encrypted mask is refused.
  index, gather, index_select, slice, narrow, split, split_with_sizes, chunk, unbind,
  cat, stack, repeat, getitem
                    entries placed by `protocols.he.placement.place`: along ciphertext
                    axes a grid selection (free), along slot axes a new stride or offset
                    when the kept slots stay evenly spaced (free), else one rotation per
                    distinct shift and, where entries of several ciphertexts meet, a mask
                    (1 level). Public operands of cat/stack are added as slot vectors.
  flatten, unflatten, to
                    views (`HeTensor.reshape`; one that merges slot and ciphertext axes
                    places the entries afresh) and float casts (identity); a cast to an
                    integer or bool dtype is refused.
  cumsum            along a ciphertext axis: running additions (no level); along a slot
                    axis of n entries: ceil(log2 n) steps of a rotation and a 0/1 mask
                    (Hillis-Steele scan, 1 level each).
  baddbmm           beta z + alpha (x @ y) with `protocols.he.tensor.matmul`.
  convolution, conv2d
                    on the client's image sent unfolded (`patches.PatchImage`): one linear
                    layer over the patch vectors, the bias added on the used slots only
                    (the result stays clean); a convolution of a computed activation is
                    refused before any work (`check_structure`).
  new_ones, new_zeros, empty_like, fill
                    plain tensors of the encrypted tensor's public shape.

  view, reshape, unsqueeze
                    of token ids sent one-hot (or embedded by the client): on the ids'
                    axes, the vocabulary (embedding) axis kept last, as GPT-2's view of
                    its ids; a view the layout cannot express (merging a padded token
                    axis with the batch, GPT-2's (B, L, D) -> (B L, D) when L is not a
                    power of two and B > 1) places the entries afresh.

`structural_kernels(arith, shape)` gives the registry's kernels (`kernels._register` wraps
them in `dispatch`); add/sub/rsub fall back to `arith`, views of other tensors to `shape`.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from protocols.he.layout import LayoutError
from protocols.he.placement import Sources, place
from protocols.he.products import linear, matmul
from protocols.he.tensor import HeTensor, checked_rotate
from secinfer.backends.he.patches import (
    CONVOLUTIONS,
    PatchConv,
    PatchImage,
    convolution_weight,
    image_inputs,
)
from secinfer.backends.he.refusals import UnsupportedHeOp
from secinfer.core.graph import Graph
from secinfer.core.masks import MASK_LIMIT, SENTINEL
from secinfer.core.registry import Call

aten = torch.ops.aten
FLOAT = torch.float64
Kernel = Callable[[Call], Any]


def _refuse(call: Call, why: str) -> Any:
    name = str(call.target).replace(".default", "")
    raise UnsupportedHeOp(f"{name} {why}")


# --- public operands ---------------------------------------------------------------------------
def public(value: Any) -> Any:
    """A plain operand as it meets ciphertexts: sentinels become -+MASK_LIMIT (module
    docstring); tensors in float64."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if not value.is_floating_point():
            return value.to(FLOAT)
        value = value.to(FLOAT)
        huge = value.abs() >= SENTINEL
        return torch.where(huge, value.sign() * MASK_LIMIT, value) if bool(huge.any()) else value
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, float) and abs(value) >= SENTINEL:
        return math.copysign(MASK_LIMIT, value)
    return value


def _public_args(values: Any) -> Any:
    if isinstance(values, HeTensor):
        return values
    if isinstance(values, list | tuple):
        return type(values)(_public_args(v) for v in values)
    if isinstance(values, torch.Tensor | float):
        return public(values)
    return values


def _add(a: Any, b: Any, sign: float = 1.0) -> Any:
    """a + sign b; two encrypted tensors of one shape in different layouts meet in a's."""
    try:
        return a + b if sign > 0 else a - b
    except LayoutError:
        if not (isinstance(a, HeTensor) and isinstance(b, HeTensor)) or a.shape != b.shape:
            raise
        moved = relayout(b, a)
        return a + moved if sign > 0 else a - moved


def relayout(x: HeTensor, like: HeTensor) -> HeTensor:
    """x's entries in `like`'s layout (`placement.place`)."""
    return place(Sources.take(x, _flat(x).numpy()), like.layout)


def _with_public_operands(arith: Kernel) -> Kernel:
    def run(call: Call) -> Any:
        call = dataclasses.replace(call, args=_public_args(call.args))
        try:
            return arith(call)
        except LayoutError:
            a, b = call.args[0], call.args[1]
            if (
                call.target not in (aten.add.Tensor, aten.sub.Tensor)
                or call.kwargs.get("alpha", 1) != 1
            ):
                raise
            return _add(a, b, 1.0 if call.target is aten.add.Tensor else -1.0)

    return run


# --- where, masked_fill ------------------------------------------------------------------------
def _mask(call: Call, cond: Any) -> torch.Tensor:
    if isinstance(cond, HeTensor | PatchImage):
        return _refuse(
            call,
            "with an encrypted condition needs a comparison of encrypted values, which CKKS "
            "has no kernel for; only public masks (attention masks, causal masks) are taken",
        )
    return torch.as_tensor(cond).to(torch.bool)


def _shape_of(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else ()


def _broadcast(value: Any, shape: tuple[int, ...]) -> Any:
    if isinstance(value, HeTensor):
        if tuple(value.shape) == shape:
            return value
        try:
            return value.expand(list(shape))  # along ciphertext axes: the grid repeats
        except LayoutError:
            return value + torch.zeros(shape, dtype=FLOAT)
    return torch.as_tensor(value, dtype=FLOAT).expand(shape).clone()


def select_by_mask(call: Call, cond: Any, a: Any, b: Any) -> Any:
    """where(cond, a, b) = a m + b (1 - m) with the public 0/1 mask m (module docstring)."""
    m = _mask(call, cond)
    a, b = public(a), public(b)
    shape = tuple(torch.broadcast_shapes(m.shape, _shape_of(a), _shape_of(b)))
    if bool(m.all()):
        return _broadcast(a, shape)
    if not bool(m.any()):
        return _broadcast(b, shape)
    keep = m.to(FLOAT)
    drop = 1.0 - keep
    left = a * keep if isinstance(a, HeTensor) else torch.as_tensor(a, dtype=FLOAT) * keep
    right = b * drop if isinstance(b, HeTensor) else torch.as_tensor(b, dtype=FLOAT) * drop
    if not isinstance(left, HeTensor):
        left, right = right, left
    out = _add(left, right)
    return _broadcast(out, shape)


def _where(call: Call) -> Any:
    cond, a, b = call.args[0], call.args[1], call.args[2]
    return select_by_mask(call, cond, a, b)


def _masked_fill(call: Call) -> Any:
    x, mask, value = call.args[0], call.args[1], call.args[2]
    return select_by_mask(call, mask, value, x)


# --- entries placed ----------------------------------------------------------------------------
def _flat(x: Any) -> torch.Tensor:
    """Flat indices of x's entries, shaped like x (what a structural op is applied to)."""
    return torch.arange(math.prod(x.shape), dtype=torch.int64).reshape(tuple(x.shape))


def _take(x: HeTensor, flat: torch.Tensor) -> HeTensor:
    return place(Sources.take(x, flat.numpy()))


def _plain_index(call: Call, values: Any) -> Any:
    if isinstance(values, HeTensor | PatchImage) or (
        isinstance(values, list | tuple) and any(isinstance(v, HeTensor) for v in values)
    ):
        return _refuse(call, "with encrypted indices (only public indices are taken)")
    return values


def _source(call: Call) -> HeTensor:
    x = call.args[0]
    if not isinstance(x, HeTensor):
        return _refuse(call, "on a plain tensor with encrypted arguments")
    return x


def _index(call: Call) -> Any:
    x = _source(call)
    indices = _plain_index(call, call.args[1])
    key = tuple(slice(None) if i is None else torch.as_tensor(i) for i in indices)
    return _take(x, _flat(x)[key])


def _gather(call: Call) -> Any:
    x = _source(call)
    index = _plain_index(call, call.args[2])
    return _take(x, torch.gather(_flat(x), int(call.args[1]), torch.as_tensor(index)))


def _index_select(call: Call) -> Any:
    x = _source(call)
    index = _plain_index(call, call.args[2])
    return _take(x, _flat(x).index_select(int(call.args[1]), torch.as_tensor(index)))


def slice_of(x: HeTensor, dim: int, start: Any, end: Any, step: int = 1) -> HeTensor:
    """x[dim: start:end:step]: bookkeeping where the layout allows, else `place`."""
    dim %= x.dim()
    start, end, step = slice(start, end, step).indices(int(x.shape[dim]))
    try:
        return x.slice(dim, start, end, step)
    except LayoutError:
        index = [slice(None)] * x.dim()
        index[dim] = slice(start, end, step)
        return _take(x, _flat(x)[tuple(index)])


def _slice(call: Call) -> Any:
    x = _source(call)
    dim, start, end, step = [*call.args[1:], None, None, None, None][:4]
    return slice_of(x, int(dim or 0), start, end, step or 1)


def _narrow(call: Call) -> Any:
    x, dim, start, length = _source(call), int(call.args[1]), int(call.args[2]), call.args[3]
    return slice_of(x, dim, start, start + int(length))


def _pieces(x: HeTensor, dim: int, sizes: list[int]) -> list[HeTensor]:
    out, at = [], 0
    for size in sizes:
        out.append(slice_of(x, dim, at, at + size))
        at += size
    return out


def _split(call: Call) -> Any:
    x = _source(call)
    dim = int(call.args[2]) if len(call.args) > 2 else int(call.kwargs.get("dim", 0))
    n = int(x.shape[dim])
    size = call.args[1]
    if call.target is aten.split_with_sizes.default or isinstance(size, list | tuple):
        return _pieces(x, dim, [int(s) for s in size])
    size = int(size)
    return _pieces(x, dim, [min(size, n - at) for at in range(0, n, size)] or [0])


def _chunk(call: Call) -> Any:
    x = _source(call)
    chunks = int(call.args[1])
    dim = int(call.args[2]) if len(call.args) > 2 else int(call.kwargs.get("dim", 0))
    n = int(x.shape[dim])
    size = math.ceil(n / chunks)
    return _pieces(x, dim, [min(size, n - at) for at in range(0, n, size)])


def _unbind(call: Call) -> Any:
    x = _source(call)
    dim = int(call.args[1]) if len(call.args) > 1 else int(call.kwargs.get("dim", 0))
    return [x.select(dim, i) for i in range(int(x.shape[dim]))]


def _getitem(call: Call) -> Any:
    return operator.getitem(call.args[0], call.args[1])


def join(tensors: list[Any], dim: int) -> Any:
    """torch.cat of encrypted and public tensors along `dim` (`place`; public operands
    become slot vectors)."""
    kept = [t for t in tensors if math.prod(_shape_of(t)) > 0]
    encrypted = [t for t in kept if isinstance(t, HeTensor)]
    if len(kept) == 1 and encrypted:
        return kept[0]
    dim %= len(_shape_of(encrypted[0]))
    unique: list[HeTensor] = []  # an operand given twice is one source (identity)
    for t in encrypted:
        if all(t is not u for u in unique):
            unique.append(t)
    part, flat, plain = [], [], []
    for t in kept:
        shape = _shape_of(t)
        if isinstance(t, HeTensor):
            k = next(i for i, u in enumerate(unique) if u is t)
            part.append(np.full(shape, k, dtype=np.int64))
            flat.append(np.arange(math.prod(shape), dtype=np.int64).reshape(shape))
            plain.append(np.zeros(shape))
        else:
            part.append(np.full(shape, -1, dtype=np.int64))
            flat.append(np.zeros(shape, dtype=np.int64))
            plain.append(public(torch.as_tensor(t)).to(FLOAT).numpy())
    parts = np.concatenate(part, axis=dim)
    sources = Sources(
        unique, parts, np.concatenate(flat, axis=dim), np.concatenate(plain, axis=dim)
    )
    return place(sources)


def _cat(call: Call) -> Any:
    dim = int(call.args[1]) if len(call.args) > 1 else int(call.kwargs.get("dim", 0))
    return join(list(call.args[0]), dim)


def _stack(call: Call) -> Any:
    dim = int(call.args[1]) if len(call.args) > 1 else int(call.kwargs.get("dim", 0))
    tensors = list(call.args[0])
    dim %= len(_shape_of(tensors[0])) + 1
    lifted = [
        t.unsqueeze(dim) if isinstance(t, HeTensor) else torch.as_tensor(t).unsqueeze(dim)
        for t in tensors
    ]
    return join(lifted, dim)


def _repeat(call: Call) -> Any:
    x = _source(call)
    repeats = [int(r) for r in call.args[1]]
    flat = _flat(x)
    while flat.dim() < len(repeats):
        flat = flat.unsqueeze(0)
    return _take(x, flat.repeat(repeats))


# --- views and casts ------------------------------------------------------------------------
def reshaped(x: HeTensor, shape: list[int]) -> HeTensor:
    """x viewed as `shape`: bookkeeping where the layout allows (`HeTensor.reshape`), else
    the entries placed afresh (`place`: a view that merges slot and ciphertext axes)."""
    try:
        return x.reshape(shape)
    except LayoutError:
        return _take(x, _flat(x).reshape(shape))


def _flatten(call: Call) -> Any:
    x = _source(call)
    start = int(call.args[1]) if len(call.args) > 1 else 0
    end = int(call.args[2]) if len(call.args) > 2 else -1
    if x.dim() == 0:
        return x.reshape([1])
    start, end = start % x.dim(), end % x.dim()
    shape = [*x.shape[:start], math.prod(x.shape[start : end + 1]), *x.shape[end + 1 :]]
    return reshaped(x, [int(n) for n in shape])


def _unflatten(call: Call) -> Any:
    x = _source(call)
    dim, sizes = int(call.args[1]) % x.dim(), [int(n) for n in call.args[2]]
    if -1 in sizes:
        known = math.prod(n for n in sizes if n != -1)
        sizes[sizes.index(-1)] = int(x.shape[dim]) // known
    return reshaped(x, [int(n) for n in (*x.shape[:dim], *sizes, *x.shape[dim + 1 :])])


def _to(call: Call) -> Any:
    x = call.args[0]
    dtypes = [v for v in (*call.args[1:], *call.kwargs.values()) if isinstance(v, torch.dtype)]
    if any(not d.is_floating_point for d in dtypes):
        return _refuse(call, f"to {dtypes[0]} of an encrypted tensor (a cast that rounds)")
    return x


# --- create --------------------------------------------------------------------------------
def _create(call: Call) -> Any:
    t, x = call.target, call.args[0]
    shape = tuple(int(n) for n in x.shape)
    if t is aten.new_ones.default:
        return torch.ones([int(n) for n in call.args[1]], dtype=FLOAT)
    if t is aten.new_zeros.default:
        return torch.zeros([int(n) for n in call.args[1]], dtype=FLOAT)
    if t is aten.empty_like.default:
        return torch.zeros(shape, dtype=FLOAT)
    value = call.args[1]
    if isinstance(value, HeTensor):
        return _refuse(call, "with an encrypted fill value")
    return torch.full(shape, float(torch.as_tensor(value)), dtype=FLOAT)


# --- cumsum, baddbmm ------------------------------------------------------------------------
def running_sum(x: HeTensor, dim: int) -> HeTensor:
    """cumsum along `dim` (module docstring)."""
    dim %= x.dim()
    n = int(x.shape[dim])
    if x.layout.strides[dim] is None:
        axis = x.layout.ct_axes.index(dim)
        moved = np.moveaxis(x.grid, axis, -1)
        out = np.empty(moved.shape, dtype=object)
        for g in np.ndindex(moved.shape[:-1]):
            total = moved[(*g, 0)]
            out[(*g, 0)] = total
            for i in range(1, n):
                total = x.engine.add(total, moved[(*g, i)])
                out[(*g, i)] = total
        return x._new(x.layout, np.moveaxis(out, -1, axis), x.clean)
    stride = int(x.layout.strides[dim])
    coordinate = x.layout.slot_axes.index(dim)
    positions = x.layout.positions()
    index = np.indices(positions.shape)[coordinate].reshape(-1)
    slots = positions.reshape(-1)
    out = x
    what = f"the running sum over axis {dim} of a {tuple(x.shape)} tensor"
    step = 1
    while step < n:
        mask = np.zeros(x.engine.slots)
        mask[slots[index >= step]] = 1.0
        out.ensure_level(1)
        shifted = np.empty(out.grid.shape, dtype=object)
        for g in np.ndindex(out.grid.shape):
            rotated = checked_rotate(x.engine, out.grid[g], -stride * step, what)
            shifted[g] = x.engine.mul_plain(rotated, mask)
        out = out + out._new(out.layout, shifted, True)
        step *= 2
    return out


def _cumsum(call: Call) -> Any:
    x = _source(call)
    return running_sum(x, int(call.args[1]))


def _baddbmm(call: Call) -> Any:
    z, x, y = call.args[0], call.args[1], call.args[2]
    beta = float(call.kwargs.get("beta", 1))
    alpha = float(call.kwargs.get("alpha", 1))
    if not isinstance(x, HeTensor):
        return _refuse(call, "with a plain left operand of the product")
    product = matmul(x, y)
    if alpha != 1.0:
        product = product * alpha
    if beta == 0.0:
        return product
    return _add(product, public(z) * beta if beta != 1.0 else public(z))


# --- convolution ----------------------------------------------------------------------------
def _convolution(call: Call) -> Any:
    x, weight = call.args[0], call.args[1]
    bias = call.args[2] if len(call.args) > 2 else None
    if isinstance(weight, HeTensor) or isinstance(bias, HeTensor):
        return _refuse(call, "with an encrypted weight")
    if not isinstance(x, PatchImage):
        return _refuse(call, CONVOLUTION_REFUSAL)
    op = "aten.convolution" if call.target is aten.convolution.default else "aten.conv2d"
    conv = PatchConv.of_call(op, tuple(call.args), tuple(weight.shape))
    if conv != x.conv:
        return _refuse(call, f"of geometry {conv} on an image unfolded for {x.conv}")
    position = 8 if op == "aten.convolution" else 6
    groups = int(call.args[position]) if len(call.args) > position else 1
    w = convolution_weight(weight, int(x.shape[1]), groups)
    out = linear(x.patches, w)
    if bias is not None:
        out = bias_on_used_slots(out, np.asarray(public(torch.as_tensor(bias)).numpy()))
    return out.permute([0, 3, 1, 2])


CONVOLUTION_REFUSAL = (
    "of a computed activation: HE runs a convolution only on the client's own image (the "
    "client sends it unfolded into patches, and the convolution is one linear layer)"
)


def bias_on_used_slots(x: HeTensor, bias: np.ndarray) -> HeTensor:
    """x + bias over x's last (ciphertext) axis, added on the slots x uses only, so a clean
    x stays clean (a plain scalar would reach every slot)."""
    positions = x.layout.positions().reshape(-1)
    grid = np.empty(x.grid.shape, dtype=object)
    for g in np.ndindex(x.grid.shape):
        vector = np.zeros(x.engine.slots)
        vector[positions] = float(bias[g[-1]])
        grid[g] = x.engine.add_plain(x.grid[g], vector)
    return x._new(x.layout, grid, x.clean)


def check_structure(graph: Graph) -> None:
    """Refuse, before any work, a convolution whose input depends on the client's data but
    is not the client's image sent as patches (`patches.image_inputs`)."""
    from secinfer.core.inspection import input_dependent

    images = image_inputs(graph)
    secret = input_dependent(graph)
    for node in graph.calls:
        if node.op not in CONVOLUTIONS:
            continue
        source = graph.fx_nodes[node.name].args[0]
        if source.name in secret and _image_of(source) not in images:
            where = f" at {node.module}" if node.module else ""
            raise UnsupportedHeOp(f"{node.op} (node {node.name}){where} {CONVOLUTION_REFUSAL}")


def _image_of(node: torch.fx.Node) -> str:
    """The placeholder `node` copies (through copies and casts), or its own name."""
    from secinfer.backends.he.patches import PASS_THROUGH
    from secinfer.core.graph import op_name

    while node.op == "call_function" and op_name(node.target) in PASS_THROUGH and node.args:
        node = node.args[0]
    return node.name


# --- token ids -----------------------------------------------------------------------------
def _views(shape: Kernel) -> Kernel:
    """view/reshape/unsqueeze: of token ids (`core.token_ids.PASS_THROUGH`) sent one-hot or
    embedded (`inputs.server_input` marks them `token_rows`), on the ids' axes with the
    trailing vocabulary or embedding axis kept last; of other tensors, `shape`, and where
    that finds no layout for a view, the entries placed afresh (`reshaped`)."""

    def run(call: Call) -> Any:
        x = call.args[0]
        if not (isinstance(x, HeTensor) and getattr(x, "token_rows", False)):
            try:
                return shape(call)
            except LayoutError:
                if call.target is aten.unsqueeze.default or not isinstance(x, HeTensor):
                    raise
                sizes = [int(n) for n in call.args[1]]
                if -1 in sizes:
                    known = math.prod(n for n in sizes if n != -1)
                    sizes[sizes.index(-1)] = math.prod(x.shape) // known
                return reshaped(x, sizes)
        ids = [int(n) for n in x.shape[:-1]]
        if call.target is aten.unsqueeze.default:
            out = x.unsqueeze(int(call.args[1]) % (len(ids) + 1))
        else:
            sizes = [int(n) for n in call.args[1]]
            if -1 in sizes:
                sizes[sizes.index(-1)] = math.prod(ids) // math.prod(n for n in sizes if n != -1)
            out = x.reshape([*sizes, int(x.shape[-1])])
        out.token_rows = True  # type: ignore[attr-defined]
        out.embedded = getattr(x, "embedded", False)  # type: ignore[attr-defined]
        return out

    return run


# --- registration ---------------------------------------------------------------------------
def structural_kernels(arith: Kernel, shape: Kernel) -> dict[str, Kernel]:
    """The kernels by registry op name (module docstring); `arith` and `shape` are the he
    kernels that add/sub/rsub and views of tensors other than token ids fall back to."""
    public_arith = _with_public_operands(arith)
    views = _views(shape)
    return {
        "aten.view": views,
        "aten.reshape": views,
        "aten._unsafe_view": views,
        "aten.unsqueeze": views,
        "aten.add": public_arith,
        "aten.sub": public_arith,
        "aten.rsub": public_arith,
        "aten.where": _where,
        "aten.masked_fill": _masked_fill,
        "aten.index": _index,
        "aten.gather": _gather,
        "aten.index_select": _index_select,
        "aten.slice": _slice,
        "aten.narrow": _narrow,
        "aten.split": _split,
        "aten.split_with_sizes": _split,
        "aten.chunk": _chunk,
        "aten.unbind": _unbind,
        "getitem": _getitem,
        "aten.cat": _cat,
        "aten.stack": _stack,
        "aten.repeat": _repeat,
        "aten.flatten": _flatten,
        "aten.unflatten": _unflatten,
        "aten.to": _to,
        "aten.new_ones": _create,
        "aten.new_zeros": _create,
        "aten.empty_like": _create,
        "aten.fill": _create,
        "aten.cumsum": _cumsum,
        "aten.baddbmm": _baddbmm,
        "aten.convolution": _convolution,
        "aten.conv2d": _convolution,
    }


__all__ = [
    "check_structure",
    "join",
    "public",
    "relayout",
    "running_sum",
    "select_by_mask",
    "slice_of",
    "structural_kernels",
]
