"""Packing chosen per layer: extended layouts, re-layouts, the diagonal linear path.

Context: a small ring, N = 4096 (2048 slots), chain [38, 30, 38] (one level), scale 2^30,
all Galois keys, so that rows split over several ciphertexts already at a few dozen rows.
Refreshes and re-layouts go through the real server code (`MaskingRefresher`,
`RelayoutRefresher`) with the client's side in process (`relayout.client_relayout` after
`read_parts`, the checks a client makes): no sockets, the same arithmetic.

- Layout (no ciphertexts): `placement` puts every entry in a distinct (ciphertext, slot),
  replicas at the slots of i + m n, and `gather` inverts `vector`; views by `regroup`,
  permutations and selections move no entry (hypothesis over shapes, strides, pages);
  the dict round trip of extended layouts and the refusals of malformed ones.
- Re-layout: values survive a round trip between feature-major, row blocks with replicas
  and composite views, the tensors come back fresh and clean; several in one trip.
- linear against numpy on rows 1 .. 40 and d_in, d_out in 8 .. 96 (not only powers of
  two; layers that narrow by 2 and 4, which take d_out diagonals and a rotate-and-sum),
  both strategies and the cost model's choice; the output layout, the level, the round
  trips counted.
- Elementwise ops and reductions on extended layouts (bias, residual in another packing,
  a product of two paged tensors, a mean over features, a selected token), against numpy.
- The choice itself (`packing.linear_options`, no crypto): the diagonal method wins for a
  few rows of a wide layer, feature-major for a narrow output or when refresh is off.
- A dry run of the same code rotates by the same steps as the real run.

Tolerance 1e-3 absolute (inputs uniform in [-1, 1], W ~ N(0, 1/d_in)): at scale 2^30 a
rotation's key switching adds about 1e-5 here; measured maxima 1.2e-4 (diagonal) and
1e-6 (feature-major). A LayerNorm-style chain (two slot sums, two spreads, three products
and their refreshes, values to about 10) gets 5e-3 [measured 1.4e-3].
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ts = pytest.importorskip("tenseal")

from protocols.he import packing  # noqa: E402
from protocols.he.codec import Codec  # noqa: E402
from protocols.he.dry import DryEngine, DryRefresher, dry_grid  # noqa: E402
from protocols.he.engine import Engine  # noqa: E402
from protocols.he.layout import Layout, LayoutError  # noqa: E402
from protocols.he.params import CkksParams, make_context  # noqa: E402
from protocols.he.products import linear, matmul  # noqa: E402
from protocols.he.refresh import MaskingRefresher  # noqa: E402
from protocols.he.relayout import RelayoutRefresher, client_relayout, read_parts  # noqa: E402
from protocols.he.tensor import HeTensor, relayout_tensors  # noqa: E402

PARAMS = CkksParams(4096, [38, 30, 38], 30)
SLOTS = PARAMS.slots
ATOL = 1e-3
ATOL_DEEP = 5e-3


@pytest.fixture(scope="module")
def small() -> ts.Context:
    return make_context(PARAMS)


class Kit:
    """An engine on the small ring with a re-layout-capable refresher and its client."""

    def __init__(self, ctx: ts.Context, policy: str = "auto") -> None:
        self.codec = Codec(ctx)
        self.engine = Engine(ctx)
        codec = self.codec

        def refresh(cts, layout):
            used = layout.positions().reshape(-1)
            out = []
            for ct in cts:
                values = np.zeros(codec.slots)
                values[used] = codec.decrypt_slots(ct)[used]
                out.append(codec.encrypt_slots(values))
            return out

        def relayout(masked, parts, expected):
            checked = read_parts({"parts": json.loads(json.dumps(parts))}, codec.slots)
            fresh = client_relayout(
                checked, masked, codec.decrypt_slots, codec.encrypt_slots, lambda v: v
            )
            assert len(fresh) == expected
            return fresh

        masking = MaskingRefresher(self.engine, refresh, 5)
        self.refresher = RelayoutRefresher(masking, relayout, policy)

    def enc(self, values: np.ndarray, layout: Layout | None = None) -> HeTensor:
        layout = layout or Layout.standard(values.shape, SLOTS)
        grid = self.codec.encrypt(values, layout)
        return HeTensor(self.engine, layout, grid, clean=True, refresher=self.refresher)

    def dec(self, t: HeTensor) -> np.ndarray:
        return self.codec.decrypt(t.grid, t.layout)


@pytest.fixture
def kit(small: ts.Context) -> Kit:
    return Kit(small)


def _close(got: np.ndarray, want: np.ndarray, atol: float = ATOL) -> None:
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)


def _uniform(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, shape)


# --- Layout ----------------------------------------------------------------------------------
def _where(layout: Layout) -> list[tuple[int, int]]:
    p = layout.placement()
    return list(zip(p.cts.tolist(), p.slots.tolist(), strict=True))


@st.composite
def row_layouts(draw: st.DrawFn) -> Layout:
    lead = draw(st.integers(1, 3))
    rows = draw(st.integers(1, 40))
    d = draw(st.integers(2, 20))
    width = draw(st.integers(d, 3 * d))
    slots = draw(st.sampled_from([64, 128, 512]))
    if width > slots:
        width = slots
        d = min(d, width)
    return Layout.row_blocks((lead, rows, d), width, slots, replicate=draw(st.booleans()))


@settings(max_examples=60, deadline=None)
@given(layout=row_layouts())
def test_placement_is_one_to_one_and_replicas_repeat_their_entry(layout: Layout) -> None:
    places = _where(layout)
    assert len(set(places)) == len(places)  # no two entries share a slot
    p = layout.placement()
    values = np.arange(p.count, dtype=np.float64) + 1.0
    vectors = [p.vector(values, g, 4096) for g in range(len(p.groups))]
    np.testing.assert_array_equal(p.gather(vectors), values)
    used = sum(int(p.used(g, 4096).sum()) for g in range(len(p.groups)))
    if layout.replicas is None:
        assert used == p.count
    else:
        axis, span = layout.replicas
        n, rest = layout.shape[axis], p.count // layout.shape[axis]
        assert used == rest * span  # every slot of every row's span holds a copy
        for g, vector in enumerate(vectors):  # a replica holds its entry's value
            entries, slots = p.groups[g]
            np.testing.assert_array_equal(vector[slots], values[entries])
        assert n <= span
    assert layout.span() <= layout.placement().last_slot + 1


@settings(max_examples=60, deadline=None)
@given(layout=row_layouts(), data=st.data())
def test_views_permutations_and_selections_move_no_entry(layout: Layout, data) -> None:
    lead, rows, d = layout.shape
    p = layout.placement()
    flat = np.arange(p.count).reshape(layout.shape)
    where = dict(zip(flat.reshape(-1).tolist(), _where(layout), strict=True))
    # a view that splits the leading axis off and back, and one that drops it (lead = 1)
    view = layout.regroup((lead, 1, rows, d))
    assert _where(view) == _where(layout)
    assert view.regroup((lead, rows, d)) == layout
    # a transpose: entry (a, b, c) keeps its place
    perm = layout.permute([1, 0, 2])
    grid_axes = [g for d_ in (1, 0, 2) for g in layout.grid_axes_of(d_)]
    moved = perm.placement()
    g_shape = layout.grid_shape
    for e, (ct, slot) in zip(flat.transpose(1, 0, 2).reshape(-1).tolist(),
                             _where(perm), strict=True):  # fmt: skip
        old_ct, old_slot = where[e]
        old_index = np.unravel_index(old_ct, g_shape)
        new_index = tuple(old_index[g] for g in grid_axes)
        assert np.ravel_multi_index(new_index, perm.grid_shape) == ct and old_slot == slot
    assert moved.count == p.count
    # selecting a row (on its page) keeps the other entries where they were
    i = data.draw(st.integers(0, rows - 1))
    selected, taken = layout.select_grid(1, i)
    grid_index = list(np.ndindex(*g_shape))
    for e, (ct, slot) in zip(flat[:, i].reshape(-1).tolist(), _where(selected), strict=True):
        old_ct, old_slot = where[e]
        kept = [g for g in range(len(g_shape)) if g not in {a for a, _ in taken}]
        index = grid_index[old_ct]
        assert all(index[a] == v for a, v in taken)
        sub = tuple(index[g] for g in kept)
        assert np.ravel_multi_index(sub, selected.grid_shape) == ct and old_slot == slot


def test_extended_layouts_round_trip_as_json_and_malformed_ones_are_refused() -> None:
    layouts = [
        Layout.row_blocks((2, 40, 12), 23, SLOTS, replicate=True),
        Layout.row_blocks((5, 7), 9, 16),
        Layout((1, 4, 2, 3), (None, 4, 1, None)).regroup((1, 4, 6)),
    ]
    for layout in layouts:
        assert Layout.from_dict(json.loads(json.dumps(layout.to_dict()))) == layout
    assert layouts[2].parts[2] == ((2, 1), (3, None))  # slot x ciphertext: composite
    good = layouts[0].to_dict()
    for key, value in [
        ("parts", [None, [[3, "x"]], None]),
        ("parts", [None, [[0, None]], None]),
        ("replicas", [2]),
        ("shape", [2, -40, 12]),
        ("offset", -1),
        ("extra", 1),
    ]:
        with pytest.raises(ValueError):
            Layout.from_dict({**good, key: value})
    with pytest.raises(ValueError, match="fewer"):
        Layout((10,), (None,), 0, (((2, None), (3, 1)),))
    with pytest.raises(ValueError, match="not a slot axis"):
        Layout((3, 4), (1, None), 0, (), (1, 8))
    with pytest.raises(LayoutError, match="carried whole"):
        Layout.row_blocks((1, 7, 3), 5, 16).regroup((7 * 3,))


def test_standard_layout_fits_the_slots() -> None:
    assert Layout.standard((1, 128, 384), 4096).strides == (None, 1, None)
    assert Layout.standard((1, 12, 128, 128), 4096).strides == (None, 128, 1, None)
    assert Layout.standard((64, 128, 8), 4096).strides == (None, 1, None)  # 8192 rows: no
    assert Layout.standard((7,), 4096).strides == (None,)


# --- re-layout ---------------------------------------------------------------------------------
def test_relayout_moves_values_between_packings_in_one_round_trip(kit: Kit) -> None:
    x, y = _uniform(1, (2, 13, 6)), _uniform(2, (3, 5, 4))
    a, b = kit.enc(x), kit.enc(y)
    a.engine.cost.additions = 0
    rows = Layout.row_blocks((2, 13, 6), 11, SLOTS, replicate=True)
    composite = Layout.standard((3, 5, 4), SLOTS).permute([0, 2, 1]).regroup((3, 20))
    relayout_tensors([(a, rows), (b.reshape((3, 20)), composite)])
    assert kit.refresher.relayouts == 1 and kit.refresher.stats.refreshes == 1
    assert a.layout == rows and a.clean and a.level == kit.engine.top_level
    _close(kit.dec(a), x, 1e-5)
    # the replicas hold their entries: every row's 11 slots are x[t mod 6]
    vector = kit.codec.decrypt_slots(a.grid.flat[0])
    _close(vector[:11], x[0, 0][np.arange(11) % 6], 1e-5)
    # and back to feature-major
    a.relayout(Layout.standard(x.shape, SLOTS))
    _close(kit.dec(a), x, 1e-5)


# --- linear ------------------------------------------------------------------------------------
SHAPES = [
    (1, 8, 8),
    (3, 12, 20),
    (5, 17, 9),
    (16, 33, 48),
    (40, 96, 33),
    (17, 33, 96),
    (24, 96, 96),
    (40, 10, 90),
    (7, 64, 16),
    (21, 96, 48),
    (3, 40, 10),
]  # fmt: skip  (the last three narrow: 4x, 2x, 4x)


@pytest.mark.parametrize(("rows", "d_in", "d_out"), SHAPES)
def test_linear_matches_numpy_by_both_strategies_and_the_choice(
    small: ts.Context, rows: int, d_in: int, d_out: int
) -> None:
    rng = np.random.default_rng(rows * 1000 + d_in * 10 + d_out)
    x = rng.uniform(-1, 1, (1, rows, d_in))
    w = rng.normal(0, 1 / math.sqrt(d_in), (d_out, d_in))
    b = rng.uniform(-1, 1, d_out)
    want = x @ w.T + b
    # forced feature-major only where it is cheap (d_in d_out scalar products): the
    # choice takes it on the small shapes anyway
    forced = ("diagonal_bsgs", "feature_major") if d_in * d_out <= 1000 else ("diagonal_bsgs",)
    for strategy in (*forced, None):
        kit = Kit(small)
        t = kit.enc(x)
        out = linear(t, w, b, strategy=strategy)
        _close(kit.dec(out), want)
        (choice,) = kit.refresher.choices
        assert strategy is None or choice["strategy"] == strategy
        if choice["strategy"] == "diagonal_bsgs":
            width = d_in + d_out - 1
            assert out.layout == Layout.row_blocks((1, rows, d_out), width, SLOTS)
            assert math.prod(out.layout.grid_shape) == math.ceil(rows / (SLOTS // width))
            assert kit.refresher.relayouts == 1  # x moved to the replicated row blocks
            assert kit.engine.cost.rotations > 0
        else:
            assert out.layout.strides[-1] is None and kit.engine.cost.rotations == 0
        assert out.level == kit.engine.top_level - 1 or kit.refresher.relayouts


def test_linear_on_a_one_dimensional_input_and_a_reused_input(kit: Kit) -> None:
    x, w1, w2 = _uniform(3, (24,)), _uniform(4, (30, 24)), _uniform(5, (20, 24))
    t = kit.enc(x)
    y1 = linear(t, w1, strategy="diagonal_bsgs")
    assert tuple(y1.shape) == (30,)
    _close(kit.dec(y1), w1 @ x)
    # t was re-laid out in place, so a second layer of the same width pays no round trip
    y2 = linear(t.unsqueeze(0), w1[:24], strategy="diagonal_bsgs")
    _close(kit.dec(y2), (w1[:24] @ x)[None])
    trips = kit.refresher.relayouts
    z = linear(kit.enc(x[None]), w2)
    _close(kit.dec(z), (w2 @ x)[None])
    assert kit.refresher.relayouts >= trips


def test_elementwise_ops_and_reductions_on_row_blocks(kit: Kit) -> None:
    """A residual block as the graph computes it: the linear's output (rows over
    ciphertexts, features in slots) plus a bias, plus the input in another packing, a
    product of two such tensors, a selected token, and a LayerNorm's statistics."""
    rows, d = 100, 12  # 89 rows of 23 slots per ciphertext: two pages
    x = _uniform(6, (1, rows, d))
    w = _uniform(7, (d, d)) / 3
    bias = _uniform(8, (d,))
    t = kit.enc(x)
    y = linear(t, w, bias, strategy="diagonal_bsgs")
    assert y.layout.parts  # rows over ciphertexts
    want = x @ w.T + bias
    _close(kit.dec(y), want)
    res = y + kit.enc(x)  # the other operand is re-laid out to y's packing
    _close(kit.dec(res), want + x)
    _close(kit.dec(res * y), (want + x) * want)
    _close(kit.dec(res * 0.5 - 1.0), (want + x) * 0.5 - 1.0)
    token = res.select(1, 95)  # a token on the second page
    _close(kit.dec(token), (want + x)[:, 95])
    # a LayerNorm's statistics without leaving the row layout: slot sums over the
    # features, the per-row results spread back over the features by rotations
    trips = kit.refresher.relayouts
    n_res = want + x
    mean = res.mean(-1, keepdim=True)
    assert mean.layout.parts  # still rows over ciphertexts
    _close(kit.dec(mean), n_res.mean(-1, keepdims=True))
    centred = res - mean
    assert centred.layout == y.layout.without_replicas()
    n_centred = n_res - n_res.mean(-1, keepdims=True)
    _close(kit.dec(centred), n_centred)
    variance = (centred * centred).mean(-1, keepdim=True)
    deep = n_centred * (n_centred**2).mean(-1, keepdims=True)  # values to about 10
    _close(kit.dec(centred * variance), deep, ATOL_DEEP)
    assert kit.refresher.relayouts == trips  # refreshes only, no re-layout


def test_without_refresh_linear_stays_feature_major(small: ts.Context) -> None:
    kit = Kit(small)
    x, w = _uniform(9, (1, 4, 16)), _uniform(10, (16, 16))
    layout = Layout.standard(x.shape, SLOTS)
    t = HeTensor(kit.engine, layout, kit.codec.encrypt(x, layout), clean=True, refresher=None)
    assert t.policy == "feature_major"
    _close(kit.dec(linear(t, w)), x @ w.T)
    with pytest.raises(LayoutError, match="round trip"):
        linear(t, w, strategy="diagonal_bsgs")


# --- the choice ----------------------------------------------------------------------------------
def test_the_cost_model_picks_by_rows_and_width() -> None:
    def pick(rows: int, d_in: int, d_out: int, relayout: bool = True) -> str:
        layout = Layout.standard((1, rows, d_in), 4096)
        option, _ = packing.choose_linear(layout, d_out, 4096, policy="auto", can_relayout=relayout)
        return option.strategy

    assert pick(16, 384, 384) == "diagonal_bsgs"
    assert pick(128, 384, 1536) == "diagonal_bsgs"
    assert pick(16, 384, 2) == "feature_major"  # a classifier head: 768 products
    assert pick(16, 384, 384, relayout=False) == "feature_major"
    layout = Layout.standard((1, 16, 384), 4096)
    option, reason = packing.choose_linear(
        layout, 384, 4096, policy="feature_major", can_relayout=True
    )
    assert option.strategy == "feature_major" and "feature_major" in reason
    # already in the diagonal input layout: no round trip is priced
    ready = packing.diagonal_input((1, 16, 384), 384, 4096)
    (diag,) = [o for o in packing.linear_options(ready, 384, 4096, True)
               if o.strategy == "diagonal_bsgs"]  # fmt: skip
    assert diag.relayout is None and diag.trip_ms == 0.0


# --- dry run --------------------------------------------------------------------------------------
def test_a_dry_run_rotates_by_the_real_run_s_steps(small: ts.Context) -> None:
    """The diagonal path on a real engine and on the dry one (same policy): the same
    steps in the same order, the same re-layouts and refreshes."""
    kit = Kit(small)
    steps: list[int] = []
    rotate = kit.engine.rotate

    def recording(ct, step):
        steps.append(step)
        return rotate(ct, step)

    kit.engine.rotate = recording  # type: ignore[method-assign]
    dry = DryEngine(SLOTS, kit.engine.top_level)
    dry_refresher = DryRefresher(dry, "auto")
    x, w = _uniform(11, (1, 30, 40)), _uniform(12, (50, 40))
    for engine, tensor in (
        (kit.engine, kit.enc(x)),
        (dry, HeTensor(dry, Layout.standard(x.shape, SLOTS),
                       dry_grid(dry, Layout.standard(x.shape, SLOTS)), clean=True,
                       refresher=dry_refresher)),
    ):  # fmt: skip
        out = linear(tensor, w)
        (out * out).sum(-1)
        assert engine is not None
    assert steps and dry.steps == [s for s in steps if s % SLOTS]
    assert dry_refresher.relayouts == kit.refresher.relayouts
    assert dry_refresher.refreshes == kit.refresher.stats.refreshes


# --- attention by the diagonal method ----------------------------------------------------------
@pytest.mark.parametrize(
    ("batch", "heads", "tokens", "dh"), [(1, 3, 5, 4), (2, 2, 8, 6), (1, 12, 16, 2), (1, 1, 33, 3)]
)
def test_attention_by_the_diagonal_method_matches_numpy(
    small: ts.Context, batch: int, heads: int, tokens: int, dh: int
) -> None:
    """q k^T into the skewed diagonal layout, a power softmax's ops on it (scale, square,
    a multiplicative mask broadcast over queries, the sum over keys, a per-row factor),
    then weights times v back in q's layout; no token axis replicated (the rotations are
    the method's: about 2 dh sqrt(L) + L per product)."""
    from protocols.he.attention import rotations

    kit = Kit(small)
    rng = np.random.default_rng(tokens)
    q, k, v = (rng.uniform(-1, 1, (batch, tokens, heads * dh)) for _ in range(3))
    Q, K, V = (kit.enc(x).reshape((batch, tokens, heads, dh)).transpose(1, 2) for x in (q, k, v))
    nq, nk, nv = (x.reshape(batch, tokens, heads, dh).transpose(0, 2, 1, 3) for x in (q, k, v))
    scores = matmul(Q, K.transpose(-2, -1))
    assert scores.layout.skew == (3, 2)
    assert kit.refresher.choices[-1]["strategy"] == "diagonal_scores"
    want = nq @ nk.transpose(0, 1, 3, 2)
    _close(kit.dec(scores), want)
    mask = (rng.uniform(0, 1, (batch, 1, 1, tokens)) > 0.2).astype(float)
    powered = (scores * 0.5) ** 2 * mask
    weights = powered * (powered.sum(-1, keepdim=True) * 0.1)
    n_powered = (want * 0.5) ** 2 * mask
    n_weights = n_powered * (n_powered.sum(-1, keepdims=True) * 0.1)
    assert weights.layout.skew == (3, 2)  # no re-layout on the way
    _close(kit.dec(weights), n_weights)
    before = kit.engine.cost.rotations
    out = matmul(weights, V)
    assert kit.refresher.choices[-1]["strategy"] == "diagonal_values"
    cells = batch * heads if out.layout.strides[1] is None else 1
    assert kit.engine.cost.rotations - before <= rotations(tokens, dh, "values") * cells
    _close(kit.dec(out), n_weights @ nv)
