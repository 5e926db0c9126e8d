"""ALIVE messages (format version 2): a receive given a `Liveness` takes them, passes them
on and starts its deadline afresh; one without refuses them; they are bounded in size and
not counted as traffic. Version 1 peers (no ALIVE) are refused. Real sockets."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from protocols.he.messages import (
    ALIVE_MAX_BYTES,
    HEADER,
    MAGIC,
    VERSION,
    Counter,
    MessageError,
    MessageKind,
    PeerTimeout,
    recv_json,
    recv_message,
    send_json,
)

LIMIT = 1 << 20


class Recorder:
    """A `Liveness` that records what the receive told it."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def waiting(self, flag: bool) -> None:
        self.events.append(("waiting", flag))

    def alive(self, fields: dict[str, Any]) -> None:
        self.events.append(fields)


def alive_frame(fields: Any, version: int = VERSION) -> bytes:
    payload = json.dumps(fields).encode()
    return HEADER.pack(MAGIC, version, MessageKind.ALIVE, len(payload)) + payload


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_the_format_version_is_2_and_version_1_is_refused(pair) -> None:
    a, b = pair
    assert VERSION == 2
    a.sendall(HEADER.pack(MAGIC, 1, MessageKind.JSON, 2) + b"{}")
    with pytest.raises(MessageError, match=r"unsupported message format version 1 \(we speak 2\)"):
        recv_message(b, timeout=5, max_bytes=LIMIT)


def test_alive_restarts_the_deadline_and_reaches_the_liveness(pair) -> None:
    """A peer that says it is alive every 0.2 s for 1.5 s, then answers, is waited for
    with a 0.5 s timeout; each ALIVE reaches the recorder in order."""
    a, b = pair

    def peer() -> None:
        for step in range(8):
            a.sendall(alive_frame({"step": f"node {step}/8", "seconds": step * 0.2}))
            time.sleep(0.2)
        send_json(a, {"kind": "output"})

    thread = threading.Thread(target=peer, daemon=True)
    thread.start()
    recorder, counter = Recorder(), Counter()
    began = time.monotonic()
    message = recv_json(b, timeout=0.5, max_bytes=LIMIT, counter=counter, liveness=recorder)
    assert message == {"kind": "output"} and time.monotonic() - began > 1.4
    thread.join(5)
    assert recorder.events[0] == ("waiting", True) and recorder.events[-1] == ("waiting", False)
    steps = [e["step"] for e in recorder.events if isinstance(e, dict)]
    assert steps == [f"node {i}/8" for i in range(8)]
    # the traffic counts the protocol's message only
    payload = len(json.dumps({"kind": "output"}, separators=(",", ":")))
    assert counter.messages_received == 1 and counter.bytes_received == HEADER.size + payload


def test_silence_after_an_alive_still_times_out(pair) -> None:
    a, b = pair
    a.sendall(alive_frame({"step": "node 1/2"}))  # then nothing
    began = time.monotonic()
    with pytest.raises(PeerTimeout, match=r"within 0\.5 s \(got 0 of 14 header bytes\)"):
        recv_json(b, timeout=0.5, max_bytes=LIMIT, liveness=Recorder())
    assert 0.45 < time.monotonic() - began < 3.0


def test_alive_is_refused_where_no_liveness_is_given(pair) -> None:
    """Before the session (the server vetting a greeting) nothing may stretch the wait."""
    a, b = pair
    a.sendall(alive_frame({"step": "x"}))
    with pytest.raises(MessageError, match="unexpected ALIVE message"):
        recv_json(b, timeout=5, max_bytes=LIMIT)


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (HEADER.pack(MAGIC, VERSION, MessageKind.ALIVE, ALIVE_MAX_BYTES + 1), "exceeds the limit"),
        (alive_frame([1, 2]), "ALIVE message is a list"),
        (HEADER.pack(MAGIC, VERSION, MessageKind.ALIVE, 3) + b"{no", "does not parse"),
        (HEADER.pack(MAGIC, VERSION, 0xF0, 2) + b"{}", "unknown message kind 240"),
        (HEADER.pack(MAGIC, VERSION, 99, 2) + b"{}", "unknown message kind 99"),
    ],
    ids=["too-long", "not-an-object", "not-json", "relay-status-from-the-network", "kind-99"],
)
def test_malformed_alive_and_unknown_kinds_are_refused(pair, frame: bytes, error: str) -> None:
    a, b = pair
    a.sendall(frame)
    began = time.monotonic()
    with pytest.raises(MessageError, match=error):
        recv_json(b, timeout=5, max_bytes=LIMIT, liveness=Recorder())
    assert time.monotonic() - began < 1.0  # refused at once, an oversized one unread
