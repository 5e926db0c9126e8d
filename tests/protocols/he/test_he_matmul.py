"""Rotations and encrypted-times-plain matrix products on real TenSEAL CKKS (N = 8192)."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest

ts = pytest.importorskip("tenseal")

from tenseal import sealapi  # noqa: E402

from protocols.he import matmul as mm  # noqa: E402
from protocols.he.params import CkksParams, make_context  # noqa: E402
from protocols.he.polynomial import HeCost, levels_left  # noqa: E402
from protocols.he.rotation import (  # noqa: E402
    key_switches,
    naf,
    rotate,
    slot_count,
    vector_from_ciphertexts,
)

SLOTS = 4096
PARAMS = CkksParams(poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 40, 60], scale_bits=40)


@pytest.fixture(scope="module")
def ctx() -> ts.Context:
    """N = 8192, chain [60, 40, 40, 60] (2 levels), relinearisation and all Galois keys."""
    return make_context(PARAMS)


def _decrypt(vec: ts.CKKSVector) -> np.ndarray:
    return np.asarray(vec.decrypt(), dtype=np.float64)


def _all_slots(ctx: ts.Context, vec: ts.CKKSVector) -> np.ndarray:
    data = ctx.seal_context().data
    plain = sealapi.Plaintext()
    sealapi.Decryptor(data, ctx.secret_key().data).decrypt(vec.ciphertext()[0], plain)
    return np.asarray(sealapi.CKKSEncoder(data).decode_double(plain))


def _data(rows: int, d_in: int, d_out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (rows, d_in)), rng.uniform(-1, 1, (d_in, d_out))


# --- rotation -----------------------------------------------------------------------------
@pytest.mark.parametrize("n", [10, 64, 384])
def test_short_vectors_are_replicated_over_all_slots(ctx: ts.Context, n: int) -> None:
    x = np.arange(n, dtype=np.float64)
    slots = _all_slots(ctx, ts.ckks_vector(ctx, x.tolist()))
    assert slots.size == slot_count(ctx) == SLOTS
    np.testing.assert_allclose(slots, x[np.arange(SLOTS) % n], atol=1e-4)


def test_rotate_matches_roll(ctx: ts.Context) -> None:
    x = np.random.default_rng(0).uniform(-1, 1, 64)  # 64 divides S: any step is a roll
    vec = ts.ckks_vector(ctx, x.tolist())
    cost = HeCost()
    steps = [1, 3, 5, 63, -1, -7, -64, 100, 0, SLOTS + 2]
    for k in steps:
        out = rotate(vec, k, cost)
        assert out.size() == 64
        np.testing.assert_allclose(_decrypt(out), np.roll(x, -k), atol=1e-4)
        assert levels_left(out) == levels_left(vec)
    assert cost == HeCost(rotations=len(steps))
    np.testing.assert_allclose(_decrypt(vec), x, atol=1e-4)  # input untouched


def test_rotate_full_slot_vector(ctx: ts.Context) -> None:
    x = np.random.default_rng(1).uniform(-1, 1, SLOTS)
    vec = ts.ckks_vector(ctx, x.tolist())
    for k in (1, -3, 1000, -2048):
        np.testing.assert_allclose(_decrypt(rotate(vec, k)), np.roll(x, -k), atol=1e-4)


def test_rotate_short_vector_not_dividing_slots(ctx: ts.Context) -> None:
    """n = 384: positive steps up to S - n are rolls; negative steps read the truncated copy."""
    x = np.arange(384, dtype=np.float64)
    vec = ts.ckks_vector(ctx, x.tolist())
    for k in (1, 5, 383, SLOTS - 384):
        np.testing.assert_allclose(_decrypt(rotate(vec, k)), np.roll(x, -k), atol=1e-3)
    # right rotation by 2: slots 4094, 4095 hold x[4094 % 384], x[4095 % 384] = 254, 255
    np.testing.assert_allclose(_decrypt(rotate(vec, -2))[:3], [254.0, 255.0, 0.0], atol=1e-3)


def test_rotate_needs_galois_keys() -> None:
    bare = make_context(PARAMS, galois_steps=[])
    with pytest.raises(ValueError, match="Galois"):
        rotate(ts.ckks_vector(bare, [1.0, 2.0]), 1)


def test_vector_from_ciphertexts_roundtrip(ctx: ts.Context) -> None:
    x = np.random.default_rng(2).uniform(-1, 1, 100)
    vec = ts.ckks_vector(ctx, x.tolist())
    back = vector_from_ciphertexts(ctx, vec.ciphertext(), [100])
    np.testing.assert_allclose(_decrypt(back), x, atol=1e-6)
    np.testing.assert_allclose(_decrypt(back * 2.0 + vec), 3 * x, atol=1e-4)


def test_naf_and_key_switches() -> None:
    for k in [*range(-70, 71), 383, 1000, -2047]:
        terms = naf(k)
        assert sum(terms) == k
        assert all(abs(t) & (abs(t) - 1) == 0 for t in terms)  # powers of two
        bits = sorted(abs(t).bit_length() for t in terms)
        assert all(b - a >= 2 for a, b in itertools.pairwise(bits))  # non-adjacent
    assert [key_switches(k) for k in (0, 1, -1, 2, 3, 7, 11, SLOTS)] == [0, 1, 1, 1, 2, 2, 3, 1]
    assert key_switches(SLOTS, SLOTS) == 0


# --- matrix products ----------------------------------------------------------------------
def test_bsgs_split() -> None:
    assert mm.bsgs_split(128) == (8, 16)
    assert mm.bsgs_split(384) == (16, 24)
    assert mm.bsgs_split(16) == (4, 4)
    assert mm.bsgs_split(1) == (1, 1)
    for d in range(1, 300):
        n1, n2 = mm.bsgs_split(d)
        assert n1 * n2 >= d and n1 & (n1 - 1) == 0


SHAPES = [(3, 16, 8), (2, 20, 48), (4, 64, 32)]


@pytest.mark.parametrize(("rows", "d_in", "d_out"), [*SHAPES, (3, 48, 1500)])
def test_diagonal_bsgs_matches_numpy_and_cost_model(
    ctx: ts.Context, rows: int, d_in: int, d_out: int
) -> None:
    x, w = _data(rows, d_in, d_out, seed=rows + d_in + d_out)
    packed = mm.pack_rows(ctx, x, d_out)
    plan = mm.diagonal_bsgs_cost(rows, d_in, d_out, SLOTS)
    assert len(packed) == plan.ciphertexts_in
    cost = HeCost()
    out = mm.diagonal_bsgs(packed, w, cost)
    assert len(out) == plan.ciphertexts_out
    assert cost == plan.cost
    assert levels_left(out[0]) == levels_left(packed[0]) - 1
    y = mm.unpack_rows([_decrypt(v) for v in out], rows, d_in, d_out)
    np.testing.assert_allclose(y, x @ w, atol=1e-3)


def test_diagonal_bsgs_several_blocks_layout() -> None:
    # d_in + d_out - 1 = 1547 slots a row: 2 rows a ciphertext, 3 rows -> 2 ciphertexts
    plan = mm.diagonal_bsgs_cost(3, 48, 1500, SLOTS)
    assert plan.details["stride"] == 1547 and plan.details["rows_per_ciphertext"] == 2
    assert plan.ciphertexts_in == plan.ciphertexts_out == 2
    # MiniLM: 384 x 384 needs 767 slots a row: 5 rows a ciphertext, 32 rows -> 7
    plan = mm.diagonal_bsgs_cost(32, 384, 384, SLOTS)
    assert plan.details["rows_per_ciphertext"] == 5 and plan.ciphertexts_in == 7
    assert plan.cost.rotations == 7 * (15 + 23) == plan.key_switches


def test_diagonal_bsgs_128_uses_about_two_sqrt_rotations(ctx: ts.Context) -> None:
    x, w = _data(1, 128, 128, seed=7)
    cost = HeCost()
    out = mm.diagonal_bsgs(mm.pack_rows(ctx, x, 128), w, cost)
    np.testing.assert_allclose(mm.unpack_rows([_decrypt(out[0])], 1, 128, 128), x @ w, atol=1e-3)
    assert cost.rotations == 22 == mm.diagonal_bsgs_cost(1, 128, 128, SLOTS).cost.rotations
    assert cost.rotations <= 2 * math.ceil(math.sqrt(128))  # against 127 for plain diagonals
    assert mm.builtin_rows_cost(1, 128, 128, SLOTS).cost.rotations == 127


def test_diagonal_bsgs_skips_zero_diagonals(ctx: ts.Context) -> None:
    w = np.diag(np.arange(1.0, 17.0))  # only diagonal k = 0 is non-zero
    x = np.random.default_rng(3).uniform(-1, 1, (2, 16))
    cost = HeCost()
    out = mm.diagonal_bsgs(mm.pack_rows(ctx, x, 16), w, cost)
    np.testing.assert_allclose(mm.unpack_rows([_decrypt(out[0])], 2, 16, 16), x @ w, atol=1e-3)
    assert cost.ct_pt_mults == 1
    assert cost.rotations == 3  # the n1 - 1 = 3 baby steps; no giant step has a non-zero term


@pytest.mark.parametrize(("rows", "d_in", "d_out"), SHAPES)
def test_feature_major_matches_numpy_and_cost_model(
    ctx: ts.Context, rows: int, d_in: int, d_out: int
) -> None:
    x, w = _data(rows, d_in, d_out, seed=10 + rows)
    columns = mm.pack_features(ctx, x)
    plan = mm.feature_major_cost(rows, d_in, d_out, SLOTS)
    assert len(columns) == plan.ciphertexts_in
    cost = HeCost()
    out = mm.feature_major(columns, w, cost)
    assert len(out) == plan.ciphertexts_out
    assert cost == plan.cost and cost.rotations == 0
    assert levels_left(out[0]) == levels_left(columns[0]) - 1
    np.testing.assert_allclose(np.stack([_decrypt(v) for v in out], axis=1), x @ w, atol=1e-3)


def test_feature_major_mixed_levels_and_zero_weights(ctx: ts.Context) -> None:
    x, w = _data(3, 4, 3, seed=5)
    w[1, :] = 0.0
    columns = mm.pack_features(ctx, x)
    columns[2] = columns[2] * 1.0  # one level lower
    cost = HeCost()
    out = mm.feature_major(columns, w, cost)
    assert cost.ct_pt_mults == 9 and cost.additions == 6
    np.testing.assert_allclose(np.stack([_decrypt(v) for v in out], axis=1), x @ w, atol=1e-3)


@pytest.mark.parametrize(("rows", "d_in", "d_out"), SHAPES)
def test_builtin_rows_matches_numpy(ctx: ts.Context, rows: int, d_in: int, d_out: int) -> None:
    x, w = _data(rows, d_in, d_out, seed=20 + rows)
    vectors = [ts.ckks_vector(ctx, row.tolist()) for row in x]
    cost = HeCost()
    out = mm.builtin_rows(vectors, w, cost)
    plan = mm.builtin_rows_cost(rows, d_in, d_out, SLOTS)
    assert cost == plan.cost and len(out) == plan.ciphertexts_out == rows
    np.testing.assert_allclose(np.stack([_decrypt(v) for v in out]), x @ w, atol=1e-3)


def test_choose() -> None:
    strategy, reason = mm.choose(32, 384, 384, SLOTS)
    assert strategy == "diagonal_bsgs" and "key switches" in reason
    assert mm.choose(1, 384, 384, SLOTS)[0] == "diagonal_bsgs"
    assert mm.choose(64, 384, 2, SLOTS)[0] == "feature_major"  # a classifier head
    assert {p.strategy for p in mm.plans(32, 384, 384, SLOTS)} == set(mm.STRATEGIES)
    with pytest.raises(ValueError):
        mm.choose(0, 384, 384, SLOTS)


def test_builtin_vs_diagonal_at_minilm_width(ctx: ts.Context) -> None:
    """(1 x 384)(384 x 384): both correct; times are printed (`pytest -s`), not asserted."""
    x, w = _data(1, 384, 384, seed=11)
    w /= 20.0
    start = time.perf_counter()
    builtin = mm.builtin_rows([ts.ckks_vector(ctx, x[0].tolist())], w)
    t_builtin = time.perf_counter() - start
    packed = mm.pack_rows(ctx, x, 384)
    cost = HeCost()
    start = time.perf_counter()
    diagonal = mm.diagonal_bsgs(packed, w, cost)
    t_diagonal = time.perf_counter() - start
    np.testing.assert_allclose(_decrypt(builtin[0]), x[0] @ w, atol=1e-3)
    y = mm.unpack_rows([_decrypt(diagonal[0])], 1, 384, 384)
    np.testing.assert_allclose(y, x @ w, atol=1e-3)
    plan_b = mm.builtin_rows_cost(1, 384, 384, SLOTS)
    print(
        f"\n(1x384)(384x384) at N=8192: builtin_rows {t_builtin:.2f} s "
        f"({plan_b.cost.rotations} rotations, {plan_b.key_switches} key switches), "
        f"diagonal_bsgs {t_diagonal:.2f} s ({cost.rotations} rotations, "
        f"{cost.ct_pt_mults} products)"
    )
