"""Messages between the model owner and the data owner, outside the secure computation.

Before the secure run the parties agree on public things: the model owner sends the
public architecture (a torch.export archive whose floating-point weights are all zero)
and the plan (JSON); the data owner sends its input shapes and dtypes (JSON), or the
reason it gives up. They travel over the same CrypTen channel as the shares, as
length-prefixed bytes: JSON is parsed with `json`, archives with `torch.export.load`
(which loads tensors with weights_only). Nothing here is ever unpickled.

Integer buffers and constants (position ids, for instance) stay in the archive: they are
part of the architecture, public to both parties. Floating-point parameters, buffers and
constants are the model owner's secrets and are zeroed.
"""

from __future__ import annotations

import io
import json
from typing import Any

import torch

MAX_MESSAGE = 1 << 31
"""Largest message accepted (bytes): a peer announcing more is refused, not allocated."""


def _comm() -> Any:
    from crypten import communicator

    return communicator.get()


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
    """A JSON object from party `src` to the other (both get it)."""
    text = json.dumps(message).encode() if message is not None else None
    received = json.loads(send_bytes(text, src).decode())
    if not isinstance(received, dict):
        raise ValueError("peer sent a JSON message that is not an object")
    return received


def public_architecture(program: torch.export.ExportedProgram) -> bytes:
    """The program as a torch.export archive with every floating-point tensor zeroed."""
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    copy = torch.export.load(buffer)
    with torch.no_grad():
        for tensor in [*copy.state_dict.values(), *copy.constants.values()]:
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                tensor.zero_()
    out = io.BytesIO()
    torch.export.save(copy, out)
    return out.getvalue()


def load_architecture(data: bytes) -> torch.export.ExportedProgram:
    return torch.export.load(io.BytesIO(data))


__all__ = ["load_architecture", "public_architecture", "send_bytes", "send_json"]
