"""The FSS comparison and select gates (`protocols.mpc.fss.gates`) on additive shares in
Z_(2^64), both parties' steps run here on the real keys (the dealer's draw, the openings
as the sum of what each party sends):

- [x < c] for several thresholds from ONE opening of x + r and one key, at widths 2 to 64,
  x and c anywhere with |x - c| < 2^(n-1), including x = c and x = c - 1 (hypothesis).
- ReLU = select([x >= 0], x), and select of an arbitrary shared bit, exactly.
- Beyond its width the comparison is wrong (the stated condition is needed, not slack).
- What a party sends is x + r (uniform whatever x) and one bit b xor r_b.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.mpc.fss import dealing, gates

ONE = np.uint64(1)


def _draws(seed: int):
    generator = np.random.default_rng(seed)
    return lambda n: generator.integers(0, 1 << 64, size=n, dtype=np.uint64)


def _deal(n: int, bits: int, selects: int, seed: int) -> tuple[tuple, list[tuple]]:
    """Both parties' keys as the dealer deals them (`dealing.deal` / `receive`, generators
    seeded from `seed`): the sign keys' pair and one pair per select."""
    payload = dealing.deal(n, bits, selects, (_draws(seed), _draws(seed + 1)),
                           np.random.default_rng(seed + 2))  # fmt: skip
    k0, s0 = dealing.receive(0, n, bits, selects, _draws(seed), payload)
    k1, s1 = dealing.receive(1, n, bits, selects, _draws(seed + 1),
                             dealing.forwarded(payload, n, bits))  # fmt: skip
    return (k0, k1), list(zip(s0, s1, strict=True))


def _split(values: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    first = rng.integers(0, 1 << 64, size=values.shape, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return first, values.astype(np.int64).astype(np.uint64) - first


def _open(keys, shares) -> np.ndarray:
    with np.errstate(over="ignore"):
        return gates.masked_share(keys[0], shares[0]) + gates.masked_share(keys[1], shares[1])


def _less(keys, opened, c) -> np.ndarray:
    with np.errstate(over="ignore"):
        return gates.less_than(keys[0], opened, c) + gates.less_than(keys[1], opened, c)


@st.composite
def comparison_cases(draw: st.DrawFn) -> tuple[int, list[int], list[int]]:
    bits = draw(st.integers(2, 64))
    half = 1 << (bits - 1)
    thresholds = draw(st.lists(st.integers(-(1 << 62), (1 << 62)), min_size=1, max_size=3))
    c0 = thresholds[0]
    xs = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["equal", "below", "edge-low", "edge-high", "any"]))
        offset = {"equal": 0, "below": -1, "edge-low": -half, "edge-high": half - 1,
                  "any": draw(st.integers(-half, half - 1))}[kind]  # fmt: skip
        xs.append(c0 + offset)
    # the other thresholds within the width of every x
    others = [c0 + draw(st.integers(-(half // 4), half // 4)) for _ in thresholds[1:]]
    xs = [min(max(x, -(1 << 63)), (1 << 63) - 1) for x in xs]
    return bits, [c0, *others], xs


@settings(max_examples=200, deadline=None)
@given(case=comparison_cases(), seed=st.integers(0, 2**32))
def test_comparisons_from_one_opening(case, seed: int) -> None:
    bits, thresholds, xs = case
    rng = np.random.default_rng(seed)
    x = np.array(xs, dtype=np.int64)
    keys, _ = _deal(x.size, bits, 0, seed)
    opened = _open(keys, _split(x, rng))
    half = 1 << (bits - 1)
    for c in thresholds:
        fits = np.array([-half <= v - c < half for v in xs])
        got = _less(keys, opened, c)
        want = (x < c).astype(np.uint64)
        np.testing.assert_array_equal(got[fits], want[fits])


def test_beyond_the_width_the_sign_wraps() -> None:
    rng = np.random.default_rng(1)
    x = np.array([1 << 12, -(1 << 12) - 1], dtype=np.int64)  # 2^(n-1) and -(2^(n-1)) - 1
    keys, _ = _deal(2, 13, 0, 1)
    got = _less(keys, _open(keys, _split(x, rng)), 0)
    np.testing.assert_array_equal(got, [1, 0])  # the wrong way round: the width matters


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32), bits=st.integers(2, 40))
def test_relu_and_select_are_exact(seed: int, bits: int) -> None:
    rng = np.random.default_rng(seed)
    half = 1 << (bits - 1)
    x = rng.integers(-half, half, size=64).astype(np.int64)
    keys, selects = _deal(x.size, bits, 2, seed)
    opened = _open(keys, _split(x, rng))
    with np.errstate(over="ignore"):
        negative = [gates.less_than(k, opened, 0) for k in keys]
        positive = [ONE - negative[0], np.uint64(0) - negative[1]]
    for select, (bit_shares, want) in zip(
        selects,
        ((positive, np.maximum(x, 0)), (_split(rng.integers(0, 2, size=x.size), rng), None)),
        strict=True,
    ):
        sent = [gates.bit_share(select[b], bit_shares[b]) for b in (0, 1)]
        opened_bit = sent[0] ^ sent[1]
        with np.errstate(over="ignore"):
            out = sum(gates.select(select[b], keys[b], opened_bit, opened) for b in (0, 1))
            bit = bit_shares[0] + bit_shares[1]
        expected = want if want is not None else bit.astype(np.int64) * x
        np.testing.assert_array_equal(out.astype(np.int64), expected)


def test_what_a_party_sends_hides_its_input() -> None:
    """x + r over 20,000 draws: the top bit as often 1 as 0 for x = 0 and x = 2^62, and the
    opened bit b xor r_b as often 1 for b = 1 as for b = 0."""
    n = 20_000
    sigma = 0.5 / np.sqrt(n)
    for value in (0, 1 << 62):
        rng = np.random.default_rng(value % 997)
        x = np.full(n, value, dtype=np.int64)
        keys, (select,) = _deal(n, 8, 1, value % 997)
        opened = _open(keys, _split(x, rng))
        assert abs(np.mean(opened >> np.uint64(63)) - 0.5) < 5 * sigma
        bit = _split(np.full(n, value > 0, dtype=np.int64), rng)
        opened_bit = gates.bit_share(select[0], bit[0]) ^ gates.bit_share(select[1], bit[1])
        assert abs(np.mean(opened_bit) - 0.5) < 5 * sigma


def test_widths_outside_the_ring_are_refused() -> None:
    with pytest.raises(ValueError, match="2 to 64"):
        _deal(1, 1, 0, 0)
    with pytest.raises(ValueError, match="2 to 64"):
        _deal(1, 65, 0, 0)


@pytest.mark.parametrize(("bits", "selects"), [(2, 0), (13, 1), (24, 2), (64, 1)])
def test_keys_dealt_through_the_generators_and_one_payload(bits: int, selects: int) -> None:
    """`dealing.deal` on the dealer, `dealing.receive` on each party (party 1 from the
    forwarded common part only), with the same draws: comparisons and ReLU exact."""
    n = 300
    payload = dealing.deal(n, bits, selects, (_draws(1), _draws(2)), np.random.default_rng(3))
    assert payload.size == dealing.payload_words(n, bits, selects)
    common = dealing.forwarded(payload, n, bits)
    k0, s0 = dealing.receive(0, n, bits, selects, _draws(1), payload)
    k1, s1 = dealing.receive(1, n, bits, selects, _draws(2), common)
    rng = np.random.default_rng(4)
    half = 1 << (bits - 1)
    x = rng.integers(-half, half, size=n, dtype=np.int64) if bits < 64 else (
        rng.integers(-(1 << 62), 1 << 62, size=n, dtype=np.int64))  # fmt: skip
    keys = (k0, k1)
    opened = _open(keys, _split(x, rng))
    np.testing.assert_array_equal(_less(keys, opened, 0), (x < 0).astype(np.uint64))
    for i in range(selects):
        with np.errstate(over="ignore"):
            positive = [ONE - gates.less_than(k0, opened, 0), -gates.less_than(k1, opened, 0)]
        pair = (s0[i], s1[i])
        opened_bit = gates.bit_share(pair[0], positive[0]) ^ gates.bit_share(pair[1], positive[1])
        with np.errstate(over="ignore"):
            relu = sum(gates.select(pair[b], keys[b], opened_bit, opened) for b in (0, 1))
        np.testing.assert_array_equal(relu.astype(np.int64), np.maximum(x, 0))


def test_keys_for_another_shape_are_refused() -> None:
    payload = dealing.deal(10, 16, 1, (_draws(1), _draws(2)), np.random.default_rng(3))
    with pytest.raises(ValueError, match="keys for another shape"):
        dealing.receive(0, 11, 16, 1, _draws(1), payload)
    with pytest.raises(ValueError, match="keys for another shape"):
        dealing.receive(1, 10, 16, 1, _draws(2), payload)  # the whole payload, not its part
    with pytest.raises(ValueError, match="keys for another shape"):
        dealing.receive(0, 10, 16, 1, _draws(1), payload[:-1])  # a stream cut short


def test_keys_from_another_session_are_refused() -> None:
    """Keys dealt with other generators (another session's seeds), or received by a party
    whose draws are one step ahead, fail the check word: refused in one line, not used."""
    payload = dealing.deal(10, 16, 0, (_draws(1), _draws(2)), np.random.default_rng(3))
    part = dealing.forwarded(payload, 10, 16)
    dealing.receive(0, 10, 16, 0, _draws(1), payload)  # this session's: accepted
    dealing.receive(1, 10, 16, 0, _draws(2), part)
    for party, words, draws in ((0, payload, _draws(7)), (1, part, _draws(8))):
        with pytest.raises(dealing.StaleKeys, match="another session"):
            dealing.receive(party, 10, 16, 0, draws, words)
    ahead = _draws(1)
    ahead(1)  # a party whose generator is one word further than the dealer's
    with pytest.raises(dealing.StaleKeys, match="out of step"):
        dealing.receive(0, 10, 16, 0, ahead, payload)


def test_a_framed_message_is_refused_cut_short_or_for_another_request() -> None:
    """What party 0 forwards is framed (`dealing.frame`): party 1 takes its words back only
    for the request it makes; a message for another request, or one that a transport
    delivered short into the zeroed buffer (its end mark missing), is one line."""
    payload = dealing.deal(10, 16, 1, (_draws(1), _draws(2)), np.random.default_rng(4))
    words = dealing.forwarded(payload, 10, 16)
    message = dealing.frame(words, 10, 16, 1)
    assert message.size == dealing.frame_words(10, 16)
    np.testing.assert_array_equal(dealing.unframe(message, 10, 16, 1), words)
    for request in ((11, 16, 1), (10, 17, 1), (10, 16, 2)):
        with pytest.raises(dealing.KeyStreamError, match="another shape") as info:
            dealing.unframe(message, *request)
        assert "\n" not in str(info.value)
    for delivered in (message.size - 1, dealing.HEADER_WORDS + 3, 2, 0):
        buffer = np.zeros(message.size, dtype=np.uint64)  # what the receiver posted
        buffer[:delivered] = message[:delivered]
        with pytest.raises(dealing.KeyStreamError, match="cut short"):
            dealing.unframe(buffer, 10, 16, 1)
