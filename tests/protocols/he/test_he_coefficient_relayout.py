"""Re-layouts under coefficient-mode refreshes (the default 40-bit hiding): the canonical
embedding in double-double precision (`protocols.he.doubledouble`, `protocols.he.embedding`)
and the re-layout that moves masked integer polynomials through it (`protocols.he.relayout`).

- Double-double: sums and products of random 1e30-sized values against Python's exact
  rationals, within 2^-100 relative.
- The embedding agrees with SEAL's encoder (N = 8192): SEAL's plaintext of real and of
  complex slot values, read as integers, decodes to the values within 1e-9; our encode
  of SEAL's slots gives back SEAL's integers exactly.
- Precision where it matters: decode then encode of random 96-bit integer polynomials
  (the default mask, 2^96) gives back every integer exactly after rounding, at N = 64,
  1024 and 16384 (the module's bound: under 16); decode at N = 64 within 2^-96 relative of
  mpmath at 200 bits.
- `residues` of integer-valued double-doubles (to 2^100, negatives) equal Python's.
- `move` on plaintext polynomials (no crypto, hypothesis over row-block layouts with and
  without replicas, standard layouts, slot counts 64 to 512): decoding the moved
  polynomial reads every entry at its target slots, zero elsewhere.
- The re-layout on real TenSEAL (N = 16384, chain [60, 40, 40, 40, 60], 40-bit hiding:
  coefficient mode, 2 levels kept), the server's `RelayoutRefresher` with the client's
  `client_relayout_coefficients` in process: two tensors of trained-scale values (to +-40)
  moved to row blocks with replicas and to a composite view in one round trip, within
  1e-6 (measured about 1e-9); the client sees only integers below 2^(mask_bits + 1) that
  pass a Kolmogorov-Smirnov test against uniform; a linear layer by the diagonal method
  under this refresh matches numpy.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.he import embedding
from protocols.he.doubledouble import DD, ComplexDD
from protocols.he.layout import Layout

ts = pytest.importorskip("tenseal")
stats = pytest.importorskip("scipy.stats")

from protocols.he import coefficients as C  # noqa: E402
from protocols.he.codec import Codec  # noqa: E402
from protocols.he.engine import Engine  # noqa: E402
from protocols.he.params import CkksParams, make_context  # noqa: E402
from protocols.he.products import linear  # noqa: E402
from protocols.he.refresh import (  # noqa: E402
    COEFFICIENT,
    ClientRefresh,
    CoefficientRefresher,
    chain_primes,
    plan_refresh,
)
from protocols.he.relayout import (  # noqa: E402
    RelayoutRefresher,
    client_relayout_coefficients,
    move,
    read_parts,
)
from protocols.he.tensor import HeTensor, relayout_tensors  # noqa: E402


def _exact(value: DD) -> list[Fraction]:
    return [
        Fraction(float(h)) + Fraction(float(lo)) for h, lo in zip(value.hi, value.lo, strict=True)
    ]


def _dd_of_ints(values: list[int]) -> DD:
    hi = np.array([float(v) for v in values])
    lo = np.array([float(v - int(h)) for v, h in zip(values, hi, strict=True)])
    return DD(hi, lo)


# --- double-double ------------------------------------------------------------------------
def test_sums_and_products_are_exact_to_2_to_the_minus_100() -> None:
    rng = np.random.default_rng(0)
    a = DD(rng.normal(0, 1e30, 200), rng.normal(0, 1e13, 200))
    b = DD(rng.normal(0, 1e30, 200), rng.normal(0, 1e13, 200))
    a = a + DD.of(np.zeros(200))  # normalised
    b = b + DD.of(np.zeros(200))
    for got, want, size in [
        (a + b, [x + y for x, y in zip(_exact(a), _exact(b), strict=True)],
         [abs(x) + abs(y) for x, y in zip(_exact(a), _exact(b), strict=True)]),
        (a * b, [x * y for x, y in zip(_exact(a), _exact(b), strict=True)],
         [abs(x * y) for x, y in zip(_exact(a), _exact(b), strict=True)]),
    ]:  # fmt: skip
        for g, w, s in zip(_exact(got), want, size, strict=True):
            assert abs(g - w) <= s * Fraction(1, 2**100)


# --- the embedding against SEAL's encoder ------------------------------------------------
@pytest.fixture(scope="module")
def seal8192():
    sealapi = ts.sealapi
    parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(8192)
    parms.set_coeff_modulus(sealapi.CoeffModulus.Create(8192, [60, 40, 60]))
    context = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
    return context, sealapi.CKKSEncoder(context), sealapi.Evaluator(context)


@pytest.mark.parametrize("kind", ["real", "complex"])
def test_the_embedding_is_seal_s(seal8192, kind: str) -> None:
    context, encoder, evaluator = seal8192
    rng = np.random.default_rng(1)
    values = rng.uniform(-40, 40, 4096)
    if kind == "complex":
        values = values + 1j * rng.uniform(-40, 40, 4096)
    plain = ts.sealapi.Plaintext()
    encoder.encode(values.tolist(), context.first_parms_id(), 2.0**40, plain)
    ints = C.plaintext_integers(context, evaluator, plain, context.first_parms_id())
    coeffs = embedding.from_integers(ints)
    slots = embedding.decode(coeffs)
    assert np.abs(slots.to_complex() / 2.0**40 - values).max() < 1e-9
    back = embedding.encode(slots)
    primes = C.primes(context, context.first_parms_id())
    assert (embedding.residues(back, primes) == ints.residues(primes)).all()


# --- precision at the mask's size --------------------------------------------------------
@pytest.mark.parametrize("n", [64, 1024, 16384])
def test_decode_then_encode_gives_back_96_bit_integers(n: int) -> None:
    rng = np.random.default_rng(n)
    ints = [int(a) * 2**48 + int(b) for a, b in zip(
        rng.integers(-(2**48), 2**48, n), rng.integers(0, 2**48, n), strict=True)]  # fmt: skip
    back = embedding.encode(embedding.decode(_dd_of_ints(ints)))
    whole, rest = back.rounded()
    got = [int(w) + int(r) for w, r in zip(whole, rest, strict=True)]
    assert got == ints
    # and the error before rounding is what the module states (< 16), here far below 1
    error = [abs(Fraction(float(h)) + Fraction(float(lo)) - v)
             for h, lo, v in zip(back.hi, back.lo, ints, strict=True)]  # fmt: skip
    assert max(error) < Fraction(1, 4)


def test_decode_matches_mpmath_at_200_bits() -> None:
    import mpmath

    n = 64
    rng = np.random.default_rng(7)
    ints = [int(a) * 2**48 + int(b) for a, b in zip(
        rng.integers(-(2**48), 2**48, n), rng.integers(0, 2**48, n), strict=True)]  # fmt: skip
    slots = embedding.decode(_dd_of_ints(ints))
    norm = math.sqrt(sum(v * v for v in ints))
    with mpmath.workprec(200):
        for k in range(n // 2):
            g = pow(3, k, 2 * n)  # slot k's root (SEAL's order)
            exact = mpmath.fsum(
                v * mpmath.expjpi(mpmath.mpf(j * g) / n) for j, v in enumerate(ints)
            )
            got = mpmath.mpc(
                mpmath.mpf(float(slots.re.hi[k])) + mpmath.mpf(float(slots.re.lo[k])),
                mpmath.mpf(float(slots.im.hi[k])) + mpmath.mpf(float(slots.im.lo[k])),
            )
            assert abs(got - exact) < norm * 2.0**-96


def test_residues_of_double_doubles_are_python_s() -> None:
    rng = np.random.default_rng(3)
    ints = [int(a) * 2**62 + int(b) for a, b in zip(
        rng.integers(-(2**38), 2**38, 500), rng.integers(0, 2**62, 500), strict=True)]  # fmt: skip
    ints += [0, 1, -1, 2**53 + 1, -(2**53) - 1]
    primes = [1152921504606584833, 1099511480321, 1152921504606830593]
    got = embedding.residues(_dd_of_ints(ints), primes)
    for row, q in zip(got, primes, strict=True):
        assert [int(r) for r in row] == [v % q for v in ints]


# --- move, on plaintext polynomials --------------------------------------------------------
@st.composite
def moves(draw: st.DrawFn) -> tuple[tuple[int, ...], Layout, Layout, int]:
    slots = draw(st.sampled_from([64, 128, 512]))
    lead, rows = draw(st.integers(1, 3)), draw(st.integers(1, 40))
    d = draw(st.integers(2, 20))
    shape = (lead, rows, d)
    width = draw(st.integers(d, 3 * d))
    layouts = [
        Layout.standard(shape, slots),
        Layout.row_blocks(shape, width, slots, replicate=draw(st.booleans())),
    ]
    source, target = draw(st.permutations(layouts))
    return shape, source, target, slots


def _encode_plain(layout: Layout, values: np.ndarray, slots: int) -> DD:
    placement = layout.placement()
    vectors = [placement.vector(values.reshape(-1), g, slots) for g in range(len(placement.groups))]
    z = np.stack(vectors) * 2.0**40
    coeffs = embedding.encode(ComplexDD(DD.of(z), DD.of(np.zeros_like(z))))
    whole, rest = coeffs.rounded()
    return DD(whole, rest) + DD.of(np.zeros_like(whole))


@settings(max_examples=40, deadline=None)
@given(case=moves(), seed=st.integers(0, 2**16))
def test_move_reads_every_entry_at_its_target_slots(case, seed: int) -> None:
    shape, source, target, slots = case
    values = np.random.default_rng(seed).uniform(-40, 40, shape)
    moved = move(_encode_plain(source, values, slots), source, target)
    decoded = embedding.decode(moved).to_complex() / 2.0**40
    placement = target.placement()
    for g in range(len(placement.groups)):
        want = placement.vector(values.reshape(-1), g, slots)
        assert np.abs(decoded[g] - want).max() < 1e-9


# --- the re-layout on real TenSEAL --------------------------------------------------------
PARAMS = CkksParams(16384, [60, 40, 40, 40, 60], 40)
SLOTS = PARAMS.slots


class Coefficients:
    """An engine with 2 levels kept, a coefficient-mode `RelayoutRefresher`, its client in
    process (the checks of `read_parts`), recording the integers the client sees."""

    def __init__(self, context, codec: Codec) -> None:
        primes = chain_primes(PARAMS.poly_modulus_degree, PARAMS.coeff_mod_bit_sizes)[:-1]
        self.plan = plan_refresh(primes, 40, 64.0, 40)
        assert self.plan.mode == COEFFICIENT and self.plan.hiding_bits >= 40
        self.codec = codec
        self.engine = Engine(context, reserve=self.plan.reserve)
        self.client = ClientRefresh(codec, self.plan, lambda v: v)
        self.seen: list[float] = []
        inner = self.client.masked_integers

        def watched(ct):
            values = inner(ct)
            signed = np.where(values.negative, -1.0, 1.0) * values.magnitude()
            self.seen += list(signed[::64] / 2.0**self.plan.mask_bits)
            return values

        self.client.masked_integers = watched  # type: ignore[method-assign]

        def relayout(masked, parts, expected):
            checked = read_parts({"parts": json.loads(json.dumps(parts))}, codec.slots)
            fresh = client_relayout_coefficients(checked, masked, self.client)
            assert len(fresh) == expected
            return fresh

        refresher = CoefficientRefresher(self.engine, self.client, self.plan)
        self.refresher = RelayoutRefresher(refresher, relayout, "auto")

    def enc(self, values: np.ndarray) -> HeTensor:
        layout = Layout.standard(values.shape, SLOTS)
        grid = self.codec.encrypt(values, layout)
        return HeTensor(self.engine, layout, grid, clean=True, refresher=self.refresher)

    def dec(self, t: HeTensor) -> np.ndarray:
        return self.codec.decrypt(t.grid, t.layout)


@pytest.fixture(scope="module")
def kit() -> Coefficients:
    context = make_context(PARAMS)
    return Coefficients(context, Codec(context))


def test_a_coefficient_relayout_moves_trained_scale_values(kit: Coefficients) -> None:
    rng = np.random.default_rng(11)
    x, y = rng.uniform(-40, 40, (2, 13, 6)), rng.uniform(-17, 17, (3, 5, 4))
    a, b = kit.enc(x), kit.enc(y).reshape((3, 20))
    rows = Layout.row_blocks((2, 13, 6), 11, SLOTS, replicate=True)
    composite = Layout.standard((3, 5, 4), SLOTS).permute([0, 2, 1]).regroup((3, 20))
    relayout_tensors([(a, rows), (b, composite)])
    assert kit.refresher.relayouts == 1 and kit.refresher.stats.refreshes == 1
    assert a.layout == rows and a.level == kit.engine.top_level
    assert np.abs(kit.dec(a) - x).max() < 1e-6
    vector = kit.codec.decrypt_slots(a.grid.flat[0])
    assert np.abs(vector[:11] - x[0, 0][np.arange(11) % 6]).max() < 1e-6  # the replicas
    assert np.abs(vector[11 * 13 * 2 :]).max() < 1e-6  # zero outside the target
    assert b.layout == composite and np.abs(kit.dec(b) - y.reshape(3, 20)).max() < 1e-6
    seen = np.array(kit.seen)
    assert np.abs(seen).max() < 2.0
    assert stats.kstest(seen, "uniform", args=(-1, 2)).pvalue > 1e-6


def test_a_diagonal_linear_under_coefficient_refreshes_matches_numpy(kit: Coefficients) -> None:
    rng = np.random.default_rng(12)
    x = rng.uniform(-3, 3, (1, 4, 64))
    w = rng.normal(0, 1 / 8, (48, 64))
    b = rng.uniform(-1, 1, 48)
    before = kit.refresher.relayouts
    out = linear(kit.enc(x), w, b, strategy="diagonal_bsgs")
    assert kit.refresher.relayouts == before + 1
    assert np.abs(kit.dec(out) - (x @ w.T + b)).max() < 1e-3
