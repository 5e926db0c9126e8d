"""The integer polynomials inside SEAL's CKKS ciphertexts, read and written exactly.

A CKKS plaintext at a level with primes q_0 .. q_l is an integer polynomial m(X) of degree
< N, held as its residues modulo each q_i, in NTT form. Reading m exactly (not through the
floating-point decoder, whose doubles lose everything below 2^-52 of the largest slot) and
writing a chosen integer polynomial back are what the coefficient-domain refresh
(`protocols.he.refresh`) needs: a mask of 2^85 can ride on a value of 2^46 and come off
again without touching its low bits.

sealapi exposes no bulk access to polynomial data: `Plaintext.data(i)` / `DynArray.at(i)`
read one 64-bit word per call, and objects load only from SEAL's own serialization. So:

- `residues(ct)` reads the first polynomial of a ciphertext word by word (k N calls);
- `load_ciphertext` writes SEAL's uncompressed serialization of a size-2 ciphertext with
  chosen polynomials (the header's SEAL version copied from a real save), and loads it;
- NTT <-> coefficient form is SEAL's own `Evaluator.transform_{to,from}_ntt_inplace` on such
  a ciphertext (SEAL refuses to transform a ciphertext whose second polynomial is zero,
  "transparent", so the helpers put a 1 there when only the first one matters).

Integers: `compose` is the CRT (Garner-free form sum r_i M_i (M_i^-1 mod q_i) mod Q, centred
into (-Q/2, Q/2]) on Python integers (numpy object arrays: k N big-integer operations), and
`reduce` takes integers (or int64) to residues modulo each prime.
"""

from __future__ import annotations

import math
import os
import struct
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from tenseal import sealapi

from protocols.he.serial import saved_bytes

_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, version, compression, 0, size
_MAGIC = 0xA15E
_CT_META = struct.Struct("<QQQdQ")  # size, poly_modulus_degree, coeff_modulus_size, scale, corr.


@lru_cache(maxsize=1)
def _version() -> tuple[int, int]:
    """SEAL's serialization version, read from a real save (loads refuse any other)."""
    magic, _, major, minor, _, _, _ = _HEADER.unpack(saved_bytes(sealapi.Ciphertext())[:16])
    if magic != _MAGIC:
        raise RuntimeError("unexpected SEAL serialization header")
    return major, minor


def primes(data: Any, parms_id: Any) -> list[int]:
    """The primes q_0 .. q_l of the level `parms_id` (SEAL's `coeff_modulus`)."""
    return [m.value() for m in data.get_context_data(parms_id).parms().coeff_modulus()]


def ciphertext_pieces(
    parms_id: Any, polys: np.ndarray, scale: float, *, ntt: bool
) -> list[bytes | memoryview]:
    """SEAL's uncompressed serialization of a ciphertext with polynomials `polys`
    (shape (size, k, N), uint64 residues below their primes) at `parms_id`, in pieces
    (the polynomial data is not copied)."""
    size, k, n = polys.shape
    words = np.ascontiguousarray(polys, dtype="<u8").reshape(-1)
    array_size = 16 + 8 + words.nbytes
    meta = struct.pack("<4Q", *parms_id) + bytes([1 if ntt else 0])
    meta += _CT_META.pack(size, n, k, float(scale), 1)
    major, minor = _version()
    total = 16 + len(meta) + array_size
    return [
        _HEADER.pack(_MAGIC, 16, major, minor, 0, 0, total),
        meta,
        _HEADER.pack(_MAGIC, 16, major, minor, 0, 0, array_size),
        struct.pack("<Q", words.size),
        memoryview(words).cast("B"),
    ]


def ciphertext_bytes(parms_id: Any, polys: np.ndarray, scale: float, *, ntt: bool) -> bytes:
    """`ciphertext_pieces` joined."""
    return b"".join(ciphertext_pieces(parms_id, polys, scale, ntt=ntt))


def load_ciphertext(data: Any, raw: bytes | list[bytes | memoryview]) -> sealapi.Ciphertext:
    """A SEAL ciphertext loaded (and validated by SEAL) from `raw` (`ciphertext_bytes`, or
    its pieces), through a file on a RAM disk when there is one (sealapi loads from paths)."""
    directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
    handle, path = tempfile.mkstemp(suffix=".seal", dir=directory)
    try:
        pieces = [raw] if isinstance(raw, bytes) else raw
        with os.fdopen(handle, "wb") as stream:
            for piece in pieces:
                stream.write(piece)
        out = sealapi.Ciphertext()
        out.load(data, path)
        return out
    finally:
        os.unlink(path)


def trivial(
    data: Any, parms_id: Any, first: np.ndarray, scale: float, *, ntt: bool, marker: bool = False
) -> sealapi.Ciphertext:
    """The ciphertext (first, 0) at `parms_id` (residues (k, N)); `marker` puts a 1 in the
    second polynomial so that SEAL agrees to transform it (the first is then still exact)."""
    k, n = first.shape
    polys = np.zeros((2, k, n), dtype=np.uint64)
    polys[0] = first
    if marker:
        polys[1, :, 0] = 1
    return load_ciphertext(data, ciphertext_pieces(parms_id, polys, scale, ntt=ntt))


def residues(ct: sealapi.Ciphertext) -> np.ndarray:
    """The first polynomial of `ct` as uint64 residues, shape (k, N) (one call per word)."""
    k, n = ct.coeff_modulus_size(), ct.poly_modulus_degree()
    words = ct.dyn_array()
    return np.fromiter(map(words.at, range(k * n)), dtype=np.uint64, count=k * n).reshape(k, n)


_LOW = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)


def _mulhi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The high 64 bits of the 128-bit products a b (uint64), from 32-bit halves."""
    a0, a1, b0, b1 = a & _LOW, a >> _32, b & _LOW, b >> _32
    p01, p10 = a0 * b1, a1 * b0
    mid = ((a0 * b0) >> _32) + (p01 & _LOW) + (p10 & _LOW)
    return a1 * b1 + (p01 >> _32) + (p10 >> _32) + (mid >> _32)


def mulmod(a: np.ndarray, w: int, q: int) -> np.ndarray:
    """a w mod q for uint64 a (any value) and a constant 0 <= w < q < 2^63, exactly
    (Shoup: with w' = floor(w 2^64 / q), a w - floor(a w' / 2^64) q lies in [0, 2q))."""
    a = np.asarray(a, dtype=np.uint64)
    shoup = np.uint64((w << 64) // q)
    return mulmod_shoup(a, np.uint64(w), np.full_like(a, shoup), q)


def mulmod_shoup(a: np.ndarray, w: np.ndarray, shoup: np.ndarray, q: int) -> np.ndarray:
    """a w mod q elementwise for uint64 a and 0 <= w < q < 2^63 with w's Shoup constants
    shoup = floor(w 2^64 / q) (arrays, or scalars that broadcast): see `mulmod`."""
    with np.errstate(over="ignore"):
        rem = a * w - _mulhi(a, np.broadcast_to(shoup, a.shape)) * np.uint64(q)
    return np.where(rem >= np.uint64(q), rem - np.uint64(q), rem)


def _submod(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    return np.where(a >= b, a - b, a + (np.uint64(q) - b)).astype(np.uint64)


def addmod(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    """(a + b) mod q for residues a, b below q."""
    return _submod(a, (np.uint64(q) - b) % np.uint64(q), q)


@dataclass(frozen=True)
class Integers:
    """Integers x in [0, Q), Q = q_0 ... q_(k-1), in mixed radix (Garner):
    x = d_0 + d_1 q_0 + d_2 q_0 q_1 + ..., 0 <= d_i < q_i; `negative` marks x > Q / 2 (the
    centred value is x - Q). Arrays of N uint64 digits."""

    digits: list[np.ndarray]
    moduli: list[int]
    negative: np.ndarray

    @classmethod
    def from_residues(cls, res: np.ndarray, moduli: list[int]) -> Integers:
        """Garner: d_i = (((r_i - d_0) / q_0 - d_1) / q_1 - ...) mod q_i."""
        digits: list[np.ndarray] = []
        for i, q in enumerate(moduli):
            t = res[i].astype(np.uint64)
            for j, d in enumerate(digits):
                t = mulmod(_submod(t, d % np.uint64(q), q), pow(moduli[j], -1, q), q)
            digits.append(t)
        total = math.prod(moduli)
        half = _mixed_radix(total // 2, moduli)
        above = np.zeros(res.shape[1], dtype=bool)
        equal = np.ones(res.shape[1], dtype=bool)
        for d, h in zip(reversed(digits), reversed(half), strict=True):
            above |= equal & (d > np.uint64(h))
            equal &= d == np.uint64(h)
        return cls(digits, list(moduli), above)

    def residues(self, primes_out: list[int]) -> np.ndarray:
        """The centred integers modulo each of `primes_out`: (k', N) uint64."""
        rows = []
        for p in primes_out:
            acc = np.zeros_like(self.digits[0])
            weight = 1
            for d, q in zip(self.digits, self.moduli, strict=True):
                acc = addmod(acc, mulmod(d % np.uint64(p), weight % p, p), p)
                weight = weight * q
            wrap = np.uint64(weight % p)
            rows.append(np.where(self.negative, _submod(acc, np.full_like(acc, wrap), p), acc))
        return np.stack(rows).astype(np.uint64)

    def magnitude(self) -> np.ndarray:
        """|centred x| as float64 (relative error about 2^-52: for bounds, not values); a
        negative x has |x| = Q - x = sum (q_i - 1 - d_i) q_0 .. q_(i-1) + 1, summed from
        its own digits so that small magnitudes stay exact."""
        value = np.zeros(self.digits[0].shape, dtype=np.float64)
        weight = 1.0
        for d, q in zip(self.digits, self.moduli, strict=True):
            digit = np.where(self.negative, np.uint64(q - 1) - d, d)
            value += digit.astype(np.float64) * weight
            weight *= float(q)
        return value + self.negative


def _mixed_radix(value: int, moduli: list[int]) -> list[int]:
    digits = []
    for q in moduli:
        value, digit = divmod(value, q)
        digits.append(digit)
    return digits


def uniform_residues(count: int, bits: int, moduli_sets: list[list[int]]) -> list[np.ndarray]:
    """Residues of `count` integers u uniform on [-2^bits, 2^bits) (the OS's random source:
    bits + 1 random bits each), modulo each prime of each set: one (k, count) uint64 array
    per set, the same u in all."""
    import secrets

    words = (bits + 1 + 63) // 64
    raw = np.frombuffer(secrets.token_bytes(8 * words * count), dtype=np.uint64)
    raw = raw.reshape(words, count).copy()
    spare = 64 * words - (bits + 1)
    raw[-1] >>= np.uint64(spare)  # u + 2^bits = sum_w raw[w] 2^(64 w), below 2^(bits + 1)
    out = []
    for moduli in moduli_sets:
        rows = []
        for q in moduli:
            acc = np.zeros(count, dtype=np.uint64)
            for w in range(words):
                acc = addmod(acc, mulmod(raw[w] % np.uint64(q), pow(2, 64 * w, q), q), q)
            rows.append(_submod(acc, np.full(count, pow(2, bits, q), np.uint64), q))
        out.append(np.stack(rows))
    return out


def plaintext_integers(
    data: Any, evaluator: sealapi.Evaluator, plain: sealapi.Plaintext, parms_id: Any
) -> Integers:
    """The integer coefficients of a decrypted (NTT-form) CKKS plaintext at `parms_id`:
    the plaintext added to a marked zero ciphertext, taken out of NTT form by SEAL, its first
    polynomial read (k N words) and put in mixed radix."""
    moduli = primes(data, parms_id)
    n = data.get_context_data(parms_id).parms().poly_modulus_degree()
    holder = trivial(data, parms_id, np.zeros((len(moduli), n), np.uint64), plain.scale,
                     ntt=True, marker=True)  # fmt: skip
    evaluator.add_plain_inplace(holder, plain)
    evaluator.transform_from_ntt_inplace(holder)
    return Integers.from_residues(residues(holder), moduli)


_MARKERS: dict[tuple[Any, ...], sealapi.Ciphertext] = {}


def _marker(data: Any, evaluator: sealapi.Evaluator, parms_id: Any, n: int, k: int) -> Any:
    """(0, 1) in NTT form at `parms_id`, made once per context and level."""
    key = (id(data), tuple(parms_id))
    if key not in _MARKERS:
        held = trivial(data, parms_id, np.zeros((k, n), np.uint64), 1.0, ntt=False, marker=True)
        evaluator.transform_to_ntt_inplace(held)
        _MARKERS[key] = held
    return _MARKERS[key]


def add_residues(
    data: Any, evaluator: sealapi.Evaluator, ct: sealapi.Ciphertext, res: np.ndarray
) -> sealapi.Ciphertext:
    """ct with the integers of residues `res` (k, N at `ct`'s level) added exactly to its
    plaintext polynomial (a new ciphertext): the trivial (res, marker) is put in NTT form by
    SEAL (one transform), added, and the marker's own NTT form (0, marker) subtracted."""
    k, n = res.shape
    addend = trivial(data, ct.parms_id(), res, ct.scale, ntt=False, marker=True)
    evaluator.transform_to_ntt_inplace(addend)
    marker = _marker(data, evaluator, ct.parms_id(), n, k)
    marker.scale = ct.scale
    out = sealapi.Ciphertext()
    evaluator.add(ct, addend, out)
    evaluator.sub_inplace(out, marker)
    return out


__all__ = [
    "Integers",
    "add_residues",
    "addmod",
    "ciphertext_bytes",
    "ciphertext_pieces",
    "load_ciphertext",
    "mulmod",
    "mulmod_shoup",
    "plaintext_integers",
    "primes",
    "residues",
    "trivial",
    "uniform_residues",
]
