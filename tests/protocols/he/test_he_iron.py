"""Iron's compact packing (`protocols.he.iron`) on real SEAL BFV through `tenseal.sealapi`.

Most tests run a ring of degree 1024 (insecure parameters, `secure=False`) so that small
shapes already need many blocks; one runs the default, 128-bit secure N = 8192 parameters.
Tolerances: the fixed-point bound `iron.error_bound` (the BFV arithmetic itself is exact).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ts = pytest.importorskip("tenseal")

from protocols.he import iron  # noqa: E402
from protocols.he.polynomial import HeCost  # noqa: E402

SMALL = iron.IronParams(poly_modulus_degree=1024, secure=False)


@pytest.fixture(scope="module")
def small() -> tuple[iron.IronClient, object]:
    client = iron.IronClient(SMALL)
    return client, SMALL.context()


def _data(rows: int, d_in: int, d_out: int, seed: int, x_range: float = 1.0) -> tuple:
    rng = np.random.default_rng([seed, rows, d_in, d_out])
    x = rng.uniform(-x_range, x_range, (rows, d_in))
    w = rng.normal(0.0, 1.0 / math.sqrt(d_in), (d_in, d_out))
    return x, w


def _run(client: iron.IronClient, context, x, w, cost: HeCost | None = None):
    params = client.params
    plan = iron.iron_cost(x.shape[0], x.shape[1], w.shape[1], params)
    blobs = client.pack(x, plan)
    outputs, mask = iron.multiply(context, iron.load_inputs(context, blobs), w, plan, params, cost)
    sent = [iron.to_bytes(ct) for ct in outputs]
    return plan, blobs, sent, mask


def _negacyclic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a b in Z[x] / (x^N + 1), exact (object integers)."""
    n = a.size
    full = np.convolve(a.astype(object), b.astype(object))
    out = full[:n].copy()
    out[: full.size - n] -= full[n:]
    return out


# --- the packing formula, in plain integers --------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    n_i=st.integers(1, 6),
    n_k=st.integers(1, 9),
    n_o=st.integers(1, 9),
    slack=st.integers(0, 40),
    seed=st.integers(0, 2**16),
)
def test_wanted_coefficients_hold_the_inner_products(n_i, n_k, n_o, slack, seed) -> None:
    """x^ w^ in Z[x]/(x^N + 1) has sum_k X[i,k] W[k,o] at i n_k n_o + o n_k + n_k - 1 for
    every N >= n_i n_k n_o, including N = n_i n_k n_o where the top terms wrap around."""
    degree = n_i * n_k * n_o + slack
    plan = iron.IronPlan(n_i, n_k, n_o, degree, n_i, n_k, n_o)
    rng = np.random.default_rng(seed)
    x = rng.integers(-1000, 1000, (n_i, n_k))
    w = rng.integers(-1000, 1000, (n_k, n_o))
    xp, wp = np.zeros(degree, dtype=np.int64), np.zeros(degree, dtype=np.int64)
    xp[plan.x_exponents()] = x
    wp[plan.w_exponents()] = w
    product = _negacyclic(xp, wp)
    assert np.array_equal(product[plan.y_exponents()].astype(np.int64), x @ w)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 40), d_in=st.integers(1, 70), d_out=st.integers(1, 70))
def test_block_sizes_minimise_the_weighted_ciphertexts(rows, d_in, d_out) -> None:
    """Against an exhaustive search over every (n_i, n_k) at N = 256."""
    degree = 256
    n_i, n_k, n_o = iron.block_sizes(rows, d_in, d_out, degree)
    assert n_i * n_k * n_o <= degree and n_i <= rows and n_k <= d_in and n_o <= d_out

    def key(a, b, c):
        t_i, t_k, t_o = -(-rows // a), -(-d_in // b), -(-d_out // c)
        return (t_i * t_k + 2 * t_i * t_o, t_i * t_k * t_o, t_k * t_o)

    best = min(
        key(a, b, min(d_out, degree // (a * b)))
        for a in range(1, min(rows, degree) + 1)
        for b in range(1, min(d_in, degree // a) + 1)
    )
    assert key(n_i, n_k, n_o) == best


def test_block_sizes_at_the_bench_shapes() -> None:
    """All products fit N = 8192; one row takes the whole ring for W, many rows share it."""
    for shape in ((1, 384, 384), (32, 384, 384), (32, 384, 1536), (128, 768, 768)):
        plan = iron.iron_cost(*shape)
        assert plan.n_i * plan.n_k * plan.n_o <= 8192
    assert iron.iron_cost(1, 384, 384).n_i == 1
    assert iron.iron_cost(32, 384, 384).n_i == 32


# --- encrypted products against numpy --------------------------------------------------------
SHAPES = [(1, 8, 8), (1, 100, 37), (3, 17, 29), (7, 64, 48), (16, 33, 128), (32, 96, 80)]


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_numpy_within_the_fixed_point_bound(small, shape) -> None:
    client, context = small
    x, w = _data(*shape, seed=1)
    plan, _, sent, mask = _run(client, context, x, w)
    y = client.unpack(sent, plan) - mask.values
    err = np.abs(y - x @ w)
    assert np.all(err <= iron.error_bound(x, w, SMALL) + 1e-9)
    assert plan.ciphertexts_out == len(sent)


@pytest.mark.parametrize("x_range", [17.0, 40.0])
def test_outlier_activations(small, x_range) -> None:
    """GELU inputs to +-17, attention-score-like values to +-40, trained-size weights."""
    client, context = small
    x, w = _data(12, 48, 40, seed=2, x_range=x_range)
    w[0, :] = 3.0  # a few large weights, as trained layers have
    plan, _, sent, mask = _run(client, context, x, w)
    y = client.unpack(sent, plan) - mask.values
    assert np.max(np.abs(x @ w)) > 50
    assert np.all(np.abs(y - x @ w) <= iron.error_bound(x, w, SMALL) + 1e-9)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.integers(1, 32), d_in=st.integers(8, 128), d_out=st.integers(8, 128))
def test_any_shape_is_exact_in_integers(small, rows, d_in, d_out) -> None:
    """Decrypted z - r equals X_int W_int exactly, for every entry and any shape."""
    client, context = small
    x, w = _data(rows, d_in, d_out, seed=3)
    plan, _, sent, mask = _run(client, context, x, w)
    x_int = np.rint(np.ldexp(x, SMALL.x_frac_bits)).astype(np.int64)
    w_int = np.rint(np.ldexp(w, SMALL.w_frac_bits)).astype(np.int64)
    assert np.array_equal(client.unpack_integers(sent, plan) - mask.integers, x_int @ w_int)


def test_counts_and_bytes_match_the_cost_model(small) -> None:
    client, context = small
    x, w = _data(9, 70, 50, seed=4)
    cost = HeCost()
    plan, blobs, sent, _ = _run(client, context, x, w, cost)
    assert plan.tiles[1] > 1 and plan.tiles[2] > 1  # several blocks each way
    assert (len(blobs), len(sent)) == (plan.ciphertexts_in, plan.ciphertexts_out)
    assert cost.ct_pt_mults == plan.cost.ct_pt_mults and cost.additions == plan.cost.additions
    assert cost.rotations == 0 and plan.key_switches == 0
    # seeded inputs: one polynomial; outputs: two; SEAL adds a header of < 300 bytes
    assert 0 <= sum(map(len, blobs)) - plan.bytes_in <= 300 * len(blobs)
    assert 0 <= sum(map(len, sent)) - plan.bytes_out <= 300 * len(sent)


def test_secure_default_parameters() -> None:
    """N = 8192, primes [60, 60, 60], t = 2^59: the parameters the bench uses."""
    params = iron.IronParams()
    client, context = iron.IronClient(params), params.context()
    x, w = _data(5, 100, 70, seed=5)
    plan, _, sent, mask = _run(client, context, x, w)
    y = client.unpack(sent, plan) - mask.values
    assert np.all(np.abs(y - x @ w) <= iron.error_bound(x, w, params) + 1e-9)
    outputs = [iron.from_bytes(context, data) for data in sent]
    assert min(client.noise_budget(ct) for ct in outputs) > 0


def test_read_back_into_slots_by_the_refresh_round_trip(small) -> None:
    """The client re-encrypts its masked result in CKKS slots (one vector per output
    column), the server subtracts r / 2^f there: X W under CKKS, the mask gone."""
    client, context = small
    x, w = _data(6, 40, 5, seed=6)
    plan, _, sent, mask = _run(client, context, x, w)
    ckks = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    ckks.global_scale = 2.0**40
    masked = client.unpack(sent, plan)
    columns = [ts.ckks_vector(ckks, masked[:, j].tolist()) for j in range(5)]
    unmasked = [vec - mask.values[:, j].tolist() for j, vec in enumerate(columns)]
    y = np.array([vec.decrypt() for vec in unmasked]).T
    assert np.all(np.abs(y - x @ w) <= iron.error_bound(x, w, SMALL) + 1e-6)


# --- what the client sees ---------------------------------------------------------------------
def _recover_w(client, plan, ciphertext, x) -> np.ndarray:
    """The client's attack: X is known, each coefficient is linear in W; solve for W from
    the UNUSED coefficients of one output (one row, one inner block) by least squares."""
    degree = plan.degree
    x_poly = np.zeros(degree)
    x_poly[plan.x_exponents()[: x.shape[0], : x.shape[1]]] = np.rint(
        np.ldexp(x, client.params.x_frac_bits)
    )
    columns = []
    for e in plan.w_exponents().reshape(-1):
        shifted = np.roll(x_poly, e)
        shifted[:e] *= -1  # x^N = -1
        columns.append(shifted)
    unused = plan.unused_positions()
    a = np.array(columns).T[unused]
    c = client.coefficients(ciphertext)[unused].astype(np.float64)
    solution = np.linalg.lstsq(a, c, rcond=None)[0]
    return np.rint(solution).reshape(plan.n_k, plan.n_o)


def test_unused_coefficients_reveal_w_unless_masked(small) -> None:
    """Unmasked (`iron.products`), the unused coefficients give W exactly; masked (what
    `multiply` sends), the same attack recovers nothing."""
    client, context = small
    x, w = _data(1, 12, 6, seed=7)
    plan = iron.iron_cost(1, 12, 6, SMALL)
    assert plan.tiles == (1, 1, 1)
    w_int = np.rint(np.ldexp(w, SMALL.w_frac_bits))
    weight = iron.encode_weight(context, w, plan, SMALL)
    inputs = iron.load_inputs(context, client.pack(x, plan))
    (plain_out,) = iron.products(context, inputs, weight, plan)
    assert np.array_equal(_recover_w(client, plan, plain_out, x), w_int)

    inputs = iron.load_inputs(context, client.pack(x, plan))
    (masked_out,), _ = iron.multiply(context, inputs, w, plan, SMALL)
    guess = _recover_w(client, plan, masked_out, x)
    assert np.mean(guess == w_int) < 0.05


def _top_bits_chi2(values: np.ndarray, t: int, bins: int = 8) -> float:
    top = (np.mod(values, t) * bins) // t
    counts = np.bincount(top.astype(np.int64), minlength=bins)
    expected = values.size / bins
    return float(np.sum((counts - expected) ** 2 / expected))


def test_masked_unused_coefficients_are_uniform_mod_t(small) -> None:
    """Their top three bits are uniform (chi-square, 7 degrees of freedom, p ~ 1e-4 cut);
    the unmasked ones are small cross sums, far from uniform (the test can fail)."""
    client, context = small
    x, w = _data(4, 60, 40, seed=8)
    plan = iron.iron_cost(4, 60, 40, SMALL)
    t = SMALL.plain_modulus
    unused = plan.unused_positions()
    weight = iron.encode_weight(context, w, plan, SMALL)
    plain_outs = iron.products(
        context, iron.load_inputs(context, client.pack(x, plan)), weight, plan
    )
    raw = np.concatenate([client.coefficients(ct)[unused] for ct in plain_outs])
    masked_outs, _ = iron.multiply(
        context, iron.load_inputs(context, client.pack(x, plan)), w, plan, SMALL
    )
    seen = np.concatenate([client.coefficients(ct)[unused] for ct in masked_outs])
    assert raw.size > 1500
    assert _top_bits_chi2(raw, t) > 1000
    assert _top_bits_chi2(seen, t) < 30
    # and the masked values are not the raw ones shifted by a constant
    assert abs(np.corrcoef(raw.astype(float), seen.astype(float))[0, 1]) < 0.1


def test_wanted_entries_carry_the_refresh_mask(small) -> None:
    """z - Y_int = r, uniform on [-R, R), fresh per call, R = 2^(mask_bits + f)."""
    client, context = small
    x, w = _data(8, 30, 30, seed=9)
    half = 2 ** (SMALL.mask_bits + SMALL.frac_bits)
    masks = [_run(client, context, x, w)[3].integers for _ in range(2)]
    for r in masks:
        assert r.min() >= -half and r.max() < half
        assert np.std(r) > 0.4 * half  # uniform on [-R, R): std R / sqrt(3) = 0.577 R
    assert not np.any(masks[0] == masks[1])
    assert SMALL.hiding_bits(64.0) == pytest.approx(12.0)


# --- refusals ---------------------------------------------------------------------------------
def test_refuses_what_it_cannot_compute(small) -> None:
    client, context = small
    plan = iron.iron_cost(2, 10, 10, SMALL)
    with pytest.raises(ValueError, match="plan of 2 x 10"):
        client.pack(np.ones((3, 10)), plan)
    with pytest.raises(ValueError, match="finite"):
        client.pack(np.full((2, 10), np.nan), plan)
    huge = np.full((10, 10), 2.0**35)  # W_int = 2^54: the noise bound exceeds 1/2
    with pytest.raises(ValueError, match="w_frac_bits"):
        iron.encode_weight(context, huge, plan, SMALL)
    with pytest.raises(ValueError, match="all zero"):
        iron.multiply(
            context, iron.load_inputs(context, client.pack(np.ones((2, 10)), plan)),
            np.zeros((10, 10)), plan, SMALL,
        )  # fmt: skip
    with pytest.raises(ValueError, match="expected 1 output"):
        client.unpack([], plan)
    with pytest.raises(ValueError, match="not 128-bit secure"):
        iron.IronParams(poly_modulus_degree=1024)
    with pytest.raises(ValueError, match="no room"):
        iron.IronParams(mask_bits=19)


def test_foreign_ciphertext_is_refused(small) -> None:
    """A ciphertext under other parameters does not load (SEAL's validity check)."""
    _, context = small
    other = iron.IronClient(iron.IronParams(poly_modulus_degree=2048, secure=False))
    plan = iron.iron_cost(1, 4, 4, other.params)
    (blob,) = other.pack(np.ones((1, 4)), plan)
    with pytest.raises((ValueError, RuntimeError)):
        iron.from_bytes(context, blob)
    with pytest.raises((ValueError, RuntimeError)):
        iron.from_bytes(context, blob[: len(blob) // 2])


def test_all_positions_are_used_or_masked() -> None:
    for n_i, n_k, n_o in itertools.product((1, 3), (1, 4), (2, 5)):
        plan = iron.IronPlan(n_i, n_k, n_o, 64, n_i, n_k, n_o)
        assert plan.unused_positions().size + n_i * n_o == 64


@pytest.mark.parametrize("scale", [0.05, 30.0, 3000.0])
def test_noise_bound_holds_against_seal(small, scale) -> None:
    """SEAL's measured noise budget of every output is at least what `noise_bound` allows
    (budget = -log2(2 v)), from small weights to ones 60000 times larger."""
    client, context = small
    x, w = _data(3, 50, 20, seed=10)
    w = w * scale
    plan = iron.iron_cost(3, 50, 20, SMALL)
    w_int = np.rint(np.ldexp(w, SMALL.w_frac_bits)).astype(np.int64)
    bound = iron.noise_bound(context, w_int, plan, SMALL)
    outputs, mask = iron.multiply(
        context, iron.load_inputs(context, client.pack(x, plan)), w, plan, SMALL
    )
    budgets = [client.noise_budget(ct) for ct in outputs]
    assert min(budgets) >= math.floor(-math.log2(2 * bound))
    assert min(budgets) > 0
    y = client.unpack([iron.to_bytes(ct) for ct in outputs], plan) - mask.values
    assert np.all(np.abs(y - x @ w) <= iron.error_bound(x, w, SMALL) + 1e-9)
