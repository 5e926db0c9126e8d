"""Structural ops on real TenSEAL ciphertexts: public masks, public indices, joins, splits,
the patch convolution (`secinfer.backends.he.structural`, `protocols.he.placement`).

Context: N = 8192 (4096 slots), chain [60, 40, 40, 60], scale 2^40, power-of-two Galois
keys (`ctx` of tests/conftest.py). Inputs are uniform in [-1, 1] (scores N(0, 4) for the
masks); every result is decrypted and compared with torch in float64.

Tolerances (absolute): moves without a product (grid selection, new strides, rotations)
1e-6 (fresh encryption noise about 1e-9, a rotation's key switch about 1e-7); one mask or
mask product level 1e-5 (the tensor tests' bound for two product levels); whole graphs
(`HeRunner`, a linear layer then the op) 1e-5 of max(1, |want|), the conformance suite's
bound for exact ops.

Costs are asserted too: a grid selection or a strided selection of slots uses no level and
no rotation (the same ciphertext objects); a public mask costs exactly one level.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

ts = pytest.importorskip("tenseal")

from protocols.he.codec import Codec  # noqa: E402
from protocols.he.engine import Engine  # noqa: E402
from protocols.he.layout import Layout  # noqa: E402
from protocols.he.placement import Sources, place  # noqa: E402
from protocols.he.refresh import MaskingRefresher  # noqa: E402
from protocols.he.tensor import HeTensor  # noqa: E402
from secinfer.backends.he import structural as S  # noqa: E402
from secinfer.backends.he.kernels import check_he_plan  # noqa: E402
from secinfer.backends.he.patches import PatchConv, image_inputs  # noqa: E402
from secinfer.backends.he.refusals import UnsupportedHeOp  # noqa: E402
from secinfer.core.masks import MASK_LIMIT  # noqa: E402
from secinfer.core.registry import Call  # noqa: E402

aten = torch.ops.aten
FREE = 1e-6
ONE_LEVEL = 1e-5


@pytest.fixture(scope="module")
def codec(ctx: ts.Context) -> Codec:
    return Codec(ctx)


@pytest.fixture(scope="module")
def engine(ctx: ts.Context) -> Engine:
    return Engine(ctx)


LAYOUTS = {
    "feature-major": lambda shape: Layout.rows(shape, len(shape) - 1),
    "inner-room": lambda shape: Layout.rows(shape, len(shape) - 1, inner=4),
    "one-slot-axis": lambda shape: Layout.rows(shape, 1),
    "offset": lambda shape: Layout(
        shape, Layout.rows(shape, len(shape) - 1).strides, 3
    ),  # entries start at slot 3
}


def encrypt(
    codec: Codec, engine: Engine, values: torch.Tensor, layout: Layout, refresh: bool = False
) -> HeTensor:
    """Fresh ciphertexts; with `refresh`, a refresher whose client side runs in process."""
    grid = codec.encrypt(values.double().numpy(), layout)
    refresher = MaskingRefresher(engine, _client(codec), 17) if refresh else None
    return HeTensor(engine, layout, grid, clean=True, refresher=refresher)


def _client(codec: Codec):
    def transport(cts, layout):
        used = layout.positions().reshape(-1)
        fresh = []
        for ct in cts:
            slots = np.zeros(codec.slots)
            slots[used] = codec.decrypt_slots(ct)[used]
            fresh.append(codec.encrypt_slots(slots))
        return fresh

    return transport


def decrypt(codec: Codec, x: HeTensor) -> torch.Tensor:
    return torch.from_numpy(codec.decrypt(x.grid, x.layout))


def values(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1


def call(target: object, *args: object, **kwargs: object) -> Call:
    return Call(target, args, kwargs)  # type: ignore[arg-type]


def assert_close(got: torch.Tensor, want: torch.Tensor, atol: float) -> None:
    assert got.shape == want.shape, (got.shape, want.shape)
    error = float((got - want).detach().abs().max()) if want.numel() else 0.0
    assert error <= atol, f"max error {error:.3g} > {atol:g}"


# --- the placement primitive ------------------------------------------------------------------
SHAPE = (2, 5, 6)  # (batch, tokens, features): tokens not a power of two


def _selections() -> dict[str, object]:
    """Index maps (applied to a tensor of flat indices) of the structural ops."""
    gen = torch.Generator().manual_seed(3)
    per_row = torch.randint(0, SHAPE[2], (2, 5, 3), generator=gen)
    tokens = torch.randint(0, SHAPE[1], (2, 4, 6), generator=gen)
    return {
        "index-features": lambda f: f[:, :, torch.tensor([4, 0, 4])],
        "index-tokens-evenly": lambda f: f[:, torch.tensor([0, 2, 4])],
        "index-tokens-unevenly": lambda f: f[:, torch.tensor([3, 0, 1])],
        "index-two-axes": lambda f: f[torch.tensor([1, 0]), :, torch.tensor([2, 5])],
        "index-bool": lambda f: f[:, torch.tensor([True, False, True, True, False])],
        "gather-features": lambda f: torch.gather(f, 2, per_row),
        "gather-tokens": lambda f: torch.gather(f, 1, tokens),
        "slice-tokens": lambda f: f[:, 1:4],
        "slice-tokens-step": lambda f: f[:, ::2],
        "repeat-tokens": lambda f: f.repeat(1, 2, 1),
        "repeat-features": lambda f: f.repeat(1, 1, 2),
        "flip-tokens": lambda f: f.flip(1),
        "flatten-merging-slots-and-features": lambda f: f.reshape(2, 30),
        "transpose-copy": lambda f: f.transpose(1, 2).contiguous(),
    }


SELECTIONS = _selections()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("selection", SELECTIONS)
def test_place_matches_torch_indexing(codec, engine, layout: str, selection: str) -> None:
    x = values(SHAPE)
    tensor = encrypt(codec, engine, x, LAYOUTS[layout](SHAPE))
    flat = torch.arange(x.numel()).reshape(SHAPE)
    chosen = SELECTIONS[selection](flat)  # type: ignore[operator]
    out = place(Sources.take(tensor, chosen.numpy()))
    want = x.reshape(-1)[chosen]
    assert_close(decrypt(codec, out), want, ONE_LEVEL)
    assert out.level >= tensor.level - 1


@pytest.mark.parametrize("layout", LAYOUTS)
def test_grid_and_strided_selections_are_free(codec, engine, layout: str) -> None:
    """Along ciphertext axes and evenly spaced slots: the same ciphertexts, no rotation,
    no product (level and counts unchanged)."""
    x = values(SHAPE)
    tensor = encrypt(codec, engine, x, LAYOUTS[layout](SHAPE))
    flat = torch.arange(x.numel()).reshape(SHAPE)
    before = engine.cost.to_dict()
    for chosen in (flat[:, :, [5, 1]], flat[:, ::2], flat[:, 1:4, 2:5], flat[1]):
        out = place(Sources.take(tensor, chosen.numpy()))
        assert set(map(id, out.grid.flat)) <= set(map(id, tensor.grid.flat))
        assert out.level == tensor.level
        assert_close(decrypt(codec, out), x.reshape(-1)[chosen], FREE)
    assert engine.cost.to_dict() == before


def test_the_patch_layout_has_room_for_a_class_token_in_front(codec, engine) -> None:
    """cat([cls, tokens], 1) on tokens packed with one free slot in front: no rotation,
    no product; the class token is a plain vector in the free slots."""
    conv = PatchConv((2, 2), (2, 2), (0, 0), (1, 1))
    image = values((2, 3, 4, 6))
    layout = conv.layout(tuple(image.shape))
    patches = encrypt(codec, engine, torch.from_numpy(conv.unfold(image)), layout)
    tokens = patches.reshape([2, 6, 12])  # (B, Ho Wo, features): a view
    cls = values((2, 1, 12), seed=1)
    before = engine.cost.to_dict()
    out = S.join([cls, tokens], 1)
    assert engine.cost.rotations == before["rotations"]
    assert engine.cost.ct_pt_mults == before["ct_pt_mults"]
    assert out.level == patches.level and out.clean
    want = torch.cat([cls, torch.from_numpy(conv.unfold(image)).reshape(2, 6, 12)], 1)
    assert_close(decrypt(codec, out), want, FREE)


@pytest.mark.parametrize("dim", [0, 1, 2])
@pytest.mark.parametrize("with_plain", [False, True])
def test_cat_of_encrypted_and_public_tensors(codec, engine, dim: int, with_plain: bool) -> None:
    layout = Layout.rows(SHAPE, 2)
    x = values(SHAPE)
    y = values(SHAPE, seed=1)
    a, b = encrypt(codec, engine, x, layout), encrypt(codec, engine, y, layout)
    parts: list[object] = [a, b]
    want = [x, y]
    if with_plain:
        plain = values(SHAPE, seed=2)
        plain[0, 0, 0] = torch.finfo(torch.float32).min  # a sentinel becomes -MASK_LIMIT
        parts.insert(1, plain)
        want.insert(1, torch.where(plain.abs() > 1e9, -MASK_LIMIT, plain))
    out = S.join(parts, dim)
    assert_close(decrypt(codec, out), torch.cat(want, dim), ONE_LEVEL)


def test_cat_of_a_replicated_cache_and_a_new_row(codec, engine) -> None:
    """A value cache as the diagonal attention leaves it (tokens in slots with replicas of
    span 8: token j also at j + 4) joined with one new token's row, as a generation step
    does: the replicas are not junk-free zeros, so terms that share a ciphertext are
    masked (they landed on the new row's slots and corrupted it)."""
    cache = values((1, 2, 4, 3))
    row = values((1, 2, 1, 3), seed=1)
    replicated = Layout((1, 2, 4, 3), (None, 8, 1, None), 0, (), (2, 8))
    a = encrypt(codec, engine, cache, replicated)
    b = encrypt(codec, engine, row, Layout((1, 2, 1, 3), (None, 8, 1, None), 0))
    out = S.join([a, b], 2)
    assert_close(decrypt(codec, out), torch.cat([cache, row], 2), ONE_LEVEL)


def test_stack_split_chunk_unbind_getitem(codec, engine) -> None:
    layout = Layout.rows(SHAPE, 2)
    x, y = values(SHAPE), values(SHAPE, seed=1)
    a, b = encrypt(codec, engine, x, layout), encrypt(codec, engine, y, layout)
    stacked = S._stack(call(aten.stack.default, [a, b], 1))
    assert_close(decrypt(codec, stacked), torch.stack([x, y], 1), ONE_LEVEL)
    for dim, sizes in ((1, [1, 2, 2]), (2, [1, 2, 2, 1])):
        pieces = S._split(call(aten.split_with_sizes.default, a, sizes, dim))
        for got, want in zip(pieces, x.split(sizes, dim), strict=True):
            assert_close(decrypt(codec, got), want, FREE)
        chunks = S._chunk(call(aten.chunk.default, a, 2, dim))
        for got, want in zip(chunks, x.chunk(2, dim), strict=True):
            assert_close(decrypt(codec, got), want, FREE)
    for i, got in enumerate(S._unbind(call(aten.unbind.int, a, 1))):
        assert_close(decrypt(codec, got), x[:, i], FREE)
    pieces = S._split(call(aten.split.Tensor, a, 4, 2))
    assert_close(decrypt(codec, S._getitem(call(S.operator.getitem, pieces, 1))), x[..., 4:], FREE)


# --- public masks -------------------------------------------------------------------------------
def _causal(n: int) -> torch.Tensor:
    return torch.tril(torch.ones(n, n, dtype=torch.bool))


@pytest.mark.parametrize("shape", [(1, 2, 4, 4), (2, 3, 5, 5)])
def test_where_with_a_public_mask_costs_one_level(codec, engine, shape) -> None:
    scores = values(shape) * 4
    x = encrypt(codec, engine, scores, Layout.rows(shape, 3))
    mask = _causal(shape[-1])
    out = S._where(call(aten.where.self, mask, x, torch.tensor(torch.finfo(torch.float32).min)))
    assert out.level == x.level - 1
    want = torch.where(mask, scores, torch.tensor(-MASK_LIMIT, dtype=torch.float64))
    assert_close(decrypt(codec, out), want, ONE_LEVEL)
    other = encrypt(codec, engine, values(shape, seed=1), Layout.rows(shape, 3))
    both = S._where(call(aten.where.self, mask, x, other))
    assert_close(decrypt(codec, both), torch.where(mask, scores, values(shape, seed=1)), ONE_LEVEL)
    filled = S._masked_fill(call(aten.masked_fill.Scalar, x, ~mask, -3.0))
    assert_close(decrypt(codec, filled), scores.masked_fill(~mask, -3.0), ONE_LEVEL)
    assert S._where(call(aten.where.self, torch.ones(shape, dtype=torch.bool), x, 0.0)) is x
    wide = torch.rand((3, *shape[1:]), generator=torch.Generator().manual_seed(4)) > 0.5
    row = encrypt(codec, engine, scores[:1], Layout.rows((1, *shape[1:]), 3))
    spread = S._where(call(aten.where.self, wide, row, 1.5))  # x broadcast over a new batch
    assert_close(decrypt(codec, spread), torch.where(wide, scores[:1], 1.5), ONE_LEVEL)


def test_an_additive_mask_with_finfo_min_reaches_the_scores_as_minus_200(codec, engine) -> None:
    """What Hugging Face attention adds to its scores: 0 where a key is kept, finfo.min
    where it is masked (padding, causal). The he add meets -200 in its place."""
    shape = (2, 2, 4, 4)
    scores = values(shape) * 8
    x = encrypt(codec, engine, scores, Layout.rows(shape, 3))
    keep = _causal(4) & torch.tensor([True, True, True, False])
    bias = torch.where(keep, 0.0, torch.finfo(torch.float32).min)
    add = S.structural_kernels(lambda c: c.args[0] + c.args[1], lambda c: None)["aten.add"]
    out = add(call(aten.add.Tensor, x, bias))
    want = scores + torch.where(keep, 0.0, -MASK_LIMIT)
    assert_close(decrypt(codec, out), want, FREE)
    assert float(torch.softmax(want, -1)[~keep.expand(shape)].max()) < 1e-80


def test_encrypted_conditions_and_indices_are_refused(codec, engine) -> None:
    x = encrypt(codec, engine, values(SHAPE), Layout.rows(SHAPE, 2))
    with pytest.raises(UnsupportedHeOp, match="encrypted condition"):
        S._where(call(aten.where.self, x, x, 0.0))
    with pytest.raises(UnsupportedHeOp, match="encrypted indices"):
        S._index(call(aten.index.Tensor, x, [None, x]))
    with pytest.raises(UnsupportedHeOp, match="rounds"):
        S._to(call(aten.to.dtype, x, torch.int64))


# --- cumsum -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [1, 2])
def test_cumsum_along_slots_and_ciphertexts(codec, engine, dim: int) -> None:
    x = values(SHAPE)
    tensor = encrypt(codec, engine, x, Layout.rows(SHAPE, 2), refresh=True)
    out = S.running_sum(tensor, dim)
    assert_close(decrypt(codec, out), x.cumsum(dim), ONE_LEVEL * 2)
    if dim == 2:
        assert out.level == tensor.level


# --- the patch convolution ------------------------------------------------------------------
GEOMETRIES = {
    "vit": dict(kernel_size=4, stride=4),
    "overlapping": dict(kernel_size=3, stride=1, padding=1),
    "strided-dilated-groups": dict(kernel_size=2, stride=2, dilation=2, groups=3),
}


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_unfolding_then_a_linear_layer_is_the_convolution(geometry: str) -> None:
    conv = torch.nn.Conv2d(3, 6, **GEOMETRIES[geometry]).double()  # type: ignore[arg-type]
    image = values((2, 3, 8, 8))
    geometry_of = PatchConv.of_call(
        "aten.conv2d",
        (None, None, None, list(conv.stride), list(conv.padding), list(conv.dilation)),
        tuple(conv.weight.shape),
    )
    patches = torch.from_numpy(geometry_of.unfold(image))
    from secinfer.backends.he.patches import convolution_weight

    weight = torch.from_numpy(convolution_weight(conv.weight, 3, conv.groups))
    got = (patches @ weight.T + conv.bias).permute(0, 3, 1, 2)
    assert_close(got, conv(image).detach(), 1e-12)


class PatchEmbedding(torch.nn.Module):
    """A ViT-style front: patch convolution, tokens, a class token in front, positions."""

    def __init__(self, **geometry: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, **geometry)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, 6))
        tokens = 1 + self._tokens(geometry)
        self.positions = torch.nn.Parameter(torch.randn(1, tokens, 6) * 0.1)

    @staticmethod
    def _tokens(geometry: dict[str, int]) -> int:
        conv = torch.nn.Conv2d(3, 6, **geometry)
        return int(conv(torch.zeros(1, 3, 8, 8)).shape[-1] ** 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.conv(x).flatten(2).transpose(1, 2)
        cls = self.cls.expand(x.shape[0], -1, -1)
        return torch.cat([cls, tokens], 1) + self.positions


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_a_patch_embedding_runs_on_the_unfolded_image(geometry: str) -> None:
    from conformance.he_session import HeRunner

    from secinfer.core.execute import Executor
    from secinfer.core.prepare import prepare

    module = PatchEmbedding(**GEOMETRIES[geometry]).eval()
    image = (values((2, 3, 8, 8)).float(),)
    graph, plan = prepare(torch.export.export(module, image), "he", [image], None)
    assert list(image_inputs(graph)) == ["x"]
    got = HeRunner().run(graph, plan, image)
    want = Executor(graph, "plain").run(image).outputs[0].double().numpy()
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, float(np.abs(want).max()))


class ConvTwice(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.one = torch.nn.Conv2d(3, 4, 2, stride=2)
        self.two = torch.nn.Conv2d(4, 4, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.two(self.one(x))


def test_a_convolution_of_a_computed_activation_is_refused_before_any_work() -> None:
    from secinfer.core.prepare import prepare

    image = (values((1, 3, 8, 8)).float(),)
    graph, plan = prepare(torch.export.export(ConvTwice().eval(), image), "he", [image], None)
    with pytest.raises(UnsupportedHeOp, match="computed activation") as caught:
        check_he_plan(graph, plan)
    assert "two" in str(caught.value) and "\n" not in str(caught.value)
