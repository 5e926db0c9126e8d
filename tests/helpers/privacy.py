"""Checks on what a party receives (`Meter(keep_views=True)` views): opened words look
uniformly random and contain no fixed-point encoding of a secret.

`assert_uniform`: every one of bits 63..60, 48, 40 and 32 is set in half of the opened
64-bit words within 6 standard deviations, at most 3 + 10 n 2^-15 of the n words are below
2^48 in magnitude (encodings of real values are; a uniform word with probability 2^-15),
and opened single bits (comparisons) are 1 half of the time within 6 standard deviations.
"""

from __future__ import annotations

import numpy as np
import torch

SCALE = 2**16  # CrypTen's default fixed-point scale


def words(views: list[np.ndarray]) -> np.ndarray:
    """Every received value, flattened into one array of 64-bit words."""
    return np.concatenate([np.asarray(v).astype(np.int64).reshape(-1) for v in views])


def split(views: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(64-bit words, single bits): comparisons open single bits masked by random bits."""
    bits = [v for v in views if np.isin(np.asarray(v), (0, 1)).all()]
    wide = [v for v in views if not np.isin(np.asarray(v), (0, 1)).all()]
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
