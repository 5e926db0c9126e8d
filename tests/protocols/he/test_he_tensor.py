"""Encrypted tensors on real TenSEAL CKKS: `Layout`, `Codec`, `HeTensor`, `linear`, `matmul`.

Context: N = 8192 (4096 slots), chain [60, 40, 40, 60] (2 levels), scale 2^40, all Galois
keys. Refreshes go through `MaskingRefresher` with an in-process client (decrypt, keep the
layout's slots, zero the rest, re-encrypt with the `Codec`): the real masking code path
without sockets. Every result is decrypted and compared with numpy in float64.

- Layout bookkeeping (no ciphertexts): `rows` strides (powers of two, `inner` room),
  positions, span, permute / unsqueeze / select / reshape (splitting and merging ciphertext
  axes, nested slot axes; slot and ciphertext axes mixed raise `LayoutError`), dict round trip.
- Codec: encrypt / decrypt round trips for several layouts, unused slots decrypt to zero.
- HeTensor elementwise ops with plain scalars, plain arrays (broadcast), encrypted tensors
  (broadcast along ciphertext axes); reductions over ciphertext and slot axes (a slot axis of
  size 3 needs masking when the tensor is not clean); shape operations against numpy.
- `merge` and `linear` (merge path on a (B, 16, 4) tensor with `inner=16`, zero weight rows).
- Attention: q k^T and weights v, both encrypted, with rotation counts against `replicate`'s
  formula: per replicated entry j one rotation to the front (none for j = 0) plus log2(n').
- Levels: a product chain refreshes automatically (counted); without a refresher it raises
  `DepthExhausted` naming the levels; the scale drift of the chain is below 1e-6.

Tolerances (absolute, inputs uniform in [-1, 1]); measured maxima in brackets (worst over
12 fresh key sets where noise depends on the keys): fresh encryption 1e-6 [5e-10];
everything up to two product levels 1e-5 [additions 5e-10, ct-pt products 4e-9, ct-ct
products 1e-7 to 2e-7, x^3 and x^4 7e-7, slot sums 1.5e-6, attention 2.4e-6, x^7 through
two refreshes 2.3e-6]. A rotation adds key-switching noise of 1e-7 to 6e-7, so the merge
path (up to 15 rotations summed per output, then a 4-term product) gets 5e-5 [merge
7.7e-6, linear after merge 1.2e-5].

The tests at the end of the file are regressions of bugs found while writing them (fixed).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

ts = pytest.importorskip("tenseal")

from protocols.he.codec import Codec  # noqa: E402
from protocols.he.engine import Engine, LevelError  # noqa: E402
from protocols.he.layout import Layout, LayoutError, next_power_of_two  # noqa: E402
from protocols.he.products import linear, matmul  # noqa: E402
from protocols.he.refresh import MaskingRefresher  # noqa: E402
from protocols.he.tensor import DepthExhausted, HeTensor, power  # noqa: E402

SLOTS = 4096
TOP = 2  # levels of the chain [60, 40, 40, 60]
MASK_BITS = 17
ATOL_FRESH = 1e-6
ATOL = 1e-5
ATOL_MERGE = 5e-5


@pytest.fixture(scope="module")
def codec(ctx: ts.Context) -> Codec:
    return Codec(ctx)


def client_transport(codec: Codec, seen: list | None = None):
    """The client's side of a refresh, in process: decrypt, keep the layout's slots, zero
    the others, encrypt afresh at the top level."""

    def transport(cts, layout):
        used = layout.positions().reshape(-1)
        fresh = []
        for ct in cts:
            slots = codec.decrypt_slots(ct)
            if seen is not None:
                seen.append(slots)
            values = np.zeros(codec.slots)
            values[used] = slots[used]
            fresh.append(codec.encrypt_slots(values))
        return fresh

    return transport


class Kit:
    """A fresh engine (own cost counters), the codec and a masking refresher."""

    def __init__(self, ctx: ts.Context, codec: Codec) -> None:
        self.engine = Engine(ctx)
        self.codec = codec
        self.refresher = MaskingRefresher(self.engine, client_transport(codec), MASK_BITS)

    def enc(self, values: np.ndarray, layout: Layout, *, refresh: bool = True) -> HeTensor:
        grid = self.codec.encrypt(values, layout)
        refresher = self.refresher if refresh else None
        return HeTensor(self.engine, layout, grid, clean=True, refresher=refresher)

    def dec(self, t: HeTensor) -> np.ndarray:
        return self.codec.decrypt(t.grid, t.layout)

    def slots(self, t: HeTensor) -> list[np.ndarray]:
        return [self.codec.decrypt_slots(ct) for ct in t.grid.flat]

    @property
    def rotations(self) -> int:
        return self.engine.cost.rotations


@pytest.fixture
def kit(ctx: ts.Context, codec: Codec) -> Kit:
    return Kit(ctx, codec)


def _close(got: np.ndarray, want: np.ndarray, atol: float = ATOL) -> None:
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)


SHAPE = (2, 3, 4)  # (batch, tokens) in slots (strides 4, 1), features as ciphertexts
LAYOUT = Layout.rows(SHAPE, 2)


def _uniform(seed: int, shape: tuple[int, ...], lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(lo, hi, shape)


# --- Layout --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "slot_axes", "inner", "strides"),
    [
        ((5,), 1, 1, (1,)),
        ((2, 3, 5), 2, 1, (4, 1, None)),
        ((2, 3, 5), 2, 8, (32, 8, None)),
        ((2, 3, 5), 2, 6, (32, 8, None)),  # inner rounded up to a power of two
        ((3, 5, 2), 3, 1, (16, 2, 1)),
        ((3, 4), 0, 1, (None, None)),
        ((1, 3, 4), 2, 1, (None, 1, None)),  # size-1 axes are ciphertext axes
        ((2, 16, 4), 1, 16, (16, None, None)),
    ],
)
def test_rows_strides(shape, slot_axes, inner, strides) -> None:
    layout = Layout.rows(shape, slot_axes, inner=inner)
    assert layout.strides == strides
    assert layout.offset == 0
    for t in strides:
        assert t is None or t == next_power_of_two(t)


def test_positions_span_and_axes() -> None:
    layout = Layout.rows((2, 3, 5), 2)
    assert layout.slot_axes == (0, 1)
    assert layout.ct_axes == (2,)
    assert layout.grid_shape == (5,)
    np.testing.assert_array_equal(layout.positions(), [[0, 1, 2], [4, 5, 6]])
    assert layout.span() == 7
    shifted = Layout((3, 2), (2, None), 5)
    np.testing.assert_array_equal(shifted.positions(), [5, 7, 9])
    assert shifted.span() == 10
    assert Layout((2, 3), (None, None), 3).span() == 4
    assert Layout((2, 3), (None, None), 3).positions().shape == ()
    roomy = Layout.rows((2, 3, 5), 2, inner=8)
    np.testing.assert_array_equal(roomy.positions(), [[0, 8, 16], [32, 40, 48]])
    assert roomy.span() == 49
    assert Layout((1, 3), (7, 1)).strides == (None, 1)
    with pytest.raises(ValueError, match="strides"):
        Layout((2, 3), (1,))


def test_permute_unsqueeze_select() -> None:
    layout = Layout.rows((2, 3, 5), 2)
    permuted = layout.permute([2, 0, 1])
    assert permuted == Layout((5, 2, 3), (None, 4, 1))
    np.testing.assert_array_equal(permuted.positions(), layout.positions())
    assert layout.unsqueeze(1) == Layout((2, 1, 3, 5), (4, None, 1, None))
    assert layout.unsqueeze(-1) == Layout((2, 3, 5, 1), (4, 1, None, None))
    assert layout.slot_key() == (0, ((0, 4), (1, 1)))
    assert layout.unsqueeze(0).slot_key() == (0, ((1, 4), (2, 1)))
    # a slot axis moves the offset, a ciphertext axis picks a grid index
    assert layout.select(1, 2) == (Layout((2, 5), (4, None), 2), None)
    assert layout.select(0, -1) == (Layout((3, 5), (1, None), 4), None)
    assert layout.select(2, 3) == (Layout((2, 3), (4, 1), 0), 3)
    assert layout.select(-1, -1) == (Layout((2, 3), (4, 1), 0), 4)


@pytest.mark.parametrize(
    ("layout", "shape", "strides"),
    [
        # split and merge ciphertext axes
        (Layout.rows((2, 3, 6), 2), (2, 3, 2, 3), (4, 1, None, None)),
        (Layout((2, 4, 3), (1, None, None)), (2, 12), (1, None)),
        (Layout((2, 3, 2, 3), (4, 1, None, None)), (2, 3, 6), (4, 1, None)),
        # split a slot axis; merge slot axes whose strides nest
        (Layout.rows((8, 5), 1), (2, 4, 5), (4, 1, None)),
        (Layout.rows((2, 4, 5), 2), (8, 5), (1, None)),
        (Layout.rows((2, 4, 5), 2, inner=4), (8, 5), (4, None)),
        # size-1 axes
        (Layout.rows((2, 3, 5), 2), (2, 3, 1, 5), (4, 1, None, None)),
        (Layout.rows((2, 3, 5), 2), (1, 2, 3, 5), (None, 4, 1, None)),
        (Layout.rows((2, 3, 5), 2).unsqueeze(1), (2, 3, 5), (4, 1, None)),
    ],
)
def test_reshape_bookkeeping(layout: Layout, shape, strides) -> None:
    out = layout.reshape(shape)
    assert out.shape == shape
    assert out.strides == strides
    assert out.offset == layout.offset
    # the same entries sit in the same slots, in row-major order
    if layout.slot_axes:
        old = np.broadcast_to(
            np.expand_dims(
                layout.positions(), [a for a in range(len(layout.shape)) if a in layout.ct_axes]
            ),
            layout.shape,
        ).reshape(-1)
        new = np.broadcast_to(
            np.expand_dims(out.positions(), [a for a in range(len(shape)) if a in out.ct_axes]),
            shape,
        ).reshape(-1)
        np.testing.assert_array_equal(old, new)


@pytest.mark.parametrize(
    ("layout", "shape", "match"),
    [
        (Layout.rows((2, 3, 5), 2), (2, 15), "merges slot and ciphertext"),
        (Layout.rows((2, 3, 5), 2), (6, 5), "do not nest"),  # rows padded 3 -> 4
        (Layout.rows((2, 4), 2).permute([1, 0]), (8,), "do not nest"),
        (Layout.rows((2, 3, 5), 2), (2, 3, 4), "sizes differ"),
    ],
)
def test_reshape_refusals(layout: Layout, shape, match: str) -> None:
    with pytest.raises(LayoutError, match=match):
        layout.reshape(shape)


@pytest.mark.parametrize(
    "layout",
    [
        Layout.rows((2, 3, 5), 2),
        Layout.rows((2, 16, 4), 1, inner=16),
        Layout((3, 2), (2, None), 5),
        Layout((2, 3), (None, None), 0),
        Layout.rows((1, 7, 3), 2),
    ],
)
def test_layout_dict_round_trip(layout: Layout) -> None:
    data = json.loads(json.dumps(layout.to_dict()))
    assert Layout.from_dict(data) == layout


def test_layout_from_dict_refuses_other_keys() -> None:
    with pytest.raises(ValueError, match="keys"):
        Layout.from_dict({"shape": [2], "strides": [1]})
    with pytest.raises(ValueError, match="keys"):
        Layout.from_dict([2, 1, 0])


# --- Codec ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "layout",
    [
        Layout.rows((5,), 1),
        Layout.rows(SHAPE, 2),
        Layout.rows(SHAPE, 1, inner=4),
        Layout.rows((3, 4), 0),
        Layout((3, 2), (2, None), 5),
        Layout.rows(SHAPE, 2).permute([2, 0, 1]),
        Layout.rows((1, 4, 2), 2),
        Layout.rows((3000,), 1),
    ],
)
def test_codec_round_trip(kit: Kit, layout: Layout) -> None:
    x = _uniform(0, layout.shape)
    grid = kit.codec.encrypt(x, layout)
    assert grid.shape == layout.grid_shape
    assert all(kit.engine.level(ct) == TOP for ct in grid.flat)
    _close(kit.codec.decrypt(grid, layout), x, ATOL_FRESH)
    # unused slots are encrypted zeros (a fresh tensor is clean)
    unused = np.ones(SLOTS, dtype=bool)
    unused[layout.positions().reshape(-1)] = False
    for ct in grid.flat:
        assert np.abs(kit.codec.decrypt_slots(ct)[unused]).max(initial=0.0) < ATOL_FRESH


def test_codec_refusals(ctx: ts.Context, codec: Codec) -> None:
    with pytest.raises(ValueError, match="shape"):
        codec.encrypt(np.zeros((2, 3)), Layout.rows((3, 2), 1))
    with pytest.raises(ValueError, match="slots"):
        codec.encrypt(np.zeros(3), Layout((3,), (2048,)))
    public = ctx.copy()
    public.make_context_public()
    with pytest.raises(ValueError, match="private"):
        Codec(public)


# --- elementwise ---------------------------------------------------------------------------
W4 = _uniform(1, (4,))
P34 = _uniform(2, (3, 4))
P31 = _uniform(3, (3, 1))
P234 = _uniform(4, SHAPE)
P5234 = _uniform(5, (5, *SHAPE))

# name: (encrypted op, numpy op, levels used)
ELEMENTWISE = {
    "add scalar": (lambda x, y: x + 1.5, lambda x, y: x + 1.5, 0),
    "radd scalar": (lambda x, y: 1.5 + x, lambda x, y: 1.5 + x, 0),
    "sub scalar": (lambda x, y: x - 0.25, lambda x, y: x - 0.25, 0),
    "rsub scalar": (lambda x, y: 1.0 - x, lambda x, y: 1.0 - x, 0),
    "neg": (lambda x, y: -x, lambda x, y: -x, 0),
    "mul scalar": (lambda x, y: x * 0.5, lambda x, y: x * 0.5, 1),
    "rmul scalar": (lambda x, y: 3.0 * x, lambda x, y: 3.0 * x, 1),
    "mul minus one": (lambda x, y: x * -1.0, lambda x, y: -x, 0),
    "div scalar": (lambda x, y: x / 4.0, lambda x, y: x / 4.0, 1),
    "mul row (ct axis)": (lambda x, y: x * W4, lambda x, y: x * W4, 1),
    "mul torch row": (lambda x, y: x * torch.tensor(W4), lambda x, y: x * W4, 1),
    "add (tokens, features)": (lambda x, y: x + P34, lambda x, y: x + P34, 0),
    "mul column (slot axis)": (lambda x, y: x * P31, lambda x, y: x * P31, 1),
    "mul full": (lambda x, y: x * P234, lambda x, y: x * P234, 1),
    "sub new leading axis": (lambda x, y: x - P5234, lambda x, y: x - P5234, 0),
    "div plain": (lambda x, y: x / (2.0 + W4), lambda x, y: x / (2.0 + W4), 1),
    "add enc": (lambda x, y: x + y, lambda x, y: x + y, 0),
    "sub enc": (lambda x, y: x - y, lambda x, y: x - y, 0),
    "mul enc": (lambda x, y: x * y, lambda x, y: x * y, 1),
    "mul enc, levels differ": (lambda x, y: (x * 0.5) * y, lambda x, y: 0.5 * x * y, 2),
    "center (ct broadcast)": (
        lambda x, y: x - x.mean(-1, keepdim=True),
        lambda x, y: x - x.mean(-1, keepdims=True),
        1,
    ),
    "mul by a ct-axis sum": (
        lambda x, y: x * y.sum(-1, keepdim=True),
        lambda x, y: x * y.sum(-1, keepdims=True),
        1,
    ),
    "square": (lambda x, y: x.square(), lambda x, y: x * x, 1),
    "mul self": (lambda x, y: x * x, lambda x, y: x * x, 1),
    "power 4": (lambda x, y: power(x, 4), lambda x, y: x**4, 2),
    "pow 3": (lambda x, y: x**3, lambda x, y: x**3, 2),
    "pow 1": (lambda x, y: x**1, lambda x, y: x, 0),
    "mixed": (lambda x, y: 2.0 * (x * y) + x - 1.0, lambda x, y: 2 * x * y + x - 1, 2),
}


@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise_matches_numpy(kit: Kit, name: str) -> None:
    op, want, levels = ELEMENTWISE[name]
    x, y = _uniform(10, SHAPE), _uniform(11, SHAPE)
    tx, ty = kit.enc(x, LAYOUT, refresh=False), kit.enc(y, LAYOUT, refresh=False)
    out = op(tx, ty)
    expected = want(x, y)
    assert tuple(out.shape) == expected.shape
    assert out.level == TOP - levels
    _close(kit.dec(out), expected)
    _close(kit.dec(tx), x, ATOL_FRESH)  # operands untouched


def test_clean_flags(kit: Kit) -> None:
    """Junk stays zero under products and plain vectors; a plain scalar added to every slot
    makes it nonzero."""
    x = kit.enc(_uniform(12, SHAPE), LAYOUT)
    assert (x * 0.5).clean and (x * x).clean and (x + P34).clean and (x + x).clean
    assert not (x + 1.0).clean
    assert not (x + 1.0 + x).clean
    assert ((x + 1.0) * x).clean  # one clean factor zeroes the junk
    assert not (x + W4).clean  # constant per ciphertext: added to every slot
    junk = np.ones(SLOTS, dtype=bool)
    junk[LAYOUT.positions().reshape(-1)] = False
    for slots in kit.slots(x * x - x * P34 + (x + 1.0) * x):
        assert np.abs(slots[junk]).max() < ATOL
    assert np.abs(kit.slots(x + W4)[0][junk] - W4[0]).max() < ATOL


# --- reductions ----------------------------------------------------------------------------
REDUCTIONS = {
    "sum features (ct)": (lambda t: t.sum(-1), lambda a: a.sum(-1), 0),
    "sum features keepdim": (
        lambda t: t.sum(-1, keepdim=True),
        lambda a: a.sum(-1, keepdims=True),
        0,
    ),
    "sum tokens (slot, size 3, clean)": (lambda t: t.sum(1), lambda a: a.sum(1), 0),
    "sum batch (slot, size 2)": (lambda t: t.sum(0), lambda a: a.sum(0), 0),
    "sum tokens and features": (lambda t: t.sum((1, 2)), lambda a: a.sum((1, 2)), 0),
    "sum batch and tokens": (lambda t: t.sum([0, 1]), lambda a: a.sum((0, 1)), 0),
    "sum tokens keepdim": (lambda t: t.sum(1, keepdim=True), lambda a: a.sum(1, keepdims=True), 0),
    "mean features": (lambda t: t.mean(-1), lambda a: a.mean(-1), 1),
    "mean tokens": (lambda t: t.mean(1), lambda a: a.mean(1), 1),
    "mean batch and tokens keepdim": (
        lambda t: t.mean((0, 1), keepdim=True),
        lambda a: a.mean((0, 1), keepdims=True),
        1,
    ),
}


@pytest.mark.parametrize("name", list(REDUCTIONS))
def test_reductions_match_numpy(kit: Kit, name: str) -> None:
    op, want, levels = REDUCTIONS[name]
    x = _uniform(20, SHAPE)
    out = op(kit.enc(x, LAYOUT, refresh=False))
    assert out.level == TOP - levels
    _close(kit.dec(out), want(x))


def test_slot_sum_of_size_three_masks_junk_first(kit: Kit) -> None:
    """x + 1 has 1 in the junk slot of every 4-slot row: summing the 3 tokens masks it first
    (one level); a clean tensor is summed without the mask."""
    x = _uniform(21, SHAPE)
    t = kit.enc(x, LAYOUT, refresh=False) + 1.0
    assert not t.clean
    before = kit.rotations
    out = t.sum(1)
    assert kit.rotations - before == 4 * 2  # 4 ciphertexts, log2(4) rotations each
    assert out.level == TOP - 1
    _close(kit.dec(out), (x + 1.0).sum(1))
    _close(kit.dec(t.mean(1)), (x + 1.0).mean(1))
    clean = kit.enc(x, LAYOUT, refresh=False)
    assert clean.sum(1).level == TOP
    # a power-of-two slot axis needs no mask even when the tensor is not clean
    assert t.sum(0).level == TOP
    _close(kit.dec(t.sum(0)), (x + 1.0).sum(0))


def test_broadcast_along_a_slot_axis_spreads_under_any_policy(kit: Kit) -> None:
    """A size-1 axis against a slot axis (a row's sum against the row, one token against its
    context) is spread server-side (log2 of the axis' slots in rotations), whatever the
    packing policy; a mismatch of which axes sit in slots is still refused."""
    values = _uniform(22, SHAPE)
    x = kit.enc(values, LAYOUT)
    before = kit.rotations
    _close(kit.dec(x - x.sum(1, keepdim=True)), values - values.sum(1, keepdims=True))
    assert kit.rotations > before
    other = kit.enc(_uniform(23, (2, 4, 3)), Layout.rows((2, 4, 3), 1))
    with pytest.raises(LayoutError):
        x.transpose(1, 2) + other  # tokens in slots in one, features in the other


# --- shape operations ----------------------------------------------------------------------
SHAPE_OPS = {
    "reshape split features": (lambda t: t.reshape((2, 3, 2, 2)), lambda a: a.reshape(2, 3, 2, 2)),
    "view with -1": (lambda t: t.view((2, 3, -1, 2)), lambda a: a.reshape(2, 3, -1, 2)),
    "transpose slot and ct": (lambda t: t.transpose(0, 2), lambda a: a.transpose(2, 1, 0)),
    "transpose last two": (lambda t: t.transpose(-1, -2), lambda a: a.transpose(0, 2, 1)),
    "permute": (lambda t: t.permute([2, 0, 1]), lambda a: a.transpose(2, 0, 1)),
    "select slot": (lambda t: t.select(1, 2), lambda a: a[:, 2]),
    "select ct": (lambda t: t.select(2, -1), lambda a: a[:, :, -1]),
    "select batch": (lambda t: t.select(0, 1), lambda a: a[1]),
    "slice ct": (lambda t: t.slice(2, 1, 3), lambda a: a[:, :, 1:3]),
    "slice ct step": (lambda t: t.slice(2, 0, 4, 2), lambda a: a[:, :, 0:4:2]),
    "slice ct to one": (lambda t: t.slice(-1, 3, 4), lambda a: a[:, :, 3:4]),
    "slice slot to one": (lambda t: t.slice(1, 1, 2), lambda a: a[:, 1:2]),
    "slice everything": (lambda t: t.slice(1, 0, 3), lambda a: a),
    "unsqueeze front": (lambda t: t.unsqueeze(0), lambda a: a[None]),
    "unsqueeze back": (lambda t: t.unsqueeze(-1), lambda a: a[..., None]),
    "squeeze": (lambda t: t.unsqueeze(1).squeeze(1), lambda a: a),
    "squeeze all": (lambda t: t.unsqueeze(0).unsqueeze(2).squeeze(), lambda a: a),
    "squeeze non-1 is a no-op": (lambda t: t.squeeze(0), lambda a: a),
    "expand ct": (
        lambda t: t.sum(-1, keepdim=True).expand([2, 3, 4]),
        lambda a: np.broadcast_to(a.sum(-1, keepdims=True), (2, 3, 4)),
    ),
    "expand new axis": (
        lambda t: t.unsqueeze(0).expand([3, -1, -1, -1]),
        lambda a: np.broadcast_to(a, (3, *SHAPE)),
    ),
    "chain": (
        lambda t: t.reshape((2, 3, 2, 2)).transpose(1, 2).select(-1, 0),
        lambda a: a.reshape(2, 3, 2, 2).transpose(0, 2, 1, 3)[..., 0],
    ),
}


@pytest.mark.parametrize("name", list(SHAPE_OPS))
def test_shape_ops_match_numpy(kit: Kit, name: str) -> None:
    op, want = SHAPE_OPS[name]
    x, y = _uniform(30, SHAPE), _uniform(31, SHAPE)
    tx, ty = kit.enc(x, LAYOUT), kit.enc(y, LAYOUT)
    before = kit.engine.cost.ct_ct_mults + kit.engine.cost.ct_pt_mults
    out = op(tx)
    expected = want(x)
    assert tuple(out.shape) == tuple(out.size()) == expected.shape
    assert out.dim() == out.ndim == expected.ndim
    assert kit.engine.cost.ct_ct_mults + kit.engine.cost.ct_pt_mults == before
    _close(kit.dec(out), expected)
    # the view composes with arithmetic on another tensor viewed alike
    _close(kit.dec(out * 2.0 - op(ty)), 2.0 * expected - want(y))


def test_shape_op_refusals(kit: Kit) -> None:
    x = kit.enc(_uniform(32, SHAPE), LAYOUT)
    with pytest.raises(LayoutError, match="slot axis"):
        x.slice(1, 0, 2)
    with pytest.raises(LayoutError, match="merges slot and ciphertext"):
        x.reshape((2, 12))
    with pytest.raises(TypeError, match="reciprocal"):
        x / x
    with pytest.raises(ValueError, match="positive integer"):
        power(x, 0)


def test_reshape_merges_nested_slot_axes(kit: Kit) -> None:
    x = _uniform(33, (2, 4, 3))
    t = kit.enc(x, Layout.rows((2, 4, 3), 2)).reshape((8, 3))
    assert t.layout.strides == (1, None)
    _close(kit.dec(t), x.reshape(8, 3))
    _close(kit.dec(t.sum(0)), x.reshape(8, 3).sum(0))
    back = t.reshape((2, 4, 3))
    assert back.layout == Layout.rows((2, 4, 3), 2)


# --- merge and linear ----------------------------------------------------------------------
MERGE_SHAPE = (2, 16, 4)
MERGE_LAYOUT = Layout.rows(MERGE_SHAPE, 1, inner=16)


def test_merge_moves_tokens_into_slots(kit: Kit) -> None:
    x = _uniform(40, MERGE_SHAPE)
    t = kit.enc(x, MERGE_LAYOUT)
    before = kit.rotations
    merged = t.merge(1)
    assert kit.rotations - before == 4 * 15  # one rotation per moved ciphertext
    assert merged.layout == Layout(MERGE_SHAPE, (16, 1, None))
    assert merged.grid.shape == (4,)
    assert merged.clean and merged.level == TOP
    _close(kit.dec(merged), x, ATOL_MERGE)
    dirty = (t + 1.0).merge(1)  # junk must be masked first: one level
    assert dirty.level == TOP - 1
    _close(kit.dec(dirty), x + 1.0, ATOL_MERGE)
    assert merged.merge(1) is merged  # already in slots
    with pytest.raises(LayoutError, match="no room"):
        kit.enc(_uniform(41, SHAPE), LAYOUT).merge(2)


def test_linear_merge_path_with_zero_rows(kit: Kit) -> None:
    x = _uniform(42, MERGE_SHAPE)
    w = _uniform(43, (3, 4))
    w[1] = 0.0
    b = _uniform(44, (3,))
    t = kit.enc(x, MERGE_LAYOUT)
    before = dict(rot=kit.rotations, pt=kit.engine.cost.ct_pt_mults)
    out = linear(t, w, b)
    assert kit.rotations - before["rot"] == 4 * 15  # the merge; the products rotate nothing
    assert kit.engine.cost.ct_pt_mults - before["pt"] == 2 * 4  # zero row: no product
    assert out.layout == Layout((2, 16, 3), (16, 1, None))  # tokens now in slots
    assert out.grid.shape == (3,)
    assert out.level == TOP - 1
    got = kit.dec(out)
    _close(got, x @ w.T + b, ATOL_MERGE)
    _close(got[..., 1], np.broadcast_to(b[1], (2, 16)), ATOL_FRESH)  # engine.zero + bias


def test_linear_without_merge(kit: Kit) -> None:
    x = _uniform(45, MERGE_SHAPE)
    w = _uniform(46, (5, 4))
    t = kit.enc(x, MERGE_LAYOUT)
    before = kit.rotations
    out = linear(t, torch.tensor(w), merge=False)
    assert kit.rotations == before
    assert out.layout == Layout((2, 16, 5), (16, None, None))
    assert out.grid.shape == (16, 5)
    _close(kit.dec(out), x @ w.T)


def test_linear_all_zero_weights_and_plain_matmul(kit: Kit) -> None:
    x = _uniform(47, SHAPE)
    t = kit.enc(x, LAYOUT)
    zero = linear(t, np.zeros((2, 4)))
    assert zero.level == TOP - 1 and tuple(zero.shape) == (2, 3, 2)
    _close(kit.dec(zero), np.zeros((2, 3, 2)), ATOL_FRESH)
    w = _uniform(48, (4, 5))
    _close(kit.dec(matmul(t, w)), x @ w)
    with pytest.raises(ValueError, match="weight"):
        linear(t, np.zeros((2, 3)))
    with pytest.raises(LayoutError, match="feature axis"):
        linear(t.transpose(1, 2), np.zeros((2, 3)))


# --- attention: encrypted @ encrypted ------------------------------------------------------
def replicate_rotations(n: int) -> int:
    """`replicate`'s docstring, per ciphertext of the replicated tensor: entry j rotates to
    the front (not j = 0), then log2(n') spreading rotations."""
    return sum((1 if j else 0) + int(math.log2(next_power_of_two(n))) for j in range(n))


@pytest.mark.parametrize("tokens", [3, 4])
def test_attention_matmuls(kit: Kit, tokens: int) -> None:
    batch, heads, dh = 2, 2, 2
    d = heads * dh
    layout = Layout.rows((batch, tokens, d), 2)
    xs = [_uniform(50 + i, (batch, tokens, d)) for i in range(3)]
    q, k, v = (kit.enc(a, layout).reshape((batch, tokens, heads, dh)).transpose(1, 2) for a in xs)
    nq, nk, nv = (a.reshape(batch, tokens, heads, dh).transpose(0, 2, 1, 3) for a in xs)
    padded = next_power_of_two(tokens)
    assert q.layout.strides == (padded, None, 1, None)

    before = kit.rotations
    scores = matmul(q, k.transpose(-2, -1))
    assert kit.rotations - before == heads * dh * replicate_rotations(tokens)
    assert scores.layout == Layout((batch, heads, tokens, tokens), (padded, None, 1, None))
    assert scores.level == 0
    s = nq @ nk.transpose(0, 1, 3, 2)
    _close(kit.dec(scores), s)

    weights = scores * 0.5 + 0.1  # needs a level: refreshed once
    assert kit.refresher.stats.refreshes == 1
    assert kit.refresher.stats.per_refresh == [heads * tokens]
    before = kit.rotations
    out = matmul(weights, v)
    assert kit.rotations - before == heads * dh * replicate_rotations(tokens)
    assert out.layout == Layout((batch, heads, tokens, dh), (padded, None, 1, None))
    _close(kit.dec(out), (0.5 * s + 0.1) @ nv)
    assert kit.refresher.stats.refreshes == 1
    with pytest.raises(LayoutError, match="expected a"):
        matmul(k.transpose(-2, -1), q)


@pytest.mark.parametrize(
    ("a_strides", "b_strides", "rotates"),
    [
        ((1, None, None, None), (1, None, None, None), False),  # (c, j) in ciphertexts
        ((4, None, None, None), (4, None, None, 1), True),  # keys^T: the context j in slots
        ((4, None, None, 1), (4, None, 1, None), True),  # weights @ values: c in slots
    ],
    ids=["c-and-j-in-ciphertexts", "j-in-slots", "c-in-slots"],
)
def test_single_row_matmul_against_a_cache(
    kit: Kit, a_strides: tuple, b_strides: tuple, rotates: bool
) -> None:
    """One token's row (batch, heads, 1, c) against a cache (batch, heads, c, j), in the
    three layouts a generation step meets: equal to numpy; rotations only where a slot
    axis is summed over or spread along."""
    batch, heads, c, j = 2, 2, 3, 3
    if a_strides[-1] is not None:  # c in slots: the context (3 entries, 4 slots)
        c, j = 3, 2
    na = _uniform(70, (batch, heads, 1, c))
    nb = _uniform(71, (batch, heads, c, j))
    a = kit.enc(na, Layout(na.shape, a_strides, 0))
    b = kit.enc(nb, Layout(nb.shape, b_strides, 0))
    before = kit.rotations
    out = matmul(a, b)
    assert (kit.rotations > before) == rotates
    assert out.layout.shape == (batch, heads, 1, j)
    _close(kit.dec(out), na @ nb)


# --- levels and refresh ----------------------------------------------------------------------
def test_product_chain_refreshes_automatically(kit: Kit) -> None:
    """p <- p * x six times (x stays at level 2): p's levels 2 -> 1 -> 0, refresh (2) -> 1
    -> 0, refresh (2) -> 1 -> 0."""
    x = _uniform(60, SHAPE, 0.5, 1.0)
    t = kit.enc(x, LAYOUT)
    p = t
    for _ in range(6):
        p = p * t
    assert kit.refresher.stats.refreshes == 2
    assert kit.refresher.stats.per_refresh == [4, 4]
    assert kit.refresher.stats.ciphertexts == 8
    assert p.level == 0 and t.level == TOP
    assert kit.engine.cost.ct_ct_mults == 6 * 4
    _close(kit.dec(p), x**7)
    assert kit.engine.scale_drift() < 1e-6
    # the drift is max |Delta / q - 1| over the two 40-bit primes a product drops
    data = kit.engine.data.first_context_data()
    primes = []
    while data.chain_index() > 0:
        primes.append(data.parms().coeff_modulus()[-1].value())
        data = data.next_context_data()
    assert len(primes) == TOP
    assert kit.engine.scale_drift() == max(abs(2.0**40 / q - 1.0) for q in primes)


def test_refresh_is_in_place_and_clean(kit: Kit) -> None:
    x = _uniform(61, SHAPE)
    t = kit.enc(x, LAYOUT) + 1.0  # junk slots hold 1
    low = t * 0.5 * 2.0
    assert low.level == 0 and not low.clean
    assert low.ensure_level(1) is low
    assert low.level == TOP and low.clean
    _close(kit.dec(low), x + 1.0)
    junk = np.ones(SLOTS, dtype=bool)
    junk[LAYOUT.positions().reshape(-1)] = False
    for slots in kit.slots(low):
        assert np.abs(slots[junk]).max() < ATOL_FRESH  # the client zeroed them
    assert kit.refresher.stats.refreshes == 1
    low.ensure_level(2)  # already there: no round trip
    assert kit.refresher.stats.refreshes == 1


def test_without_refresher_depth_is_exhausted(kit: Kit) -> None:
    x = _uniform(62, SHAPE, 0.5, 1.0)
    t = kit.enc(x, LAYOUT, refresh=False)
    p = t * t * t  # levels 2 -> 1 -> 0
    assert p.level == 0
    _close(kit.dec(p), x**3)
    with pytest.raises(DepthExhausted, match=r"\(2, 3, 4\) has 0 levels left, 1 needed"):
        p * t
    with pytest.raises(DepthExhausted, match="0 levels left"):
        p.square()
    with pytest.raises(DepthExhausted, match="0 levels left"):
        p * 0.5
    with pytest.raises(LevelError):
        kit.engine.mul(p.grid[0], t.grid[0])
    assert (p + t).level == 0  # additions need no level


# --- regressions: bugs found by these tests, fixed -------------------------------------
def test_full_reduction_to_a_scalar(kit: Kit) -> None:
    x = _uniform(70, (4,))
    t = kit.enc(x, Layout.rows((4,), 1))
    _close(kit.dec(t.sum()), np.asarray(x.sum()))


def test_a_slot_axis_split_into_a_non_power_of_two_inner_axis_is_refused(kit: Kit) -> None:
    """6 -> 2 x 3 would put rows of 3 at stride 3, but slot sums and replication work on
    rows of n' = 4 slots: the next row's entry would be summed in (it was, before)."""
    x = _uniform(75, (6, 2))
    t = kit.enc(x, Layout.rows((6, 2), 1))
    with pytest.raises(LayoutError, match="powers of two"):
        t.reshape((2, 3, 2))


def test_slotless_operands_at_different_offsets(kit: Kit) -> None:
    """Token 0 of x sits in slot 0 and token 1 of y in slot 1: slot-wise arithmetic would
    pair x's token 0 with y's token 0 (it did, before). Refused with a LayoutError naming
    both offsets, in either order and for products too; at the same offset the difference
    is computed, within ATOL."""
    x, y = _uniform(71, (1, 4, 2)), _uniform(72, (1, 4, 2))
    layout = Layout.rows((1, 4, 2), 2)  # batch 1: only the token axis in slots
    a, b = kit.enc(x, layout).select(1, 0), kit.enc(y, layout).select(1, 1)
    assert a.layout.offset == 0 and b.layout.offset == 1 and not a.layout.slot_axes
    with pytest.raises(LayoutError, match="slot offsets 0 and 1"):
        a - b
    with pytest.raises(LayoutError, match="slot offsets 1 and 0"):
        b + a
    with pytest.raises(LayoutError, match="slot offsets 0 and 1"):
        a * b
    same = kit.enc(y, layout).select(1, 0)
    assert same.layout == a.layout
    _close(kit.dec(a - same), x[:, 0] - y[:, 0])


def test_numpy_array_on_the_left(kit: Kit) -> None:
    x = _uniform(73, SHAPE)
    t = kit.enc(x, LAYOUT)
    out = W4 * t
    assert isinstance(out, HeTensor)
    _close(kit.dec(out), W4 * x)


def test_tensor_minus_itself(kit: Kit) -> None:
    t = kit.enc(_uniform(74, SHAPE), LAYOUT)
    _close(kit.dec(t - t), np.zeros(SHAPE), ATOL_FRESH)


def test_matmul_against_fewer_columns_than_rows(kit: Kit) -> None:
    """a (batch, heads, 16 rows in slots, c) @ b (batch, heads, c, 4 columns in slots at the
    rows' stride), SOFT attention's queries against its landmarks: every one of a's 16 rows
    must see each column. The column axis was replicated over 4 slots only, so rows 4 to 15
    came out 0 with no error (found on SOFT under he; fixed: `replicate`'s extent)."""
    batch, heads, rows, c, cols = 2, 2, 16, 2, 4
    na = _uniform(80, (batch, heads, rows, c))
    nb = _uniform(81, (batch, heads, c, cols))
    a = kit.enc(na, Layout(na.shape, (rows, None, 1, None), 0))
    b = kit.enc(nb, Layout(nb.shape, (rows, None, None, 1), 0))
    _close(kit.dec(matmul(a, b)), na @ nb)


def test_an_outer_sum_of_two_slot_vectors(kit: Kit) -> None:
    """(16, 1) + (1, 4) with both long axes in slots at stride 1 (SOFT's squared norms of
    queries and landmarks): `spread` grew the first operand's size-1 axis and silently
    dropped its axis of 4, so the sum came out (16, 1) and wrong with no error (found on
    SOFT under he; then refused: neither operand spreads into the other's layout). Now
    the shorter axis moves into ciphertexts (`split_slots`) and spreads over the longer."""
    na, nb = _uniform(82, (2, 16, 1)), _uniform(83, (2, 1, 4))
    a = kit.enc(na, Layout(na.shape, (16, 1, None), 0))
    b = kit.enc(nb, Layout(nb.shape, (16, None, 1), 0))
    assert b.spread(a.layout) is None and a.spread(b.layout) is None
    before = kit.rotations
    total = a + b
    # b's 4 entries: 3 rotations to the front, then log2(16) spreading rotations each
    assert kit.rotations - before == 3 + 4 * 4
    assert total.layout == Layout((2, 16, 4), (16, 1, None), 0)
    _close(kit.dec(total), na + nb)


@st.composite
def outer_cases(draw: st.DrawFn) -> tuple:
    """An outer (op) of (batch, n, 1) and (batch, 1, m), each long axis in slots: n at
    stride 1, m at stride `m_stride` (landmarks pooled from groups of tokens sit at the
    group's stride), the batch far enough apart for both; either operand first."""
    batch, n, m = draw(st.integers(1, 2)), draw(st.integers(2, 16)), draw(st.integers(2, 8))
    m_stride = draw(st.sampled_from([1, 2, 4]))
    op = draw(st.sampled_from(["add", "sub", "mul"]))
    swap = draw(st.booleans())
    return batch, n, m, m_stride, op, swap


@settings(max_examples=30, deadline=None)
@given(case=outer_cases(), seed=st.integers(0, 2**16))
def test_outer_products_of_slot_axes_sweep(
    ctx: ts.Context, codec: Codec, case: tuple, seed: int
) -> None:
    batch, n, m, m_stride, op, swap = case
    kit = Kit(ctx, codec)
    room = next_power_of_two(max(n, m * m_stride))
    na, nb = _uniform(seed, (batch, n, 1)), _uniform(seed + 1, (batch, 1, m))
    a = kit.enc(na, Layout(na.shape, (room, 1, None), 0))
    b = kit.enc(nb, Layout(nb.shape, (room, None, m_stride), 0))
    x, y, nx, ny = (b, a, nb, na) if swap else (a, b, na, nb)
    got = {"add": lambda: x + y, "sub": lambda: x - y, "mul": lambda: x * y}[op]()
    want = {"add": nx + ny, "sub": nx - ny, "mul": nx * ny}[op]
    _close(kit.dec(got), want)


@pytest.mark.parametrize("form", ["columns-elsewhere", "columns-in-ciphertexts"])
def test_matmul_of_queries_against_landmarks(kit: Kit, form: str) -> None:
    """a (batch, heads, 16 rows at stride 1, c) @ b (batch, heads, c, 4): SOFT's queries
    against its landmarks, whose columns sit where the mean over groups of 4 tokens left
    them (stride 4, not the rows' stride: each column is replicated over a's rows at
    their stride, `replicate(along=)`), or in ciphertexts (each entry spread over a's
    rows). Both were refused ("b has no slot axis where a's rows sit")."""
    batch, heads, rows, c, cols = 2, 2, 16, 3, 4
    na = _uniform(84, (batch, heads, rows, c))
    nb = _uniform(85, (batch, heads, c, cols))
    a = kit.enc(na, Layout(na.shape, (rows, None, 1, None), 0))
    tail = (None, 4) if form == "columns-elsewhere" else (None, None)
    b = kit.enc(nb, Layout(nb.shape, (rows, None, *tail), 0))
    _close(kit.dec(matmul(a, b)), na @ nb)


@st.composite
def product_cases(draw: st.DrawFn) -> tuple:
    """(batch, n, c) @ (batch, c, k), n rows at stride 1; b's columns at the rows' stride,
    at another stride, or in ciphertexts, its contracted axis in ciphertexts."""
    batch, n, c, k = (draw(st.integers(1, 2)), draw(st.integers(1, 12)),
                      draw(st.integers(1, 3)), draw(st.integers(1, 6)))  # fmt: skip
    form = draw(st.sampled_from(["rows-stride", "other-stride", "ciphertexts"]))
    stride = draw(st.sampled_from([2, 4])) if form == "other-stride" else 1
    return batch, n, c, k, form, stride


@settings(max_examples=30, deadline=None)
@given(case=product_cases(), seed=st.integers(0, 2**16))
def test_encrypted_products_sweep(ctx: ts.Context, codec: Codec, case: tuple, seed: int) -> None:
    batch, n, c, k, form, stride = case
    kit = Kit(ctx, codec)
    room = next_power_of_two(max(n, k * stride))
    na, nb = _uniform(seed, (batch, n, c)), _uniform(seed + 1, (batch, c, k))
    a = kit.enc(na, Layout(na.shape, (room, 1, None), 0))
    tail = (None, None) if form == "ciphertexts" else (None, stride)
    b = kit.enc(nb, Layout(nb.shape, (room, *tail), 0))
    _close(kit.dec(matmul(a, b)), na @ nb)
