"""Polynomial evaluation on real TenSEAL CKKS vectors: accuracy, depth, operation counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

ts = pytest.importorskip("tenseal")

from approximations import catalog, fit  # noqa: E402
from protocols.he.polynomial import (  # noqa: E402
    FOLD_LIMIT,
    HeCost,
    evaluate,
    evaluate_catalog,
    levels_left,
    plan,
)

POINTS = 1024


def _context(degree: int, bits: list[int]) -> ts.Context:
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, degree, coeff_mod_bit_sizes=bits)
    ctx.global_scale = 2.0**40
    ctx.generate_relin_keys()
    return ctx


@pytest.fixture(scope="module")
def ctx3() -> ts.Context:
    """N = 8192, 218 bits (the 128-bit bound): 3 levels."""
    return _context(8192, [60, 40, 40, 40, 38])


@pytest.fixture(scope="module")
def ctx4() -> ts.Context:
    """N = 16384: 4 levels."""
    return _context(16384, [60, 40, 40, 40, 40, 60])


def _plain(coefficients: np.ndarray, xs: np.ndarray) -> np.ndarray:
    return np.polynomial.polynomial.polyval(xs, coefficients)


def _decrypt(vec: ts.CKKSVector) -> np.ndarray:
    return np.asarray(vec.decrypt(), dtype=np.float64)


# --- the schedule, in plaintext ---------------------------------------------------------
@pytest.mark.parametrize("interval", [None, (-4.0, 4.0), (-8.0, 0.0), (0.2, 0.5), (-64.0, 64.0)])
@pytest.mark.parametrize("fold", [None, True, False])
def test_schedule_is_exact_in_float64(interval, fold) -> None:
    rng = np.random.default_rng(7)
    lo, hi = interval or (-1.0, 1.0)
    xs = np.linspace(lo, hi, 257)
    for degree in range(0, 17):
        coeffs = rng.normal(size=degree + 1) / max(abs(lo), abs(hi)) ** np.arange(degree + 1)
        got = plan(coeffs, interval, fold=fold).run(xs)
        want = _plain(coeffs, xs)
        assert np.max(np.abs(got - want)) <= 1e-9 * max(1.0, np.max(np.abs(want)))


# Dense polynomials: (degree, ct-ct, ct-pt, depth), the table of the module docstring.
DENSE = [(1, 0, 1, 1), (2, 1, 2, 2), (3, 2, 2, 2), (4, 3, 3, 3), (5, 4, 3, 3), (6, 4, 4, 3),
         (7, 5, 4, 3), (8, 6, 5, 4), (15, 10, 8, 4), (16, 11, 9, 5)]  # fmt: skip


@pytest.mark.parametrize(("degree", "ct_ct", "ct_pt", "depth"), DENSE)
def test_predicted_counts_for_dense_polynomials(degree, ct_ct, ct_pt, depth) -> None:
    coeffs = np.linspace(1.0, 2.0, degree + 1)
    for schedule in (plan(coeffs), plan(coeffs, (-1.0, 1.0))):
        assert (schedule.cost.ct_ct_mults, schedule.cost.ct_pt_mults) == (ct_ct, ct_pt)
        assert schedule.depth == schedule.cost.depth == depth
        assert schedule.cost.rotations == 0


def test_fold_rule() -> None:
    assert plan(np.ones(8), (-4.0, 4.0)).folded  # 4^7 = 2^14
    assert plan(np.ones(9), (-8.0, 0.0)).folded  # 4^8 = 2^16 = FOLD_LIMIT
    wide = plan(np.ones(4), (-64.0, 64.0))  # 64^3 = 2^18 > FOLD_LIMIT
    assert not wide.folded and wide.depth == 3 and wide.cost.ct_pt_mults == 3
    assert FOLD_LIMIT == 2.0**16


def test_fold_rule_on_a_wide_interval_at_high_degree() -> None:
    # 200^150 overflows a float: the rule is decided in logarithms (a decoder's tanh-GELU)
    wide = plan(np.ones(151), (-200.0, 200.0))
    assert not wide.folded


def test_cost_arithmetic() -> None:
    a = HeCost(ct_ct_mults=1, ct_pt_mults=2, additions=3, rotations=0, depth=2)
    b = HeCost(ct_ct_mults=5, ct_pt_mults=4, additions=7, rotations=1, depth=3)
    assert (a + b).to_dict() == {
        "ct_ct_mults": 6,
        "ct_pt_mults": 6,
        "additions": 10,
        "rotations": 1,
        "depth": 5,
    }
    a.accumulate(b)
    assert a == HeCost(6, 6, 10, 1, 5)


# --- on ciphertexts -------------------------------------------------------------------------
def test_degree_3_dense_off_centre(ctx3) -> None:
    """exp on [-1, 2] (mid 0.5, half 1.5): every Chebyshev coefficient non-zero.

    Schedule: u = x - 0.5 (1 addition); S_2 = 2 u^2 - 1.5^2 (1 ct-ct, 2 additions);
    p = q + S_2 r with leaves q = q_0 + q_1 u, r = r_0 + r_1 u (1 ct-pt and 1 addition
    each); S_2 * r (1 ct-ct) + q (1 addition): 2 ct-ct, 2 ct-pt, 6 additions, depth 2.
    """
    poly = fit(torch.exp, (-1.0, 2.0), 3, "chebyshev")
    xs = np.linspace(-1.0, 2.0, POINTS)
    x = ts.ckks_vector(ctx3, xs.tolist())
    cost = HeCost()
    y = evaluate(x, poly.coefficients, interval=(-1.0, 2.0), cost=cost)
    assert np.max(np.abs(_decrypt(y) - _plain(poly.coefficients, xs))) < 1e-3
    assert cost == HeCost(ct_ct_mults=2, ct_pt_mults=2, additions=6, rotations=0, depth=2)
    assert levels_left(y) == 1
    assert levels_left(x) == 3  # the input keeps its levels


def test_degree_7_tanh(ctx3) -> None:
    """tanh on [-4, 4], degree 7 (odd: c_0 = c_2 = c_4 = c_6 = 0), folded (4^7 = 2^14).

    Schedule: giants S_2 = 2 u^2 - 16, S_4 = 2 S_2^2 - 256 (2 ct-ct, 4 additions);
    p = q + S_4 r, q = [0, c_1 - c_7, 0, c_3 - c_5], r = [0, 2 c_5, 0, 2 c_7] / 4^4;
    each of q, r = leaf + S_2 * leaf with no constant terms (1 ct-ct, 2 ct-pt,
    1 addition); top S_4 * r + q (1 ct-ct, 1 addition):
    5 ct-ct, 4 ct-pt, 7 additions, depth 3 = ceil(log2 8).
    """
    poly = fit(torch.tanh, (-4.0, 4.0), 7, "chebyshev")
    xs = np.linspace(-4.0, 4.0, POINTS)
    x = ts.ckks_vector(ctx3, xs.tolist())
    cost = HeCost()
    y = evaluate(x, poly.coefficients, interval=(-4.0, 4.0), cost=cost)
    assert np.max(np.abs(_decrypt(y) - _plain(poly.coefficients, xs))) < 1e-3
    assert cost == HeCost(ct_ct_mults=5, ct_pt_mults=4, additions=7, rotations=0, depth=3)
    assert cost.depth == plan(poly.coefficients, (-4.0, 4.0)).depth == 3
    assert levels_left(y) == 0

    # The same polynomial from its own Chebyshev coefficients: same schedule.
    other = HeCost()
    z = evaluate_catalog(x, poly, cost=other)
    assert other == cost
    assert np.max(np.abs(_decrypt(z) - poly(torch.from_numpy(xs)).numpy())) < 1e-3


def test_catalog_quadratic(ctx3) -> None:
    """gelu.quad, 0.125 x^2 + 0.25 x + 0.5 on [-4, 4]: depth 2, 1 ct-ct, 2 ct-pt."""
    entry = catalog["gelu.quad"]
    xs = np.linspace(*entry.interval, POINTS)
    x = ts.ckks_vector(ctx3, xs.tolist())
    cost = HeCost()
    y = evaluate_catalog(x, entry, cost=cost)
    want = entry.approximation(torch.from_numpy(xs)).numpy()
    assert np.max(np.abs(_decrypt(y) - want)) < 1e-3
    assert (cost.ct_ct_mults, cost.ct_pt_mults, cost.depth) == (1, 2, 2)


def test_power_basis_without_interval(ctx3) -> None:
    coeffs = [0.5, -1.0, 0.75, 0.25]
    xs = np.linspace(-1.0, 1.0, POINTS)
    x = ts.ckks_vector(ctx3, xs.tolist())
    cost = HeCost()
    y = evaluate(x, coeffs, cost=cost)
    assert np.max(np.abs(_decrypt(y) - _plain(np.array(coeffs), xs))) < 1e-4
    # x^2 (1), (c_2 + c_3 x) * x^2 (1); leaves c_0 + c_1 x and c_2 + c_3 x
    assert (cost.ct_ct_mults, cost.ct_pt_mults, cost.depth) == (2, 2, 2)


def test_unfolded_interval_costs_one_more_level(ctx3) -> None:
    """Degree 3 on [-64, 64]: growth 64^3 = 2^18 > FOLD_LIMIT, so t = x / 64 is one more
    ct-pt product and one more level: T_2 = 2 t^2 - 1 and T_2 * r (2 ct-ct); t and the
    leaves q = (c_1 - c_3) t, r = 2 c_3 t (3 ct-pt); depth 2 + 1 = 3."""
    poly = fit(lambda v: torch.tanh(v / 32.0), (-64.0, 64.0), 3, "chebyshev")
    xs = np.linspace(-64.0, 64.0, POINTS)
    x = ts.ckks_vector(ctx3, xs.tolist())
    cost = HeCost()
    y = evaluate_catalog(x, poly, cost=cost)
    assert np.max(np.abs(_decrypt(y) - poly(torch.from_numpy(xs)).numpy())) < 1e-3
    assert (cost.ct_ct_mults, cost.ct_pt_mults, cost.depth) == (2, 3, 3)


def test_too_deep_raises_before_touching_seal(ctx3) -> None:
    xs = np.linspace(-1.0, 1.0, 64)
    x = ts.ckks_vector(ctx3, xs.tolist())
    coeffs = np.linspace(1.0, 2.0, 9)  # degree 8: depth 4
    with pytest.raises(ValueError, match="needs 4 levels but the ciphertext has 3 left"):
        evaluate(x, coeffs, interval=(-1.0, 1.0))
    squared = x * x  # 2 levels left
    with pytest.raises(ValueError, match="needs 3 levels but the ciphertext has 2 left"):
        evaluate(squared, coeffs[:8], interval=(-1.0, 1.0))
    assert levels_left(x) == 3
    with pytest.raises(ValueError, match="not a single polynomial"):
        evaluate_catalog(x, catalog["gelu.puma"])


def test_depth_4_at_16384(ctx4) -> None:
    """Degree 15 (dense: exp on [-2, 2], folded, growth 2^15) and the catalog's degree-8
    exp.minimax on [-8, 0] (growth 4^8 = 2^16): both in 4 = ceil(log2(d + 1)) levels."""
    poly = fit(torch.exp, (-2.0, 2.0), 15, "chebyshev")
    xs = np.linspace(-2.0, 2.0, POINTS)
    cost = HeCost()
    y = evaluate(
        ts.ckks_vector(ctx4, xs.tolist()), poly.coefficients, interval=(-2.0, 2.0), cost=cost
    )
    assert np.max(np.abs(_decrypt(y) - _plain(poly.coefficients, xs))) < 1e-3
    predicted = plan(poly.coefficients, (-2.0, 2.0)).cost
    assert cost == predicted
    assert (cost.ct_ct_mults, cost.ct_pt_mults, cost.depth) == (10, 8, 4)

    entry = catalog["exp.minimax"]
    xs = np.linspace(*entry.interval, POINTS)
    cost = HeCost()
    y = evaluate_catalog(ts.ckks_vector(ctx4, xs.tolist()), entry, cost=cost)
    want = entry.approximation(torch.from_numpy(xs)).numpy()
    assert np.max(np.abs(_decrypt(y) - want)) < 1e-3
    assert (cost.ct_ct_mults, cost.ct_pt_mults, cost.depth) == (6, 5, 4)
