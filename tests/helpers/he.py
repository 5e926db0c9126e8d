"""In-process HE sessions: a server thread and a client on real loopback sockets."""

from __future__ import annotations

import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from secinfer.backends.he import session as he_session
from secinfer.backends.he.channel import PLAIN
from secinfer.core.execute import Executor


class Normalise(torch.nn.Module):
    """x / sqrt(mean(x^2) + 1): an inverse square root and a GELU on encrypted values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.rsqrt((x * x).mean(-1, keepdim=True) + 1.0)
        return torch.nn.functional.gelu(x * scale)


def start_server(graph: Any, plan: Any, **options: Any) -> tuple[int, dict[str, Any], Any]:
    """`he_session.serve` in a daemon thread on a free loopback port: (port, the outcome
    dict the thread fills with "record" or "error", the thread)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    outcome: dict[str, Any] = {}

    def serve() -> None:
        with listener:
            try:
                outcome["record"] = he_session.serve(
                    graph,
                    plan,
                    listener,
                    Path(tempfile.mkdtemp()),
                    timeout=30,
                    **{"link": PLAIN, **options},
                )
            except Exception as exc:  # the test inspects what the server raised
                outcome["error"] = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return port, outcome, thread


def encrypted_run(
    graph: Any, plan: Any, inputs: tuple[torch.Tensor, ...], timeout: float = 60, **options: Any
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A server thread and a client on real sockets: (the client's decrypted output, the
    plaintext run of the same graph, what the server returned). Fails if the server
    raised."""
    port, outcome, thread = start_server(graph, plan, **options)
    y = he_session.query(
        ("127.0.0.1", port),
        lambda names: inputs,
        Path(tempfile.mkdtemp()),
        timeout=timeout,
        link=PLAIN,
    )
    thread.join(timeout)
    assert "error" not in outcome, outcome.get("error")
    expected = Executor(graph, "plain").run(inputs).outputs[0].double().numpy()
    return y, expected, outcome


def client_refresh(codec: Any) -> Any:
    """The client's side of a refresh, in process: decrypt the layout's slots (it sees the
    masked values only), zero the rest, re-encrypt. A `MaskingRefresher` transport."""

    def transport(cts: list[Any], layout: Any) -> list[Any]:
        used = layout.positions().reshape(-1)
        fresh = []
        for ct in cts:
            values = np.zeros(codec.slots)
            values[used] = codec.decrypt_slots(ct)[used]
            fresh.append(codec.encrypt_slots(values))
        return fresh

    return transport
