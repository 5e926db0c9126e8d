"""Slot rotations of TenSEAL CKKS vectors through SEAL's own evaluator.

TenSEAL 0.3.18's `CKKSVector` has no public rotation. Its SEAL ciphertexts are reachable
(`vec.ciphertext()` returns copies of them, one per chunk of N/2 slots), and
`tenseal.sealapi.Evaluator(ctx.seal_context().data).rotate_vector` with
`ctx.galois_keys().data` rotates a copy. A new `CKKSVector` is then built from the rotated
ciphertext by writing TenSEAL's own serialization by hand (`CKKSVectorProto`: field 1
`sizes`, field 2 the SEAL-serialized ciphertexts, field 3 the scale) and loading it with
`ts.ckks_vector_from`. The rebuilding serializes and parses every ciphertext (SEAL's `save`
compresses with zstd, about 330 KB per ciphertext at N = 8192), a cost of the order of the
rotation itself (`protocols.he.matmul.UNIT_MS_8192`: `wrap` against `key_switch`). Kernels
that chain many rotations (`protocols.he.matmul`) therefore stay on SEAL ciphertexts and
rebuild a vector once at the end.

Semantics: `rotate(vec, k)` is the cyclic LEFT rotation of all S = N/2 slots,
out[i] = in[(i + k) mod S] (negative k rotates right), exactly SEAL's `rotate_vector`.

What a short vector holds in its unused slots (measured): `ts.ckks_vector(ctx, x)` with
n = len(x) < S does NOT pad with zeros; TenSEAL replicates x cyclically over ALL S slots,
slot i holds x[i mod n] (`pt.replicate(slot_count)` in its encoder), the last copy truncated
when n does not divide S (n = 384 at S = 4096: 10 whole copies, then x[0..255]). The vector
keeps size n and decrypts to the first n slots. Consequences for `rotate` on such a vector:

- n divides S (every power of two up to S): the slots are S-periodic copies of x, so the
  decrypted result is exactly np.roll(x, -k) for every k, positive or negative;
- otherwise it is np.roll(x, -k) only for 0 <= k <= S - n (the first n slots read slots
  k .. k + n - 1, all inside the replicated region, which is n-periodic there); a negative
  k reads the truncated copy at the end of the slots and the first |k| values are wrong.

Costs. One rotation is one Galois automorphism plus key switching, at the cost of about one
ciphertext-ciphertext product (no level consumed, scale unchanged). TenSEAL generates only
the Galois keys of steps +-2^i (`params.make_context`), so SEAL composes a step k from the
non-adjacent form of k: `key_switches(k)` = number of non-zero NAF digits of k
(1 for +-2^i, 2 for 3 = 4 - 1, 3 for 11 = 8 + 4 - 1 ... 16 - 4 - 1, etc.). `HeCost.rotations`
counts logical rotations (calls of `rotate`); key switches are the real work.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import tenseal as ts
from tenseal import sealapi

from protocols.he.polynomial import HeCost
from protocols.he.serial import saved_bytes, varint


def slot_count(context: ts.Context) -> int:
    """S = N / 2, the CKKS slots of one ciphertext under `context`."""
    data = context.seal_context().data
    return data.first_context_data().parms().poly_modulus_degree() // 2


def naf(step: int) -> list[int]:
    """Non-adjacent form of `step`: signed powers of two summing to it, no two adjacent.

    This is how SEAL composes a rotation from the +-2^i Galois keys (when the key for the
    step itself is absent): one key switch per term.
    """
    terms: list[int] = []
    sign = -1 if step < 0 else 1
    value, bit = abs(step), 1
    while value:
        if value & 1:
            digit = 2 - (value & 3)  # +1 if value = 1 mod 4, -1 if value = 3 mod 4
            terms.append(sign * digit * bit)
            value -= digit
        value >>= 1
        bit <<= 1
    return terms


def key_switches(step: int, slots: int | None = None) -> int:
    """Key switches SEAL performs for one rotation by `step` with the +-2^i keys only.

    The NAF weight of `step` (0 for step 0, or a multiple of `slots` when given). The step is
    used as given (SEAL does not reduce it modulo the slot count).
    """
    if step == 0 or (slots is not None and step % slots == 0):
        return 0
    return len(naf(step))


def reduce_step(step: int, slots: int) -> int:
    """`step` reduced modulo the `slots` into (-S/2, S/2]: the step SEAL is actually asked
    for by `rotate_ciphertext` and `engine.Engine.rotate` (0 for a multiple of S: a copy,
    no Galois key). Rotation is cyclic in S, so the result is the same; the NAF is short."""
    reduced = int(step) % slots
    return reduced - slots if reduced > slots // 2 else reduced


def _check_galois(context: ts.Context) -> None:
    if not context.has_galois_keys():
        raise ValueError(
            "rotation needs Galois keys: build the context with make_context(params) "
            "(galois_steps=None) or call context.generate_galois_keys()"
        )


def rotate_ciphertext(
    ciphertext: sealapi.Ciphertext,
    steps: int,
    context: ts.Context,
    evaluator: sealapi.Evaluator | None = None,
) -> sealapi.Ciphertext:
    """A new SEAL ciphertext: `ciphertext` rotated left by `steps` slots (all S slots).

    `steps` is reduced to (-S/2, S/2] first, which never changes the result (rotation is
    cyclic in S) and keeps the NAF short. The input is not modified. Step 0 returns a copy.
    """
    _check_galois(context)
    steps = reduce_step(steps, slot_count(context))
    if evaluator is None:
        evaluator = sealapi.Evaluator(context.seal_context().data)
    result = sealapi.Ciphertext()  # SEAL's rotate_vector by 0 is a plain copy
    evaluator.rotate_vector(ciphertext, steps, context.galois_keys().data, result)
    return result


def vector_proto(raw_ciphertexts: Sequence[bytes], sizes: Sequence[int], scale: float) -> bytes:
    """TenSEAL's serialization of a `CKKSVector` (`CKKSVectorProto`) holding SEAL-serialized
    ciphertexts (chunk i of logical size sizes[i]) at TenSEAL scale `scale`: what
    `CKKSVector.serialize` writes, without building the vector."""
    if len(raw_ciphertexts) != len(sizes) or not raw_ciphertexts:
        raise ValueError("expected one size per ciphertext, at least one ciphertext")
    packed_sizes = b"".join(varint(int(size)) for size in sizes)
    message = bytearray(b"\x0a" + varint(len(packed_sizes)) + packed_sizes)
    for raw in raw_ciphertexts:
        message += b"\x12" + varint(len(raw)) + raw
    message += b"\x19" + struct.pack("<d", float(scale))
    return bytes(message)


def ciphertext_bytes(ciphertext: sealapi.Ciphertext) -> bytes:
    """SEAL's own serialization (zstd) of a ciphertext, or of a seeded `Serializable` one."""
    return saved_bytes(ciphertext)


def vector_from_ciphertexts(
    context: ts.Context,
    ciphertexts: Sequence[sealapi.Ciphertext],
    sizes: Sequence[int],
) -> ts.CKKSVector:
    """A TenSEAL `CKKSVector` holding `ciphertexts` (chunk i of logical size sizes[i]).

    Built through TenSEAL's serialization (`vector_proto`), linked to `context`; its
    TenSEAL scale (used to encode later plain operands) is the context's global scale, the
    ciphertexts keep their own SEAL scales and levels. Costs one serialization and one parse
    per ciphertext.
    """
    raw = [saved_bytes(ciphertext) for ciphertext in ciphertexts]
    return ts.ckks_vector_from(context, vector_proto(raw, sizes, context.global_scale))


def rotate(vec: ts.CKKSVector, steps: int, cost: HeCost | None = None) -> ts.CKKSVector:
    """Cyclic left rotation of all S = N/2 slots of `vec` by `steps`: out[i] = in[(i + k) % S].

    Returns a new `CKKSVector` of the same logical size; `vec` is not modified. The level and
    scale are unchanged. Decrypting gives the first `size` slots, so for a vector shorter than
    S the result is np.roll(x, -steps) when len(x) divides S, or when 0 <= steps <= S - len(x)
    (TenSEAL replicates short vectors, module docstring). Costs one rotation
    (`cost.rotations += 1`, counted even for a step that reduces to 0 mod S: the call is made
    but SEAL does no key switch), i.e. `key_switches(steps)` key switches.

    Raises ValueError when the context has no Galois keys, or for a vector of several chunks
    (size > S), whose rotation would have to move slots across ciphertexts.
    """
    context = vec.context()
    ciphertexts = vec.ciphertext()
    if len(ciphertexts) != 1:
        raise ValueError(
            f"rotate: the vector spans {len(ciphertexts)} ciphertexts (size {vec.size()} > "
            f"{slot_count(context)} slots); only single-ciphertext vectors rotate"
        )
    rotated = rotate_ciphertext(ciphertexts[0], int(steps), context)
    if cost is not None:
        cost.rotations += 1
    return vector_from_ciphertexts(context, [rotated], [vec.size()])
