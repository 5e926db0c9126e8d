"""Messages between the data owner (client) and the model owner (server) of the HE backend.

Every message on the connected socket is a fixed 14-byte header followed by its payload:

    magic b"SIHE" | version (1 byte) | kind (1 byte) | payload length (8 bytes, big-endian)

Kinds and their payloads:

- PUBLIC_CONTEXT: a TenSEAL context serialized WITHOUT its secret key (public key,
  relinearization and, if generated, Galois keys). `send_context` refuses a private
  context; `recv_context` refuses a received one that is private.
- CIPHERTEXTS: the 32-byte SHA-256 digest of the public context the ciphertexts belong to,
  a 4-byte big-endian count, then for each ciphertext an 8-byte big-endian length and
  TenSEAL's own serialization of a `CKKSVector`.
- JSON: one UTF-8 JSON object (handshake, plans, shapes).
- ERROR: one line of UTF-8 text: the peer gives up and says why (`PeerError` on receipt).
- ALIVE (version 2): one UTF-8 JSON object of at most `ALIVE_MAX_BYTES`: the peer is working
  and says on what ("step", "step_seconds", "seconds"). A receive given a `Liveness` passes
  it on (`Liveness.alive`) and starts its deadline afresh; one without refuses it, as it
  refuses any message it does not expect. ALIVE messages are not counted in a `Counter`.

Liveness. `timeout` bounds each message, and a peer that works longer than that says so
with an ALIVE message at least every timeout / 4 seconds
(`secinfer.backends.he.relay`), so a receiver's timeout measures the peer's silence, not
the length of its computation: a peer that is stopped, hung in the network or gone still
ends the wait after `timeout` seconds. A peer that keeps saying it is alive is waited for
as long as it does; bounding a whole run is the caller's business.

The receiver never trusts a length: a header announcing more than `max_bytes` is refused
before a byte of the payload is read, a payload is read no further than it arrives (memory
grows with the bytes received, never with the bytes announced), every inner length is
checked against what is left, and the whole message must arrive before `timeout` seconds.
JSON is parsed with `json`, contexts and ciphertexts with TenSEAL; nothing is unpickled.

What TenSEAL 0.3.18 itself detects (measured at N=8192, [60, 40, 40, 60], scale 2**40):
a truncated ciphertext is refused ("failed to parse CKKS stream"), but an EMPTY one loads
as a vector of size 0 (so we refuse empty entries ourselves); flipped bytes are refused
only sometimes (SEAL's "ciphertext data is invalid" when a coefficient leaves its modulus,
"I/O error" when the zstd stream breaks): about three in four random one-bit flips load
fine and decrypt to garbage, and an edited size field silently drops or adds values. A
ciphertext made under another key with the same parameters loads fine and decrypts to
garbage (about 1e31); one made under other parameters is refused.

Hence the context digest. The client sends its public context, then a JSON handshake
(`handshake_message`) carrying a random 16-byte session id and the SHA-256 of the exact
context bytes it sent; the server checks the digest against the bytes it received
(`verify_handshake`). Every CIPHERTEXTS payload names the digest of its context, and
`recv_vectors(..., expected_context_digest=...)` refuses a mismatch with
"ciphertexts made under another context".

What the digest does and does not protect against. Our threat model is semi-honest (the
README's "Threat model"): parties follow the protocol but may try to learn from what they see.
The digest catches mix-ups: ciphertexts from another session, another client's key, a stale
context after a key rotation, a context damaged on the way. It is not authentication: the
digest is of public bytes, so anyone holding the public context can attach it to any
ciphertext, including a well-formed one the server encrypted itself under the client's
public key; and it does not cover the ciphertext bytes, so corruption inside a ciphertext
that TenSEAL accepts goes unnoticed. Integrity of the channel against an active attacker is
the transport's job (TLS); a malicious server is outside this model.
"""

from __future__ import annotations

import enum
import hashlib
import json
import secrets
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any, Protocol

import tenseal

MAGIC = b"SIHE"
"""First four bytes of every message."""

VERSION = 2
"""Format version; a peer speaking another version is refused. Version 2 added ALIVE."""

HEADER = struct.Struct(">4sBBQ")
"""magic, version, kind, payload length: 14 bytes."""

DIGEST_BYTES = 32
"""SHA-256 digest of a public context, at the head of every CIPHERTEXTS payload."""

SESSION_ID_BYTES = 16
"""Random session id of the JSON handshake."""

ALIVE_MAX_BYTES = 4096
"""Largest ALIVE payload; a longer one is refused before it is read."""

DEFAULT_MAX_BYTES = 1 << 31
"""A default bound for `max_bytes`: enough for a public context with all Galois keys at
poly modulus degree 16384 (about 250 MB) and large batches of ciphertexts."""

_COUNT = struct.Struct(">I")
_LENGTH = struct.Struct(">Q")
_CHUNK = 1 << 20
# What TenSEAL (pybind11 over SEAL and protobuf) raises on bytes it cannot load.
_TENSEAL_ERRORS = (ValueError, RuntimeError, TypeError, OverflowError, MemoryError)


class MessageKind(enum.IntEnum):
    """The kind byte of the header."""

    PUBLIC_CONTEXT = 1
    CIPHERTEXTS = 2
    JSON = 3
    ERROR = 4
    ALIVE = 5


MIN_RATE = 8e6
"""Bytes per second (64 Mbit/s) a payload is allowed beyond the receiver's timeout: a
message of n bytes may take timeout + n / MIN_RATE seconds (a slower link needs a larger
--timeout for its large messages)."""


class MessageError(ValueError):
    """A message that is malformed, truncated, too large or not the one expected."""


class PeerClosed(MessageError):
    """The peer closed the connection at a message boundary, before the message expected."""


class PeerTimeout(TimeoutError):
    """The peer sent nothing (or not all of a message) within the allowed time."""


class PeerError(RuntimeError):
    """The peer sent an ERROR message: it gave up, and the text says why."""


@dataclass
class Counter:
    """Traffic on one side of a connection: framed bytes (header included) and messages."""

    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0


class Liveness(Protocol):
    """What a receive tells its caller about the wait (module docstring, "Liveness")."""

    def waiting(self, flag: bool) -> None:
        """True before the first byte of a message is awaited, False once it is complete."""

    def alive(self, fields: dict[str, Any]) -> None:
        """The peer sent an ALIVE message with these fields."""


def context_digest(public_context: bytes) -> bytes:
    """SHA-256 of the serialized public context: the 32 bytes that name it."""
    return hashlib.sha256(public_context).digest()


# -- framing -------------------------------------------------------------------------------


def send_message(
    sock: socket.socket,
    kind: MessageKind,
    payload: bytes,
    *,
    timeout: float | None = None,
    counter: Counter | None = None,
) -> None:
    """Send one framed message.

    `timeout` (seconds) bounds the whole send when given (a peer that stops reading makes
    `sendall` block); None keeps the socket's own setting.
    """
    kind = MessageKind(kind)
    header = HEADER.pack(MAGIC, VERSION, kind, len(payload))
    previous = sock.gettimeout()
    try:
        if timeout is not None:
            sock.settimeout(timeout)
        sock.sendall(header)
        sock.sendall(payload)
    except TimeoutError as error:  # socket.timeout is TimeoutError
        limit = timeout if timeout is not None else previous
        raise PeerTimeout(
            f"peer did not take a {kind.name} message of {len(payload)} bytes within {limit} s"
        ) from error
    finally:
        if timeout is not None:
            sock.settimeout(previous)
    if counter is not None:
        counter.bytes_sent += HEADER.size + len(payload)
        counter.messages_sent += 1


def _read_exact(
    sock: socket.socket,
    size: int,
    deadline: float,
    limit: str,
    what: str,
    counter: Counter | None,
) -> bytes:
    """`size` bytes, read as they arrive; the buffer grows with the data, not the claim."""
    buffer = bytearray()
    while len(buffer) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PeerTimeout(
                f"no complete message from peer within {limit} "
                f"(got {len(buffer)} of {size} {what} bytes)"
            )
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(min(size - len(buffer), _CHUNK))
        except TimeoutError as error:
            raise PeerTimeout(
                f"no complete message from peer within {limit} "
                f"(got {len(buffer)} of {size} {what} bytes)"
            ) from error
        except ConnectionError as error:
            raise MessageError(
                f"connection lost after {len(buffer)} of {size} {what} bytes: {error}"
            ) from error
        if not chunk:
            if what == "header" and not buffer:
                raise PeerClosed("peer closed the connection before sending a message")
            raise MessageError(
                f"{what} truncated: peer closed the connection after {len(buffer)} of {size} bytes"
            )
        buffer += chunk
        if counter is not None:
            counter.bytes_received += len(chunk)
    return bytes(buffer)


def recv_message(
    sock: socket.socket,
    *,
    timeout: float,
    max_bytes: int,
    counter: Counter | None = None,
    liveness: Liveness | None = None,
) -> tuple[MessageKind, bytes]:
    """Receive one framed message: its kind and payload.

    `timeout` bounds the whole message (header and payload), not each read, so a peer that
    trickles bytes cannot hold us forever; a long payload gets `length / MIN_RATE` seconds
    more once its header announced it (a 52 MB output takes seconds through two relays on a
    loaded machine; no ALIVE can come inside it). Raises `PeerTimeout` when it runs out and
    `MessageError` on a closed connection, a bad magic, version or kind, a payload longer
    than `max_bytes` (refused before reading it) or a truncated payload. With `liveness`,
    ALIVE messages are passed to `liveness.alive` and the deadline starts again after each;
    without, an ALIVE message is refused.
    """
    if liveness is not None:
        liveness.waiting(True)
    try:
        while True:
            kind, payload = _recv_one(sock, timeout, max_bytes, counter, liveness is not None)
            if kind != MessageKind.ALIVE:
                return kind, payload
            assert liveness is not None
            liveness.alive(_json_object(payload, "ALIVE"))
    finally:
        if liveness is not None:
            liveness.waiting(False)


def _recv_one(
    sock: socket.socket,
    timeout: float,
    max_bytes: int,
    counter: Counter | None,
    alive_allowed: bool,
) -> tuple[MessageKind, bytes]:
    deadline = time.monotonic() + timeout
    previous = sock.gettimeout()
    received = counter.bytes_received if counter is not None else 0
    try:
        header = _read_exact(sock, HEADER.size, deadline, f"{timeout} s", "header", counter)
        magic, version, kind_byte, length = HEADER.unpack(header)
        if magic != MAGIC:
            raise MessageError(f"bad magic {magic!r} (expected {MAGIC!r}): not a secinfer peer")
        if version != VERSION:
            raise MessageError(f"unsupported message format version {version} (we speak {VERSION})")
        try:
            kind = MessageKind(kind_byte)
        except ValueError:
            raise MessageError(f"unknown message kind {kind_byte}") from None
        if kind == MessageKind.ALIVE and not alive_allowed:
            raise MessageError("unexpected ALIVE message")
        limit = ALIVE_MAX_BYTES if kind == MessageKind.ALIVE else max_bytes
        if length > limit:
            raise MessageError(
                f"{kind.name} message of {length} bytes exceeds the limit of {limit} bytes"
            )
        extra = length / MIN_RATE
        deadline += extra
        allowed = f"{timeout} s" + (f" + {extra:.2g} s for its size" if extra >= 0.01 else "")
        payload = _read_exact(sock, length, deadline, allowed, f"{kind.name} payload", counter)
    finally:
        sock.settimeout(previous)
    if counter is not None:
        if kind == MessageKind.ALIVE:  # traffic counts the protocol's messages only
            counter.bytes_received = received
        else:
            counter.messages_received += 1
    return kind, payload


def _json_object(payload: bytes, what: str) -> dict[str, Any]:
    """The JSON object in `payload`; MessageError naming `what` (the message kind) if the
    bytes are not UTF-8 JSON or not an object."""
    try:
        fields = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise MessageError(f"{what} message does not parse: {error}") from None
    if not isinstance(fields, dict):
        raise MessageError(f"{what} message is a {type(fields).__name__}, not an object")
    return fields


def _expect(
    sock: socket.socket,
    expected: MessageKind,
    *,
    timeout: float,
    max_bytes: int,
    counter: Counter | None,
    liveness: Liveness | None = None,
) -> bytes:
    """The payload of the next message, which must be of kind `expected` (or ERROR)."""
    kind, payload = recv_message(
        sock, timeout=timeout, max_bytes=max_bytes, counter=counter, liveness=liveness
    )
    if kind == MessageKind.ERROR:
        raise PeerError(f"peer gave up: {payload.decode('utf-8', errors='replace')}")
    if kind != expected:
        raise MessageError(f"expected a {expected.name} message, got {kind.name}")
    return payload


# -- JSON and errors -----------------------------------------------------------------------


def send_json(
    sock: socket.socket,
    message: dict[str, Any],
    *,
    timeout: float | None = None,
    counter: Counter | None = None,
) -> None:
    """Send a JSON object (UTF-8; NaN and infinity refused)."""
    if not isinstance(message, dict):
        raise TypeError(f"a JSON message must be a dict, not {type(message).__name__}")
    payload = json.dumps(message, allow_nan=False, separators=(",", ":")).encode()
    send_message(sock, MessageKind.JSON, payload, timeout=timeout, counter=counter)


def recv_json(
    sock: socket.socket,
    *,
    timeout: float,
    max_bytes: int,
    counter: Counter | None = None,
    liveness: Liveness | None = None,
) -> dict[str, Any]:
    """Receive a JSON object; anything else is a `MessageError`."""
    payload = _expect(
        sock,
        MessageKind.JSON,
        timeout=timeout,
        max_bytes=max_bytes,
        counter=counter,
        liveness=liveness,
    )
    return _json_object(payload, "JSON")


def send_error(
    sock: socket.socket,
    reason: str,
    *,
    timeout: float | None = None,
    counter: Counter | None = None,
) -> None:
    """Tell the peer we give up, and why (one line; the peer raises `PeerError`)."""
    line = " ".join(reason.split())
    send_message(sock, MessageKind.ERROR, line.encode(), timeout=timeout, counter=counter)


# -- handshake -----------------------------------------------------------------------------


def handshake_message(digest: bytes, **fields: Any) -> dict[str, Any]:
    """The client's JSON handshake: a fresh random session id and the context's digest.

    `digest` is what `send_context` returned; `fields` (shapes, plan name...) are added.
    """
    if len(digest) != DIGEST_BYTES:
        raise ValueError(f"a context digest has {DIGEST_BYTES} bytes, not {len(digest)}")
    reserved = {"session_id", "context_sha256"} & fields.keys()
    if reserved:
        raise ValueError(f"handshake fields {sorted(reserved)} are set by handshake_message")
    return {
        "session_id": secrets.token_bytes(SESSION_ID_BYTES).hex(),
        "context_sha256": digest.hex(),
        **fields,
    }


def verify_handshake(message: dict[str, Any], digest: bytes) -> bytes:
    """Check the handshake against the digest of the context bytes received; the session id.

    Raises `MessageError` when a field is missing or malformed, or when the context received
    is not the one the client says it sent.
    """
    try:
        session_id = bytes.fromhex(message["session_id"])
        claimed = bytes.fromhex(message["context_sha256"])
    except (KeyError, TypeError, ValueError):
        raise MessageError("handshake lacks a hex session_id or context_sha256") from None
    if len(session_id) != SESSION_ID_BYTES or len(claimed) != DIGEST_BYTES:
        raise MessageError(
            f"handshake session_id must have {SESSION_ID_BYTES} bytes and "
            f"context_sha256 {DIGEST_BYTES}"
        )
    if claimed != digest:
        raise MessageError("public context received differs from the one the handshake names")
    return session_id


# -- contexts ------------------------------------------------------------------------------


def send_context(
    sock: socket.socket,
    context: tenseal.Context,
    *,
    galois_keys: bool = True,
    relin_keys: bool = True,
    timeout: float | None = None,
    counter: Counter | None = None,
) -> bytes:
    """Send the public part of `context`; returns the SHA-256 digest of the bytes sent.

    Refuses (ValueError, nothing sent) a context that still holds a secret key: make the
    public copy explicitly (`context.copy()` then `make_context_public()`) so that sending
    the secret key is never one forgotten flag away. Galois keys are the bulk (33.4 of
    35.3 MB at N=8192 with the default power-of-two steps, 1.9 MB without them); leave
    them out when the server rotates nothing.

    Use the returned digest, not one recomputed from the private context: TenSEAL's
    `copy()` of a private context generates new public and relinearization keys, so its
    public bytes differ from the original's.
    """
    if context.is_private():
        raise ValueError(
            "refusing to send a context that holds a secret key; send a public copy "
            "(context.copy() then make_context_public())"
        )
    data = context.serialize(
        save_public_key=True,
        save_secret_key=False,
        save_galois_keys=galois_keys,
        save_relin_keys=relin_keys,
    )
    send_message(sock, MessageKind.PUBLIC_CONTEXT, data, timeout=timeout, counter=counter)
    return context_digest(data)


def send_context_bytes(
    sock: socket.socket,
    data: bytes,
    *,
    timeout: float | None = None,
    counter: Counter | None = None,
) -> bytes:
    """Send an already serialized public context (such as `galois.public_context_with_steps`
    writes); its digest. Refuses (ValueError, nothing sent) bytes that load as a private
    context."""
    if tenseal.context_from(data).is_private():
        raise ValueError("refusing to send a serialized context that holds a secret key")
    send_message(sock, MessageKind.PUBLIC_CONTEXT, data, timeout=timeout, counter=counter)
    return context_digest(data)


def recv_context_with_digest(
    sock: socket.socket,
    *,
    timeout: float,
    max_bytes: int,
    counter: Counter | None = None,
    liveness: Liveness | None = None,
) -> tuple[tenseal.Context, bytes]:
    """Receive a public context and the SHA-256 digest of its bytes (see `recv_context`)."""
    data = _expect(
        sock,
        MessageKind.PUBLIC_CONTEXT,
        timeout=timeout,
        max_bytes=max_bytes,
        counter=counter,
        liveness=liveness,
    )
    try:
        context = tenseal.context_from(data)
    except _TENSEAL_ERRORS as error:
        raise MessageError(f"public context does not load: {error}") from None
    if context.is_private():
        raise MessageError("peer sent a context holding its secret key; refusing it")
    return context, context_digest(data)


def recv_context(
    sock: socket.socket,
    *,
    timeout: float,
    max_bytes: int,
    counter: Counter | None = None,
) -> tenseal.Context:
    """Receive a public TenSEAL context; `MessageError` if it does not load or is private."""
    context, _ = recv_context_with_digest(
        sock, timeout=timeout, max_bytes=max_bytes, counter=counter
    )
    return context


# -- ciphertexts ---------------------------------------------------------------------------


def encode_vectors(vectors: list[tenseal.CKKSVector], digest: bytes) -> bytes:
    """The CIPHERTEXTS payload: digest, count, then each serialized vector with its length."""
    return encode_serialized([vector.serialize() for vector in vectors], digest)


def encode_serialized(serialized: list[bytes], digest: bytes) -> bytes:
    """The CIPHERTEXTS payload from already serialized vectors."""
    if len(digest) != DIGEST_BYTES:
        raise ValueError(f"a context digest has {DIGEST_BYTES} bytes, not {len(digest)}")
    parts = [digest, _COUNT.pack(len(serialized))]
    for data in serialized:
        parts += [_LENGTH.pack(len(data)), data]
    return b"".join(parts)


def decode_vectors(
    payload: bytes,
    context: tenseal.Context,
    *,
    expected_context_digest: bytes | None = None,
) -> list[tenseal.CKKSVector]:
    """Parse a CIPHERTEXTS payload into vectors under `context`; `MessageError` if malformed.

    The digest is checked before any ciphertext is parsed. Lengths are checked against the
    payload; an entry that TenSEAL refuses, or an empty one (TenSEAL would load it as a
    vector of size 0), is a `MessageError` naming its index.
    """
    head = DIGEST_BYTES + _COUNT.size
    if len(payload) < head:
        raise MessageError(
            f"CIPHERTEXTS payload of {len(payload)} bytes is shorter than its {head}-byte head"
        )
    digest = payload[:DIGEST_BYTES]
    if expected_context_digest is not None and digest != expected_context_digest:
        raise MessageError("ciphertexts made under another context")
    (count,) = _COUNT.unpack_from(payload, DIGEST_BYTES)
    if count * _LENGTH.size > len(payload) - head:
        raise MessageError(
            f"CIPHERTEXTS payload announces {count} ciphertexts in {len(payload)} bytes"
        )
    vectors = []
    offset = head
    view = memoryview(payload)
    for index in range(count):
        if offset + _LENGTH.size > len(payload):
            raise MessageError(f"ciphertext {index} of {count}: length field truncated")
        (size,) = _LENGTH.unpack_from(payload, offset)
        offset += _LENGTH.size
        if size == 0:
            raise MessageError(f"ciphertext {index} of {count} is empty")
        if size > len(payload) - offset:
            raise MessageError(
                f"ciphertext {index} of {count} announces {size} bytes, "
                f"only {len(payload) - offset} left"
            )
        data = bytes(view[offset : offset + size])
        offset += size
        try:
            vectors.append(tenseal.ckks_vector_from(context, data))
        except _TENSEAL_ERRORS as error:
            raise MessageError(f"ciphertext {index} of {count} is malformed: {error}") from None
    if offset != len(payload):
        raise MessageError(
            f"CIPHERTEXTS payload has {len(payload) - offset} bytes after its {count} ciphertexts"
        )
    return vectors


def send_vectors(
    sock: socket.socket,
    vectors: list[tenseal.CKKSVector],
    *,
    context_digest: bytes,
    timeout: float | None = None,
    counter: Counter | None = None,
) -> None:
    """Send CKKS vectors, labelled with the digest of the public context they belong to.

    `context_digest` is what `send_context` returned (client) or `recv_context_with_digest`
    returned (server).
    """
    payload = encode_vectors(vectors, context_digest)
    send_message(sock, MessageKind.CIPHERTEXTS, payload, timeout=timeout, counter=counter)


def recv_vectors(
    sock: socket.socket,
    context: tenseal.Context,
    *,
    timeout: float,
    max_bytes: int,
    expected_context_digest: bytes | None = None,
    counter: Counter | None = None,
    liveness: Liveness | None = None,
) -> list[tenseal.CKKSVector]:
    """Receive CKKS vectors and load them under `context`.

    With `expected_context_digest`, vectors labelled with another context are refused
    ("ciphertexts made under another context"). Without it the label is not checked, and a
    ciphertext under another key of the same parameters loads and decrypts to garbage.
    """
    payload = _expect(
        sock,
        MessageKind.CIPHERTEXTS,
        timeout=timeout,
        max_bytes=max_bytes,
        counter=counter,
        liveness=liveness,
    )
    return decode_vectors(payload, context, expected_context_digest=expected_context_digest)


__all__ = [
    "ALIVE_MAX_BYTES",
    "DEFAULT_MAX_BYTES",
    "DIGEST_BYTES",
    "HEADER",
    "MAGIC",
    "MIN_RATE",
    "SESSION_ID_BYTES",
    "VERSION",
    "Counter",
    "Liveness",
    "MessageError",
    "MessageKind",
    "PeerClosed",
    "PeerError",
    "PeerTimeout",
    "context_digest",
    "decode_vectors",
    "encode_serialized",
    "encode_vectors",
    "handshake_message",
    "recv_ciphertexts",
    "recv_context",
    "recv_context_with_digest",
    "recv_json",
    "recv_message",
    "recv_vectors",
    "send_ciphertexts",
    "send_context",
    "send_context_bytes",
    "send_error",
    "send_json",
    "send_message",
    "send_vectors",
    "verify_handshake",
]


# -- SEAL ciphertexts ------------------------------------------------------------------------


def send_ciphertexts(
    sock: socket.socket,
    ciphertexts: list[Any],
    context: tenseal.Context,
    *,
    context_digest: bytes,
    timeout: float | None = None,
    counter: Counter | None = None,
) -> None:
    """Send SEAL ciphertexts (`tenseal.sealapi.Ciphertext`, or the seeded `Serializable`
    that symmetric encryption returns: about half the bytes) as full-width CKKS vectors
    in a CIPHERTEXTS message, serialized directly (no TenSEAL vector is built)."""
    from protocols.he.rotation import ciphertext_bytes, slot_count, vector_proto

    slots, scale = slot_count(context), context.global_scale
    serialized = [vector_proto([ciphertext_bytes(ct)], [slots], scale) for ct in ciphertexts]
    payload = encode_serialized(serialized, context_digest)
    send_message(sock, MessageKind.CIPHERTEXTS, payload, timeout=timeout, counter=counter)


def recv_ciphertexts(
    sock: socket.socket,
    context: tenseal.Context,
    *,
    timeout: float,
    max_bytes: int,
    expected_context_digest: bytes,
    count: int,
    counter: Counter | None = None,
    liveness: Liveness | None = None,
) -> list[Any]:
    """Receive exactly `count` single-ciphertext vectors; their SEAL ciphertexts."""
    vectors = recv_vectors(
        sock,
        context,
        timeout=timeout,
        max_bytes=max_bytes,
        expected_context_digest=expected_context_digest,
        counter=counter,
        liveness=liveness,
    )
    if len(vectors) != count:
        raise MessageError(f"expected {count} ciphertexts, received {len(vectors)}")
    out = []
    for index, vector in enumerate(vectors):
        chunks = vector.ciphertext()
        if len(chunks) != 1:
            raise MessageError(f"ciphertext {index} spans {len(chunks)} ciphertexts, expected 1")
        out.append(chunks[0])
    return out
