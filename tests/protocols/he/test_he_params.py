"""CKKS parameter planner against the HE standard's table and real TenSEAL contexts."""

from __future__ import annotations

import inspect
import itertools
import json

import numpy as np
import pytest
import tenseal as ts

from protocols.he.params import (
    MAX_BITS_128,
    CkksParams,
    DepthError,
    context_bytes,
    make_context,
    max_depth,
    plan_params,
    public_copy,
    refresh_points,
)

# HomomorphicEncryption.org standard (2018), Table 1: 128-bit classical, ternary secret.
STANDARD = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


def expected_degree(chain_bits: int, min_slots: int = 0) -> int | None:
    """Smallest planned N whose bound holds `chain_bits`, straight from the table."""
    for n in (4096, 8192, 16384, 32768):
        if chain_bits <= STANDARD[n] and n // 2 >= min_slots:
            return n
    return None


def test_table_is_the_standard() -> None:
    assert MAX_BITS_128 == STANDARD


@pytest.mark.parametrize("depth", range(20))
def test_planner_picks_smallest_secure_degree(depth: int) -> None:
    params = plan_params(depth)
    chain = [60, *([40] * depth), 60]  # the recipe at s = 40, integer bits 20
    assert params.coeff_mod_bit_sizes == chain
    assert params.poly_modulus_degree == expected_degree(sum(chain))
    assert params.depth == depth
    assert params.scale_bits == 40
    assert params.total_bits == sum(chain) <= STANDARD[params.poly_modulus_degree]
    assert params.max_bits == STANDARD[params.poly_modulus_degree]
    assert params.slots == params.poly_modulus_degree // 2


def test_small_and_large_depths() -> None:
    # 60 + 2 x 40 + 60 = 200 <= 218; 60 + 3 x 40 + 60 = 240 > 218 but <= 438.
    assert plan_params(2).poly_modulus_degree == 8192
    assert plan_params(3).poly_modulus_degree == 16384
    assert plan_params(7).poly_modulus_degree == 16384  # 400 <= 438
    assert plan_params(8).poly_modulus_degree == 32768  # 440 > 438
    assert plan_params(0).poly_modulus_degree == 8192  # 120 > 109: 4096 holds nothing here


def test_too_deep_raises_with_depth_numbers() -> None:
    with pytest.raises(DepthError) as err:
        plan_params(20)  # 60 + 800 + 60 = 920 > 881; 19 is the most at 32768
    message = str(err.value)
    assert "depth 20" in message and "is 19" in message and "refresh" in message
    assert isinstance(err.value, ValueError)
    with pytest.raises(DepthError, match=r"depth 8 .* is 7\b"):
        plan_params(8, max_degree=16384)


def test_slots_and_precision_options() -> None:
    assert plan_params(1, min_slots=8192).poly_modulus_degree == 16384
    with pytest.raises(ValueError, match="slots"):
        plan_params(1, min_slots=32768)
    # precision 30 -> scale 40; 35 -> 45 (edges capped at 60); 50 -> 60.
    assert plan_params(1, precision_bits=30).coeff_mod_bit_sizes == [60, 40, 60]
    assert plan_params(1, precision_bits=35).coeff_mod_bit_sizes == [60, 45, 60]
    assert plan_params(1, precision_bits=50).coeff_mod_bit_sizes == [60, 60, 60]
    with pytest.raises(ValueError, match="at least 61"):
        plan_params(1, precision_bits=51)
    with pytest.raises(ValueError, match="at least 30"):
        plan_params(1, scale_bits=25)
    # Edges are s + integer bits, at least s.
    assert plan_params(2, integer_bits=0).coeff_mod_bit_sizes == [40, 40, 40, 40]
    # A 30-bit scale with 20 integer bits: [50, 50] = 100 <= 109 fits 4096.
    small = plan_params(0, precision_bits=20, scale_bits=30)
    assert small.poly_modulus_degree == expected_degree(100) == 4096
    with pytest.raises(ValueError):
        plan_params(-1)
    with pytest.raises(ValueError):
        plan_params(2, max_degree=10000)


def test_max_depth_matches_table() -> None:
    for n in (4096, 8192, 16384, 32768):
        budget = STANDARD[n] - 120
        assert max_depth(n) == (budget // 40 if budget >= 0 else -1)
    assert [max_depth(n) for n in (4096, 8192, 16384, 32768)] == [-1, 2, 7, 19]
    assert max_depth(8192, scale_bits=30, integer_bits=10) == (218 - 80) // 30
    for n in (8192, 16384, 32768):
        assert plan_params(max_depth(n), max_degree=n).poly_modulus_degree <= n


@pytest.mark.parametrize("n", [8192, 16384])
def test_seal_enforces_the_same_bound(n: int) -> None:
    """The planner's deepest chain at N is accepted by SEAL; one more prime is refused by
    both CkksParams and SEAL."""
    params = plan_params(max_depth(n), max_degree=n)
    assert params.poly_modulus_degree == n
    context = make_context(params, galois_steps=[])
    assert context.is_private() and context.has_relin_keys()
    deeper = [*params.coeff_mod_bit_sizes, 40]
    with pytest.raises(ValueError, match="128-bit"):
        CkksParams(n, deeper, 40)
    with pytest.raises(ValueError):
        ts.context(ts.SCHEME_TYPE.CKKS, n, coeff_mod_bit_sizes=deeper)


def test_params_round_trip_and_explain() -> None:
    params = plan_params(3)
    text = json.dumps(params.to_dict())
    again = CkksParams.from_dict(json.loads(text))
    assert again == params and hash(again) == hash(params)
    with pytest.raises(ValueError, match="keys"):
        CkksParams.from_dict({**params.to_dict(), "extra": 1})
    with pytest.raises(AttributeError):
        params.scale_bits = 30  # type: ignore[misc]
    explanation = params.explain()
    for fragment in ("N=16384", "8192 slots", "depth 3", "240 of the 438 bits", "N=8192"):
        assert fragment in explanation
    # The dataclass keeps its own copy of the chain.
    bits = [60, 40, 60]
    p = CkksParams(8192, bits, 40)
    bits.append(40)
    assert p.coeff_mod_bit_sizes == [60, 40, 60]


@pytest.fixture(scope="module")
def planned() -> tuple[CkksParams, ts.Context]:
    params = plan_params(2)
    return params, make_context(params)


def test_context_multiplies_depth_times(planned: tuple[CkksParams, ts.Context]) -> None:
    params, context = planned
    assert params.poly_modulus_degree == 8192
    assert context.global_scale == 2.0**40
    rng = np.random.default_rng(0)
    x = rng.uniform(0.9, 1.1, 256)
    vector = ts.ckks_vector(context, x.tolist())
    for _ in range(params.depth):
        vector = vector * vector
    expected = x ** (2**params.depth)
    assert np.max(np.abs(np.array(vector.decrypt()) - expected)) < 1e-3
    with pytest.raises(ValueError, match="scale out of bounds"):
        vector * vector  # the chain is exhausted: one more product needs a refresh


def test_public_copy_cannot_decrypt(planned: tuple[CkksParams, ts.Context]) -> None:
    _, context = planned
    public = public_copy(context)
    assert public.is_private() is False and public.is_public()
    assert context.is_private()  # the original keeps its secret key
    assert public.has_galois_keys() and public.has_relin_keys()
    encrypted = ts.ckks_vector(public, [1.0, 2.0])  # the server can still encrypt
    with pytest.raises(ValueError, match="secret"):
        encrypted.decrypt()
    encrypted.link_context(context)
    assert np.allclose(encrypted.decrypt(), [1.0, 2.0], atol=1e-6)


def test_galois_keys(planned: tuple[CkksParams, ts.Context]) -> None:
    params, full = planned
    # TenSEAL 0.3.18 has no per-step Galois keys: a steps list yields all keys. When a
    # future TenSEAL adds a steps argument this test fails and make_context should use it.
    assert list(inspect.signature(ts.Context.generate_galois_keys).parameters) == [
        "self",
        "secret_key",
    ]
    stepped = make_context(params, galois_steps=[1, 2, 3])
    assert stepped.has_galois_keys()
    bare = make_context(params, galois_steps=[])
    assert not bare.has_galois_keys() and bare.has_relin_keys()
    full_size, bare_size = context_bytes(full), context_bytes(bare)
    assert bare_size * 5 < full_size  # Galois keys dominate: ~1.9 MB against ~35 MB
    # The secret key is never serialized: the public copy costs the same (up to compression).
    assert abs(context_bytes(public_copy(full)) - full_size) < 0.01 * full_size
    with pytest.raises(ValueError, match="galois step"):
        make_context(params, galois_steps=[params.slots])
    with pytest.raises(ValueError, match="galois step"):
        make_context(params, galois_steps=[0])


@pytest.mark.parametrize(
    ("depths", "available", "expected"),
    [
        ([], 3, []),
        ([1, 1, 1], 3, []),  # exactly reaches the budget
        ([1, 1, 1, 1], 3, [3]),
        ([2, 1, 2, 1], 3, [2]),
        ([3, 3, 3], 3, [1, 2]),
        ([2, 2, 2], 3, [1, 2]),
        ([0, 3, 0, 1], 3, [3]),
        ([1, 2, 0, 0, 1, 2], 3, [4]),
        ([3, 4, 4, 1, 2, 7], 7, [2, 5]),
        ([0, 0, 0], 0, []),
    ],
)
def test_refresh_points(depths: list[int], available: int, expected: list[int]) -> None:
    assert refresh_points(depths, available) == expected


def test_refresh_points_errors() -> None:
    with pytest.raises(DepthError, match="stage 1 needs depth 4"):
        refresh_points([1, 4, 1], 3)
    with pytest.raises(ValueError):
        refresh_points([1, -1], 3)
    with pytest.raises(ValueError):
        refresh_points([1], -1)


def test_refresh_points_fit_every_segment() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        available = int(rng.integers(1, 8))
        depths = [int(d) for d in rng.integers(0, available + 1, int(rng.integers(0, 30)))]
        points = refresh_points(depths, available)
        bounds = [0, *points, len(depths)]
        for a, b in itertools.pairwise(bounds):
            assert sum(depths[a:b]) <= available
        # As late as possible: each segment could not take the next stage as well.
        for a, b in itertools.pairwise(bounds[:-1]):
            assert sum(depths[a : b + 1]) > available
