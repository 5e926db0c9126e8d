"""Checks on what a party receives (`Meter(keep_views=True)` views): opened words look
uniformly random and contain no fixed-point encoding of a secret.

`assert_uniform`: every one of bits 63..60, 48, 40 and 32 is set in half of the opened
64-bit words within 6 standard deviations, at most 3 + 10 n 2^-15 of the n words are below
2^48 in magnitude (encodings of real values are; a uniform word with probability 2^-15),
and opened single bits (comparisons) are 1 half of the time within 6 standard deviations.
FSS views: packed select bits count as single bits, forwarded keys by their key words.
"""

from __future__ import annotations

import numpy as np
import torch

SCALE = 2**16  # CrypTen's default fixed-point scale


def words(views: list[np.ndarray]) -> np.ndarray:
    """Every received value, flattened into one array of 64-bit words (packed FSS select
    bits, uint8, as their single bits: they are not values)."""
    return np.concatenate([_values(np.asarray(v)).reshape(-1) for v in views])


def _values(view: np.ndarray) -> np.ndarray:
    return np.unpackbits(view).astype(np.int64) if view.dtype == np.uint8 else view.astype(np.int64)


def key_words(view: np.ndarray) -> np.ndarray | None:
    """The key words of a forwarded FSS key message (`dealing.frame`: a public header
    naming the request, the words, an end mark), None for any other view."""
    from protocols.mpc.fss import dealing

    words = np.asarray(view)
    if words.dtype not in (np.int64, np.uint64) or words.size <= dealing.HEADER_WORDS + 1:
        return None
    unsigned = words.reshape(-1).view(np.uint64)
    framed = unsigned[-1] == dealing.STREAM_END
    if not framed or int(unsigned[3]) != unsigned.size - dealing.HEADER_WORDS - 1:
        return None
    return unsigned[dealing.HEADER_WORDS : -1].view(np.int64)


def split(views: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(64-bit words, single bits): comparisons open single bits masked by random bits
    (CrypTen's as 0/1 words, FSS selects' packed 8 to a byte); forwarded FSS keys count
    by their key words (their header is public: the request's shape)."""
    bits: list[np.ndarray] = []
    wide: list[np.ndarray] = []
    for view in views:
        value = np.asarray(view)
        keys = key_words(value)
        if value.dtype == np.uint8:
            bits.append(np.unpackbits(value).astype(np.int64))
        elif keys is not None:
            wide.append(keys)
        elif np.isin(value, (0, 1)).all():
            bits.append(value)
        else:
            wide.append(value)
    return words(wide), words(bits) if bits else np.zeros(0, dtype=np.int64)


def assert_uniform_bits(bits: np.ndarray) -> None:
    """Single opened bits are 1 half of the time, within 6 standard deviations."""
    n = bits.size
    if n:
        ones = int(bits.sum())
        assert abs(ones - n / 2) < 6 * np.sqrt(n / 4), f"{ones} of {n} opened bits are 1"


def assert_uniform(views: list[np.ndarray]) -> None:
    """The views look like uniform masks (the bounds in the module docstring); more than
    1000 words are needed for the check to mean something."""
    wide, bits = split(views)
    assert_uniform_bits(bits)
    n = wide.size
    assert n > 1000
    unsigned = wide.view(np.uint64)
    for bit in (63, 62, 61, 60, 48, 40, 32):
        ones = int(((unsigned >> np.uint64(bit)) & np.uint64(1)).sum())
        assert abs(ones - n / 2) < 6 * np.sqrt(n / 4), f"bit {bit}: {ones} of {n} set"
    # fixed-point encodings of real values are small; a uniform word is below 2^48 in
    # magnitude with probability 2^-15
    small = int((np.abs(wide) < 2**48).sum())
    assert small <= 3 + n * 2**-15 * 10, f"{small} of {n} words are small numbers"


def encodings(*tensors: torch.Tensor) -> set[int]:
    """The nonzero fixed-point encodings (scale 2^16) of every entry of `tensors`."""
    values = torch.cat([t.reshape(-1) for t in tensors])
    return {int(v) for v in (values * SCALE).round().long()} - {0}
