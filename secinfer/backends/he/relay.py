"""The relay: a small process that owns an HE session's connection and says "alive" for its
party while the party computes.

Why a process. TenSEAL holds Python's GIL for the whole of each call into C++ (measured: a
Python thread ticking every 10 ms saw no tick for 8 s during one `CKKSVector.mm` of a
384x384 matrix; Galois key generation is one call of 10 s at N=16384 and 79 s at N=32768
with 30 steps, loading that public context one of 3 s and 51 s). A heartbeat thread in the
party's process therefore falls silent exactly when the party is busiest, and a peer with a
short `--timeout` gives up on a party that is working. The relay has its own interpreter.

How. `start(sock)` forks once the connection is vetted (TLS done, greeting read): the child
takes the socket (plain or TLS: the forked copy of the TLS state is used by the child alone;
the parent closes its copy without a TLS shutdown) and the parent talks to it over a local
socket pair, with the same framing (`protocols.he.messages`). The child is single-threaded,
uses no torch or TenSEAL, writes to stderr with `os.write` only, and leaves through
`os._exit`. It

- passes every byte from the peer to the party unchanged (the party checks and times them);
- passes the party's messages to the peer, and consumes the party's local STATUS frames
  (kind `STATUS`, never sent on the network; JSON: "working", "step", "interval");
- while the party is working (not waiting in a receive) or a message of the peer's is
  arriving (bytes of it, not of an ALIVE, came within 2 `interval`: the peer, waiting for our
  reply, must not give up while its own large message is still on its way to us), is not
  stopped (SIGSTOP: state T in /proc/PID/stat) and nothing went to the peer for `interval`
  seconds (the peer's timeout / 4), inserts an ALIVE message between two of the party's
  messages, carrying the party's step ("node 3/7 aten.linear"), the seconds it worked on
  it (its waits on the peer left out) and the seconds since the session began, and logs a
  progress line (at most every `LOG_EVERY` seconds);
- when the peer closes, hands the party what arrived and then end-of-file; when the party
  closes (or dies), delivers what is queued (within `flush` seconds) and exits.

What the relay does not know: whether the party is stuck inside a computation that will
never end (a deadlock in C++ looks like work). The whole run's bound stays with the caller
(`secinfer run`'s run timeout). A party that is stopped or gone falls silent as before.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import socket
import ssl
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from protocols.he.messages import HEADER, MAGIC, VERSION, MessageKind

STATUS = 0xF0
"""Kind byte of the party's local frames to its relay; not a `MessageKind`, so a STATUS
frame that arrived from the network is refused as an unknown kind."""

STATUS_MAX_BYTES = 4096
CAP = 4 << 20
"""Bytes from the peer queued for the party before the relay stops reading the peer
(back-pressure while the party is busy). What the party sends is taken whole, however fast
the peer takes it (a peer may be busy for minutes, or the link slow): the party's send
returns at once and its next receive judges the peer by its silence. The relay then holds
at most what its party sends before it next waits for a reply (one protocol step: the
inputs, a refresh's ciphertexts, the public context)."""
CHUNK = 1 << 20
MIN_INTERVAL = 0.05
"""Shortest interval between two ALIVE messages, whatever timeout the peer announces."""
LOG_EVERY = 10.0
"""Seconds between two progress lines on the same step."""
LOG_STEP_CHANGE = 2.0
"""Seconds between two progress lines when the step changed."""


@dataclass
class Relay:
    """The parent's handle: the local socket to talk to, the child's process id."""

    sock: socket.socket
    pid: int

    def close(self, wait: float) -> None:
        """Close the local socket (the relay then delivers what is queued and exits); reap
        the relay within `wait` seconds, killing it past that."""
        with contextlib.suppress(OSError):
            self.sock.close()
        deadline = time.monotonic() + wait
        while True:
            try:
                done, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if done:
                return
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self.pid, 0)
                return
            time.sleep(0.01)


def status_frame(fields: dict[str, Any]) -> bytes:
    """A local STATUS frame for the relay (never reaches the network)."""
    payload = json.dumps(fields, separators=(",", ":")).encode()
    if len(payload) > STATUS_MAX_BYTES:
        raise ValueError(f"a status of {len(payload)} bytes exceeds {STATUS_MAX_BYTES}")
    return HEADER.pack(MAGIC, VERSION, STATUS, len(payload)) + payload


def start(peer: socket.socket, role: str, flush: float) -> Relay:
    """Fork the relay for the connected `peer` socket (module docstring); `role` names this
    party in log lines; `flush` bounds the delivery of what is queued after the party
    closes. The caller uses the returned `Relay.sock` in place of `peer`, which is closed
    here."""
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for end in (parent_end, child_end):
        with contextlib.suppress(OSError):
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    parent_pid = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            gc.disable()  # no finalizer may close a descriptor the loop uses
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the party decides; we follow it
            _keep_only(peer.fileno(), child_end.fileno())
            _Loop(peer, child_end, parent_pid, role, flush).run()
        except BaseException:  # a child must leave through os._exit
            code = 1
        os._exit(code)
    child_end.close()
    peer.close()  # our copy only: no TLS shutdown, the connection stays the child's
    return Relay(parent_end, pid)


def _keep_only(*keep: int) -> None:
    """Close every descriptor but stdin, stdout, stderr and `keep`: the child must not hold
    the listener or other connections open (their peers would never see them close)."""
    kept = {0, 1, 2, *keep}
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 4096))
    for fd in fds:
        if fd not in kept:
            with contextlib.suppress(OSError):
                os.close(fd)


def _stopped(pid: int) -> bool:
    """Whether process `pid` is stopped (SIGSTOP, or traced): state T or t."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            text = stream.read()
    except OSError:
        return False
    fields = text[text.rfind(b")") + 2 :].split()
    return bool(fields) and fields[0] in (b"T", b"t")


@dataclass
class _Splitter:
    """Splits the party's outgoing byte stream into bytes for the peer and STATUS frames."""

    head: bytearray = field(default_factory=bytearray)
    remaining: int = 0  # payload bytes of a forwarded message still to pass
    status: int | None = None  # payload size of a STATUS frame being collected
    body: bytearray = field(default_factory=bytearray)

    @property
    def at_boundary(self) -> bool:
        return not self.head and self.remaining == 0 and self.status is None

    def feed(self, data: bytes) -> tuple[bytes, list[dict[str, Any]]]:
        if self.remaining >= len(data):  # inside a message's payload: pass it on as it is
            self.remaining -= len(data)
            return data, []
        out, statuses = bytearray(), []
        view, pos = memoryview(data), 0
        while pos < len(data):
            if self.remaining:
                take = min(self.remaining, len(data) - pos)
                out += view[pos : pos + take]
                pos, self.remaining = pos + take, self.remaining - take
            elif self.status is not None:
                take = min(self.status - len(self.body), len(data) - pos)
                self.body += view[pos : pos + take]
                pos += take
                if len(self.body) == self.status:
                    statuses.append(json.loads(bytes(self.body)))
                    self.status, self.body = None, bytearray()
            else:
                take = min(HEADER.size - len(self.head), len(data) - pos)
                self.head += view[pos : pos + take]
                pos += take
                if len(self.head) < HEADER.size:
                    continue
                _, _, kind, length = HEADER.unpack(bytes(self.head))
                if kind == STATUS:
                    self.status = length
                    if length == 0:
                        statuses.append({})
                        self.status = None
                else:
                    out += self.head
                    self.remaining = length
                self.head = bytearray()
        return bytes(out), statuses


@dataclass
class _Inbound:
    """Follows the frames of the peer's stream (headers and lengths only) to tell the bytes
    of its messages from those of its ALIVE messages. On a header that is not ours it stops
    following and counts everything as message bytes (the party refuses the stream)."""

    head: bytearray = field(default_factory=bytearray)
    remaining: int = 0
    alive: bool = False
    lost: bool = False

    def data_bytes(self, data: bytes) -> int:
        """How many bytes of `data` belong to messages other than ALIVE."""
        if self.lost:
            return len(data)
        count, pos = 0, 0
        while pos < len(data):
            if self.remaining:
                take = min(self.remaining, len(data) - pos)
                count += 0 if self.alive else take
                pos, self.remaining = pos + take, self.remaining - take
                continue
            take = min(HEADER.size - len(self.head), len(data) - pos)
            self.head += data[pos : pos + take]
            pos += take
            if len(self.head) < HEADER.size:
                continue
            magic, version, kind, length = HEADER.unpack(bytes(self.head))
            self.head = bytearray()
            if magic != MAGIC or version != VERSION:
                self.lost = True
                return count + HEADER.size + len(data) - pos
            self.alive, self.remaining = kind == MessageKind.ALIVE, length
            count += 0 if self.alive else HEADER.size
        return count


_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class _Loop:
    """The child's event loop (module docstring): one thread, non-blocking sockets, poll."""

    def __init__(
        self, peer: socket.socket, party: socket.socket, parent: int, role: str, flush: float
    ) -> None:
        self.peer, self.party, self.parent, self.role, self.flush = peer, party, parent, role, flush
        peer.setblocking(False)
        party.setblocking(False)
        self.to_peer, self.to_party = bytearray(), bytearray()
        self.split = _Splitter()
        self.inbound = _Inbound()
        self.data_arrived = 0.0  # when bytes of a peer's message (not an ALIVE) last came
        self.began = self.step_began = self.last_write = time.monotonic()
        self.working, self.step, self.interval = False, "", None
        self.waited = self.wait_began = 0.0  # seconds of the step spent waiting on the peer
        self.last_log, self.logged_step = 0.0, ""
        self.peer_readable = self.peer_writable = self.party_open = True
        self.party_writable = True  # false once a write to the party failed (it closed)
        self.pending_write = 0  # length of a TLS write to repeat as it was

    def run(self) -> None:
        closing_since: float | None = None
        poller = select.poll()
        while True:
            if not self.party_open:
                closing_since = closing_since or time.monotonic()
                done = not self.to_peer or not self.peer_writable
                if done or time.monotonic() - closing_since > self.flush:
                    return
            self._beat()
            timeout = self._poll_timeout()
            for fd in (self.peer.fileno(), self.party.fileno()):
                with contextlib.suppress(KeyError):
                    poller.unregister(fd)
            peer_events = (select.POLLIN if self._want_peer_read() else 0) | (
                select.POLLOUT if self.to_peer and self.peer_writable else 0
            )
            party_events = (select.POLLIN if self._want_party_read() else 0) | (
                select.POLLOUT if self.to_party and self.party_writable else 0
            )
            if peer_events:
                poller.register(self.peer.fileno(), peer_events)
            if party_events:
                poller.register(self.party.fileno(), party_events)
            poller.poll(timeout * 1000)
            self._read_peer()
            self._write_party()
            self._read_party()
            self._write_peer()

    # --- when and how long to wait ----------------------------------------------------------
    def _want_peer_read(self) -> bool:
        return self.peer_readable and len(self.to_party) < CAP

    def _want_party_read(self) -> bool:
        return self.party_open

    def _poll_timeout(self) -> float:
        pending = isinstance(self.peer, ssl.SSLSocket) and self.peer.pending()
        if pending and self._want_peer_read():
            return 0.0
        if self.interval is not None:
            return max(min(self.interval / 4, 0.5), 0.01)
        return 0.5

    # --- the four directions ------------------------------------------------------------------
    def _read_peer(self) -> None:
        while self._want_peer_read():
            try:
                data = self.peer.recv(CHUNK)
            except _WOULD_BLOCK:
                return
            except (OSError, ssl.SSLError):
                data = b""
            if not data:
                self.peer_readable = False
                self._end_party_if_drained()
                return
            if not self.party_writable:
                continue  # the party closed: what the peer still says (an ALIVE) is dropped
            self.to_party += data
            if self.inbound.data_bytes(data):
                self.data_arrived = time.monotonic()

    def _write_party(self) -> None:
        while self.to_party and self.party_writable:
            try:
                sent = self.party.send(memoryview(self.to_party)[:CHUNK])
            except _WOULD_BLOCK:
                return
            except OSError:
                # the party closed its end (with the peer's last ALIVE unread): stop writing
                # to it, but keep reading it to its end-of-file, for its last message may
                # still be on its way to us (`party_open` falls there, in `_read_party`)
                self.to_party.clear()
                self.party_writable = False
                return
            del self.to_party[:sent]
        self._end_party_if_drained()

    def _end_party_if_drained(self) -> None:
        if not self.peer_readable and not self.to_party and self.party_open:
            with contextlib.suppress(OSError):
                self.party.shutdown(socket.SHUT_WR)

    def _read_party(self) -> None:
        budget = CAP  # per turn, so that the peer is written to in between
        while self._want_party_read() and budget > 0:
            try:
                data = self.party.recv(CHUNK)
            except _WOULD_BLOCK:
                return
            except OSError:
                data = b""
            if not data:
                self.party_open = False
                return
            budget -= len(data)
            forward, statuses = self.split.feed(data)
            for status in statuses:
                self._update(status)
            self._queue(forward)

    def _queue(self, data: bytes) -> None:
        """Queue bytes for the peer (dropped once the peer is gone)."""
        if self.peer_writable:
            self.to_peer += data

    def _write_peer(self) -> None:
        while self.to_peer and self.peer_writable:
            size = self.pending_write or min(len(self.to_peer), CHUNK)
            try:
                sent = self.peer.send(memoryview(self.to_peer)[:size])
            except _WOULD_BLOCK:
                self.pending_write = size
                return
            except (OSError, ssl.SSLError):  # the peer is gone: drop what it would not take
                self.peer_writable = False
                self.to_peer.clear()
                return
            self.pending_write = 0
            del self.to_peer[:sent]
            self.last_write = time.monotonic()

    # --- the party's status and the peer's liveness ---------------------------------------
    def _update(self, status: dict[str, Any]) -> None:
        now = time.monotonic()
        if "step" in status and status["step"] != self.step:
            self.step, self.step_began, self.waited = str(status["step"]), now, 0.0
            self.wait_began = now
        if "working" in status and bool(status["working"]) != self.working:
            self.working = bool(status["working"])
            if self.working:  # the silence before this was the peer's, not ours
                self.last_write = max(self.last_write, now)
                self.waited += now - max(self.wait_began, self.step_began)
            else:
                self.wait_began = now
        if "interval" in status:
            self.interval = max(float(status["interval"]), MIN_INTERVAL)

    def _beat(self) -> None:
        if self.interval is None or not self.peer_writable:
            return
        now = time.monotonic()
        receiving = now - self.data_arrived < 2 * self.interval  # a peer's message arrives
        if not (self.working or receiving):
            return
        fields = {
            "step": self.step,
            "step_seconds": round(now - self.step_began - self.waited, 3),
            "seconds": round(now - self.began, 3),
        }
        due = now - self.last_log >= LOG_STEP_CHANGE
        beat = not (now - self.last_write < self.interval or self.to_peer)
        beat = beat and self.split.at_boundary
        if not (due or beat) or _stopped(self.parent):
            return
        # the party's own progress line on its own cadence: a peer with a long timeout
        # (an interval of its timeout / 4) must not silence it
        self._log(fields, now)
        if not beat:
            return
        payload = json.dumps(fields, separators=(",", ":")).encode()
        self._queue(HEADER.pack(MAGIC, VERSION, MessageKind.ALIVE, len(payload)) + payload)
        self.last_write = now  # the write follows at once; a stalled peer stops further beats

    def _log(self, fields: dict[str, Any], now: float) -> None:
        since = now - self.last_log
        changed = fields["step"] != self.logged_step
        if since < (LOG_STEP_CHANGE if changed else LOG_EVERY):
            return
        self.last_log, self.logged_step = now, fields["step"]
        line = f"{self.role} progress: {describe(fields)}\n"
        with contextlib.suppress(OSError):
            os.write(2, line.encode())


def describe(fields: dict[str, Any]) -> str:
    """An ALIVE message's fields in words: "node 3/7 aten.linear (12 s on it, 40 s in all)"."""
    step = fields.get("step") or "working"
    return (
        f"{step} ({float(fields.get('step_seconds', 0)):.0f} s on it, "
        f"{float(fields.get('seconds', 0)):.0f} s in all)"
    )


__all__ = ["CAP", "LOG_EVERY", "STATUS", "Relay", "describe", "start", "status_frame"]
