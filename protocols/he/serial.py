"""Bytes of SEAL objects and the protobuf varints of TenSEAL's own messages.

sealapi saves objects (ciphertexts, keys, seeded `Serializable`s) only to a path, so
`saved_bytes` goes through a temporary file on a RAM disk when there is one. TenSEAL's
serializations are protobuf messages; `rotation.vector_proto` and `galois` write and read
the few fields they need with these varints (no protobuf dependency).
"""

from __future__ import annotations

import os
import tempfile
from typing import Protocol


class Saveable(Protocol):
    def save(self, path: str) -> None: ...


def saved_bytes(obj: Saveable) -> bytes:
    """SEAL's own serialization of `obj` (zstd-compressed; seeded when `obj` is)."""
    directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
    handle, path = tempfile.mkstemp(suffix=".seal", dir=directory)
    os.close(handle)
    try:
        obj.save(path)
        with open(path, "rb") as stream:
            return stream.read()
    finally:
        os.unlink(path)


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | 0x80 if value else low)
        if not value:
            return bytes(out)


def read_varint(buffer: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of the varint at `pos`; ValueError when truncated."""
    value, shift = 0, 0
    while True:
        if pos >= len(buffer):
            raise ValueError("truncated protobuf varint")
        byte = buffer[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos
