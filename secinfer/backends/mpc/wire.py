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


def send_bytes(data: bytes, src: int) -> None:
    """Party `src` (this one) sends `data` to the other computing party, which calls
    `receive_bytes(src)` at the same point. Two broadcasts: the length, then the bytes (one
    when `data` is empty). ValueError when this party is not `src`."""
    comm = _comm()
    if comm.get_rank() != src:
        raise ValueError(f"send_bytes from party {src} called on party {comm.get_rank()}")
    _broadcast(comm, data, src)


def receive_bytes(src: int) -> bytes:
    """The bytes party `src` sends with `send_bytes`, at most MAX_MESSAGE (a peer announcing
    more is refused before anything is allocated). ValueError when this party is `src`."""
    comm = _comm()
    if comm.get_rank() == src:
        raise ValueError(f"receive_bytes from party {src} called on that party itself")
    return _broadcast(comm, None, src)


def _broadcast(comm: Any, data: bytes | None, src: int) -> bytes:
    """The length, then the payload, broadcast from `src`; `data` is None on the receiver."""
    size = torch.tensor([len(data) if data is not None else 0], dtype=torch.int64)
    comm.broadcast(size, src)
    n = int(size.item())
    if n < 0 or n > MAX_MESSAGE:
        raise ValueError(f"peer announced a message of {n} bytes; refusing it")
    if n == 0:
        return b""
    if data is not None:
        payload = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    else:
        payload = torch.empty(n, dtype=torch.uint8)
    comm.broadcast(payload, src)
    return payload.numpy().tobytes()


def send_json(message: dict[str, Any], src: int) -> None:
    """Party `src` (this one) sends a JSON object to the other (`receive_json(src)`). Strict
    JSON: ValueError for NaN or infinity."""
    send_bytes(json.dumps(message, allow_nan=False).encode(), src)


def receive_json(src: int) -> dict[str, Any]:
    """The JSON object party `src` sends with `send_json`; ValueError unless the peer's
    message is strict JSON and an object."""
    return parse_json(receive_bytes(src))


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


__all__ = ["parse_json", "receive_bytes", "receive_json", "send_bytes", "send_json"]
