"""CKKS parameter planning: ring degree, modulus chain and scale for a required depth.

Security. The coefficient modulus Q = q_0 q_1 ... q_L P of ring degree N must stay below
the bound of the HomomorphicEncryption.org security standard (Albrecht et al., "Homomorphic
Encryption Security Standard", HomomorphicEncryption.org, Toronto, November 2018, Table 1:
128-bit classical security, uniform ternary secret, error of standard deviation 3.2):

    N        1024  2048  4096  8192  16384  32768
    log2 Q     27    54   109   218    438    881

SEAL (inside TenSEAL) enforces exactly these bounds at its default `tc128` level: at N = 8192
a 218-bit chain is accepted and a 219-bit one refused ("encryption parameters are not set
correctly").

Chain recipe (`plan_params`). With scale Delta = 2^s:

    coeff_mod_bit_sizes = [e, s, s, ..., s, e],   d primes of s bits,  e = min(60, s + I),

    total = 2 e + d s  <=  max_bits(N).

- s, the scale: values are encoded as round(x Delta); encoding, rescaling and key switching add
  an absolute noise of roughly 2^10 (in units of 1/Delta: a few sqrt(N)), so about s - 10
  bits of a result are correct. Hence s >= precision_bits + 10; s = 40 by default (enough for
  20 fractional bits), s <= 60 because SEAL's primes hold at most 60 bits.
- d = depth: each ciphertext product is followed by one rescale that divides by one s-bit
  prime q_i ~ Delta, keeping the scale near Delta; d primes give d products in sequence.
- e, the first prime q_0: after the last rescale a message m is held as m Delta modulo q_0,
  correct while |m| Delta < q_0 / 2, i.e. |m| < 2^(e - s - 1): I = integer_bits of headroom.
- e, the last (special) prime P: used only for key switching (relinearisation, rotation),
  whose noise is divided by P; SEAL wants P at least as large as every other prime.

Depth available at N: d_max(N) = floor((max_bits(N) - 2 e) / s). At s = 40, I = 20 (e = 60):
N = 4096: none (120 > 109 bits); 8192: 2; 16384: 7; 32768: 19. A deeper computation needs
refresh points (`refresh_points`): the server masks a ciphertext with fresh randomness, the
client decrypts and re-encrypts it (one round trip), the server unmasks; the fresh ciphertext
has the full depth again.

TenSEAL facts (0.3.18, checked here): a new CKKS context already holds relinearisation keys;
`Context.generate_galois_keys` takes no rotation steps (only an optional secret key), so a
context has either no Galois keys or all of them (the +-2^i steps, 2 log2(N/2) keys, from which
SEAL composes any rotation in non-adjacent form). Measured public-context sizes with
relinearisation keys: N = 8192, chain [60, 40, 40, 60]: 1.9 MB without Galois keys, 35 MB with
them; N = 16384, [60, 40 x 7, 60]: 17 MB and 415 MB. Step-limited keys can be made through
`tenseal.sealapi.KeyGenerator.create_galois_keys(galois_elements)` (4.2 MB for steps 1, 2, 4 at
8192) but TenSEAL has no way to attach them to a `Context`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import tenseal as ts

#: log2 of the largest coefficient modulus with 128-bit classical security (ternary secret),
#: HomomorphicEncryption.org standard (2018), Table 1.
MAX_BITS_128: dict[int, int] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}

#: Ring degrees the planner considers, smallest first (1024 and 2048 hold no CKKS chain worth
#: having: 54 bits is less than one 60-bit special prime plus one scale prime).
PLANNED_DEGREES: tuple[int, ...] = (4096, 8192, 16384, 32768)

MAX_PRIME_BITS = 60  # SEAL: every prime of the chain has at most 60 bits
MIN_SCALE_BITS = 20  # below this, primes = 1 mod 2N of s bits become scarce at N = 32768
DEFAULT_SCALE_BITS = 40


class DepthError(ValueError):
    """The multiplicative depth needed exceeds what one CKKS context offers."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_degree(poly_modulus_degree: int) -> None:
    if not _is_int(poly_modulus_degree) or poly_modulus_degree not in MAX_BITS_128:
        raise ValueError(
            f"poly_modulus_degree={poly_modulus_degree!r}: expected one of "
            f"{sorted(MAX_BITS_128)} (the HE standard's table)"
        )


def _edge_bits(scale_bits: int, integer_bits: int) -> int:
    """First and last prime: s + I bits, capped at 60, at least s."""
    return max(scale_bits, min(MAX_PRIME_BITS, scale_bits + integer_bits))


def _check_scale(scale_bits: int, integer_bits: int) -> None:
    if not _is_int(scale_bits) or not MIN_SCALE_BITS <= scale_bits <= MAX_PRIME_BITS:
        raise ValueError(
            f"scale_bits={scale_bits!r}: expected an integer in "
            f"[{MIN_SCALE_BITS}, {MAX_PRIME_BITS}] (SEAL primes hold at most 60 bits)"
        )
    if not _is_int(integer_bits) or integer_bits < 0:
        raise ValueError(f"integer_bits={integer_bits!r}: expected an integer >= 0")


@dataclass(frozen=True)
class CkksParams:
    """One CKKS parameter set: ring degree N, modulus chain (bits per prime) and scale 2^s.

    `coeff_mod_bit_sizes` = [q_0, q_1 .. q_d, P]: q_0 holds the final result, q_1 .. q_d are
    consumed by one rescale per multiplication (so `depth` = len - 2), P is the special prime of
    key switching. The chain's total must not exceed `max_bits` (128-bit security, module
    docstring); the constructor refuses anything SEAL would refuse.
    """

    poly_modulus_degree: int
    coeff_mod_bit_sizes: list[int] = field(hash=False)
    scale_bits: int

    def __post_init__(self) -> None:
        _check_degree(self.poly_modulus_degree)
        bits = self.coeff_mod_bit_sizes
        if (
            not isinstance(bits, list | tuple)
            or len(bits) < 2
            or not all(_is_int(b) and 1 <= b <= MAX_PRIME_BITS for b in bits)
        ):
            raise ValueError(
                f"coeff_mod_bit_sizes={bits!r}: expected at least 2 integers in [1, 60] "
                "(first prime, one per level, special prime)"
            )
        # A private copy as a list, so the frozen value cannot change through the caller's list.
        object.__setattr__(self, "coeff_mod_bit_sizes", [int(b) for b in bits])
        if not _is_int(self.scale_bits) or not 1 <= self.scale_bits <= MAX_PRIME_BITS:
            raise ValueError(f"scale_bits={self.scale_bits!r}: expected an integer in [1, 60]")
        if self.total_bits > self.max_bits:
            raise ValueError(
                f"coefficient modulus of {self.total_bits} bits {self.coeff_mod_bit_sizes} "
                f"exceeds the {self.max_bits} bits allowed at N={self.poly_modulus_degree} for "
                "128-bit security"
            )

    @property
    def depth(self) -> int:
        """Ciphertext multiplications (each followed by a rescale) available: primes - 2."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def total_bits(self) -> int:
        """log2 Q: the sum of the chain's bit sizes, special prime included."""
        return sum(self.coeff_mod_bit_sizes)

    @property
    def slots(self) -> int:
        """Complex slots of one ciphertext: N / 2."""
        return self.poly_modulus_degree // 2

    @property
    def max_bits(self) -> int:
        """The 128-bit security bound on log2 Q at this N (`MAX_BITS_128`)."""
        return MAX_BITS_128[self.poly_modulus_degree]

    @property
    def scale(self) -> float:
        """The global scale Delta = 2^scale_bits."""
        return float(2**self.scale_bits)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; `from_dict` inverts it."""
        return {
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
            "scale_bits": self.scale_bits,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CkksParams:
        """Inverse of `to_dict`; unknown or missing keys are errors."""
        expected = {"poly_modulus_degree", "coeff_mod_bit_sizes", "scale_bits"}
        if not isinstance(data, dict) or set(data) != expected:
            keys = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"CKKS parameters: expected keys {sorted(expected)}, got {keys}")
        return cls(
            poly_modulus_degree=data["poly_modulus_degree"],
            coeff_mod_bit_sizes=list(data["coeff_mod_bit_sizes"]),
            scale_bits=data["scale_bits"],
        )

    def explain(self) -> str:
        """A few lines on the choice: N, slots, depth, bits used against bits allowed."""
        n, bits = self.poly_modulus_degree, self.coeff_mod_bit_sizes
        lines = [
            f"CKKS ring degree N={n}: {self.slots} slots per ciphertext, depth {self.depth} "
            f"(multiplications before a refresh).",
            f"Modulus chain {bits}: {self.total_bits} of the {self.max_bits} bits allowed at "
            f"N={n} for 128-bit security (HomomorphicEncryption.org standard).",
            f"Scale 2^{self.scale_bits}: about {self.scale_bits - 10} correct fractional bits; "
            f"first prime {bits[0]} bits leaves |x| < 2^{bits[0] - self.scale_bits - 1} "
            f"for the result.",
        ]
        smaller = n // 2
        if smaller in MAX_BITS_128 and self.total_bits > MAX_BITS_128[smaller]:
            lines.append(
                f"N={smaller} would allow only {MAX_BITS_128[smaller]} bits (< {self.total_bits})."
            )
        return "\n".join(lines)


def max_depth(poly_modulus_degree: int, scale_bits: int = 40, integer_bits: int = 20) -> int:
    """Largest depth d whose chain [e, s x d, e] fits N: floor((max_bits(N) - 2e) / s).

    e = min(60, s + integer_bits) (at least s). Returns -1 when not even the two edge primes
    fit (N = 4096 at the defaults: 2 x 60 = 120 > 109 bits). At s = 40, e = 60: 8192 -> 2,
    16384 -> 7, 32768 -> 19.
    """
    _check_degree(poly_modulus_degree)
    _check_scale(scale_bits, integer_bits)
    budget = MAX_BITS_128[poly_modulus_degree] - 2 * _edge_bits(scale_bits, integer_bits)
    return -1 if budget < 0 else budget // scale_bits


def plan_params(
    depth: int,
    *,
    precision_bits: int = 20,
    integer_bits: int = 20,
    min_slots: int = 0,
    max_degree: int = 32768,
    scale_bits: int | None = None,
) -> CkksParams:
    """The smallest N in 4096 .. max_degree whose 128-bit bound holds the chain for `depth`.

    Chain (module docstring): [e, s x depth, e] with s = scale_bits, by default
    max(40, precision_bits + 10); e = min(60, s + integer_bits), at least s. Requires
    precision_bits + 10 <= s <= 60. N must also give N / 2 >= min_slots.

    Raises `DepthError` when no N up to max_degree holds the chain (its message gives the depth
    needed and the largest depth max_degree offers at this scale: the rest must come from
    refresh points), `ValueError` for invalid arguments or when min_slots > max_degree / 2.
    """
    if not _is_int(depth) or depth < 0:
        raise ValueError(f"depth={depth!r}: expected an integer >= 0")
    if not _is_int(precision_bits) or precision_bits < 1:
        raise ValueError(f"precision_bits={precision_bits!r}: expected an integer >= 1")
    if not _is_int(min_slots) or min_slots < 0:
        raise ValueError(f"min_slots={min_slots!r}: expected an integer >= 0")
    if max_degree not in PLANNED_DEGREES:
        raise ValueError(f"max_degree={max_degree!r}: expected one of {list(PLANNED_DEGREES)}")
    if precision_bits + 10 > MAX_PRIME_BITS:
        raise ValueError(
            f"precision_bits={precision_bits}: needs a scale of at least {precision_bits + 10} "
            "bits (CKKS noise takes about 10), more than SEAL's 60-bit primes"
        )
    s = max(DEFAULT_SCALE_BITS, precision_bits + 10) if scale_bits is None else scale_bits
    _check_scale(s, integer_bits)
    if s < precision_bits + 10:
        raise ValueError(
            f"scale of {s} bits for {precision_bits} bits of precision: CKKS noise takes about "
            f"10 bits, so the scale needs at least {precision_bits + 10} bits (at most 60)"
        )
    if min_slots > max_degree // 2:
        raise ValueError(
            f"min_slots={min_slots}: more than the {max_degree // 2} slots of N={max_degree}"
        )
    edge = _edge_bits(s, integer_bits)
    chain = [edge, *([s] * depth), edge]
    for n in PLANNED_DEGREES:
        if n > max_degree:
            break
        if n // 2 >= min_slots and sum(chain) <= MAX_BITS_128[n]:
            return CkksParams(poly_modulus_degree=n, coeff_mod_bit_sizes=chain, scale_bits=s)
    available = max_depth(max_degree, s, integer_bits)
    have = "none" if available < 0 else str(available)
    raise DepthError(
        f"depth {depth} needs a {sum(chain)}-bit modulus chain ({edge} + {depth} x {s} + "
        f"{edge} bits), but "
        f"N={max_degree} allows {MAX_BITS_128[max_degree]} bits for 128-bit security: the "
        f"largest depth available there with {s}-bit scale primes is {have}. Split the "
        "computation with refresh points (a client round trip: decrypt and re-encrypt a masked "
        "ciphertext), see `refresh_points`."
    )


def refresh_points(node_depths: list[int], available: int) -> list[int]:
    """Indices of the stages before which a refresh restores the full depth `available`.

    Stage i consumes node_depths[i] levels; a fresh ciphertext has `available`. Greedy, as late
    as possible: keep a running sum u of the levels used since the last refresh; before stage
    i, if u + node_depths[i] > available, refresh there (u = 0). Exactly reaching `available`
    needs no refresh. The greedy choice gives the fewest refreshes (any schedule must refresh
    at least once inside every window the greedy one closes). Stage 0 starts on freshly
    encrypted input, so 0 is never returned.

    Raises `DepthError` when one stage alone needs more than `available` (it must be split or
    given a larger context).
    """
    if not _is_int(available) or available < 0:
        raise ValueError(f"available={available!r}: expected an integer >= 0")
    points: list[int] = []
    used = 0
    for i, need in enumerate(node_depths):
        if not _is_int(need) or need < 0:
            raise ValueError(f"node_depths[{i}]={need!r}: expected an integer >= 0")
        if need > available:
            raise DepthError(
                f"stage {i} needs depth {need} but a context offers only {available}: no "
                "refresh point can help; split the stage or plan a larger context"
            )
        if used + need > available:
            points.append(i)
            used = 0
        used += need
    return points


def make_context(params: CkksParams, galois_steps: list[int] | None = None) -> ts.Context:
    """A private TenSEAL CKKS context for `params`, global scale 2^scale_bits, relin keys.

    Galois keys: `galois_steps` None -> all of them (the +-2^i rotations, from which SEAL
    composes any step); [] -> none (the smallest context, no rotations); a non-empty list of
    steps (0 < |step| < N/2, checked) -> also all of them, because TenSEAL 0.3.18's
    `Context.generate_galois_keys` takes no steps (module docstring).
    """
    if galois_steps is not None:
        half = params.slots
        for step in galois_steps:
            if not _is_int(step) or not 0 < abs(step) < half:
                raise ValueError(
                    f"galois step {step!r}: expected a non-zero integer with |step| < {half}"
                )
    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
    )
    context.global_scale = params.scale
    if not context.has_relin_keys():
        context.generate_relin_keys()
    if galois_steps is None or galois_steps:
        context.generate_galois_keys()
    return context


def public_copy(context: ts.Context) -> ts.Context:
    """A copy of `context` without the secret key (what the server receives); `context` keeps it.

    Relinearisation and Galois keys are kept as they are; the copy can encrypt and evaluate but
    not decrypt.
    """
    public = context.copy()
    public.make_context_public()
    return public


def context_bytes(context: ts.Context) -> int:
    """Bytes of the context's serialization with public, relinearisation and Galois keys (the
    secret key is never included): what sending the public context costs."""
    return len(
        context.serialize(
            save_public_key=True,
            save_secret_key=False,
            save_galois_keys=True,
            save_relin_keys=True,
        )
    )


# --- the cost model that ranks parameter sets ---------------------------------------------
#: Unit costs in ms at N = 8192 with k = 3 primes (q_0, q_1, q_2; the special prime apart),
#: one thread, what the ranking of candidates multiplies counts by (their ratios matter
#: more than their absolute values, which depend on the machine and its load):
#: `pt_mult` a ciphertext times a plaintext, encoding a scalar included (the feature-major
#: inner step); `add` a ciphertext addition; `key_switch` one rotation by a step that has
#: its own Galois key, and the relinearisation after a ciphertext product; `ct_mult` the
#: ciphertext product itself (four polynomial products, without relinearisation);
#: `refresh_slot` and `refresh_coefficient` the whole work on one refreshed ciphertext,
#: server and client together, not counting the wire (slot mode: encode, add, mod-switch,
#: decrypt, decode, encode, encrypt, encode, add; coefficient mode: a zeroing product, two
#: transforms and an exact integer addition on each side, the client's word-by-word read of
#: the decrypted polynomial).
UNIT_MS: dict[str, float] = {
    "pt_mult": 0.26,
    "add": 0.04,
    "key_switch": 2.1,
    "ct_mult": 0.6,
    "refresh_slot": 7.3,
    "refresh_coefficient": 40.0,
}
COMPRESSION = 0.85
"""Bytes of a zstd-compressed SEAL ciphertext over its 8 bytes a word (measured 331 KB of
393 KB at N = 8192, 3 primes)."""


def op_ms(op: str, poly_modulus_degree: int, primes: float) -> float:
    """`UNIT_MS[op]` scaled from (8192, 3 primes) to (N, k): every unit is polynomial
    arithmetic on k residues of N words, so linear in N k; key switching decomposes the k
    residues and transforms each over k + 1 primes (NTTs: N log2 N), so it grows as
    N log2 N k (k + 1); a refresh's coefficient work is linear in N k."""
    n = poly_modulus_degree / 8192
    if op == "key_switch":
        size = poly_modulus_degree * math.log2(poly_modulus_degree) / (8192 * 13)
        return UNIT_MS[op] * size * primes * (primes + 1) / 12
    return UNIT_MS[op] * n * primes / 3


def ciphertext_bytes(poly_modulus_degree: int, primes: int, *, seeded: bool = False) -> float:
    """Serialized bytes of one ciphertext with `primes` residues (seeded: the second
    polynomial replaced by its seed, half the bytes)."""
    full = 2 * poly_modulus_degree * primes * 8 * COMPRESSION
    return full / 2 if seeded else full


def key_bytes(poly_modulus_degree: int, primes_with_special: int) -> float:
    """Serialized bytes of one seeded key-switching key (a Galois key, or the
    relinearisation key): k - 1 pairs of polynomials over all k primes, half of each pair
    a seed: 8 N k (k - 1)."""
    k = primes_with_special
    return 8.0 * poly_modulus_degree * k * (k - 1)


def candidate_chains(
    min_depth: int = 2, scale_bits: int = DEFAULT_SCALE_BITS, integer_bits: int = 20
) -> list[CkksParams]:
    """Every chain [e, s x d, e] with d >= min_depth that a ring of PLANNED_DEGREES holds
    at 128-bit security, smallest ring and depth first (the candidates `plan_params`'s
    cheapest-first rule would pick among)."""
    out = []
    edge = _edge_bits(scale_bits, integer_bits)
    for n in PLANNED_DEGREES:
        for depth in range(min_depth, max_depth(n, scale_bits, integer_bits) + 1):
            out.append(CkksParams(n, [edge, *([scale_bits] * depth), edge], scale_bits))
    return out
