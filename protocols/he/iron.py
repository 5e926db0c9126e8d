"""Iron's compact packing (Hao et al., NeurIPS 2022): Y = X W by coefficient encoding.

X (m x d_in) is the client's and travels encrypted; W (d_in x d_out) is the server's, plain.
Instead of slots, X and W are written into the COEFFICIENTS of polynomials of the ring
R_t = Z_t[x] / (x^N + 1), so that one polynomial product holds many inner products at known
coefficients. No rotation, hence no Galois key; the result comes back to the client, who
reads the wanted coefficients and re-encrypts them in a slot layout (the refresh round trip).

Scheme: BFV (SEAL through `tenseal.sealapi`), not CKKS. Reasons, checked here:
- SEAL refuses a CKKS plaintext given by its coefficients (`Evaluator.transform_to_ntt_inplace`
  on one raises "plain is not valid for encryption parameters"): in CKKS the only way to a
  plaintext is the encoder, which goes through a float64 FFT. Coefficients would then be
  exact only to about 2^-52 of their size, so a mask added through it has its low bits fixed
  and cannot hide the unused coefficients from a client that decrypts exactly.
- BFV takes a plaintext polynomial as it is (`sealapi.Plaintext` from its hexadecimal
  polynomial string), multiplies by it exactly in Z_t, adds an exact integer mask, and
  decryption returns the exact message coefficients (the noise is rounded away).
- The server needs no key at all (plain products and additions need none): its "public
  context" is the encryption parameters. The price: the client holds a second secret key
  (BFV, `IronClient`), and X and W are fixed point numbers.

Fixed point. X_int = round(2^fx X), W_int = round(2^fw W), f = fx + fw; the product
Y_int = X_int W_int is computed exactly in Z_t (t = 2^59 by default) and Y ~ Y_int / 2^f with

    |Y[i, o] - Y_int[i, o] / 2^f| <= sum_k (|X[i, k]| 2^-(fw+1) + |W[k, o]| 2^-(fx+1)
                                             + 2^-(f+2))                      (`error_bound`)

Coefficient positions. Blocks of n_i rows, n_k inner indices and n_o outputs with
n_i n_k n_o <= N. A block of X and one of W are the polynomials

    x^(i, k) : X[i, k] at exponent  i n_k n_o + k                (i < n_i, k < n_k)
    w^(k, o) : W[k, o] at exponent  o n_k + n_k - 1 - k          (k < n_k, o < n_o)

and the coefficient of x^(i n_k n_o + o n_k + n_k - 1) in their product is sum_k X[i, k] W[k, o].
Proof: a term X[i', k] W[k', o'] lands at i' n_k n_o + o' n_k + (n_k - 1) + (k - k'). Equal to
the position of (i, o) means (i' - i) n_k n_o + (o' - o) n_k + (k - k') = 0; as |k - k'| < n_k
this forces k = k', then |o' - o| < n_o forces o' = o and i' = i. The largest exponent is
n_i n_k n_o + n_k - 2 < N + n_k - 1, so the terms that wrap past x^N (with a sign, x^N = -1)
land in [0, n_k - 2], below the smallest wanted position n_k - 1. Every other coefficient
(`unused_positions`) holds sums sum_{k - k' = d} X[i, k] W[k', o] for d != 0, or wrapped ones.

Tiling. T_i = ceil(m / n_i), T_k = ceil(d_in / n_k), T_o = ceil(d_out / n_o) (edge blocks
zero-padded). The client sends T_i T_k ciphertexts (block (a, b) of X); the server encodes W
as T_k T_o plaintexts and returns, for each (a, c), sum_b x^_(a, b) w^_(b, c): T_i T_o
ciphertexts from T_i T_k T_o plain products. Evaluation: each input ciphertext and each W
plaintext is moved to NTT form once, a product is then a pointwise product, and each output
is moved back once: T_i T_k + T_i T_o ciphertext transforms, T_k T_o plaintext ones.

Block sizes (`block_sizes`). Iron picks (n_i, n_k, n_o) minimising the ciphertexts exchanged.
Here each is weighted by its bytes: an input travels seeded (one polynomial at the data
level and a seed), an output as two polynomials, so the objective is T_i T_k + 2 T_i T_o
(ties: fewer products, then fewer plaintexts). Only the smallest block giving each tile count
matters (it leaves the most room to the others), so the search runs over the distinct tile
counts of m and d_in, with n_o = min(d_out, floor(N / (n_i n_k))). Scaling, for d_in = d_out
= d and n_i = m: minimising d / n_k + 2 d / n_o with n_k n_o = N / m gives n_k = sqrt(N / 2m),
n_o = 2 n_k and 2 d sqrt(2 m / N) polynomials of N coefficients on the wire (an input counts
one, an output two): Iron's traffic grows as sqrt(m). A slot packing that fills its N / 2
slots sends about 2 m d / N ciphertexts each way: it grows as m. Hence Iron's "sqrt(m) less
traffic" holds for large m; at a few dozen rows the dense slot packing moves less
(`benchmarks.he_iron` measures both and prints where the ratio crosses 1).

Noise (`check_noise`, done before any product). SEAL's BFV encryption of m is round(q m / t)
+ e with |e| <= 21 (its centred binomial, or 6 sigma clipped Gaussian: 19.2), so the
invariant noise of an output is at most (t / q) ((21 + 1/2) S + 1/2), S = sum over the T_k
blocks of ||w^||_1 (sum of |W_int| over the block), the last 1/2 the rounding of the mask.
Decryption is exact while that is below 1/2; a W that breaks it is refused (lower fw).
Defaults: N = 8192, coefficient primes [60, 60 | 60] (120 data bits, 180 in all, 128-bit
secure), t = 2^59, fx = 20, fw = 19.

Security of the output (`multiply`, `mask_outputs`). The output polynomial holds far more
than Y: its unused coefficients are the shifted cross sums above, which are linear in W
with coefficients the client knows (X), so a client reading them could solve for W
(`tests/protocols/he/test_he_iron.py` does, exactly, from an unmasked output). So before
sending, the server adds a mask polynomial:
- every unused coefficient gets an independent uniform value mod t: the client's view of
  those coefficients is uniform and independent of X and W (perfect hiding);
- every wanted coefficient gets r uniform on the integers of [-R, R), R = 2^(mask_bits + f),
  that the server keeps (`IronMask`): it is the refresh's mask. The client decrypts
  z = Y_int + r exactly (no wrap mod t while |Y| + 2^mask_bits < 2^(58 - f), `message_bits`),
  re-encrypts z / 2^f in the slot layout of the next operation, and the server subtracts
  r / 2^f there. Per entry the client's view is within B / (2R) of r alone for |Y| <= B
  (`refresh.hiding_bits`); the default mask_bits = 17 gives the refresh's 12 bits for B = 64.
We do not extract the wanted coefficients (LWE extraction): sealapi gives no access to a
ciphertext's polynomials, and masking costs one plaintext addition per output and no byte.
Not covered, as for the slot refresh: circuit privacy of the noise. The client holds the
key and can compute an output's raw noise (sum_b e_b w^_(a, b)), which depends on W; no
noise flooding is done here.

Wire. Client to server: T_i T_k seeded ciphertexts, N L 8 bytes each (L = data primes, 2);
server to client: T_i T_o ciphertexts, 2 N L 8 bytes each (SEAL's zstd gains nothing on
60-bit residues). The server's outputs stay at the data level: with t = 2^59 one 60-bit prime
leaves no room for the noise of the modulus switch.
"""

from __future__ import annotations

import math
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tenseal import sealapi

from protocols.he.params import MAX_BITS_128
from protocols.he.polynomial import HeCost
from protocols.he.serial import saved_bytes

STRATEGY = "iron"

#: SEAL's fresh BFV noise is at most this in absolute value (centred binomial of parameter
#: 21; the clipped Gaussian alternative stops at 6 sigma = 19.2).
FRESH_NOISE_BOUND = 21

#: Unit costs in ms at N = 8192, primes [60, 60, 60], one thread (what `IronPlan.estimated_ms`
#: sums; measured here, ratios matter): `encode_w` one sparse W block (polynomial string,
#: parse, NTT); `ntt` one ciphertext transform (either way); `pt_mult` one pointwise
#: product and addition; `mask` one dense mask polynomial built, parsed and added.
IRON_UNIT_MS_8192: dict[str, float] = {
    "encode_w": 0.5,
    "ntt": 0.8,
    "pt_mult": 0.3,
    "mask": 4.2,
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class IronParams:
    """BFV parameters of Iron's packing and its fixed point (module docstring).

    `coeff_mod_bit_sizes`: SEAL primes, the last one special (key switching, unused here),
    the others the data level. `plain_modulus_bits`: t = 2^bits (at most 60, SEAL's limit).
    `x_frac_bits`, `w_frac_bits`: fx, fw. `mask_bits`: log2 of the wanted coefficients' mask
    bound R in value units. `secure`: refuse a modulus above the 128-bit bound at N (tests
    pass False to run tiny rings; never for real use).
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 60, 60)
    plain_modulus_bits: int = 59
    x_frac_bits: int = 20
    w_frac_bits: int = 19
    mask_bits: int = 17
    secure: bool = True

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if not _is_int(n) or n < 16 or n & (n - 1):
            raise ValueError(f"poly_modulus_degree={n!r}: expected a power of two >= 16")
        bits = tuple(self.coeff_mod_bit_sizes)
        if len(bits) < 2 or not all(_is_int(b) and 20 <= b <= 60 for b in bits):
            raise ValueError(
                f"coeff_mod_bit_sizes={bits!r}: expected >= 2 integers in [20, 60] (data "
                "primes, then the special prime)"
            )
        object.__setattr__(self, "coeff_mod_bit_sizes", bits)
        if self.secure and (n not in MAX_BITS_128 or sum(bits) > MAX_BITS_128[n]):
            raise ValueError(
                f"a {sum(bits)}-bit modulus at N={n} is not 128-bit secure (at most "
                f"{MAX_BITS_128.get(n, 0)} bits)"
            )
        for name in ("plain_modulus_bits", "x_frac_bits", "w_frac_bits", "mask_bits"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected an integer >= 0")
        if not 8 <= self.plain_modulus_bits <= 60:
            raise ValueError(f"plain_modulus_bits={self.plain_modulus_bits}: expected 8..60")
        if self.message_bits < self.mask_bits + 1:
            raise ValueError(
                f"mask_bits={self.mask_bits} leaves no room: |Y + r| must stay below "
                f"2^{self.message_bits} (t = 2^{self.plain_modulus_bits}, f = {self.frac_bits})"
            )

    @property
    def frac_bits(self) -> int:
        """f = fx + fw: Y_int = Y 2^f."""
        return self.x_frac_bits + self.w_frac_bits

    @property
    def plain_modulus(self) -> int:
        return 1 << self.plain_modulus_bits

    @property
    def message_bits(self) -> int:
        """|Y + r| < 2^message_bits in value units: the centred range of Z_t over 2^f."""
        return self.plain_modulus_bits - 1 - self.frac_bits

    @property
    def data_primes(self) -> int:
        return len(self.coeff_mod_bit_sizes) - 1

    def hiding_bits(self, value_bound: float) -> float:
        """-log2 of the statistical distance B / (2R) per wanted entry, |Y| <= value_bound."""
        return self.mask_bits + 1 - math.log2(value_bound)

    def context(self) -> sealapi.SEALContext:
        """The SEAL BFV context (built identically by both parties from these parameters)."""
        parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.BFV)
        parms.set_poly_modulus_degree(self.poly_modulus_degree)
        parms.set_coeff_modulus(
            sealapi.CoeffModulus.Create(self.poly_modulus_degree, list(self.coeff_mod_bit_sizes))
        )
        parms.set_plain_modulus(sealapi.Modulus(self.plain_modulus))
        level = sealapi.SEC_LEVEL_TYPE.TC128 if self.secure else sealapi.SEC_LEVEL_TYPE.NONE
        context = sealapi.SEALContext(parms, True, level)
        if not context.parameters_set():
            raise ValueError(f"SEAL refuses the parameters: {context.parameters_error_message()}")
        return context

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": "BFV",
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
            "plain_modulus_bits": self.plain_modulus_bits,
            "x_frac_bits": self.x_frac_bits,
            "w_frac_bits": self.w_frac_bits,
            "mask_bits": self.mask_bits,
            "secure": self.secure,
        }


# --- the plan: block sizes, positions, cost -------------------------------------------------
@dataclass(frozen=True)
class IronPlan:
    """Blocks and predicted cost of one (rows x d_in)(d_in x d_out) product by Iron's packing.

    Counts as in `protocols.he.matmul.MatmulPlan`: `cost` (products, additions; no rotation),
    `key_switches` (0), ciphertexts each way, `encodings` (W blocks encoded), and bytes each
    way (`bytes_in`: seeded inputs, N L 8 bytes each; `bytes_out`: 2 N L 8 each).
    """

    rows: int
    d_in: int
    d_out: int
    degree: int
    n_i: int
    n_k: int
    n_o: int
    data_primes: int = 2
    strategy: str = STRATEGY
    details: dict[str, int] = field(default_factory=dict, compare=False)

    @property
    def tiles(self) -> tuple[int, int, int]:
        """(T_i, T_k, T_o): blocks along rows, inner dimension, outputs."""
        return (
            math.ceil(self.rows / self.n_i),
            math.ceil(self.d_in / self.n_k),
            math.ceil(self.d_out / self.n_o),
        )

    @property
    def ciphertexts_in(self) -> int:
        t_i, t_k, _ = self.tiles
        return t_i * t_k

    @property
    def ciphertexts_out(self) -> int:
        t_i, _, t_o = self.tiles
        return t_i * t_o

    @property
    def products(self) -> int:
        t_i, t_k, t_o = self.tiles
        return t_i * t_k * t_o

    @property
    def encodings(self) -> int:
        _, t_k, t_o = self.tiles
        return t_k * t_o

    @property
    def key_switches(self) -> int:
        return 0

    @property
    def cost(self) -> HeCost:
        t_i, t_k, t_o = self.tiles
        return HeCost(ct_pt_mults=self.products, additions=t_i * t_o * (t_k - 1), depth=1)

    @property
    def bytes_in(self) -> int:
        return self.ciphertexts_in * self.degree * self.data_primes * 8

    @property
    def bytes_out(self) -> int:
        return self.ciphertexts_out * 2 * self.degree * self.data_primes * 8

    def estimated_ms(self, units: dict[str, float] | None = None) -> float:
        """Predicted single-thread server time in ms (`IRON_UNIT_MS_8192` by default):
        W blocks encoded, ciphertext NTTs (inputs and outputs), products, masks."""
        u = IRON_UNIT_MS_8192 if units is None else units
        return (
            self.encodings * u["encode_w"]
            + (self.ciphertexts_in + self.ciphertexts_out) * u["ntt"]
            + self.products * u["pt_mult"]
            + self.ciphertexts_out * u["mask"]
        )

    # positions inside one block (module docstring)
    def x_exponents(self) -> np.ndarray:
        """(n_i, n_k): exponent of X[i, k] in an input polynomial, i n_k n_o + k."""
        i, k = np.arange(self.n_i)[:, None], np.arange(self.n_k)[None, :]
        return i * self.n_k * self.n_o + k

    def w_exponents(self) -> np.ndarray:
        """(n_k, n_o): exponent of W[k, o] in a weight polynomial, o n_k + n_k - 1 - k."""
        k, o = np.arange(self.n_k)[:, None], np.arange(self.n_o)[None, :]
        return o * self.n_k + self.n_k - 1 - k

    def y_exponents(self) -> np.ndarray:
        """(n_i, n_o): the coefficient of an output holding Y[i, o], i n_k n_o + o n_k + n_k - 1."""
        i, o = np.arange(self.n_i)[:, None], np.arange(self.n_o)[None, :]
        return i * self.n_k * self.n_o + o * self.n_k + self.n_k - 1

    def unused_positions(self) -> np.ndarray:
        """The coefficients of an output that hold no entry of Y (sorted)."""
        used = np.zeros(self.degree, dtype=bool)
        used[self.y_exponents().reshape(-1)] = True
        return np.flatnonzero(~used)

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "shape": [self.rows, self.d_in, self.d_out],
            "blocks": [self.n_i, self.n_k, self.n_o],
            "tiles": list(self.tiles),
            "ciphertexts_in": self.ciphertexts_in,
            "ciphertexts_out": self.ciphertexts_out,
            "products": self.products,
            "encodings": self.encodings,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }


def _smallest_blocks(total: int, limit: int) -> list[int]:
    """For each tile count T of `total` items, the smallest block size giving T, <= limit."""
    sizes = sorted({math.ceil(total / t) for t in range(1, total + 1)})
    return [s for s in sizes if s <= limit]


def block_sizes(rows: int, d_in: int, d_out: int, degree: int) -> tuple[int, int, int]:
    """(n_i, n_k, n_o) minimising T_i T_k + 2 T_i T_o with n_i n_k n_o <= degree.

    Ties: fewer products T_i T_k T_o, then fewer W blocks T_k T_o (module docstring).
    """
    for name, value in (("rows", rows), ("d_in", d_in), ("d_out", d_out), ("degree", degree)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name}={value!r}: expected a positive integer")
    best: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None
    for n_i in _smallest_blocks(rows, degree):
        for n_k in _smallest_blocks(d_in, degree // n_i):
            n_o = min(d_out, degree // (n_i * n_k))
            t_i, t_k, t_o = -(-rows // n_i), -(-d_in // n_k), -(-d_out // n_o)
            key = (t_i * t_k + 2 * t_i * t_o, t_i * t_k * t_o, t_k * t_o)
            if best is None or key < best[0]:
                best = (key, (n_i, n_k, n_o))
    assert best is not None
    return best[1]


def iron_cost(rows: int, d_in: int, d_out: int, params: IronParams | None = None) -> IronPlan:
    """The plan of Iron's packing for the shape: Iron's block sizes and their cost."""
    p = IronParams() if params is None else params
    n_i, n_k, n_o = block_sizes(rows, d_in, d_out, p.poly_modulus_degree)
    return IronPlan(
        rows, d_in, d_out, p.poly_modulus_degree, n_i, n_k, n_o, p.data_primes,
        details={"n_i": n_i, "n_k": n_k, "n_o": n_o},
    )  # fmt: skip


def error_bound(x: np.ndarray, w: np.ndarray, params: IronParams) -> np.ndarray:
    """(rows x d_out) bound on |X W - Y_int / 2^f| from the fixed point (module docstring)."""
    x, w = np.abs(np.asarray(x, float)), np.abs(np.asarray(w, float))
    fx, fw = params.x_frac_bits, params.w_frac_bits
    return (
        x.sum(1, keepdims=True) * 2.0 ** -(fw + 1)
        + w.sum(0, keepdims=True) * 2.0 ** -(fx + 1)
        + x.shape[1] * 2.0 ** -(fx + fw + 2)
    )


# --- polynomials and bytes ------------------------------------------------------------------
_HEX = np.frombuffer(b"0123456789ABCDEF", dtype=np.uint8)
_SHIFTS = np.arange(60, -1, -4, dtype=np.uint64)  # 16 hexadecimal digits of a uint64
_POWERS = 10 ** np.arange(4, -1, -1)  # 5 decimal digits of an exponent (N <= 65536)


def plaintext(coefficients: np.ndarray) -> sealapi.Plaintext:
    """A BFV plaintext holding `coefficients` (uint64, already reduced mod t).

    Built from SEAL's polynomial string ("...Hx^e + ...", highest degree first, zero terms
    left out), written with fixed-width fields by numpy rather than term by term in Python.
    """
    coefficients = np.asarray(coefficients, dtype=np.uint64)
    exponents = np.flatnonzero(coefficients)[::-1]
    if exponents.size == 0:
        return sealapi.Plaintext()
    values = coefficients[exponents]
    rows = np.empty((exponents.size, 26), dtype=np.uint8)
    rows[:, :16] = _HEX[((values[:, None] >> _SHIFTS[None, :]) & np.uint64(15)).astype(np.intp)]
    rows[:, 16], rows[:, 17] = ord("x"), ord("^")
    rows[:, 18:23] = _HEX[(exponents[:, None] // _POWERS[None, :]) % 10]
    rows[:, 23:] = np.frombuffer(b" + ", dtype=np.uint8)
    return sealapi.Plaintext(rows.tobytes()[:-3].decode("ascii"))


def to_bytes(obj: Any) -> bytes:
    """SEAL's serialization of a ciphertext (or of the seeded `Serializable` of `pack`)."""
    return saved_bytes(obj)


def from_bytes(context: sealapi.SEALContext, data: bytes) -> sealapi.Ciphertext:
    """Load a ciphertext sent under `context` (SEAL checks it is valid for the parameters)."""
    directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
    handle, path = tempfile.mkstemp(suffix=".seal", dir=directory)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        ct = sealapi.Ciphertext()
        ct.load(context, path)
        return ct
    finally:
        os.unlink(path)


def _quantize(values: np.ndarray, frac_bits: int, name: str, limit_bits: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or 0 in values.shape or not np.all(np.isfinite(values)):
        raise ValueError(f"{name}: expected a finite non-empty 2-D matrix, got {values.shape}")
    if np.max(np.abs(values)) >= 2.0**limit_bits:
        raise ValueError(f"{name}: entries must stay below 2^{limit_bits} in absolute value")
    return np.rint(np.ldexp(values, frac_bits)).astype(np.int64)


def _reduce(values: np.ndarray, t: int) -> np.ndarray:
    """Integers (int64) as their representatives in [0, t) (uint64)."""
    return np.mod(values, t).astype(np.uint64)


def _random_uint64(count: int) -> np.ndarray:
    return np.frombuffer(secrets.token_bytes(8 * count), dtype=np.uint64).copy()


# --- client ---------------------------------------------------------------------------------
class IronClient:
    """The client's side: a BFV secret key; packs X, reads the masked outputs back."""

    def __init__(self, params: IronParams | None = None) -> None:
        self.params = IronParams() if params is None else params
        self.context = self.params.context()
        secret = sealapi.KeyGenerator(self.context).secret_key()
        self.encryptor = sealapi.Encryptor(self.context, secret)
        self.decryptor = sealapi.Decryptor(self.context, secret)

    def pack(self, x: np.ndarray, plan: IronPlan) -> list[bytes]:
        """Encrypt X block by block (block (a, b) at index a T_k + b), seeded, serialized."""
        p = self.params
        x_int = _quantize(x, p.x_frac_bits, "x", p.plain_modulus_bits - 2 - p.x_frac_bits)
        if x_int.shape != (plan.rows, plan.d_in):
            raise ValueError(f"x of shape {x_int.shape} for a plan of {plan.rows} x {plan.d_in}")
        t_i, t_k, _ = plan.tiles
        exponents = plan.x_exponents()
        out = []
        for a in range(t_i):
            for b in range(t_k):
                block = x_int[a * plan.n_i : (a + 1) * plan.n_i, b * plan.n_k : (b + 1) * plan.n_k]
                coefficients = np.zeros(plan.degree, dtype=np.uint64)
                coefficients[exponents[: block.shape[0], : block.shape[1]]] = _reduce(
                    block, p.plain_modulus
                )
                out.append(to_bytes(self.encryptor.encrypt_symmetric(plaintext(coefficients))))
        return out

    def coefficients(self, ciphertext: sealapi.Ciphertext) -> np.ndarray:
        """All N decrypted coefficients, centred into [-t/2, t/2) (int64)."""
        plain = sealapi.Plaintext()
        self.decryptor.decrypt(ciphertext, plain)
        out = np.zeros(self.params.poly_modulus_degree, dtype=np.int64)
        t = self.params.plain_modulus
        for e in range(plain.coeff_count()):
            value = plain.data(e)
            out[e] = value - t if value >= t // 2 else value
        return out

    def noise_budget(self, ciphertext: sealapi.Ciphertext) -> int:
        """SEAL's invariant noise budget in bits (0: decryption fails); for checks."""
        return self.decryptor.invariant_noise_budget(ciphertext)

    def unpack_integers(self, outputs: list[bytes], plan: IronPlan) -> np.ndarray:
        """Y_int + r (rows x d_out, int64) read from the wanted coefficients of the outputs."""
        t_i, _, t_o = plan.tiles
        if len(outputs) != t_i * t_o:
            raise ValueError(f"expected {t_i * t_o} output ciphertexts, got {len(outputs)}")
        exponents = plan.y_exponents()
        t = self.params.plain_modulus
        out = np.empty((plan.rows, plan.d_out), dtype=np.int64)
        plain = sealapi.Plaintext()
        for index, data in enumerate(outputs):
            a, c = divmod(index, t_o)
            self.decryptor.decrypt(from_bytes(self.context, data), plain)
            count = plain.coeff_count()
            rows = min(plan.n_i, plan.rows - a * plan.n_i)
            cols = min(plan.n_o, plan.d_out - c * plan.n_o)
            for i in range(rows):
                for o in range(cols):
                    e = int(exponents[i, o])
                    value = plain.data(e) if e < count else 0
                    out[a * plan.n_i + i, c * plan.n_o + o] = (
                        value - t if value >= t // 2 else value
                    )
        return out

    def unpack(self, outputs: list[bytes], plan: IronPlan) -> np.ndarray:
        """(Y_int + r) / 2^f: the masked product the client re-encrypts in slots (float64)."""
        return np.ldexp(
            self.unpack_integers(outputs, plan).astype(np.float64), -self.params.frac_bits
        )


# --- server ---------------------------------------------------------------------------------
@dataclass
class IronMask:
    """What the server keeps after `multiply`: r on the wanted entries (rows x d_out).

    `integers`: r (int64, the units of Y_int); `values`: r / 2^f, what the server subtracts
    from the client's slot re-encryption of its masked output.
    """

    integers: np.ndarray
    frac_bits: int

    @property
    def values(self) -> np.ndarray:
        return np.ldexp(self.integers.astype(np.float64), -self.frac_bits)


def load_inputs(context: sealapi.SEALContext, inputs: list[bytes]) -> list[sealapi.Ciphertext]:
    return [from_bytes(context, data) for data in inputs]


def encode_weight(
    context: sealapi.SEALContext, w: np.ndarray, plan: IronPlan, params: IronParams
) -> list[list[sealapi.Plaintext | None]]:
    """W as T_k x T_o plaintexts in NTT form (None for an all-zero block); checks the noise."""
    w_int = _quantize(
        w, params.w_frac_bits, "w", params.plain_modulus_bits - 2 - params.w_frac_bits
    )
    if w_int.shape != (plan.d_in, plan.d_out):
        raise ValueError(f"w of shape {w_int.shape} for a plan of {plan.d_in} x {plan.d_out}")
    check_noise(context, w_int, plan, params)
    evaluator = sealapi.Evaluator(context)
    parms_id = context.first_parms_id()
    _, t_k, t_o = plan.tiles
    exponents = plan.w_exponents()
    out: list[list[sealapi.Plaintext | None]] = []
    for b in range(t_k):
        row: list[sealapi.Plaintext | None] = []
        for c in range(t_o):
            block = w_int[b * plan.n_k : (b + 1) * plan.n_k, c * plan.n_o : (c + 1) * plan.n_o]
            if not block.any():
                row.append(None)
                continue
            coefficients = np.zeros(plan.degree, dtype=np.uint64)
            coefficients[exponents[: block.shape[0], : block.shape[1]]] = _reduce(
                block, params.plain_modulus
            )
            plain = plaintext(coefficients)
            evaluator.transform_to_ntt_inplace(plain, parms_id)
            row.append(plain)
        out.append(row)
    return out


def noise_bound(
    context: sealapi.SEALContext, w_int: np.ndarray, plan: IronPlan, params: IronParams
) -> float:
    """The largest invariant noise of an output, (t / q)((21 + 1/2) S + 1/2) (module docstring).

    S for output block c is the sum of |W_int| over its columns (all k-blocks together).
    """
    q = 1
    for modulus in context.first_context_data().parms().coeff_modulus():
        q *= modulus.value()
    _, _, t_o = plan.tiles
    columns = np.abs(w_int).sum(axis=0)
    worst = max(int(columns[c * plan.n_o : (c + 1) * plan.n_o].sum()) for c in range(t_o))
    return params.plain_modulus / q * ((FRESH_NOISE_BOUND + 0.5) * worst + 0.5)


def check_noise(
    context: sealapi.SEALContext, w_int: np.ndarray, plan: IronPlan, params: IronParams
) -> None:
    bound = noise_bound(context, w_int, plan, params)
    if bound >= 0.5:
        raise ValueError(
            f"iron: W is too large for the BFV noise room (bound {bound:.3g} >= 1/2): lower "
            f"w_frac_bits (now {params.w_frac_bits}) or use a larger modulus"
        )


def products(
    context: sealapi.SEALContext,
    inputs: list[sealapi.Ciphertext],
    weight: list[list[sealapi.Plaintext | None]],
    plan: IronPlan,
    cost: HeCost | None = None,
) -> list[sealapi.Ciphertext]:
    """The UNMASKED outputs sum_b x^_(a, b) w^_(b, c), index a T_o + c (never send these:
    their unused coefficients reveal W, see `multiply`). `inputs` are consumed (moved to NTT
    form in place)."""
    t_i, t_k, t_o = plan.tiles
    if len(inputs) != t_i * t_k:
        raise ValueError(f"expected {t_i * t_k} input ciphertexts, got {len(inputs)}")
    evaluator = sealapi.Evaluator(context)
    for ct in inputs:
        evaluator.transform_to_ntt_inplace(ct)
    outputs = []
    term = sealapi.Ciphertext()
    for a in range(t_i):
        for c in range(t_o):
            acc: sealapi.Ciphertext | None = None
            for b in range(t_k):
                plain = weight[b][c]
                if plain is None:
                    continue
                if acc is None:
                    acc = sealapi.Ciphertext()
                    evaluator.multiply_plain(inputs[a * t_k + b], plain, acc)
                else:
                    evaluator.multiply_plain(inputs[a * t_k + b], plain, term)
                    evaluator.add_inplace(acc, term)
                    if cost is not None:
                        cost.additions += 1
                if cost is not None:
                    cost.ct_pt_mults += 1
            if acc is None:
                raise ValueError(
                    f"iron: W's columns {c * plan.n_o}..{min(plan.d_out, (c + 1) * plan.n_o) - 1} "
                    "are all zero (the product would be a transparent ciphertext)"
                )
            evaluator.transform_from_ntt_inplace(acc)
            outputs.append(acc)
    if cost is not None:
        cost.depth += 1
    return outputs


def mask_outputs(
    context: sealapi.SEALContext,
    outputs: list[sealapi.Ciphertext],
    plan: IronPlan,
    params: IronParams,
) -> IronMask:
    """Add the mask polynomial to every output in place (module docstring, security):
    unused coefficients uniform mod t, wanted ones r uniform on [-R, R), R = 2^(mask_bits + f);
    returns r on the wanted entries."""
    evaluator = sealapi.Evaluator(context)
    t = params.plain_modulus
    half = 1 << (params.mask_bits + params.frac_bits)
    _, _, t_o = plan.tiles
    exponents = plan.y_exponents()
    r_all = np.zeros((plan.rows, plan.d_out), dtype=np.int64)
    for index, ct in enumerate(outputs):
        a, c = divmod(index, t_o)
        coefficients = _random_uint64(plan.degree) & np.uint64(t - 1)
        r = (_random_uint64(exponents.size) & np.uint64(2 * half - 1)).astype(np.int64) - half
        r = r.reshape(exponents.shape)
        coefficients[exponents] = _reduce(r, t)
        evaluator.add_plain_inplace(ct, plaintext(coefficients))
        rows = min(plan.n_i, plan.rows - a * plan.n_i)
        cols = min(plan.n_o, plan.d_out - c * plan.n_o)
        r_all[a * plan.n_i : a * plan.n_i + rows, c * plan.n_o : c * plan.n_o + cols] = r[
            :rows, :cols
        ]
    return IronMask(r_all, params.frac_bits)


def multiply(
    context: sealapi.SEALContext,
    inputs: list[sealapi.Ciphertext],
    w: np.ndarray,
    plan: IronPlan,
    params: IronParams,
    cost: HeCost | None = None,
) -> tuple[list[sealapi.Ciphertext], IronMask]:
    """Server side: the masked outputs (index a T_o + c) and the mask it keeps.

    W is encoded (T_k T_o NTT plaintexts, noise checked), multiplied into the inputs
    (consumed), and every output is masked before it may leave (`mask_outputs`).
    """
    weight = encode_weight(context, w, plan, params)
    outputs = products(context, inputs, weight, plan, cost)
    mask = mask_outputs(context, outputs, plan, params)
    return outputs, mask
