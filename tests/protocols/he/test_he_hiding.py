"""The coefficient-mode refresh, its planning against the chain's room, and output flooding
(`protocols.he.refresh`, `protocols.he.coefficients`, `protocols.he.flood`), on real TenSEAL.

- The mask bound against the chain's room, for every 128-bit chain [60, 40 x d, 60], ring
  degrees 8192 to 32768, hiding asked 1 to 120 bits and value bounds B = 1 to 2^17: the plan
  hides at least what was asked, and the client decrypts correctly with a margin of 2:
  slot mode (R + B) Delta <= q_0 / 4; coefficient mode U + Delta B <= Q_l / 4 with Q_l
  the product of the actual SEAL primes q_0 .. q_l. The default (40 bits, B = 64, scale
  2^40) needs two primes (the docstring's figures: mask 2^96, 51 bits, 2 levels kept);
  HidingError only when even the whole chain's room falls short.
- The integer layer: Shoup products against Python integers; residues composed (Garner)
  and lifted to other primes equal Python's exact arithmetic on random integers of 1 to
  3 primes, negatives included; uniform integers within their bound.
- A real round trip (N = 16384, chain [60, 40, 40, 40, 60], 2 levels kept): values in the
  realistic range and outliers (GELU inputs to +-17, attention scores to +-40, variances
  to 1e3) come back within 1e-6 of themselves (measured about 1e-9), at the top level, the
  junk slots zero; the client's integers stay below 2^(mask_bits + 1), and w / U passes a
  Kolmogorov-Smirnov test against U[-1, 1] (unmasked, w / U would sit near 0).
- Products through refreshes: an `HeTensor` on an engine with 2 levels kept, squarings
  and scalings that need several refreshes, for several shapes; within 1e-4 of numpy.
- The client refuses a ciphertext at another level, and one made under another key; a
  client that agreed to no refresh refuses a crafted "relayout" message, read from a real
  socket, before any ciphertext (re-layouts under coefficient refreshes:
  `test_he_coefficient_relayout.py`).
- Flooding: the output error stays within `slot_error_bound` (with F = 20 at N = 8192,
  about 7.4e-4) and is not zero (its spread is within a factor 3 of the predicted
  2^F sqrt(N / 3) / Delta), the ciphertext arrives at the bottom level.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

ts = pytest.importorskip("tenseal")
stats = pytest.importorskip("scipy.stats")

from protocols.he import coefficients as C  # noqa: E402
from protocols.he import messages  # noqa: E402
from protocols.he.codec import Codec  # noqa: E402
from protocols.he.engine import Engine, LevelError  # noqa: E402
from protocols.he.flood import flood, slot_error_bound  # noqa: E402
from protocols.he.layout import Layout  # noqa: E402
from protocols.he.messages import MessageError  # noqa: E402
from protocols.he.params import MAX_BITS_128, CkksParams, make_context, max_depth  # noqa: E402
from protocols.he.refresh import (  # noqa: E402
    COEFFICIENT,
    SLOT,
    ClientRefresh,
    HidingError,
    RefreshPlan,
    chain_primes,
    make_refresher,
    plan_refresh,
)
from protocols.he.tensor import HeTensor  # noqa: E402

SCALE_BITS = 40
PARAMS = CkksParams(16384, [60, 40, 40, 40, 60], SCALE_BITS)


# --- the plan against the chain's room -----------------------------------------------------
def _chains() -> list[tuple[int, list[int]]]:
    out = []
    for n in (8192, 16384, 32768):
        for depth in sorted({2, 3, max_depth(n) // 2, max_depth(n)}):
            if depth <= max_depth(n):
                out.append((n, [60, *([40] * depth), 60]))
    return out


@pytest.mark.parametrize(("n", "bits"), _chains())
@pytest.mark.parametrize("hiding", [1, 12, 20, 40, 64, 120])
@pytest.mark.parametrize("bound", [1.0, 64.0, 2.0**10, 2.0**17])
def test_the_mask_fits_the_chains_room_with_margin(n, bits, hiding, bound) -> None:
    assert sum(bits) <= MAX_BITS_128[n]
    primes = chain_primes(n, bits)[:-1]
    delta = 2.0**SCALE_BITS
    try:
        plan = plan_refresh(primes, SCALE_BITS, bound, hiding)
    except HidingError:
        # only when the whole chain's room is too small
        top = RefreshPlan(COEFFICIENT, math.prod(primes).bit_length() - 4, len(primes) - 1,
                          SCALE_BITS, bound)  # fmt: skip
        assert top.hiding_bits < hiding
        return
    assert plan.hiding_bits >= hiding
    if plan.mode == SLOT:
        assert (2.0**plan.mask_bits + bound) * delta <= primes[0] / 4
        assert plan.reserve == 0
    else:
        room = math.prod(primes[: plan.room_level + 1])
        # exact integers: |m + u| <= U + Delta B, with a factor 2 to spare below Q_l / 2
        assert 2**plan.mask_bits + int(delta) * int(bound) <= room // 4
        assert plan.reserve == plan.room_level + 1
        # the room level is the lowest that hides enough
        if plan.room_level > 1:
            lower = math.prod(primes[: plan.room_level]).bit_length() - 4
            assert lower + 1 - SCALE_BITS - math.log2(bound) < hiding


def test_the_default_plan_keeps_two_primes_and_two_levels() -> None:
    primes = chain_primes(16384, [60, *([40] * 7), 60])[:-1]
    plan = plan_refresh(primes, SCALE_BITS, 64.0, 40)
    assert (plan.mode, plan.room_level, plan.mask_bits, plan.reserve) == (COEFFICIENT, 1, 96, 2)
    assert plan.hiding_bits == 51
    today = plan_refresh(primes, SCALE_BITS, 64.0, 12)
    assert (today.mode, today.mask_bits, today.hiding_bits, today.reserve) == (SLOT, 17, 12, 0)
    assert RefreshPlan.from_dict(plan.to_dict()) == plan
    with pytest.raises(HidingError):
        plan_refresh(primes, SCALE_BITS, 64.0, 400)


# --- the integer layer ---------------------------------------------------------------------
PRIMES = chain_primes(16384, [60, 40, 40, 40, 60])


def test_shoup_products_are_exact() -> None:
    rng = random.Random(0)
    for q in PRIMES:
        a = [rng.randrange(2**64) for _ in range(500)] + [0, 2**64 - 1, q - 1, q]
        w = rng.randrange(q)
        got = C.mulmod(np.array(a, dtype=np.uint64), w, q)
        assert [int(g) for g in got] == [x * w % q for x in a]


@pytest.mark.parametrize("count", [1, 2, 3])
def test_residues_compose_and_lift_exactly(count: int) -> None:
    rng = random.Random(count)
    moduli, other = PRIMES[:count], [*PRIMES[count:], 2**61 - 1]
    total = math.prod(moduli)
    values = [rng.randrange(-(total // 2), total // 2) for _ in range(300)] + [0, -1, 1]
    res = np.array([[v % q for v in values] for q in moduli], dtype=np.uint64)
    ints = C.Integers.from_residues(res, moduli)
    lifted = ints.residues(other)
    for row, p in zip(lifted, other, strict=True):
        assert [int(x) for x in row] == [v % p for v in values]
    assert np.allclose(ints.magnitude(), np.abs(np.array(values, dtype=float)), rtol=1e-12)


def test_uniform_integers_stay_within_their_bound() -> None:
    moduli = PRIMES[:2]
    (res,) = C.uniform_residues(4096, 70, [moduli])
    values = C.Integers.from_residues(res, moduli).magnitude()
    assert values.max() <= 2.0**70 and values.max() > 0.99 * 2.0**70
    assert values.mean() == pytest.approx(2.0**69, rel=0.05)


# --- a real round trip ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup():
    context = make_context(PARAMS, galois_steps=[])
    codec = Codec(context)
    primes = chain_primes(PARAMS.poly_modulus_degree, PARAMS.coeff_mod_bit_sizes)[:-1]
    plan = plan_refresh(primes, SCALE_BITS, 64.0, 40)
    assert plan.reserve == 2
    return context, codec, plan


class Watching:
    """The client's side of a coefficient-mode refresh, recording the integers it sees."""

    def __init__(self, codec: Codec, plan: RefreshPlan) -> None:
        self.inner = ClientRefresh(codec, plan, lambda v: v)
        self.codec, self.plan = codec, plan
        self.seen: list[np.ndarray] = []
        self.calls = 0

    def __call__(self, cts, layout):
        self.calls += 1
        data = self.inner.data
        for ct in cts:
            plain = ts.sealapi.Plaintext()
            self.codec.decryptor.decrypt(ct, plain)
            ints = C.plaintext_integers(data, self.inner.evaluator, plain, ct.parms_id())
            signed = np.where(ints.negative, -1.0, 1.0) * ints.magnitude()
            self.seen.append(signed)
        return self.inner(cts, layout)


@pytest.mark.parametrize("scale", [1.0, 17.0, 40.0, 1e3])
def test_round_trip_restores_values_and_shows_only_uniform_integers(setup, scale) -> None:
    context, codec, plan = setup
    engine = Engine(context, reserve=plan.reserve)
    client = Watching(codec, plan)
    refresher = make_refresher(engine, client, plan)
    rng = np.random.default_rng(int(scale))
    rows = 300
    layout = Layout((rows,), (1,))
    x = rng.uniform(-scale, scale, rows)
    ct = codec.encrypt_slots(np.concatenate([x, rng.uniform(-5, 5, codec.slots - rows)]))
    (fresh,) = refresher([ct], layout)
    assert engine.level(fresh) == engine.top_level == PARAMS.depth - 2
    back = codec.decrypt_slots(fresh)
    assert np.abs(back[:rows] - x).max() < 1e-6
    assert np.abs(back[rows:]).max() < 1e-6  # the junk slots were zeroed
    w = client.seen[0] / 2.0**plan.mask_bits
    assert np.abs(w).max() < 2.0  # what the client checks
    assert stats.kstest(w, "uniform", args=(-1, 2)).pvalue > 1e-6  # fails if u were 0


@pytest.mark.parametrize(
    ("rows", "features"),
    [(1, 1), (300, 2), pytest.param(7, 3, marks=pytest.mark.slow),
     pytest.param(64, 5, marks=pytest.mark.slow)],
)  # fmt: skip
def test_products_through_coefficient_refreshes_match_numpy(setup, rows, features) -> None:
    context, codec, plan = setup
    engine = Engine(context, reserve=plan.reserve)
    client = Watching(codec, plan)
    layout = Layout.rows((rows, features), 1)
    x = np.random.default_rng(rows).uniform(-1.5, 1.5, (rows, features))
    t = HeTensor(engine, layout, codec.encrypt(x, layout), clean=True,
                 refresher=make_refresher(engine, client, plan))  # fmt: skip
    expected = x.copy()
    for _ in range(3):
        t = t * t * 0.5 + 0.25
        expected = expected * expected * 0.5 + 0.25
    assert client.calls >= 2
    assert np.abs(codec.decrypt(t.grid, t.layout) - expected).max() < 1e-4


def test_products_never_use_the_reserved_levels(setup) -> None:
    context, codec, plan = setup
    engine = Engine(context, reserve=plan.reserve)
    ct = codec.encrypt_slots(np.ones(4))
    assert engine.level(ct) == 1
    low = engine.mul_plain(ct, 2.0)
    assert engine.level(low) == 0
    with pytest.raises(LevelError):
        engine.mul_plain(low, 2.0)


def test_the_client_refuses_other_levels_and_foreign_ciphertexts(setup) -> None:
    context, codec, plan = setup
    client = ClientRefresh(codec, plan, lambda v: v)
    with pytest.raises(MessageError, match="room level"):
        client([codec.encrypt_slots(np.ones(4))], Layout((4,), (1,)))
    other = Codec(make_context(PARAMS, galois_steps=[]))
    engine = Engine(other.context, reserve=plan.reserve)
    room = context.seal_context().data.first_context_data()
    while room.chain_index() > plan.room_level:
        room = room.next_context_data()
    foreign = engine.mod_switch(other.encrypt_slots(np.ones(4)), room.parms_id())
    with pytest.raises(MessageError, match="not made under this key"):
        client([foreign], Layout((4,), (1,)))


def test_a_client_without_refresh_refuses_a_relayout(setup) -> None:
    import socket

    from secinfer.backends.he.channel import Channel
    from secinfer.backends.he.client import ClientSession

    _, codec, _ = setup
    server_end, client_end = socket.socketpair()
    with server_end, client_end:
        part = {"count": 1, "layout": Layout((4,), (1,)).to_dict()}
        part["target"] = part["layout"]
        messages.send_json(server_end, {"kind": "relayout", "parts": [part]}, timeout=5)
        client = ClientSession(Channel(client_end, 5.0), codec, [], {}, 64.0, 0, None)
        with pytest.raises(MessageError, match="re-layout, which needs refreshes"):
            client.await_message("result")


# --- flooding ------------------------------------------------------------------------------
def test_flooding_stays_within_its_stated_bound(ctx) -> None:
    codec, engine = Codec(ctx), Engine(ctx)
    x = np.random.default_rng(3).uniform(-17, 17, codec.slots)
    bits = 20
    (out,) = flood(engine, [codec.encrypt_slots(x)], bits)
    assert engine.level(out) == 0
    error = codec.decrypt_slots(out) - x
    bound = slot_error_bound(bits, 8192, SCALE_BITS)
    assert bound == pytest.approx(7.4e-4, rel=0.05)
    assert np.abs(error).max() <= bound
    predicted = 2.0**bits * math.sqrt(8192 / 3) / 2.0**SCALE_BITS
    assert predicted / 3 < error.std() < 3 * predicted
