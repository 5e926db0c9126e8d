"""How the dealer's comparison and select keys (`protocols.mpc.fss.gates`) reach the two
parties, with as little sent as the keys allow.

Each party shares a generator with the dealer (CrypTen's TTP seeds them). Whatever a
party's key holds that may be uniformly random is drawn from that generator by both the
party and the dealer, in the same order, and never sent:

    both parties   the DCF root seed s_b (N x 2 words, bit 0 cleared) and the mask share
                   r_b (N words): r = r_0 + r_1, so the dealer knows r and neither party does
    party 1        its shares of r_(n-1), and per select of r_b and of r_b r (N words each)

What cannot be drawn is sent: the DCF's correction words, common to both keys (`common`:
per comparison 3 (n - 1) + 1 words and 2 (n - 1) packed control bits), and party 0's
shares (the value minus party 1's draw: N words for r_(n-1), 2 N per select). The dealer
sends party 0 its check word, party 1's check word, `common` and its shares
(`payload_words`); party 0 forwards party 1's check word and `common` (`forwarded`).
Both transfers are offline traffic: they depend on no input. A select's random bit r_b
comes from the dealer's own generator (no party may know it).

Session binding: every deal starts with one check word drawn from each party's
generator; a party compares the word it is sent with its own next draw and refuses keys
whose word differs (`StaleKeys`): keys dealt in another session (other generator seeds)
or out of step with this party's draws, which would otherwise compute garbage silently.
A wrong word passes by chance with probability 2^-64.

Framing: party 0 forwards its message with a header (count, bits, selects, words) and an
end mark (`frame` / `unframe`), so that party 1 refuses keys for another request, or a
stream cut short, in one line (`KeyStreamError`) rather than reading a partly filled
buffer.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from protocols.mpc.fss import dcf, gates
from protocols.mpc.fss.prg import as_seeds

Draw = Callable[[int], np.ndarray]
"""n uniform uint64 words from the generator a party shares with the dealer."""


def _bit_words(levels: int, count: int) -> int:
    return (((2 * levels * count + 7) // 8) + 7) // 8


def common_words(count: int, bits: int) -> int:
    """Words (int64) of the correction words of `count` comparisons on `bits`-bit values."""
    levels = bits - 1
    return 3 * levels * count + count + _bit_words(levels, count)


def forwarded_words(count: int, bits: int) -> int:
    """Words party 0 forwards to party 1: its check word and `common_words`."""
    return 1 + common_words(count, bits)


def payload_words(count: int, bits: int, selects: int) -> int:
    """Words the dealer sends party 0: its check word, `forwarded_words`, its shares."""
    return 1 + forwarded_words(count, bits) + count * (1 + 2 * selects)


def forwarded(payload: np.ndarray, count: int, bits: int) -> np.ndarray:
    """The part of party 0's payload that it forwards to party 1."""
    return payload[1 : 1 + forwarded_words(count, bits)]


class StaleKeys(ValueError):
    """Keys whose check word is not this party's next draw (module docstring)."""


class KeyStreamError(ValueError):
    """A forwarded key message this party cannot use: keys for another shape, or a
    stream cut short (`unframe`); the message is one line."""


HEADER_WORDS = 4
STREAM_END = np.uint64(0x5345_4349_4E46_4552)
"""The word that ends every forwarded key message ("SECINFER")."""


def frame_words(count: int, bits: int) -> int:
    """Words of the message party 0 sends party 1 (`frame`)."""
    return HEADER_WORDS + forwarded_words(count, bits) + 1


def frame(words: np.ndarray, count: int, bits: int, selects: int) -> np.ndarray:
    """What party 0 sends party 1: the header (count, bits, selects, len(words)), the
    forwarded words, and STREAM_END. Party 1 receives into a zeroed buffer of
    `frame_words`: a transport that delivers fewer words (gloo fills what came and leaves
    the rest) leaves a 0 where the end mark should be."""
    header = np.array([count, bits, selects, words.size], dtype=np.uint64)
    return np.concatenate([header, np.asarray(words, dtype=np.uint64), [STREAM_END]])


def unframe(message: np.ndarray, count: int, bits: int, selects: int) -> np.ndarray:
    """The forwarded words of `message` (`frame`), or KeyStreamError (one line) when its
    header is for another request or its end mark is missing."""
    message = np.ascontiguousarray(message).view(np.uint64).reshape(-1)
    expected = forwarded_words(count, bits)
    header = (tuple(int(v) for v in message[:HEADER_WORDS]) + (0,) * HEADER_WORDS)[:4]
    cut = (
        f"FSS key stream cut short: {expected} words of keys expected from the model owner, "
        "fewer came (did it stop?)"
    )
    whole = header[0] > 0 and header[1] > 0 and header[3] > 0  # a header that came whole
    if whole and header != (count, bits, selects, expected):
        raise KeyStreamError(
            f"FSS keys for another shape: the model owner forwarded keys for {header[0]} "
            f"comparisons of {header[1]} bits with {header[2]} selects ({header[3]} words), "
            f"this party needs {count} of {bits} bits with {selects} ({expected} words)"
        )
    if not whole or message.size != frame_words(count, bits) or message[-1] != STREAM_END:
        raise KeyStreamError(cut)
    return message[HEADER_WORDS:-1]


def _draw_seeds(draw: Draw, count: int) -> np.ndarray:
    return as_seeds(draw(2 * count))


def _pack(key: dcf.DcfKey) -> np.ndarray:
    levels, count = key.bits, key.count
    packed = np.packbits(key.cw_bits.reshape(-1))
    padded = np.zeros(_bit_words(levels, count) * 8, dtype=np.uint8)
    padded[: packed.size] = packed
    return np.concatenate(
        [key.cw_seeds.reshape(-1), key.cw_values.reshape(-1), key.cw_final, padded.view(np.uint64)]
    )


def _unpack(party: int, bits: int, count: int, seeds: np.ndarray, words: np.ndarray) -> dcf.DcfKey:
    levels = bits - 1
    if words.size != common_words(count, bits):
        raise ValueError(
            f"FSS keys: {words.size} words of correction for {count} comparisons of {bits} "
            f"bits, expected {common_words(count, bits)} (keys for another shape?)"
        )
    at = 0

    def take(n: int) -> np.ndarray:
        nonlocal at
        part, at = words[at : at + n], at + n
        return part

    cw_seeds = take(2 * levels * count).reshape(levels, count, 2)
    cw_values = take(levels * count).reshape(levels, count)
    cw_final = take(count)
    raw = take(_bit_words(levels, count)).view(np.uint8)
    cw_bits = np.unpackbits(raw)[: 2 * levels * count].reshape(levels, count, 2)
    return dcf.DcfKey(party, levels, seeds, cw_seeds, cw_values, cw_bits, cw_final)


def deal(
    count: int, bits: int, selects: int, draws: tuple[Draw, Draw], rng: np.random.Generator
) -> np.ndarray:
    """The dealer: party 0's payload (uint64 words: the common correction words, then its
    shares of r_(n-1) and of each select's r_b and r_b r) for `count` comparisons of
    `bits`-bit differences and `selects` selects against the same mask, drawing what the
    parties draw (module docstring) from `draws` (party 0's, party 1's)."""
    if not 2 <= bits <= gates.RING_BITS:
        raise ValueError(f"comparisons on {bits}-bit differences: expected 2 to 64")
    checks = [draws[0](1), draws[1](1)]
    seeds = (_draw_seeds(draws[0], count), _draw_seeds(draws[1], count))
    with np.errstate(over="ignore"):
        r = draws[0](count) + draws[1](count)
        low = bits - 1
        top = (r >> np.uint64(low)) & np.uint64(1)
        key = dcf.generate(r & np.uint64((1 << low) - 1), np.uint64(1) - np.uint64(2) * top,
                           low, seeds=seeds)[0]  # fmt: skip
        shares = [top - draws[1](count)]
        for _ in range(selects):
            bit = rng.integers(0, 2, size=count, dtype=np.uint64)
            shares.append(bit - draws[1](count))
            shares.append(bit * r - draws[1](count))
    return np.concatenate([*checks, _pack(key), *shares])


def receive(
    party: int, count: int, bits: int, selects: int, draw: Draw, words: np.ndarray
) -> tuple[gates.SignKey, list[gates.SelectKey]]:
    """A party's keys from its draws (in the dealer's order) and `words`: party 0's whole
    payload, party 1's the part party 0 forwards (`forwarded`). ValueError when `words`
    has another length than these shapes need, `StaleKeys` when its check word is not
    this party's next draw."""
    words = np.ascontiguousarray(words).view(np.uint64).reshape(-1)
    common = common_words(count, bits)
    expected = payload_words(count, bits, selects) if party == 0 else forwarded_words(count, bits)
    if words.size != expected:
        raise ValueError(
            f"FSS keys: {words.size} words for {count} comparisons of {bits} bits with "
            f"{selects} selects, expected {expected} (keys for another shape?)"
        )
    if words[0] != draw(1)[0]:
        raise StaleKeys(
            "FSS keys from another session, or out of step with this party's draws: refusing them"
        )
    words = words[2:] if party == 0 else words[1:]  # party 0 skips party 1's check word
    seeds = _draw_seeds(draw, count)
    mask = draw(count)
    key = _unpack(party, bits, count, seeds, words[:common])
    if party == 0:
        rest = words[common:].reshape(1 + 2 * selects, count)
        top, pairs = rest[0], [(rest[1 + 2 * i], rest[2 + 2 * i]) for i in range(selects)]
    else:
        top = draw(count)
        pairs = [(draw(count), draw(count)) for _ in range(selects)]
    sign = gates.SignKey(party, bits, mask, top, key)
    return sign, [gates.SelectKey(party, bit, product) for bit, product in pairs]


__all__ = [
    "HEADER_WORDS",
    "STREAM_END",
    "Draw",
    "KeyStreamError",
    "StaleKeys",
    "common_words",
    "deal",
    "forwarded",
    "forwarded_words",
    "frame",
    "frame_words",
    "payload_words",
    "receive",
]
