"""Public TenSEAL contexts that carry only the Galois keys of chosen rotation steps.

TenSEAL 0.3.18's `Context.generate_galois_keys()` takes no steps: it makes the keys of every
step +-2^i (2 log2(N/2) keys; 35 MB of public context at N = 8192, chain [60, 40, 40, 60]).
A packing such as `protocols.he.matmul.diagonal_bsgs` rotates by two steps only (1 and n1).
SEAL itself, reachable through `tenseal.sealapi`, makes keys for chosen Galois elements:
`KeyGenerator(seal_context, secret_key).create_galois_keys(elements)`, the elements from
`key_context_data().galois_tool().get_elts_from_steps(steps)` (the overload that takes a
list of ints takes Galois ELEMENTS, not steps: passing steps fails with "Galois element is
not valid"). Without an output argument it returns a `SerializableGaloisKeys` whose saved
form replaces the uniformly random half of every key by the seed it was drawn from (SEAL's
standard seeded serialization, no loss of security; the receiver expands it on load): half
the bytes of the expanded keys. At N = 8192 with the chain above, one key is about 0.70 MB
seeded (1.39 MB expanded).

TenSEAL has no call to attach such keys to a `Context`, but its serialization does:
`TenSEALContextProto` (protobuf) = field 1 `encryption_parameters` (bytes), field 2
`public_context` (a `TenSEALPublicProto`: 1 public_key, 2 auto_flags, 3 scale, 4 relin_keys,
5 galois_keys, each key field a SEAL-serialized object), field 3 `private_context` (secret key
and two flags), field 4 `encryption_type`. A context serialized without its secret key and
without Galois keys has no field 3 and no field 2.5; `public_context_with_steps` writes field
2.5 with the chosen keys (protobuf by hand, as `rotation.vector_from_ciphertexts` does) and
TenSEAL's loader (`ts.context_from`) then installs them as the context's Galois keys, exactly
as it does for keys it serialized itself. A PRIVATE context would not do: on load TenSEAL
regenerates all keys from the secret key whenever its private flag says Galois keys exist
(which is also why `Context.copy()` of a private context with keys takes seconds).

Using a step-limited context. `rotation.rotate_ciphertext` (SEAL's `rotate_vector`) rotates by
a step s directly when the key of s is present (one key switch); otherwise SEAL writes s in
non-adjacent form and rotates by each term recursively, and a term that is a single power of
two without its key raises "Galois key not present" (SEAL's message, a ValueError from the
bindings). With keys {1, 16}: 17 = 16 + 1 works (two key switches), 2 and 15 = 16 - 1 fail.
`rotation_key_switches` predicts this without rotating (from any key set:
`key_switches_with_keys` from a context's), `require_rotation_steps` turns it into an error
that names the missing steps, and `keys_for_steps` gives the keys that cover a list of
steps (the NAF terms). Which steps a computation needs is not predicted here: the HE
server records them from a dry run of its own tensor code (`protocols.he.dry`,
`secinfer.backends.he.inputs.rotation_plan`). TenSEAL's own rotating operations (`vec.mm`,
`vec.sum`, `vec.matmul`, ...) need steps the chosen keys rarely cover: they are for contexts
with all keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import tenseal as ts
from tenseal import sealapi

from protocols.he.matmul import bsgs_split
from protocols.he.rotation import naf, reduce_step, slot_count
from protocols.he.serial import read_varint, saved_bytes, varint

_PUBLIC_CONTEXT = 2  # TenSEALContextProto.public_context
_PRIVATE_CONTEXT = 3  # TenSEALContextProto.private_context
_GALOIS_KEYS = 5  # TenSEALPublicProto.galois_keys


# --- steps and Galois elements ------------------------------------------------------------
def normalize_step(step: int, slots: int) -> int:
    """`step` reduced to (-S/2, S/2], as `rotation.rotate_ciphertext` reduces it before SEAL
    (`rotation.reduce_step`).

    Raises ValueError for a non-integer or a step that is 0 modulo S (no rotation: no key;
    SEAL's element for step 0 is complex conjugation, not a rotation).
    """
    if not isinstance(step, int) or isinstance(step, bool):
        raise ValueError(f"rotation step {step!r}: expected an integer")
    reduced = reduce_step(step, slots)
    if reduced == 0:
        raise ValueError(f"rotation step {step}: a multiple of the {slots} slots needs no key")
    return reduced


def normalize_steps(steps: Iterable[int], slots: int) -> list[int]:
    """Distinct normalized steps (`normalize_step`), in first-seen order; at least one."""
    out: list[int] = []
    for step in steps:
        reduced = normalize_step(step, slots)
        if reduced not in out:
            out.append(reduced)
    if not out:
        raise ValueError("expected at least one rotation step")
    return out


def _galois_tool(context: ts.Context) -> Any:
    """SEAL's GaloisTool of the key level (`_sealapi_cpp.util.GaloisTool`)."""
    return context.seal_context().data.key_context_data().galois_tool()


def galois_elements(context: ts.Context, steps: Iterable[int]) -> list[int]:
    """SEAL's Galois elements (3^step mod 2N, inverted for negative steps) of the normalized
    `steps`, one per distinct step."""
    return list(
        _galois_tool(context).get_elts_from_steps(normalize_steps(steps, slot_count(context)))
    )


def bsgs_rotation_steps(d_in: int) -> list[int]:
    """The rotation steps `matmul.diagonal_bsgs` uses for a W with d_in rows: 1 (baby steps,
    when n1 > 1) and n1 (giant steps, when n2 > 1), n1 and n2 from `matmul.bsgs_split`.
    Empty when d_in = 1 (no rotation). 384 -> [1, 16]."""
    n1, n2 = bsgs_split(d_in)
    steps = [1] if min(n1, d_in) > 1 else []
    if n2 > 1 and n1 not in steps:
        steps.append(n1)
    return steps


def keys_for_steps(steps: Iterable[int], slots: int) -> list[int]:
    """The Galois keys (normalized steps) that let SEAL perform every rotation of `steps`:
    the union of the non-adjacent-form terms of each reduced step (`rotation.reduce_step`),
    the terms of S slots dropped (SEAL skips them). With a key for each term SEAL rotates
    by the step in one key switch per term (`rotation_key_switches`). Steps that are
    multiples of S need none; the result may be empty. Ordered 1, -1, 2, -2, ...

    Powers of two only, so at most 2 log2(S) keys whatever the steps: the same keys as
    TenSEAL's own, restricted to the terms used."""
    keys: set[int] = set()
    for step in steps:
        reduced = reduce_step(step, slots)
        if reduced:
            keys.update(normalize_step(t, slots) for t in naf(reduced) if abs(t) != slots)
    return sorted(keys, key=lambda k: (abs(k), k < 0))


def rotation_key_switches(step: int, has_key: Callable[[int], bool], slots: int) -> int | None:
    """Key switches one rotation by `step` costs when `has_key(s)` says whether the key of
    the normalized step s is present; None when SEAL would raise "Galois key not present".

    SEAL's `Evaluator::rotate_internal` on the reduced step: the step's own key if present
    (1); otherwise the sum over its non-adjacent-form terms (each handled the same way; a
    term of S slots is skipped), and None when the step is a single term without a key.
    0 for a multiple of S (no rotation)."""

    def switches(s: int) -> int | None:
        if has_key(normalize_step(s, slots)):
            return 1
        terms = naf(s)
        if len(terms) == 1:
            return None
        total = 0
        for term in terms:
            if abs(term) == slots:
                continue
            part = switches(term)
            if part is None:
                return None
            total += part
        return total

    reduced = reduce_step(step, slots)
    return switches(reduced) if reduced else 0


def missing_steps(steps: Iterable[int], keys: Iterable[int], slots: int) -> list[int]:
    """The steps of `steps` (as given, in order, once each) that Galois keys for the steps
    `keys` cannot perform (`rotation_key_switches`), without a context."""
    present = {normalize_step(k, slots) for k in keys}
    out: list[int] = []
    for step in steps:
        if step not in out and rotation_key_switches(step, present.__contains__, slots) is None:
            out.append(step)
    return out


# --- key generation and the context bytes -------------------------------------------------
def galois_keys_bytes(context: ts.Context, steps: Iterable[int]) -> bytes:
    """SEAL-serialized Galois keys (seeded form) for exactly the normalized `steps`.

    `context` must hold its secret key. Raises ValueError otherwise or for invalid steps.
    """
    if not context.is_private():
        raise ValueError("Galois keys are made from the secret key: pass the PRIVATE context")
    data = context.seal_context().data
    generator = sealapi.KeyGenerator(data, context.secret_key().data)
    return saved_bytes(generator.create_galois_keys(galois_elements(context, steps)))


def _fields(buffer: bytes) -> list[tuple[int, bytes]]:
    """Top-level protobuf fields of `buffer` as (field number, the field's raw bytes, key
    included), in order. Wire types 0 (varint), 1 (64-bit), 2 (length-delimited), 5 (32-bit)."""
    out, pos = [], 0
    while pos < len(buffer):
        start = pos
        key, pos = read_varint(buffer, pos)
        wire = key & 7
        if wire == 0:
            _, pos = read_varint(buffer, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            length, pos = read_varint(buffer, pos)
            pos += length
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
        if pos > len(buffer):
            raise ValueError("truncated protobuf field")
        out.append((key >> 3, buffer[start:pos]))
    return out


def _payload(field: bytes) -> bytes:
    """The payload of one length-delimited field (its raw bytes, key included)."""
    _, pos = read_varint(field, 0)
    length, pos = read_varint(field, pos)
    return field[pos : pos + length]


def _length_delimited(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def splice_galois_keys(public_context: bytes, keys: bytes) -> bytes:
    """A serialized TenSEAL context with its Galois keys replaced by `keys` (SEAL bytes).

    `public_context` must have been serialized without the secret key (no private part).
    """
    fields = _fields(public_context)
    if any(number == _PRIVATE_CONTEXT for number, _ in fields):
        raise ValueError("the serialized context is private: use save_secret_key=False")
    out = bytearray()
    found = False
    for number, raw in fields:
        if number == _PUBLIC_CONTEXT:
            found = True
            inner = b"".join(raw for n, raw in _fields(_payload(raw)) if n != _GALOIS_KEYS)
            raw = _length_delimited(_PUBLIC_CONTEXT, inner + _length_delimited(_GALOIS_KEYS, keys))
        out += raw
    if not found:
        raise ValueError("not a serialized TenSEAL context: it has no public part")
    return bytes(out)


def public_context_with_steps(context: ts.Context, steps: Sequence[int]) -> bytes:
    """The serialized PUBLIC context of `context` with only the Galois keys of `steps`.

    Holds the encryption parameters, global scale, public key, relinearisation keys (when
    `context` has them) and one seeded Galois key per distinct normalized step (steps are
    reduced to (-S/2, S/2] first, as rotations are); no Galois keys at all when `steps` is
    empty (a computation that rotates nothing); no secret key. Load it with
    `ts.context_from`. `context` must be private (the keys need its secret key) and is not
    modified. Raises ValueError for a public context or an invalid step.
    """
    if not context.is_private():
        raise ValueError("Galois keys are made from the secret key: pass the PRIVATE context")
    public = context.serialize(
        save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=True
    )
    if not list(steps):
        return public
    return splice_galois_keys(public, galois_keys_bytes(context, steps))


# --- what a context's keys allow ----------------------------------------------------------
def key_switches_with_keys(context: ts.Context, step: int) -> int | None:
    """Key switches one `rotate_ciphertext(ct, step, context)` costs with the Galois keys the
    context holds, or None when SEAL would raise "Galois key not present"
    (`rotation_key_switches` with the context's keys). 0 for a multiple of S."""
    slots = slot_count(context)
    if step % slots == 0:
        return 0
    if not context.has_galois_keys():
        return None
    keys, tool = context.galois_keys().data, _galois_tool(context)
    return rotation_key_switches(step, lambda s: keys.has_key(tool.get_elt_from_step(s)), slots)


def require_rotation_steps(context: ts.Context, steps: Iterable[int]) -> None:
    """Raise ValueError naming every step of `steps` the context's Galois keys cannot do.

    Steps that are multiples of the slot count need no key and always pass.
    """
    steps = list(steps)
    missing = [s for s in steps if key_switches_with_keys(context, s) is None]
    if missing:
        raise ValueError(
            f"the context's Galois keys cannot rotate by {missing} (neither a key for the step "
            "nor for every term of its non-adjacent form): make the public context with "
            "public_context_with_steps(private_context, steps) including them"
        )


def context_sizes(context: ts.Context, steps: Sequence[int]) -> dict[str, object]:
    """Bytes of the public context of `context` three ways, for the JSON of a bench.

    "no_galois_keys", "all_galois_keys" (TenSEAL's +-2^i keys; generated on a copy when
    `context` has none, which takes seconds at N = 8192), "chosen_steps" (normalized
    `steps`) and "chosen_galois_keys" (`public_context_with_steps`), and the ratio
    all / chosen. `context` must be private.
    """
    full = context
    if not context.has_galois_keys():
        full = context.copy()
        full.generate_galois_keys()

    def size(ctx: ts.Context, galois: bool) -> int:
        return len(ctx.serialize(save_public_key=True, save_secret_key=False,
                                 save_galois_keys=galois, save_relin_keys=True))  # fmt: skip

    chosen = len(public_context_with_steps(context, steps))
    everything = size(full, True)
    return {
        "no_galois_keys": size(context, False),
        "all_galois_keys": everything,
        "chosen_steps": normalize_steps(steps, slot_count(context)),
        "chosen_galois_keys": chosen,
        "all_over_chosen": everything / chosen,
    }
