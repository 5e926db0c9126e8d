"""Greedy decoding's argmax on secret shares: the one-hot row of the largest entry.

`argmax_one_hot(x)` runs a tournament over the last dimension and carries, for every
candidate still in it, the one-hot of where it came from, so the winner's one-hot is
known at the end without a second pass (no equality test against every index):

  pad n entries to n' = 2^ceil(log2 n) with a public value far below any logit (PAD);
  level k (k = 0 .. log2 n' - 1): candidates 2i and 2i+1 (adjacent: each holds the
    contiguous block [i 2^k, (i+1) 2^k) of positions, its one-hot h of width 2^k) meet:
      c = [a >= b]                          one batched comparison (CrypTen's: 8 rounds)
      (c d, c h_a, c h_b) = c * (d, h_a, h_b) with d = a - b   one product, one round
      winner = b + c d;  h = (c h_a, h_b - c h_b)  (concatenated: a's block first)
  so ceil(log2 n) (8 + 1) rounds. Ties go to the earlier block, so the winner is the
  first largest entry, as `torch.argmax` picks. Exact: no approximation and no
  truncation (c is an integer sharing), the one-hot entries are exactly 0 or 1.

Cost per row of n entries: n' - 1 comparisons in all, and products on about
n' (1 + log2 n' / 2)... precisely sum over levels of (n' / 2^(k+1)) (1 + 2^(k+1)) elements,
which is n' log2 n' + n' - 1: the one-hot's bookkeeping is the larger part for a large
vocabulary (GPT-2's 50257 pads to 65536: about 1.1 M product elements, 65535
comparisons). The product broadcasts c over its row of (1 + 2^(k+1)) entries, so the
opening of c costs one element per candidate (CrypTen's Beaver product opens each operand
at its own size).
"""

from __future__ import annotations

import math

import torch

from protocols.mpc.compare import indicators, times_public_integers
from protocols.mpc.crypten_setup import import_crypten
from protocols.mpc.polynomial import Secret

PAD = -(2.0**24)
"""The padding entries' public value: below any logit a 16-bit fixed-point run holds
(|x| < 2^24 leaves room in the 64-bit ring), so a padding entry never wins."""


def argmax_one_hot(x: Secret, fss_bits: int | None = None) -> Secret:
    """One-hot (a fixed-point sharing of 0s and a single 1) of the first largest entry of
    x along its last dimension, same shape as x (module docstring). With `fss_bits`
    (every difference of two entries, padding included, within 2^(fss_bits - 1) in the
    ring) each level's comparisons come from the dealer's FSS keys: one opening of 8
    bytes and one round instead of CrypTen's 216 bytes and 8 rounds."""
    crypten = import_crypten()
    n = x.size(-1)
    width = 1 << max(0, math.ceil(math.log2(n)))
    current = x
    if width > n:
        filler = x[..., : width - n] * 0 + PAD  # a public constant: local
        current = crypten.cat([x, filler], dim=-1)
    hot: Secret | None = None  # None: every candidate's one-hot is [1] (width 1)
    while current.size(-1) > 1:
        a, b = current[..., 0::2], current[..., 1::2]
        diff = a - b
        (chosen,) = indicators(diff, [0.0], fss_bits)  # c: an integer sharing of 0 or 1
        if hot is None:
            winner = b + diff * chosen
            fixed = _fixed(chosen, x)
            hot = crypten.stack([fixed, 1 - fixed], dim=-1)
        else:
            size = hot.size(-1)
            hot_a, hot_b = hot[..., 0::2, :], hot[..., 1::2, :]
            operands = crypten.cat([diff.unsqueeze(-1), hot_a, hot_b], dim=-1)
            product = operands * chosen.unsqueeze(-1)  # one round, exact (c is an integer)
            winner = b + product[..., 0]
            kept_a = product[..., 1 : 1 + size]
            kept_b = hot_b - product[..., 1 + size :]
            hot = crypten.cat([kept_a, kept_b], dim=-1)
        current = winner
    if hot is None:  # a single entry: it is the largest
        return x * 0 + 1
    one_hot = hot.reshape(*x.shape[:-1], width)
    return one_hot[..., :n] if width > n else one_hot


def index_of(one_hot: Secret) -> Secret:
    """The index a one-hot row of `argmax_one_hot` marks, as a fixed-point sharing: the sum
    of j times its entry j (local: public integer weights, no truncation)."""
    n = one_hot.size(-1)
    return times_public_integers(one_hot, torch.arange(n)).sum(-1)


def _fixed(indicator: Secret, like: Secret) -> Secret:
    """An integer (scale-1) 0/1 sharing on `like`'s fixed-point scale (local)."""
    crypten = import_crypten()
    bits = int(like.encoder._precision_bits)
    out = times_public_integers(indicator, torch.tensor(1 << bits))
    out.encoder = crypten.encoder.FixedPointEncoder(precision_bits=bits)
    return out


__all__ = ["PAD", "argmax_one_hot", "index_of"]
