"""CKKS's canonical embedding of integer polynomials, in double-double precision.

A CKKS plaintext is an integer polynomial m(X) mod X^N + 1; its N/2 slots are its values at
the primitive 2N-th roots of unity zeta^(g_k), zeta = exp(i pi / N), g_k = 3^k mod 2N (the
other N/2 roots, zeta^(-g_k), hold the conjugates), divided by the scale:

    decode:  z_k = m(zeta^(g_k)) = sum_j m_j zeta^(j g_k): m folded into N/2 complex
             numbers, twisted by zeta^j, one FFT of length N/2 (`decode`)
    encode:  its inverse: one inverse FFT of length N/2, untwisted, unfolded

SEAL and TenSEAL do both in float64, which keeps about 52 bits of the largest slot. A
coefficient-mode re-layout (`protocols.he.relayout`) moves slot values whose plaintext
carries a mask u of 2^96 per coefficient, so its slots reach about 2^96 sqrt(N) while the
values under them need 2^-20 of the scale 2^40: about 85 bits below the largest slot. Here
both maps run on `doubledouble.DD` (about 104 bits). Error: a radix-2 FFT of length N in an
arithmetic of unit u has error about u log2(N) times the input's 2-norm (times sqrt(N) at
one output): for coefficients below 2^96, N = 2^15 and u = 2^-104, decode then encode miss
the exact integers by about 2^96 2^-104 15 sqrt(2^15) ~ 2^3.4 < 16 per coefficient: below
2^-36 of a value at scale 2^40 (`tests/protocols/he/test_embedding.py` measures it against
exact rational arithmetic). The root table comes from mpmath at 120 bits, once per N.

Integers in and out: `from_integers` takes SEAL's mixed-radix `coefficients.Integers` to
double-doubles (exact below 2^106, else to 2^-104 relative); `residues` takes the nearest
integers of double-doubles to residues modulo primes, exactly.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from protocols.he import coefficients
from protocols.he.doubledouble import DD, ComplexDD, two_sum


@lru_cache(maxsize=4)
def roots(n: int) -> tuple[DD, DD]:
    """cos and sin of pi j / n for j in [0, 2n) as double-doubles: zeta^j, zeta a primitive
    2n-th root of unity. A quarter from mpmath, the rest by multiplying by i (exact)."""
    import mpmath

    quarter = n // 2
    with mpmath.workprec(120):
        pi = mpmath.pi
        c_hi, c_lo, s_hi, s_lo = (np.empty(quarter) for _ in range(4))
        for j in range(quarter):
            angle = pi * j / n
            c, s = mpmath.cos(angle), mpmath.sin(angle)
            c_hi[j], s_hi[j] = float(c), float(s)
            c_lo[j], s_lo[j] = float(c - c_hi[j]), float(s - s_hi[j])
    # zeta^(j + q n/2) = i^q zeta^j: (c, s) -> (-s, c) -> (-c, -s) -> (s, -c)
    cos = (np.concatenate([c_hi, -s_hi, -c_hi, s_hi]), np.concatenate([c_lo, -s_lo, -c_lo, s_lo]))
    sin = (np.concatenate([s_hi, c_hi, -s_hi, -c_hi]), np.concatenate([s_lo, c_lo, -s_lo, -c_lo]))
    return DD(*cos), DD(*sin)


@lru_cache(maxsize=4)
def slot_points(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per slot k, the index t of `decode`'s half-length FFT that holds it and whether it is
    the conjugate there: the root zeta^r with r = g_k when g_k = 1 mod 4, else r = 2n - g_k
    (the conjugate's root, which is 1 mod 4); t = (r - 1) / 4."""
    g = np.empty(n // 2, dtype=np.int64)
    power = 1
    for k in range(n // 2):
        g[k] = power
        power = power * 3 % (2 * n)
    conjugate = g % 4 == 3
    r = np.where(conjugate, 2 * n - g, g)
    return (r - 1) // 4, conjugate


@lru_cache(maxsize=4)
def _bit_reversal(n: int) -> np.ndarray:
    bits = n.bit_length() - 1
    index = np.arange(n)
    out = np.zeros(n, dtype=np.int64)
    for b in range(bits):
        out |= ((index >> b) & 1) << (bits - 1 - b)
    return out


@lru_cache(maxsize=8)
def _twiddles(n: int, sign: int) -> tuple[ComplexDD, ...]:
    """Per radix-2 stage of half-size h = 1, 2, ..., n/2: exp(sign 2 pi i k / (2h)), k < h
    (from the table of `roots(2n)`, the one `decode` and `encode` use)."""
    cos, sin = roots(2 * n)
    out = []
    h = 1
    while h < n:
        j = (sign * np.arange(h) * (2 * n // h)) % (4 * n)
        out.append(ComplexDD(cos.take(j), sin.take(j)))
        h *= 2
    return tuple(out)


def fft(x: ComplexDD, sign: int) -> ComplexDD:
    """sum_j x_j exp(sign 2 pi i j t / n) along the last axis (n a power of two): radix-2
    decimation in time, every stage vectorised over the batch and the butterflies."""
    n = x.re.hi.shape[-1]
    batch = x.re.hi.shape[:-1]
    parts = [p[..., _bit_reversal(n)] for p in x.parts()]
    for h, w in zip(2 ** np.arange(n.bit_length() - 1), _twiddles(n, sign), strict=True):
        shaped = [p.reshape(*batch, n // (2 * h), 2, h) for p in parts]
        a = ComplexDD.from_parts([p[..., 0, :] for p in shaped])
        b = ComplexDD.from_parts([p[..., 1, :] for p in shaped])
        t = b * w
        top, bottom = (a + t).parts(), (a - t).parts()
        parts = [
            np.stack([u, v], axis=-2).reshape(*batch, n) for u, v in zip(top, bottom, strict=True)
        ]
    return ComplexDD.from_parts(parts)


def decode(coeffs: DD) -> ComplexDD:
    """The slot values times the scale, m(zeta^(g_k)), of real polynomials `coeffs`
    (..., n), by one FFT of length n/2: with c_j = m_j + i m_(j + n/2) (j < n/2) and a root
    zeta^r, r = 1 mod 4, m(zeta^r) = sum_j c_j zeta^(r j) (as zeta^(r n/2) = i^r = i)
    = sum_j (c_j zeta^j) exp(2 pi i j t / (n/2)) with t = (r - 1) / 4; every slot's root or
    its conjugate's is 1 mod 4 (`slot_points`)."""
    n = coeffs.hi.shape[-1]
    half = n // 2
    cos, sin = roots(n)
    j = np.arange(half)
    folded = ComplexDD(coeffs.take(np.arange(half)), coeffs.take(np.arange(half, n)))
    out = fft(folded * ComplexDD(cos.take(j), sin.take(j)), +1)
    points, conjugate = slot_points(n)
    sign = np.where(conjugate, -1.0, 1.0)
    im = out.im.take(points)
    return ComplexDD(out.re.take(points), DD(im.hi * sign, im.lo * sign))


def encode(slots: ComplexDD) -> DD:
    """The real coefficients m_j of the polynomials whose slots times the scale are `slots`
    (..., n/2): the inverse of `decode` (not rounded): the values at the roots 1 mod 4
    (conjugated where the slot's root is 3 mod 4), an inverse FFT of length n/2 divided by
    n/2, untwisted by zeta^-j, read as m_j + i m_(j + n/2)."""
    half = slots.re.hi.shape[-1]
    n = 2 * half
    points, conjugate = slot_points(n)
    sign = np.where(conjugate, -1.0, 1.0)
    values = slots.parts()
    full = [np.zeros(values[0].shape) for _ in range(4)]
    for part, value, flip in zip(full, values, (1.0, 1.0, sign, sign), strict=True):
        part[..., points] = value * flip
    y = fft(ComplexDD.from_parts(full), -1)
    cos, sin = roots(n)
    j = np.arange(half)
    c = y * ComplexDD(cos.take(j), -sin.take(j))
    shift = -(half.bit_length() - 1)
    re, im = c.re.ldexp(shift), c.im.ldexp(shift)
    return DD(np.concatenate([re.hi, im.hi], axis=-1), np.concatenate([re.lo, im.lo], axis=-1))


def from_integers(values: coefficients.Integers) -> DD:
    """Centred integers (SEAL's mixed radix) as double-doubles: sum_i d_i q_0 .. q_(i-1),
    minus Q for the negative ones; each digit split in 32-bit halves (exact)."""
    total = DD.of(np.zeros(values.digits[0].shape))
    weight = 1
    for digit, q in zip(values.digits, values.moduli, strict=True):
        high = ((digit >> np.uint64(32)) << np.uint64(32)).astype(np.float64)
        low = (digit & np.uint64(0xFFFFFFFF)).astype(np.float64)
        total = total + DD(*two_sum(high, low)) * DD.from_int(weight)
        weight *= q
    modulus = DD.from_int(weight)
    shift = DD(
        np.where(values.negative, modulus.hi, 0.0), np.where(values.negative, modulus.lo, 0.0)
    )
    return total - shift


def residues(values: DD, primes: list[int]) -> np.ndarray:
    """The nearest integers of `values` (shape (n,)) modulo each of `primes`: (k, n) uint64."""
    whole, rest = values.rounded()
    return np.stack(
        [
            coefficients.addmod(_float_residues(whole, q), _float_residues(rest, q), q)
            for q in primes
        ]
    )


def _float_residues(y: np.ndarray, q: int) -> np.ndarray:
    """Integer-valued float64 `y` modulo q: y = mantissa 2^exponent, |mantissa| < 2^53."""
    fraction, exponent = np.frexp(y)
    big = np.abs(y) >= 2.0**53
    mantissa = np.where(big, np.ldexp(fraction, 53), y).astype(np.int64)
    shift = np.where(big, exponent - 53, 0).astype(np.int64)
    magnitude = np.abs(mantissa).astype(np.uint64) % np.uint64(q)
    signed = np.where(mantissa < 0, (np.uint64(q) - magnitude) % np.uint64(q), magnitude)
    powers = [pow(2, e, q) for e in range(int(shift.max(initial=0)) + 1)]
    factor = np.array(powers, dtype=np.uint64)[shift]
    shoup = np.array([(w << 64) // q for w in powers], dtype=np.uint64)[shift]
    return coefficients.mulmod_shoup(signed, factor, shoup, q)


__all__ = ["decode", "encode", "fft", "from_integers", "residues", "roots", "slot_points"]
