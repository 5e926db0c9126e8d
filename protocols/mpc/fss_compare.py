"""FSS comparisons and ReLU on CrypTen sharings, with the dealer's keys
(`protocols.mpc.fss.gates`, `protocols.mpc.fss.dealing`): what the two computing parties
run. (Outside the `fss` package, which is numpy only: the dealer imports it.)

    less_than(x, thresholds, bits)   [x < t] for each public t: integer (scale-1) sharings
    at_least(x, thresholds, bits)    [x >= t], the same way
    relu(x, bits)                    max(x, 0) at x's scale
    relu_and_clipped_abs(x, c, bits) max(x, 0) and min(|x|, c), from the same opening

Keys: the model owner asks the dealer (`fss_sign`, one request) and forwards the common
correction words to the data owner, framed by their request (`dealing.frame`; offline
traffic: `meter.offline_traffic`); each party draws the rest from the generator it
shares with the dealer, and refuses keys whose check word is not its own next draw
(`dealing.StaleKeys`: another session's keys) or whose frame is for another request or
cut short (`dealing.KeyStreamError`). `KeySchedule` deals a query's keys before its
input when the session has seen its shapes; `keys` then takes them. Online, per element
and party: `less_than` opens x + r once (8 bytes, one round) for all its thresholds; `relu`
then opens one bit more (1/8 byte, packed, one round). `bits` must bound every
difference x - t (and x itself for `relu`) in the ring: |X - T| < 2^(bits - 1) with X, T
the fixed-point integers (values times 2^f); callers derive it from the calibrated
interval. Beyond it the comparison is wrong (the sign wraps), as stated in `gates`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from protocols.mpc import dealer
from protocols.mpc.crypten_setup import communicator, import_crypten
from protocols.mpc.fss import dealing, gates
from protocols.mpc.meter import offline_traffic
from protocols.mpc.polynomial import Secret

RING_BITS = gates.RING_BITS


def width(reach: float, precision_bits: int) -> int:
    """The key width for comparing values whose differences to the thresholds are at most
    `reach` in magnitude, at 2^precision_bits: |X| < 2^(bits - 2) (one bit of room), at
    most the ring's 64 (then every comparison of ring elements is exact)."""
    if not reach >= 0:
        raise ValueError(f"reach={reach!r}: expected a number >= 0")
    if not math.isfinite(reach):
        return RING_BITS
    scaled = max(reach * 2.0**precision_bits, 1.0)
    return min(RING_BITS, max(2, math.ceil(math.log2(scaled)) + 2))


def _draw(count: int) -> np.ndarray:
    return dealer.draw_words(count, dealer.party_generator())


Request = tuple[int, int, int]
"""What one `keys` call asks for: (count, bits, selects)."""
KEYS_AHEAD_MB = 1024.0
"""At most this many MB of keys (the model owner's payload) are dealt ahead of a query
(`KeySchedule`); the rest of its requests are dealt when they come."""


@dataclass
class _State:
    """This process's FSS key state: time spent, the keys dealt ahead (in request order),
    and the list the current query's requests are recorded into."""

    seconds: float = 0.0
    prepared: deque[tuple[Request, tuple[gates.SignKey, list[gates.SelectKey]]]] = field(
        default_factory=deque
    )
    recording: list[Request] | None = None


_STATE = _State()


def key_seconds() -> float:
    """Seconds this process has spent obtaining FSS keys (the dealer's generation as the
    model owner waits for it, the forwarding, each party's own draws), ahead or not."""
    return _STATE.seconds


def keys(count: int, bits: int, selects: int) -> tuple[gates.SignKey, list[gates.SelectKey]]:
    """This party's keys for `count` comparisons of `bits`-bit differences and `selects`
    selects against their mask (module docstring): the next keys dealt ahead when they
    were dealt for this request, else dealt now. Both parties make the same requests in
    the same order, so they take the same branch."""
    request = (count, bits, selects)
    if _STATE.recording is not None:
        _STATE.recording.append(request)
    if _STATE.prepared:
        head, dealt = _STATE.prepared.popleft()
        if head == request:
            return dealt
        _STATE.prepared.clear()  # dealt for another schedule: deal from here on
    return _timed_keys(request)


def _timed_keys(request: Request) -> tuple[gates.SignKey, list[gates.SelectKey]]:
    began = time.perf_counter()
    try:
        return _keys(*request)
    finally:
        _STATE.seconds += time.perf_counter() - began


class KeySchedule:
    """A session's FSS key requests by query shapes: the keys of a query whose input
    shapes the session has seen are dealt BEFORE its input is shared (`before`: offline
    traffic, apart from the online figures), from the requests the earlier query of those
    shapes made (`during` records them; the requests depend on the plan and the shapes
    only, never on values). Both parties call `before` and `during` at the same points.
    A first query of new shapes gets its keys as it asks. Memory: the keys of up to
    KEYS_AHEAD_MB of requests are held at once (a BERT-base layer's: 421 MB per party in
    bench/mpc.md; about 24 bytes per key bit per comparison, so they grow with the
    compared elements times the key width)."""

    def __init__(self) -> None:
        self._requests: dict[Hashable, list[Request]] = {}
        self.held_bytes = 0
        """Bytes of this party's keys that the last `before` dealt (held until used)."""

    def before(self, shapes: Hashable) -> float:
        """Deal this query's keys ahead when its shapes were seen; the seconds it took
        (0 when they were not)."""
        self.held_bytes = 0
        if shapes not in self._requests:
            return 0.0
        began = time.perf_counter()
        budget = KEYS_AHEAD_MB * 1e6
        for request in self._requests.get(shapes, []):
            budget -= 8 * dealing.payload_words(request[0], request[1], request[2])
            if budget < 0:
                break
            sign, selects = _timed_keys(request)
            self.held_bytes += sign.nbytes() + sum(select.nbytes() for select in selects)
            _STATE.prepared.append((request, (sign, selects)))
        return time.perf_counter() - began

    @contextmanager
    def during(self, shapes: Hashable) -> Iterator[None]:
        """Run a query of these shapes: record its requests; keys dealt ahead and left
        unused (a query that failed) are dropped at its end."""
        requests: list[Request] = []
        _STATE.recording = requests
        try:
            yield
            self._requests.setdefault(shapes, requests)
        finally:
            _STATE.recording = None
            _STATE.prepared.clear()


def _keys(count: int, bits: int, selects: int) -> tuple[gates.SignKey, list[gates.SelectKey]]:
    comm = communicator()
    rank = comm.get_rank()
    if rank == 0:
        words = dealer.client().fss_sign((count,), bits, selects).numpy().view(np.uint64)
        sent = dealing.frame(dealing.forwarded(words, count, bits), count, bits, selects)
        with offline_traffic():
            comm.send(torch.from_numpy(sent.view(np.int64).copy()), 1)
    else:
        size = dealing.frame_words(count, bits)
        # CrypTen's recv fills a copy of its template with what came: a shorter message
        # leaves the zeros, which `unframe` refuses (no end mark)
        with offline_traffic():
            received = comm.recv(torch.zeros(size, dtype=torch.int64), 0)
        words = dealing.unframe(received.numpy(), count, bits, selects)
    return dealing.receive(rank, count, bits, selects, _draw, words)


def _ring(x: Secret) -> np.ndarray:
    return x._tensor.share.reshape(-1).numpy().view(np.uint64)


def _as_secret(like: Secret, share: np.ndarray, precision_bits: int) -> Secret:
    crypten = import_crypten()
    out = like.clone()
    out._tensor.share = torch.from_numpy(share.view(np.int64).copy()).reshape(like.share.shape)
    out._tensor.encoder = crypten.encoder.FixedPointEncoder(precision_bits=precision_bits)
    return out


def _open(x: Secret, key: gates.SignKey) -> np.ndarray:
    masked = torch.from_numpy(gates.masked_share(key, _ring(x)).view(np.int64))
    return communicator().all_reduce(masked).numpy().view(np.uint64)


def _ring_thresholds(x: Secret, thresholds: Sequence[float]) -> list[int]:
    """x < t exactly when X < ceil(t 2^f), X the fixed-point integer of x."""
    scale = 2 ** int(x.encoder._precision_bits)
    return [math.ceil(float(t) * scale) for t in thresholds]


def _below(
    x: Secret, thresholds: Sequence[float], bits: int, what: str
) -> tuple[gates.SignKey, list[np.ndarray]]:
    """The key and this party's ring shares of [x < t] for each t, from one opening."""
    if not thresholds:
        raise ValueError(f"{what}: need at least one threshold")
    key, _ = keys(x.numel(), bits, 0)
    opened = _open(x, key)
    return key, [gates.less_than(key, opened, t) for t in _ring_thresholds(x, thresholds)]


def less_than(x: Secret, thresholds: Sequence[float], bits: int) -> list[Secret]:
    """[x < t] for each public t, integer (scale-1) sharings of x's shape, from one
    opening of x + r (8 bytes per element and party, one round)."""
    _, shares = _below(x, thresholds, bits, "less_than")
    return [_as_secret(x, share, 0) for share in shares]


def at_least(x: Secret, thresholds: Sequence[float], bits: int) -> list[Secret]:
    """[x >= t] = 1 - [x < t] for each public t (integer sharings), as `less_than`: one
    opening for all."""
    key, shares = _below(x, thresholds, bits, "at_least")
    return [_as_secret(x, gates.complement(key.party, share), 0) for share in shares]


def _select(
    key: gates.SignKey,
    selects: list[gates.SelectKey],
    bits: list[np.ndarray],
    opened: np.ndarray,
) -> list[np.ndarray]:
    """This party's shares of b_i x for each shared bit b_i (ring shares of 0/1), x opened
    as `opened` against `key`'s mask: all the bits opened in one packed xor (len(bits)/8
    byte per element and party, one round)."""
    count = opened.size
    shares = [gates.bit_share(s, b) for s, b in zip(selects, bits, strict=True)]
    sent = np.packbits(np.concatenate(shares))
    total = communicator().all_reduce(torch.from_numpy(sent), op=dist.ReduceOp.BXOR)
    opened_bits = np.unpackbits(total.numpy())[: count * len(bits)].reshape(len(bits), count)
    return [gates.select(s, key, b, opened) for s, b in zip(selects, opened_bits, strict=True)]


def relu(x: Secret, bits: int) -> Secret:
    """max(x, 0) at x's scale: [x >= 0] from one opening of x + r, then the select of x by
    it from one opened bit (packed: 1/8 byte per element), two rounds in all."""
    key, selects = keys(x.numel(), bits, 1)
    opened = _open(x, key)
    positive = gates.complement(key.party, gates.less_than(key, opened, 0))
    (share,) = _select(key, selects, [positive], opened)
    return _as_secret(x, share, int(x.encoder._precision_bits))


def relu_and_clipped_abs(x: Secret, clip: float, bits: int) -> tuple[Secret, Secret]:
    """(max(x, 0), min(|x|, clip)) at x's scale, from one opening of x + r (the three
    comparisons with -clip, 0 and clip) and three selects of x in one packed opening
    (3/8 byte per element): 8 + 3/8 bytes and two rounds. min(|x|, clip) = ([0 <= x < c]
    - [-c <= x < 0]) x + c ([x >= c] + [x < -c]), c = clip on x's fixed-point grid.
    `bits` must bound x + c and x - c (|X| + C < 2^(bits - 1))."""
    if not clip > 0:
        raise ValueError(f"clip={clip!r}: must be positive")
    key, selects = keys(x.numel(), bits, 3)
    opened = _open(x, key)
    low, high = _ring_thresholds(x, [-clip, clip])
    below_low, below_zero, below_high = (gates.less_than(key, opened, t) for t in (low, 0, high))
    with np.errstate(over="ignore"):
        inside_positive = below_high - below_zero
        inside_negative = below_zero - below_low
        outside = gates.complement(key.party, below_high) + below_low
        positive = gates.complement(key.party, below_zero)
        rectified, plus, minus = _select(
            key, selects, [positive, inside_positive, inside_negative], opened
        )
        clipped = plus - minus + outside * np.uint64(high)
    precision = int(x.encoder._precision_bits)
    return _as_secret(x, rectified, precision), _as_secret(x, clipped, precision)


__all__ = [
    "KEYS_AHEAD_MB",
    "RING_BITS",
    "KeySchedule",
    "Request",
    "at_least",
    "key_seconds",
    "keys",
    "less_than",
    "relu",
    "relu_and_clipped_abs",
    "width",
]
