"""Messages between the model owner and the data owner, outside the secure computation.

Before the secure run the parties agree on public things: the model owner sends the
public architecture (`secinfer.core.architecture`: the graph as JSON, no weight, no code) and
the plan (JSON); the data owner answers with the digest of what it received, then sends
its input shapes and dtypes (JSON), or the reason it gives up. They travel over the same
CrypTen channel as the shares, as length-prefixed bytes, and are parsed with `json` only:
nothing here is ever unpickled, imported or evaluated.
"""

from __future__ import annotations

import json
from typing import Any

import torch

MAX_MESSAGE = 1 << 29
"""Largest message accepted (bytes, 512 MiB): a peer announcing more is refused, not
allocated. The largest legitimate one is the public architecture, whose integer buffers are
bounded by `architecture.MAX_DATA_ELEMENTS` (about 180 MB in base64)."""


def _comm() -> Any:
    from protocols.mpc.crypten_setup import communicator

    return communicator()


def send_bytes(data: bytes | None, src: int) -> bytes:
    """Party `src` sends `data` to the other computing party; both return the bytes.

    The other party passes None. Two broadcasts: the length, then the bytes.
    """
    comm = _comm()
    mine = comm.get_rank() == src
    if mine and data is None:
        raise ValueError("the sending party must give the data")
    size = torch.tensor([len(data) if mine and data is not None else 0], dtype=torch.int64)
    comm.broadcast(size, src)
    n = int(size.item())
    if n < 0 or n > MAX_MESSAGE:
        raise ValueError(f"peer announced a message of {n} bytes; refusing it")
    if n == 0:
        return b""
    if mine and data is not None:
        payload = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    else:
        payload = torch.empty(n, dtype=torch.uint8)
    comm.broadcast(payload, src)
    return payload.numpy().tobytes()


def send_json(message: dict[str, Any] | None, src: int) -> dict[str, Any]:
    """A JSON object from party `src` to the other (both get it). Strict JSON both ways:
    no NaN or infinity; a peer's malformed message raises ValueError."""
    text = json.dumps(message, allow_nan=False).encode() if message is not None else None
    return parse_json(send_bytes(text, src))


def parse_json(data: bytes) -> dict[str, Any]:
    """A peer's message as a JSON object; ValueError unless it is strict JSON."""
    try:
        received = json.loads(data.decode(), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise ValueError(f"peer sent a message that is not strict JSON ({exc})") from None
    if not isinstance(received, dict):
        raise ValueError("peer sent a JSON message that is not an object")
    return received


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


__all__ = ["parse_json", "send_bytes", "send_json"]
