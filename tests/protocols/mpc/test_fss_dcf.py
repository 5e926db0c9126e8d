"""Distributed comparison functions (`protocols.mpc.fss.dcf`) on the real AES PRG
(`protocols.mpc.fss.prg`): the two keys' outputs add up, mod 2^64, to beta [x < alpha].

- Every input against every threshold for 1 to 6 bits (exhaustive), with random payloads.
- Hypothesis over widths 1 to 64: random thresholds and inputs at and around them (alpha,
  alpha +- 1, 0, 2^n - 1), since a wrong correction word shows at one boundary only.
- One key alone: its output on a fixed input is uniform whatever the threshold (the top
  bit's frequency over 20,000 keys within 5 sigma of 1/2, for alpha = 0 and alpha = max).
- The key size formula of the module docstring; inputs beyond the width refused.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.mpc.fss import dcf, prg


def _reconstruct(keys: tuple[dcf.DcfKey, dcf.DcfKey], x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return dcf.evaluate(keys[0], x) + dcf.evaluate(keys[1], x)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6])
def test_every_input_against_every_threshold(bits: int) -> None:
    rng = np.random.default_rng(bits)
    domain = 1 << bits
    alpha = np.repeat(np.arange(domain, dtype=np.uint64), domain)
    x = np.tile(np.arange(domain, dtype=np.uint64), domain)
    beta = rng.integers(0, 1 << 64, size=alpha.size, dtype=np.uint64)
    keys = dcf.generate(alpha, beta, bits, rng)
    want = np.where(x < alpha, beta, np.uint64(0))
    np.testing.assert_array_equal(_reconstruct(keys, x), want)


@st.composite
def comparisons(draw: st.DrawFn) -> tuple[int, list[int], list[int]]:
    bits = draw(st.integers(1, 64))
    top = (1 << bits) - 1
    alphas = draw(st.lists(st.integers(0, top), min_size=1, max_size=8))
    xs = []
    for a in alphas:
        pick = draw(st.sampled_from(["alpha", "below", "above", "zero", "top", "any"]))
        value = {"alpha": a, "below": a - 1, "above": a + 1, "zero": 0, "top": top,
                 "any": draw(st.integers(0, top))}[pick]  # fmt: skip
        xs.append(min(max(value, 0), top))
    return bits, alphas, xs


@settings(max_examples=200, deadline=None)
@given(case=comparisons(), seed=st.integers(0, 2**32))
def test_boundaries_at_every_width(case: tuple[int, list[int], list[int]], seed: int) -> None:
    bits, alphas, xs = case
    rng = np.random.default_rng(seed)
    alpha, x = np.array(alphas, dtype=np.uint64), np.array(xs, dtype=np.uint64)
    keys = dcf.generate(alpha, np.uint64(1), bits, rng)
    np.testing.assert_array_equal(_reconstruct(keys, x), (x < alpha).astype(np.uint64))


@pytest.mark.parametrize("party", [0, 1])
def test_one_key_says_nothing_about_the_threshold(party: int) -> None:
    bits, n = 16, 20_000
    x = np.full(n, 1234, dtype=np.uint64)
    frequencies = []
    for alpha in (0, (1 << bits) - 1):
        keys = dcf.generate(np.full(n, alpha, np.uint64), np.uint64(1), bits,
                            np.random.default_rng(alpha))  # fmt: skip
        share = dcf.evaluate(keys[party], x)
        frequencies.append(float(np.mean(share >> np.uint64(63))))
    sigma = 0.5 / np.sqrt(n)
    assert all(abs(f - 0.5) < 5 * sigma for f in frequencies), frequencies


def test_key_size_and_refusals() -> None:
    rng = np.random.default_rng(0)
    keys = dcf.generate(np.arange(10, dtype=np.uint64), np.uint64(1), 22, rng)
    assert keys[0].nbytes() == 10 * (16 + 22 * 24 + 8) + (2 * 22 * 10 + 7) // 8
    np.testing.assert_array_equal(keys[0].cw_values, keys[1].cw_values)
    assert not np.array_equal(keys[0].seeds, keys[1].seeds)
    assert (keys[0].seeds[:, 0] & np.uint64(1) == 0).all()  # the control bit's place
    with pytest.raises(ValueError, match="beyond 22 bits"):
        dcf.evaluate(keys[0], np.full(10, 1 << 22, dtype=np.uint64))
    with pytest.raises(ValueError, match="5 inputs for keys of 10"):
        dcf.evaluate(keys[0], np.zeros(5, dtype=np.uint64))
    with pytest.raises(ValueError, match="1 to 64 bits"):
        dcf.generate(np.zeros(1, np.uint64), np.uint64(1), 65, rng)


def test_the_prg_is_aes_in_matyas_meyer_oseas_mode() -> None:
    """B_j(s) = AES_k(s xor j) xor (s xor j), checked against one AES call of the
    `cryptography` package block by block."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    seeds = prg.random_seeds(4, np.random.default_rng(3))
    out = prg.blocks(seeds, 3)
    for i in range(4):
        for j in range(3):
            block = seeds[i].copy()
            block[0] ^= np.uint64(j)
            aes = Cipher(algorithms.AES(prg.KEY), modes.ECB()).encryptor()
            want = np.frombuffer(aes.update(block.tobytes()), dtype=np.uint64) ^ block
            np.testing.assert_array_equal(out[i, j], want)
