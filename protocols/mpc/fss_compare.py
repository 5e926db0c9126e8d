"""FSS comparisons and ReLU on CrypTen sharings, with the dealer's keys
(`protocols.mpc.fss.gates`, `protocols.mpc.fss.dealing`): what the two computing parties
run. (Outside the `fss` package, which is numpy only: the dealer imports it.)

    less_than(x, thresholds, bits)   [x < t] for each public t: integer (scale-1) sharings
    at_least(x, thresholds, bits)    [x >= t], the same way
    relu(x, bits)                    max(x, 0) at x's scale

Keys: the model owner asks the dealer (`fss_sign`, one request) and forwards the common
correction words to the data owner (offline traffic: `meter.offline_traffic`); each party
draws the rest from the generator it shares with the dealer, and refuses keys whose check
word is not its own next draw (`dealing.StaleKeys`: another session's keys). Online, per element and
party: `less_than` opens x + r once (8 bytes, one round) for all its thresholds; `relu`
then opens one bit more (1/8 byte, packed, one round). `bits` must bound every
difference x - t (and x itself for `relu`) in the ring: |X - T| < 2^(bits - 1) with X, T
the fixed-point integers (values times 2^f); callers derive it from the calibrated
interval. Beyond it the comparison is wrong (the sign wraps), as stated in `gates`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

from protocols.mpc import dealer
from protocols.mpc.crypten_setup import communicator, import_crypten
from protocols.mpc.fss import dealing, gates
from protocols.mpc.meter import offline_traffic
from protocols.mpc.polynomial import Secret


def _draw(count: int) -> np.ndarray:
    return dealer.draw_words(count, dealer.party_generator())


def keys(count: int, bits: int, selects: int) -> tuple[gates.SignKey, list[gates.SelectKey]]:
    """This party's keys for `count` comparisons of `bits`-bit differences and `selects`
    selects against their mask (module docstring)."""
    comm = communicator()
    rank = comm.get_rank()
    if rank == 0:
        words = dealer.client().fss_sign((count,), bits, selects).numpy().view(np.uint64)
        sent = dealing.forwarded(words, count, bits)
        with offline_traffic():
            comm.send(torch.from_numpy(sent.view(np.int64).copy()), 1)
    else:
        size = dealing.forwarded_words(count, bits)
        with offline_traffic():  # CrypTen's recv returns what came (its argument is a template)
            received = comm.recv(torch.empty(size, dtype=torch.int64), 0)
        words = received.numpy().view(np.uint64)
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


def relu(x: Secret, bits: int) -> Secret:
    """max(x, 0) at x's scale: [x >= 0] from one opening of x + r, then the select of x by
    it from one opened bit (packed: 1/8 byte per element), two rounds in all."""
    key, (select,) = keys(x.numel(), bits, 1)
    opened = _open(x, key)
    positive = gates.complement(key.party, gates.less_than(key, opened, 0))
    sent = np.packbits(gates.bit_share(select, positive))
    total = communicator().all_reduce(torch.from_numpy(sent), op=dist.ReduceOp.BXOR)
    opened_bit = np.unpackbits(total.numpy())[: x.numel()]
    share = gates.select(select, key, opened_bit, opened)
    return _as_secret(x, share, int(x.encoder._precision_bits))


__all__ = ["at_least", "keys", "less_than", "relu"]
