"""The link of an HE session: a connected socket that carries JSON and ciphertexts, how the
server accepts a client and how the client connects. Both the single query
(`secinfer.backends.he.session`) and the private evaluation
(`secinfer.backends.he.evaluation`) run over it.

With a `protocols.tls.Link` holding an identity, every connection is mutual TLS 1.3 and the
peer must prove its role (the server is the model owner, the client the data owner,
`tls.HE_ROLES`) before a byte of the session is read; without one it is a plain socket
(`--insecure-channel`). The client speaks first, a `GREETING`; the server accepts connections
until one passes the handshake, the role check and the greeting within its timeout, logging
one line per refused connection (a port scanner, a browser, a peer with the wrong
certificate), and only then sends its hello: nothing of the session goes to anyone else.

Liveness. Once a connection is the session's (vetted by the server, greeted by the client),
each side hands its socket to a relay process (`secinfer.backends.he.relay`) and talks
through it. While a side works (between two receives) its relay sends the peer an ALIVE
message whenever nothing else went out for a quarter of the peer's timeout (the client
announces its `--timeout` in the greeting, the server in its hello), also during a single
TenSEAL call that holds the interpreter for minutes; each side says what it is on
(`Channel.set_status`: "node 3/7 aten.linear", "making keys"). A receive accepts ALIVE
messages, starts its deadline afresh on each and logs the peer's progress on stderr (at
most every `relay.LOG_EVERY` seconds). So `--timeout` is how long the peer may stay
silent: a peer that is stopped, cut off or gone is given up on after it, as before, one
that works for an hour is not.

Meeting. Before the session, each side waits for the other to connect for its timeout;
the local launcher, which starts both at once, sets `MEET_ENV` to its run timeout, since
the server's start-up (loading and calibrating the model) is work, not silence.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from protocols.he import messages
from protocols.he.layout import Layout
from protocols.tls import HE_ROLES, AuthenticationError, Link, describe_refusal
from secinfer.backends.he import relay
from secinfer.errors import PartyError

MAX_MESSAGE = 1 << 31
GREETING = {"kind": "greeting", "protocol": "secinfer-he"}
"""The client's first message, after the TLS handshake: a connection that sends anything
else first is not a client (`accept_client`)."""
GREETING_MAX_BYTES = 4096
MEET_ENV = "SECINFER_HE_MEET_SECONDS"
"""Seconds each side waits for the other to connect, when longer than its timeout (set by
the local launcher)."""
FLUSH_SECONDS = 10.0
"""At most this long (and at most the timeout) the relay delivers what is queued after its
side closed."""
HANDSHAKE_SECONDS = 10.0
"""Bound on one connection's TLS handshake and greeting, within the server's timeout."""
MAX_VETTING = 16
"""Connections vetted at once (each in its own thread); more are closed at once."""
PLAIN = Link(None)
"""A plain socket: the `--insecure-channel` link, and the default of the functions here."""


class Channel:
    """A connected socket with its timeout, traffic counter and context digest; once the
    session starts (`start_session`), a relay that keeps the peer informed (module
    docstring)."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self.counter = messages.Counter()
        self.digest = b""
        self.context: Any = None
        self.peer_timeout: float | None = None  # what the peer announced
        self.role = ""
        self.relay: relay.Relay | None = None
        self.liveness: messages.Liveness | None = None
        self._peer_log = _ProgressLog()

    # --- the session's liveness ---------------------------------------------------------------
    def start_session(self, role: str, peer_timeout: float | None) -> None:
        """Hand the socket to a relay (`relay.start`); from now on ALIVE messages are
        accepted. `peer_timeout` (None: not known yet, see `set_peer_timeout`) sets how often
        the relay speaks while this side works."""
        self.role = role
        self.relay = relay.start(self.sock, role, min(self.timeout, FLUSH_SECONDS))
        self.sock = self.relay.sock
        self.liveness = self
        self._control({"working": True})  # working until it waits in a receive
        if peer_timeout is not None:
            self.set_peer_timeout(peer_timeout)

    def set_peer_timeout(self, seconds: float) -> None:
        """The peer's timeout: the relay speaks at least every quarter of it."""
        self.peer_timeout = seconds
        self._control({"interval": seconds / 4})

    def set_status(self, step: str) -> None:
        """What this side is on, for the peer and this side's log ("node 3/7 aten.linear")."""
        self._control({"step": step})

    def waiting(self, flag: bool) -> None:  # messages.Liveness
        self._control({"working": not flag})

    def alive(self, fields: dict[str, Any]) -> None:  # messages.Liveness
        peer = "client" if self.role == "server" else "server"
        line = (
            f"{self.role} progress: {peer}: {relay.describe(fields)}; "
            f"{_megabytes(self.counter.bytes_sent)} sent, "
            f"{_megabytes(self.counter.bytes_received)} received so far"
        )
        self._peer_log.offer(str(fields.get("step", "")), line)

    def _control(self, fields: dict[str, Any]) -> None:
        if self.relay is not None:
            self.sock.settimeout(self.timeout)
            self.sock.sendall(relay.status_frame(fields))

    def close(self) -> None:
        """Close the link; with a relay, after it delivered what is queued (bounded)."""
        if self.relay is not None:
            self.relay.close(min(self.timeout, FLUSH_SECONDS) + 2.0)
        else:
            with contextlib.suppress(OSError):
                self.sock.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- messages -----------------------------------------------------------------------------
    def send_json(self, message: dict[str, Any]) -> None:
        messages.send_json(self.sock, message, timeout=self.timeout, counter=self.counter)

    def recv_json(self) -> dict[str, Any]:
        return messages.recv_json(
            self.sock,
            timeout=self.timeout,
            max_bytes=MAX_MESSAGE,
            counter=self.counter,
            liveness=self.liveness,
        )

    def send_cts(self, cts: list[Any]) -> None:
        messages.send_ciphertexts(
            self.sock,
            cts,
            self.context,
            context_digest=self.digest,
            timeout=self.timeout,
            counter=self.counter,
        )

    def recv_cts(self, count: int) -> list[Any]:
        return messages.recv_ciphertexts(
            self.sock,
            self.context,
            timeout=self.timeout,
            max_bytes=MAX_MESSAGE,
            expected_context_digest=self.digest,
            count=count,
            counter=self.counter,
            liveness=self.liveness,
        )

    def send_context_bytes(self, data: bytes) -> bytes:
        """Send a serialized public context (`messages.send_context_bytes`); its digest."""
        return messages.send_context_bytes(
            self.sock, data, timeout=self.timeout, counter=self.counter
        )

    def recv_context(self) -> tuple[Any, bytes]:
        """A public context and its digest (`messages.recv_context_with_digest`)."""
        return messages.recv_context_with_digest(
            self.sock,
            timeout=self.timeout,
            max_bytes=MAX_MESSAGE,
            counter=self.counter,
            liveness=self.liveness,
        )

    def send_error(self, reason: str) -> None:
        with contextlib.suppress(OSError):
            messages.send_error(self.sock, reason, timeout=5.0, counter=self.counter)


class _ProgressLog:
    """Progress lines on stderr: at most one every `relay.LOG_EVERY` seconds on one step,
    one every `relay.LOG_STEP_CHANGE` seconds when the step changes."""

    def __init__(self) -> None:
        self.last, self.step = 0.0, ""

    def offer(self, step: str, line: str) -> None:
        now = time.monotonic()
        wait = relay.LOG_STEP_CHANGE if step != self.step else relay.LOG_EVERY
        if now - self.last < wait:
            return
        self.last, self.step = now, step
        print(line, file=sys.stderr, flush=True)


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB"


def announced_timeout(message: dict[str, Any]) -> float | None:
    """The peer's `timeout` field (seconds, positive and finite), or None without one;
    `MessageError` when it is not a number of seconds."""
    value = message.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
        raise messages.MessageError(f"the peer announced a timeout of {value!r} seconds")
    return float(value)


def meet_window(timeout: float) -> float:
    """How long to wait for the other side to connect: `timeout`, or `MEET_ENV`'s seconds
    when set and longer."""
    try:
        return max(timeout, float(os.environ.get(MEET_ENV, "0")))
    except ValueError:
        return timeout


def accept_client(
    listener: socket.socket,
    timeout: float,
    link: Link,
    log: Callable[[str], None] | None = None,
) -> Channel:
    """The first connection within `timeout` seconds (`meet_window`) that completes the TLS
    handshake, proves the data owner's certificate (`link`) and sends the `GREETING`; every
    other connection is closed with one line to `log` (default: stderr) and the server goes
    on listening. Each
    connection is vetted in its own thread (at most MAX_VETTING at once, each within
    HANDSHAKE_SECONDS), so connections that stay silent cannot keep the real client out.
    Raises `PartyError` when no such client came in time."""
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    window = meet_window(timeout)
    deadline = time.monotonic() + window
    passed: queue.Queue[Channel] = queue.Queue()
    chosen = threading.Event()
    vetting = threading.BoundedSemaphore(MAX_VETTING)

    def vet(sock: socket.socket, where: str) -> None:
        try:
            bound = max(min(HANDSHAKE_SECONDS, deadline - time.monotonic()), 1e-3)
            try:
                secured = link.accept(sock, HE_ROLES["client"], bound)
            except (ssl.SSLError, AuthenticationError, OSError) as exc:
                say(f"server: refused a connection from {where}: {describe_refusal(exc)}")
                return
            channel = Channel(secured, timeout)
            try:
                channel.peer_timeout = _expect_greeting(channel, bound)
            except (
                messages.MessageError,
                messages.PeerError,
                messages.PeerTimeout,
                OSError,
            ) as exc:
                secured.close()
                say(f"server: refused a connection from {where}: no client greeting ({exc})")
                return
            if chosen.is_set():  # another client already passed: one session at a time
                secured.close()
                return
            passed.put(channel)
        finally:
            vetting.release()

    while True:
        with contextlib.suppress(queue.Empty):
            channel = passed.get_nowait()
            chosen.set()
            channel.start_session("server", channel.peer_timeout or timeout)
            return channel
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PartyError(
                f"server: no {'authenticated ' if link.secure else ''}client connected "
                f"within {window:g} s"
            )
        listener.settimeout(min(remaining, 0.1))
        try:
            sock, (host, port, *_) = listener.accept()
        except TimeoutError:
            continue
        if not vetting.acquire(blocking=False):
            sock.close()
            say(f"server: refused a connection from {host}:{port}: too many at once")
            continue
        threading.Thread(target=vet, args=(sock, f"{host}:{port}"), daemon=True).start()


def _expect_greeting(channel: Channel, timeout: float) -> float | None:
    """Read the client's greeting; the timeout it announced (None: none)."""
    message = messages.recv_json(
        channel.sock, timeout=timeout, max_bytes=GREETING_MAX_BYTES, counter=channel.counter
    )
    if {k: message.get(k) for k in GREETING} != GREETING:
        raise messages.MessageError(f"got {str(message)[:80]}")
    return announced_timeout(message)


def connect(address: tuple[str, int], timeout: float, link: Link) -> Channel:
    """The client's connection, retried for `timeout` seconds (`meet_window`: the server may
    start later); under TLS the server must prove the model owner's certificate before
    anything is sent; then the `GREETING` goes out (with `timeout`, which the server's
    relay must keep to). A server that fails the check raises `PartyError` at once."""
    window = meet_window(timeout)
    deadline = time.monotonic() + window
    while True:
        try:
            sock = socket.create_connection(address, timeout=timeout)
        except OSError:
            if time.monotonic() > deadline:
                raise PartyError(
                    f"client: no server at {address[0]}:{address[1]} within {window:g} s"
                ) from None
            time.sleep(0.2)
            continue
        expected = HE_ROLES["server"]
        try:
            secured = link.connect(sock, expected, timeout)
        except (ssl.SSLError, AuthenticationError, TimeoutError) as exc:
            raise PartyError(
                f"client: the server at {address[0]}:{address[1]} did not prove it is the "
                f"{expected}: {describe_refusal(exc)}"
            ) from None
        channel = Channel(secured, timeout)
        channel.send_json({**GREETING, "timeout": timeout})
        channel.start_session("client", None)  # the server's hello says its timeout
        return channel


def guarded(channel: Channel, work: Callable[[], Any]) -> Any:
    """Run the client's `work`; on its own failure tell the server why, then re-raise."""
    with channel:
        try:
            return work()
        except messages.PeerError:
            raise
        except Exception as exc:
            channel.send_error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise


def expect_hello(channel: Channel) -> dict[str, Any]:
    """The server's hello; its announced timeout sets how often the client's relay speaks."""
    hello = expect_kind(channel, "hello")
    seconds = announced_timeout(hello)
    channel.set_peer_timeout(seconds if seconds is not None else channel.timeout)
    return hello


def expect_kind(channel: Channel, kind: str) -> dict[str, Any]:
    message = channel.recv_json()
    if message.get("kind") != kind:
        raise messages.MessageError(f"expected a {kind!r} message, got {message.get('kind')!r}")
    return message


def receive_grid(channel: Channel, layout: Layout) -> np.ndarray:
    """The ciphertexts of one tensor in `layout`, as its grid."""
    cts = channel.recv_cts(int(np.prod(layout.grid_shape)))
    grid = np.empty(len(cts), dtype=object)
    grid[:] = cts
    return grid.reshape(layout.grid_shape)


__all__ = [
    "GREETING",
    "HANDSHAKE_SECONDS",
    "MAX_MESSAGE",
    "PLAIN",
    "Channel",
    "accept_client",
    "announced_timeout",
    "connect",
    "expect_hello",
    "expect_kind",
    "guarded",
    "receive_grid",
]
