"""Distributed comparison functions (DCF): a dealer splits f(x) = beta [x < alpha] on n-bit
inputs into two keys; each party evaluates its key on a public x and the two outputs add
up, in Z_(2^64), to f(x). Neither key alone says anything about alpha or beta.

The construction is the tree of Boyle, Chandran, Gilboa, Gupta, Ishai, Kumar and Rathee,
"Function Secret Sharing for Mixed-Mode and Fixed-Point Secure Computation" (Eurocrypt
2021, section 3), on `protocols.mpc.fss.prg`'s PRG G(s) = (s_L, v_L, t_L, s_R, v_R, t_R).
Both parties walk the path of x from their root seeds s_0, s_1 (control bits t = 0, 1).
While on alpha's path their states differ (t_0 xor t_1 = 1); the level where x leaves it
the correction word makes them equal, so every later contribution cancels. Writing
(-1)^t for the sign of party 1's control bit and A for the sum of the contributions so
far on alpha's path, level i (alpha's bit a_i; "lose" the other child) has

    s_cw = s_0^lose xor s_1^lose
    v_cw = (-1)^t1 (v_1^lose - v_0^lose - A + beta [lose is left])
    t_cw^L = t_0^L xor t_1^L xor a_i xor 1,   t_cw^R = t_0^R xor t_1^R xor a_i

so an input leaving at level i gets in total beta exactly when it goes left where alpha
goes right (x < alpha); the last word cw = (-1)^t1 (conv(s_1^n) - conv(s_0^n) - A)
zeroes the total at x = alpha. Party b's evaluation adds (-1)^b (v + t v_cw) per level and
(-1)^b (conv(s) + t cw) at the leaf.

Sizes, per comparison of n-bit inputs: a key is one 128-bit seed plus n correction words
(128 + 64 + 2 bits each) and one final 64-bit word: 16 + 24.25 n + 8 bytes (the words are
the same in both keys; only the seed differs). Evaluation: n PRG calls (3 AES blocks each);
generation: 2 n. All over whole arrays of N comparisons at once, level by level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocols.mpc.fss.prg import convert, expand, expand_chosen, random_seeds

MAX_BITS = 64
"""Inputs are at most 64-bit (CrypTen's ring)."""


@dataclass(frozen=True)
class DcfKey:
    """One party's keys for N comparisons on `bits`-bit inputs (module docstring):
    `seeds` (N, 2) uint64 its own; the correction words `cw_seeds` (bits, N, 2),
    `cw_values` (bits, N), `cw_bits` (bits, N, 2) uint8 (left, right) and `cw_final` (N,)
    are common to both parties' keys."""

    party: int
    bits: int
    seeds: np.ndarray
    cw_seeds: np.ndarray
    cw_values: np.ndarray
    cw_bits: np.ndarray
    cw_final: np.ndarray

    @property
    def count(self) -> int:
        return int(self.seeds.shape[0])

    def nbytes(self) -> int:
        """Bytes of this key as sent (the control bits packed 4 to a byte)."""
        bit_bytes = (2 * self.bits * self.count + 7) // 8
        return int(self.seeds.nbytes + self.cw_seeds.nbytes + self.cw_values.nbytes
                   + bit_bytes + self.cw_final.nbytes)  # fmt: skip


def _check(values: np.ndarray, bits: int, what: str) -> np.ndarray:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"DCF on {bits}-bit inputs: expected 1 to {MAX_BITS} bits")
    values = np.ascontiguousarray(values, dtype=np.uint64).reshape(-1)
    if bits < MAX_BITS and values.size and int(values.max()) >> bits:
        raise ValueError(f"DCF: {what} has values beyond {bits} bits")
    return values


def _bit(values: np.ndarray, bits: int, level: int) -> np.ndarray:
    """Bit `level` (0 = the most significant of `bits`) of every value, as uint8."""
    return ((values >> np.uint64(bits - 1 - level)) & np.uint64(1)).astype(np.uint8)


def _signed(values: np.ndarray, negate: np.ndarray) -> np.ndarray:
    """values where `negate` is 0, -values (mod 2^64) where it is 1."""
    return np.where(negate.astype(bool), np.uint64(0) - values, values)


def generate(
    alpha: np.ndarray,
    beta: np.ndarray,
    bits: int,
    rng: np.random.Generator | None = None,
    *,
    seeds: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[DcfKey, DcfKey]:
    """The two parties' keys of f_i(x) = beta_i [x < alpha_i] for every i (alpha: N values
    below 2^bits; beta: N elements of Z_(2^64), or one for all), the root seeds from `rng`
    or given (`seeds`, each (N, 2) uint64 with bit 0 clear: drawn by each party from the
    generator it shares with the dealer, so that they need not be sent)."""
    alpha = _check(alpha, bits, "alpha")
    n = alpha.size
    beta = np.broadcast_to(np.asarray(beta, dtype=np.uint64).reshape(-1), (n,)).copy()
    if seeds is None:
        if rng is None:
            raise ValueError("DCF keys need an rng or both root seeds")
        seeds = (random_seeds(n, rng), random_seeds(n, rng))
    if any(seed.shape != (n, 2) or (seed[:, 0] & np.uint64(1)).any() for seed in seeds):
        raise ValueError(f"DCF root seeds: expected ({n}, 2) uint64 with bit 0 clear")
    s = [seeds[0].copy(), seeds[1].copy()]
    t = [np.zeros(n, np.uint8), np.ones(n, np.uint8)]
    total = np.zeros(n, np.uint64)  # A: the contributions so far on alpha's path
    cw_seeds = np.empty((bits, n, 2), np.uint64)
    cw_values = np.empty((bits, n), np.uint64)
    cw_bits = np.empty((bits, n, 2), np.uint8)
    with np.errstate(over="ignore"):
        for level in range(bits):
            a = _bit(alpha, bits, level)
            keep_right = a.astype(bool)[:, None]
            sl0, tl0, vl0, sr0, tr0, vr0 = expand(s[0])
            sl1, tl1, vl1, sr1, tr1, vr1 = expand(s[1])
            lose_s0, lose_s1 = np.where(keep_right, sl0, sr0), np.where(keep_right, sl1, sr1)
            keep_s0, keep_s1 = np.where(keep_right, sr0, sl0), np.where(keep_right, sr1, sl1)
            right = a.astype(bool)
            lose_v0, lose_v1 = np.where(right, vl0, vr0), np.where(right, vl1, vr1)
            keep_v0, keep_v1 = np.where(right, vr0, vl0), np.where(right, vr1, vl1)
            s_cw = lose_s0 ^ lose_s1
            v_cw = lose_v1 - lose_v0 - total + np.where(right, beta, np.uint64(0))
            v_cw = _signed(v_cw, t[1])
            t_cw_left = tl0 ^ tl1 ^ a ^ 1
            t_cw_right = tr0 ^ tr1 ^ a
            total = total - keep_v1 + keep_v0 + _signed(v_cw, t[1])
            keep_t0, keep_t1 = np.where(right, tr0, tl0), np.where(right, tr1, tl1)
            t_cw_keep = np.where(right, t_cw_right, t_cw_left)
            s = [keep_s0 ^ (s_cw * t[0][:, None]), keep_s1 ^ (s_cw * t[1][:, None])]
            t = [keep_t0 ^ (t[0] & t_cw_keep), keep_t1 ^ (t[1] & t_cw_keep)]
            cw_seeds[level], cw_values[level] = s_cw, v_cw
            cw_bits[level, :, 0], cw_bits[level, :, 1] = t_cw_left, t_cw_right
        final = _signed(convert(s[1]) - convert(s[0]) - total, t[1])
    return tuple(  # type: ignore[return-value]
        DcfKey(b, bits, seeds[b].copy(), cw_seeds, cw_values, cw_bits, final) for b in (0, 1)
    )


def evaluate(key: DcfKey, x: np.ndarray) -> np.ndarray:
    """Party `key.party`'s share (N,) uint64 of beta_i [x_i < alpha_i], x public (N
    values below 2^bits); the two parties' shares add up mod 2^64."""
    x = _check(x, key.bits, "x")
    if x.size != key.count:
        raise ValueError(f"DCF: {x.size} inputs for keys of {key.count} comparisons")
    s = key.seeds.copy()
    t = np.full(key.count, key.party, np.uint8)
    out = np.zeros(key.count, np.uint64)
    with np.errstate(over="ignore"):
        for level in range(key.bits):
            right = _bit(x, key.bits, level).astype(bool)
            child, t_child, v = expand_chosen(s, right)  # only the path's half of G(s)
            t_word = t.astype(np.uint64)
            out += v + key.cw_values[level] * t_word
            s = child ^ (key.cw_seeds[level] * t_word[:, None])
            t_cw = np.where(right, key.cw_bits[level, :, 1], key.cw_bits[level, :, 0])
            t = t_child ^ (t & t_cw)
        out = out + convert(s) + key.cw_final * t.astype(np.uint64)
    return _signed(out, np.full(key.count, key.party, np.uint8))


__all__ = ["MAX_BITS", "DcfKey", "evaluate", "generate"]
