"""The length-doubling PRG of the FSS keys: fixed-key AES in Matyas-Meyer-Oseas mode, over
whole arrays of seeds at once.

A seed is 128 bits, held as two uint64 words (low, high) in a numpy array of shape
(..., 2). With one public AES-128 key k (fixed: `KEY`), the j-th output block of seed s is

    B_j(s) = AES_k(s xor j) xor (s xor j),   j = 0, 1, 2

(Matyas-Meyer-Oseas with a tweak; fixed-key AES used this way is the correlation-robust
hash of Guo et al., "Efficient and Secure Multiparty Computation from Fixed-Key Block
Ciphers", S&P 2020, as in the FSS implementations of SIGMA and LibFSS). `expand` reads

    B_0 -> (s_L, t_L)   the left child's seed (low bit cleared) and control bit (that bit)
    B_1 -> (s_R, t_R)   the same for the right child
    B_2 -> (v_L, v_R)   two 64-bit group elements (its low and high words)

so a seed's low bit is always 0 and tweaks 0..2 never collide. One AES call of 3 N blocks
per level of N seeds (OpenSSL's AES-NI through the `cryptography` package).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KEY = hashlib.sha256(b"secinfer fss prg, fixed-key AES-128 (Matyas-Meyer-Oseas), v1").digest()[:16]
"""The PRG's public AES key: fixed, known to everyone (its security rests on AES as a
random permutation, not on this key being secret)."""
SEED_WORDS = 2
"""A 128-bit seed as (low, high) uint64 words."""

_BLOCK = 16  # AES's block, in bytes
_LOW_BIT = np.uint64(1)
_CLEAR = np.uint64(0xFFFFFFFFFFFFFFFE)


def _encryptor() -> Any:  # the context type of `cryptography` is private
    return Cipher(algorithms.AES(KEY), modes.ECB()).encryptor()


def as_seeds(words: np.ndarray) -> np.ndarray:
    """2 N uniform uint64 words as N seeds (N, 2), their low bit cleared (see `expand`)."""
    seeds = np.array(words, dtype=np.uint64).reshape(-1, SEED_WORDS)
    seeds[:, 0] &= _CLEAR
    return seeds


def random_seeds(count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` seeds (count, 2) uint64 from `rng` (`as_seeds`)."""
    return as_seeds(rng.integers(0, 1 << 64, size=SEED_WORDS * count, dtype=np.uint64))


def blocks(seeds: np.ndarray, count: int) -> np.ndarray:
    """B_0 .. B_(count-1) of every seed: (N, count, 2) uint64 (module docstring). One AES
    call over the tweaked seeds' buffer, written into the output in place (no copies
    through bytes)."""
    seeds = np.ascontiguousarray(seeds, dtype=np.uint64).reshape(-1, SEED_WORDS)
    tweaked = np.empty((seeds.shape[0], count, SEED_WORDS), dtype=np.uint64)
    tweaked[:] = seeds[:, None, :]
    tweaked[:, :, 0] ^= np.arange(count, dtype=np.uint64)[None, :]
    size = tweaked.nbytes
    out = np.empty(size + _BLOCK - 1, dtype=np.uint8)  # update_into's minimum
    _encryptor().update_into(memoryview(tweaked).cast("B"), out)
    result = out[:size].view(np.uint64).reshape(tweaked.shape)
    result ^= tweaked
    return result


def expand(
    seeds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """G(s) for every seed of `seeds` (N, 2): (s_L, t_L, v_L, s_R, t_R, v_R) with seeds
    (N, 2) uint64, control bits (N,) uint8 and group elements (N,) uint64."""
    b = blocks(seeds, 3)
    s_left, s_right = b[:, 0].copy(), b[:, 1].copy()
    t_left = (s_left[:, 0] & _LOW_BIT).astype(np.uint8)
    t_right = (s_right[:, 0] & _LOW_BIT).astype(np.uint8)
    s_left[:, 0] &= _CLEAR
    s_right[:, 0] &= _CLEAR
    return s_left, t_left, b[:, 2, 0].copy(), s_right, t_right, b[:, 2, 1].copy()


def expand_chosen(
    seeds: np.ndarray, right: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The half of G(s) that an evaluation on a known path needs: (s_R, t_R, v_R) where
    `right`, else (s_L, t_L, v_L), for every seed of `seeds` (N, 2). The same values as
    `expand` from two AES blocks per seed instead of three."""
    seeds = np.ascontiguousarray(seeds, dtype=np.uint64).reshape(-1, SEED_WORDS)
    side = np.asarray(right, dtype=bool)
    tweaked = np.empty((seeds.shape[0], 2, SEED_WORDS), dtype=np.uint64)
    tweaked[:] = seeds[:, None, :]
    tweaked[:, 0, 0] ^= side.astype(np.uint64)
    tweaked[:, 1, 0] ^= np.uint64(2)
    size = tweaked.nbytes
    out = np.empty(size + _BLOCK - 1, dtype=np.uint8)
    _encryptor().update_into(memoryview(tweaked).cast("B"), out)
    result = out[:size].view(np.uint64).reshape(tweaked.shape)
    result ^= tweaked
    child = result[:, 0].copy()
    t = (child[:, 0] & _LOW_BIT).astype(np.uint8)
    child[:, 0] &= _CLEAR
    return child, t, np.where(side, result[:, 1, 1], result[:, 1, 0])


def convert(seeds: np.ndarray) -> np.ndarray:
    """A seed as an element of Z_(2^64): its high word (all 64 bits pseudorandom; the low
    word's bit 0 is the cleared control bit)."""
    return np.ascontiguousarray(seeds[..., 1])


__all__ = [
    "KEY",
    "SEED_WORDS",
    "as_seeds",
    "blocks",
    "convert",
    "expand",
    "expand_chosen",
    "random_seeds",
]
