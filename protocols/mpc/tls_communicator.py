"""CrypTen's communicator over mutually authenticated TLS 1.3 links (in place of gloo).

The three parties (model owner rank 0, data owner rank 1, dealer rank 2) form a full mesh
of TLS connections, each pair authenticated by the identities of `protocols.tls` (pinned
self-signed certificates, one per role):

  - rank 0 listens at the rendezvous tcp://HOST:PORT (loopback only for a loopback HOST,
    `protocols.mpc.rendezvous.listen`); the data owner and the dealer connect to it;
  - with a dealer, the data owner also listens (on an ephemeral port of the same kind of
    address) and tells the model owner its port; the model owner tells the dealer where
    the data owner is (the address it saw the data owner connect from, and that port);
    the dealer connects there.

Guarantees:
  - A link carries application bytes only after the TLS 1.3 handshake succeeded and the
    peer's certificate is exactly the pinned certificate of the role expected there (a
    connecting party must prove its role to the listener, the listener its role to the
    connecting party). A connection to rank 0 that fails the handshake or presents a
    role already connected is closed, reported in one line on stderr, and rank 0 keeps
    waiting for the real party until the timeout (the data owner's listener likewise).
    Listeners vet one connection at a time, each within `HANDSHAKE_TIMEOUT` seconds.
  - The first message each way on every link is the sender's settings record (what
    `protocols.mpc.rendezvous` compares over the store on the gloo path); the model owner
    also relays the data owner's record to the dealer. Each party compares every record it
    sees, pairwise, as `protocols.mpc.rendezvous` does: a difference raises
    `SettingsMismatch` naming the setting, both values and both roles.
  - Every wait is bounded: `PeerLost` (a `RuntimeError` whose message says "connection
    closed" or "timed out", which the command line reports in one line) when a peer closes
    its link while this party waits on it, or when nothing moves on the links waited on
    for `timeout` seconds.
  - Frames: an 8-byte little-endian length, then the payload (a tensor's raw bytes, or
    UTF-8 JSON during set-up). A length other than what the receiver expects is a
    `PeerLost` error (a desynchronised or hostile peer); nothing is ever unpickled.
  - Counters: `Mesh.traffic()` gives, per peer, the application bytes (payloads plus
    8-byte frame headers) and the bytes on the wire (TLS records and the handshake),
    measured at the sockets.

The communicator implements what secinfer's runs call: send, recv, isend, irecv,
broadcast (batched too, on any group), all_reduce and reduce (SUM or BXOR, batched too),
gather, all_gather, scatter, barrier, and the rank queries; `send_to` / `recv_into` move
raw tensors between any two ranks (the dealer link and the dealer's seeds).
`send_obj`, `recv_obj` and `broadcast_obj` raise: nothing pickled crosses a link.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import ssl
import struct
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from protocols import tls
from protocols.mpc import rendezvous

MAX_SETUP_BYTES = 1 << 16
"""Largest set-up (JSON) message accepted."""

HANDSHAKE_TIMEOUT = 10.0
"""Seconds a listener gives one accepted connection to complete its handshake (a silent
connection delays the real party by at most this much)."""

CONNECT_RETRY = 0.1
"""Seconds between attempts to reach a listener that is not up yet."""

_HEADER = struct.Struct("<Q")
_CHUNK = 1 << 20
LABELS = {0: "model-owner", 1: "data-owner", 2: "dealer"}


class PeerLost(RuntimeError):
    """A peer closed its link or stopped answering; the message names it."""


@dataclass(frozen=True)
class Group:
    """The ranks of a process group (stands in for torch.distributed's group handles)."""

    ranks: tuple[int, ...]


@dataclass
class LinkTraffic:
    """Bytes of one link, this party's side."""

    app_sent: int = 0
    app_received: int = 0
    wire_sent: int = 0
    wire_received: int = 0


# --- one TLS link over a memory BIO ------------------------------------------------------
class _Channel:
    """One authenticated link: TLS over an in-memory BIO so that one thread can send and
    receive on every link at once (no deadlock when both sides send large tensors) and the
    wire bytes are counted exactly."""

    def __init__(self, sock: socket.socket, peer: int) -> None:
        self.sock = sock
        with contextlib.suppress(OSError):  # small messages go out at once (no Nagle delay)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.peer = peer
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls: ssl.SSLObject | None = None
        self.pending = bytearray()  # encrypted bytes not yet on the socket
        self.inbox = bytearray()  # decrypted bytes not yet consumed
        self.closed = False
        self.traffic = LinkTraffic()

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def label(self) -> str:
        return LABELS.get(self.peer, f"rank {self.peer}")

    def handshake(
        self,
        context: ssl.SSLContext,
        identity: tls.Identity,
        expected: str | None,
        *,
        server: bool,
    ) -> None:
        """Mutual TLS handshake (blocking, bounded by the socket's timeout), then the
        pinned role check (`expected`; None: the caller checks); raises before any
        application byte is read or written."""
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=server)
        while True:
            try:
                self.tls.do_handshake()
                self._flush_blocking()
                break
            except ssl.SSLWantReadError:
                self._flush_blocking()
                data = self.sock.recv(_CHUNK)
                if not data:
                    raise ConnectionError(
                        "the peer closed the connection during the handshake"
                    ) from None
                self.traffic.wire_received += len(data)
                self.incoming.write(data)
        if expected is not None:
            tls.check_peer(self.tls, identity, expected)  # type: ignore[arg-type]

    def _flush_blocking(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)
            self.traffic.wire_sent += len(data)

    def queue(self, payload: bytes | memoryview) -> None:
        """Encrypt one frame (header + payload) into the pending bytes."""
        assert self.tls is not None
        header = _HEADER.pack(len(payload))
        for part in (header, payload):
            view = memoryview(part)
            while len(view):
                written = self.tls.write(view[: 1 << 24])
                view = view[written:]
        self.pending += self.outgoing.read()
        self.traffic.app_sent += _HEADER.size + len(payload)

    def on_readable(self) -> bool:
        """Read what the socket has; False when the peer closed the link."""
        try:
            data = self.sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return False
        self.traffic.wire_received += len(data)
        self.incoming.write(data)
        self.drain()
        return True

    def drain(self) -> None:
        """Decrypt whatever the incoming BIO holds into the inbox (also right after the
        role check: the peer's first frame may arrive with its last handshake bytes)."""
        assert self.tls is not None
        while True:
            try:
                chunk = self.tls.read(_CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.closed = True
                break
            if not chunk:
                break
            self.inbox += chunk

    def on_writable(self) -> None:
        try:
            sent = self.sock.send(self.pending[:_CHUNK])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.closed = True
            return
        del self.pending[:sent]
        self.traffic.wire_sent += sent

    def frame_ready(self) -> int | None:
        """The length of the next frame when it is complete in the inbox."""
        if len(self.inbox) < _HEADER.size:
            return None
        (n,) = _HEADER.unpack_from(self.inbox)
        return n if len(self.inbox) >= _HEADER.size + n else None

    def close(self) -> None:
        if self.tls is not None and not self.closed:
            with contextlib.suppress(ssl.SSLError):
                self.tls.unwrap()
            data = self.outgoing.read()
            if data:
                try:
                    self.sock.setblocking(True)
                    self.sock.settimeout(1.0)
                    self.sock.sendall(self.pending + data)
                except OSError:
                    pass
        self.sock.close()
        self.closed = True


# --- the mesh ----------------------------------------------------------------------------
@dataclass
class Mesh:
    """This party's authenticated links to every other rank."""

    rank: int
    timeout: float
    channels: dict[int, _Channel] = field(default_factory=dict)

    def send(self, peer: int, payload: bytes | memoryview) -> None:
        """Queue one frame to `peer`: written as far as the socket takes it now, the rest
        while this party waits for anything (never blocks)."""
        channel = self.channels[peer]
        channel.queue(payload)
        if not channel.closed:
            channel.on_writable()  # what the socket takes now; the rest while waiting

    def receive(self, peer: int, expected: int | None = None, limit: int = 1 << 40) -> bytes:
        """The next frame from `peer`; `expected` its exact length, else at most `limit`."""
        channel = self.channels[peer]
        self._pump({peer: 1})
        n = channel.frame_ready()
        assert n is not None
        if (expected is not None and n != expected) or n > limit:
            want = expected if expected is not None else f"at most {limit}"
            raise PeerLost(
                f"the {channel.label} sent a message of {n} bytes where {want} were "
                "expected (connection closed: the parties are out of step)"
            )
        data = bytes(channel.inbox[_HEADER.size : _HEADER.size + n])
        del channel.inbox[: _HEADER.size + n]
        channel.traffic.app_received += _HEADER.size + n
        return data

    def flush(self) -> None:
        self._pump({}, flush=True)

    def _pump(self, frames: Mapping[int, int], flush: bool = False) -> None:
        """Move bytes on every link until each peer in `frames` has that many complete
        frames waiting (and, with `flush`, all pending bytes are out)."""
        last_progress = time.monotonic()
        while True:
            missing = [
                p for p, count in frames.items() if self._complete_frames(self.channels[p]) < count
            ]
            unsent = [c for c in self.channels.values() if c.pending]
            if not missing and (not flush or not unsent):
                return
            for peer in missing:
                channel = self.channels[peer]
                if channel.closed:
                    raise PeerLost(
                        f"the {channel.label} closed the connection (it failed or was stopped)"
                    )
            readers = [c for c in self.channels.values() if not c.closed]
            writers = [c for c in unsent if not c.closed]
            if flush and not missing and not writers:
                lost = next(c for c in unsent)
                raise PeerLost(f"the {lost.label} closed the connection before it got a message")
            wait = last_progress + self.timeout - time.monotonic()
            if wait <= 0:
                waited = missing or [c.peer for c in writers]
                names = " and the ".join(LABELS.get(p, str(p)) for p in waited)
                raise PeerLost(f"timed out after {self.timeout:g} s waiting for the {names}")
            readable, writable, _ = select.select(readers, writers, [], min(wait, 1.0))
            for channel in writable:
                channel.on_writable()
                last_progress = time.monotonic()
            for channel in readable:
                channel.on_readable()
                last_progress = time.monotonic()

    @staticmethod
    def _complete_frames(channel: _Channel) -> int:
        count, offset, inbox = 0, 0, channel.inbox
        while len(inbox) - offset >= _HEADER.size:
            (n,) = _HEADER.unpack_from(inbox, offset)
            if len(inbox) - offset - _HEADER.size < n:
                break
            offset += _HEADER.size + n
            count += 1
        return count

    def traffic(self) -> dict[int, LinkTraffic]:
        return {peer: c.traffic for peer, c in self.channels.items()}

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
        self.channels.clear()


# --- building the mesh -------------------------------------------------------------------
@dataclass(frozen=True)
class MeshConfig:
    """What a party needs to join the mesh."""

    rendezvous: str
    rank: int
    parties: int  # 2 (no dealer) or 3
    identity: tls.Identity
    timeout: float
    settings: Mapping[str, Any]


def _role(rank: int) -> str:
    return LABELS[rank]


def _setup_message(mesh: Mesh, peer: int, message: Mapping[str, Any]) -> None:
    mesh.send(peer, json.dumps(message, sort_keys=True).encode())


def _read_setup(mesh: Mesh, peer: int) -> dict[str, Any]:
    data = mesh.receive(peer, limit=MAX_SETUP_BYTES)
    try:
        value = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        value = None
    if not isinstance(value, dict):
        raise rendezvous.SettingsMismatch(f"the {_role(peer)} sent unreadable settings")
    return value


def _secure(
    sock: socket.socket, config: MeshConfig, expected: str, *, server: bool, peer: int
) -> _Channel:
    sock.settimeout(config.timeout)
    channel = _Channel(sock, peer)
    context = tls.server_context(config.identity) if server else tls.client_context(config.identity)
    try:
        channel.handshake(context, config.identity, expected, server=server)
    except BaseException:
        sock.close()
        raise
    channel.drain()  # the peer proved its role: its first bytes may be read now
    sock.setblocking(False)
    return channel


def _connect(host: str, port: int, config: MeshConfig, expected: str, peer: int) -> _Channel:
    """Connect (retrying until the timeout while nobody listens) and authenticate."""
    ends = time.monotonic() + config.timeout
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=config.timeout)
            break
        except (ConnectionRefusedError, ConnectionResetError, OSError) as exc:
            if time.monotonic() > ends:
                raise PeerLost(
                    f"timed out after {config.timeout:g} s: the {expected} does not answer "
                    f"at {host}:{port} ({exc.strerror or exc})"
                ) from None
            time.sleep(CONNECT_RETRY)
    try:
        return _secure(sock, config, expected, server=False, peer=peer)
    except tls.AuthenticationError as exc:
        raise tls.AuthenticationError(f"refused {host}:{port}: {exc}") from None
    except (ssl.SSLError, TimeoutError, ConnectionError) as exc:
        raise tls.AuthenticationError(
            f"refused {host}:{port} as the {expected}: {tls.describe_refusal(exc)}"
        ) from None


def _accept(
    listener: socket.socket, config: MeshConfig, wanted: dict[str, int]
) -> tuple[_Channel, str]:
    """The next connection that authenticates as one of `wanted` (role -> rank); others
    are closed with one line on stderr. Raises PeerLost after the timeout."""
    ends = time.monotonic() + config.timeout
    while True:
        remaining = ends - time.monotonic()
        if remaining <= 0:
            names = " and the ".join(wanted)
            raise PeerLost(f"timed out after {config.timeout:g} s waiting for the {names}")
        listener.settimeout(remaining)
        try:
            sock, where = listener.accept()
        except TimeoutError:
            continue
        try:
            sock.settimeout(min(config.timeout, HANDSHAKE_TIMEOUT, max(remaining, 0.1)))
            return _authenticate_any(sock, config, wanted), str(where[0])
        except (tls.AuthenticationError, ssl.SSLError, OSError) as exc:
            print(
                f"{_role(config.rank)}: refused a connection from {where[0]}: "
                f"{tls.describe_refusal(exc)}",
                file=sys.stderr,
            )
            sock.close()


def _authenticate_any(sock: socket.socket, config: MeshConfig, wanted: dict[str, int]) -> _Channel:
    """Server side: handshake, then the certificate must be the pinned one of a role in
    `wanted`."""
    channel = _Channel(sock, -1)
    channel.handshake(tls.server_context(config.identity), config.identity, None, server=True)
    assert channel.tls is not None
    presented = channel.tls.getpeercert(binary_form=True) or b""
    role = next(
        (
            r
            for r in wanted
            if r in config.identity.peers
            and tls.fingerprint(config.identity.peers[r]) == tls.fingerprint(presented)
        ),
        "",
    )
    if not role:
        raise tls.AuthenticationError(
            f"the peer did not present the pinned certificate of the {' or the '.join(wanted)}"
        )
    channel.peer = wanted[role]
    channel.drain()  # the peer proved its role: its first bytes may be read now
    sock.setblocking(False)
    return channel


def connect_mesh(config: MeshConfig) -> Mesh:
    """Join the mesh as `config.rank`, authenticate every link, exchange and compare the
    settings records. Raises `PeerLost`, `tls.AuthenticationError`, `SettingsMismatch`,
    `RendezvousBusy`."""
    host, port = rendezvous.address(config.rendezvous)
    mesh = Mesh(config.rank, config.timeout)
    mine = {"version": rendezvous.VERSION, "parties": config.parties, **config.settings}
    seen: dict[int, dict[str, Any]] = {config.rank: mine}
    try:
        if config.rank == 0:
            _as_model_owner(mesh, config, host, port, mine, seen)
        elif config.rank == 1:
            _as_data_owner(mesh, config, host, port, mine, seen)
        else:
            _as_dealer(mesh, config, host, port, mine, seen)
    except BaseException:
        mesh.close()
        raise
    return mesh


def _check(seen: dict[int, dict[str, Any]], rank: int, theirs: dict[str, Any]) -> None:
    for other, settings in seen.items():
        rendezvous.compare_settings(settings, theirs, _role(other), _role(rank))
    seen[rank] = theirs


def _as_model_owner(
    mesh: Mesh, config: MeshConfig, host: str, port: int, mine: dict, seen: dict
) -> None:
    listener = rendezvous.rendezvous_listener(host, port)
    wanted = {_role(r): r for r in range(1, config.parties)}
    addresses: dict[int, str] = {}
    try:
        while wanted:
            channel, where = _accept(listener, config, wanted)
            del wanted[_role(channel.peer)]
            mesh.channels[channel.peer] = channel
            addresses[channel.peer] = where
            _setup_message(mesh, channel.peer, {"settings": mine})
    finally:
        listener.close()
    hellos = {peer: _read_setup(mesh, peer) for peer in sorted(mesh.channels)}
    if config.parties == 3:
        listen_port = hellos[1].get("listen")
        _setup_message(
            mesh,
            2,
            {"data_owner": [addresses[1], listen_port], "settings_1": hellos[1].get("settings")},
        )
    mesh.flush()
    for peer, hello in hellos.items():
        _check(seen, peer, _settings_of(hello, peer))


def _settings_of(message: Mapping[str, Any], peer: int, key: str = "settings") -> dict:
    value = message.get(key)
    if not isinstance(value, dict):
        raise rendezvous.SettingsMismatch(f"the {_role(peer)} sent no settings record")
    return value


def _as_data_owner(
    mesh: Mesh, config: MeshConfig, host: str, port: int, mine: dict, seen: dict
) -> None:
    channel = _connect(host, port, config, _role(0), 0)
    mesh.channels[0] = channel
    listener = rendezvous.listen(host, 0)  # loopback for a loopback rendezvous
    try:
        hello: dict[str, Any] = {"settings": mine}
        if config.parties == 3:
            hello["listen"] = listener.getsockname()[1]
        _setup_message(mesh, 0, hello)
        mesh.flush()
        _check(seen, 0, _settings_of(_read_setup(mesh, 0), 0))
        if config.parties == 3:
            dealer, _ = _accept(listener, config, {_role(2): 2})
            mesh.channels[2] = dealer
            _setup_message(mesh, 2, {"settings": mine})
            mesh.flush()
            _check(seen, 2, _settings_of(_read_setup(mesh, 2), 2))
    finally:
        listener.close()


def _as_dealer(
    mesh: Mesh, config: MeshConfig, host: str, port: int, mine: dict, seen: dict
) -> None:
    mesh.channels[0] = _connect(host, port, config, _role(0), 0)
    _setup_message(mesh, 0, {"settings": mine})
    mesh.flush()
    _check(seen, 0, _settings_of(_read_setup(mesh, 0), 0))
    where = _read_setup(mesh, 0)
    address = where.get("data_owner")
    relayed = where.get("settings_1")
    if isinstance(relayed, dict):  # what the data owner told the model owner
        for other, settings in seen.items():
            rendezvous.compare_settings(settings, relayed, _role(other), _role(1))
    if (
        not isinstance(address, list)
        or len(address) != 2
        or not isinstance(address[0], str)
        or not isinstance(address[1], int)
    ):
        raise PeerLost("the model owner did not say where the data owner listens")
    mesh.channels[1] = _connect(address[0], address[1], config, _role(1), 1)
    _setup_message(mesh, 1, {"settings": mine})
    mesh.flush()
    _check(seen, 1, _settings_of(_read_setup(mesh, 1), 1))


# --- CrypTen's communicator --------------------------------------------------------------
_config: dict[str, Any] = {}
"""What `configure` recorded for the next `TlsCommunicator.initialize`."""


def configure(identity: tls.Identity, timeout: float, settings: Mapping[str, Any]) -> None:
    """Set the identity, timeout and settings record the next `crypten.init()` uses."""
    _config.clear()
    _config.update(identity=identity, timeout=timeout, settings=dict(settings))


def _to_bytes(tensor: torch.Tensor) -> memoryview:
    array = tensor.detach().contiguous().cpu().numpy()
    return memoryview(array).cast("B") if array.size else memoryview(b"")


def _fill(target: torch.Tensor, data: bytes) -> torch.Tensor:
    if target.numel():
        source = torch.frombuffer(bytearray(data), dtype=target.dtype).reshape(target.shape)
        target.data.copy_(source)
    return target


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class _Done:
    """A completed request (what isend returns: the bytes are queued already)."""

    def __init__(self, mesh: Mesh | None = None) -> None:
        self.mesh = mesh

    def wait(self) -> None:
        if self.mesh is not None:
            self.mesh.flush()

    def is_completed(self) -> bool:
        return True


class _Pending:
    """An irecv: the frame is read into the tensor on `wait()`."""

    def __init__(self, comm: TlsCommunicator, tensor: torch.Tensor, src: int) -> None:
        self.comm, self.tensor, self.src, self.done = comm, tensor, src, False

    def wait(self) -> None:
        if not self.done:
            self.comm.recv_into(self.tensor, self.src)
            self.done = True

    def is_completed(self) -> bool:
        return self.done


def _combine(op: Any, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    from torch.distributed import ReduceOp

    if op == ReduceOp.SUM:
        return left + right
    if op == ReduceOp.BXOR:
        return left ^ right
    raise ValueError(f"the TLS communicator reduces with SUM or BXOR only, not {op}")


def _sum_op() -> Any:
    from torch.distributed import ReduceOp

    return ReduceOp.SUM


def _forbidden(name: str) -> Any:
    def refuse(self: Any, *args: Any, **kwargs: Any) -> Any:
        from protocols.mpc.crypten_setup import PickledMessageError

        raise PickledMessageError(
            f"communicator.{name} would pickle a message on the wire; secinfer sends JSON "
            "and raw tensors only"
        )

    refuse._secinfer_forbidden = True  # type: ignore[attr-defined]
    return refuse


def _communicator_base() -> type:
    from protocols.mpc.crypten_setup import import_crypten

    return import_crypten().communicator.Communicator


class TlsCommunicator(_communicator_base()):  # type: ignore[misc]
    """CrypTen's Communicator over the TLS mesh. Ranks: world_size computing parties
    (0, 1) and, when CrypTen asks for a TTP, the dealer as rank world_size."""

    BYTES_PER_ELEMENT = 8
    instance: TlsCommunicator | None = None

    def __init__(self, mesh: Mesh, rank: int, world_size: int, init_ttp: bool) -> None:
        self.mesh = mesh
        self.rank = rank
        self.world_size = world_size
        total = world_size + 1 if init_ttp else world_size
        self.main_group = Group(tuple(range(world_size)))
        self.ttp_group = Group(tuple(range(total)))
        self.ttp_comm_group = Group((0, total - 1))
        self.ttp_initialized = init_ttp
        self.reset_communication_stats()
        self._name = f"rank{rank}"

    # -- life cycle --
    @classmethod
    def is_initialized(cls) -> bool:
        return cls.instance is not None

    @classmethod
    def initialize(cls, rank: int, world_size: int, init_ttp: bool = False) -> None:
        if not _config:
            raise RuntimeError("the TLS communicator is not configured (no identity)")
        rank = int(os.environ.get("RANK", rank))
        world_size = int(os.environ.get("WORLD_SIZE", world_size))
        total = world_size + 1 if init_ttp else world_size
        mesh = connect_mesh(
            MeshConfig(
                rendezvous=os.environ["RENDEZVOUS"],
                rank=rank,
                parties=total,
                identity=_config["identity"],
                timeout=float(_config["timeout"]),
                settings=_config["settings"],
            )
        )
        cls.instance = cls(mesh, rank, world_size, init_ttp)

    @classmethod
    def get(cls) -> TlsCommunicator | None:
        return cls.instance

    @classmethod
    def shutdown(cls) -> None:
        if cls.instance is not None:
            with contextlib.suppress(PeerLost):
                cls.instance.mesh.flush()
            cls.instance.mesh.close()
        cls.instance = None

    # -- raw point to point on any pair (the dealer link, the dealer's seeds) --
    def send_to(self, tensor: torch.Tensor, dst: int) -> None:
        """Queue `tensor`'s raw bytes to rank `dst` (any rank, not only the main group)."""
        self.mesh.send(dst, _to_bytes(tensor))

    def recv_into(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        """Fill `tensor` in place with the next frame from `src` (its exact byte size)."""
        return _fill(tensor, self.mesh.receive(src, expected=_nbytes(tensor)))

    def _members(self, group: Group | None) -> tuple[int, ...]:
        return (group or self.main_group).ranks

    # -- CrypTen's interface --
    def send(self, tensor: torch.Tensor, dst: int) -> None:
        self.send_to(tensor, dst)
        self.mesh.flush()

    def recv(self, tensor: torch.Tensor, src: int | None = None) -> torch.Tensor:
        if src is None:
            raise ValueError("the TLS communicator receives from a named source only")
        return self.recv_into(tensor.clone(), src)

    def isend(self, tensor: torch.Tensor, dst: int) -> _Done:
        self.send_to(tensor, dst)
        return _Done(self.mesh)

    def irecv(self, tensor: torch.Tensor, src: int | None = None) -> _Pending:
        if src is None:
            raise ValueError("the TLS communicator receives from a named source only")
        return _Pending(self, tensor, src)

    def scatter(
        self, scatter_list: list[torch.Tensor], src: int, size: Any = None, device: Any = None
    ) -> torch.Tensor:
        if src == self.rank:
            for peer in self.main_group.ranks:
                if peer != self.rank:
                    self.send_to(scatter_list[peer], peer)
            self.mesh.flush()
            return scatter_list[self.rank]
        if size is None:
            size = scatter_list[self.rank].size()
        return self.recv_into(torch.empty(size=size, dtype=torch.long), src)

    def _exchange(self, tensors: list[torch.Tensor], peers: tuple[int, ...]) -> dict:
        for peer in peers:
            for tensor in tensors:
                self.send_to(tensor, peer)
        received = {
            peer: [self.recv_into(torch.empty_like(t), peer) for t in tensors] for peer in peers
        }
        self.mesh.flush()
        return received

    def all_reduce(self, input: Any, op: Any = None, batched: bool = False) -> Any:
        op = _sum_op() if op is None else op
        tensors = list(input) if batched else [input]
        others = tuple(r for r in self.main_group.ranks if r != self.rank)
        received = self._exchange(tensors, others)
        results = self._combined(tensors, received, others, op)
        return results if batched else results[0]

    def _combined(self, tensors: list[Any], received: Any, others: Any, op: Any) -> list[Any]:
        """Each of this party's `tensors` combined by `op` with the others' counterparts
        (`received[rank][i]`), in the main group's rank order (the same on every party)."""
        results = []
        for i, tensor in enumerate(tensors):
            parts = {self.rank: tensor, **{p: received[p][i] for p in others}}
            total = parts[self.main_group.ranks[0]].clone()
            for r in self.main_group.ranks[1:]:
                total = _combine(op, total, parts[r])
            results.append(total)
        return results

    def reduce(self, input: Any, dst: int, op: Any = None, batched: bool = False) -> Any:
        op = _sum_op() if op is None else op
        tensors = list(input) if batched else [input]
        if self.rank != dst:
            for tensor in tensors:
                self.send_to(tensor, dst)
            self.mesh.flush()
            return None
        others = [r for r in self.main_group.ranks if r != self.rank]
        received = {p: [self.recv_into(torch.empty_like(t), p) for t in tensors] for p in others}
        results = self._combined(tensors, received, others, op)
        return results if batched else results[0]

    def gather(self, tensor: torch.Tensor, dst: int) -> list[Any]:
        if self.rank != dst:
            self.send(tensor, dst)
            return [None]
        return [
            tensor.clone()
            if r == self.rank
            else self.recv_into(torch.empty(tensor.size(), dtype=torch.long), r)
            for r in self.main_group.ranks
        ]

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        others = tuple(r for r in self.main_group.ranks if r != self.rank)
        received = self._exchange([tensor], others)
        return [tensor.clone() if r == self.rank else received[r][0] for r in self.main_group.ranks]

    def broadcast(
        self, input: Any, src: int, group: Group | None = None, batched: bool = False
    ) -> Any:
        tensors = list(input) if batched else [input]
        members = self._members(group)
        if src == self.rank:
            for peer in members:
                if peer != self.rank:
                    for tensor in tensors:
                        self.send_to(tensor, peer)
            self.mesh.flush()
        else:
            for tensor in tensors:
                self.recv_into(tensor, src)
        return input

    def barrier(self, group: Group | None = None) -> None:
        """Every member of `group` (the main group by default) reaches this point."""
        empty = torch.empty(0, dtype=torch.uint8)
        self._exchange([empty], tuple(r for r in self._members(group) if r != self.rank))

    send_obj = _forbidden("send_obj")
    recv_obj = _forbidden("recv_obj")
    broadcast_obj = _forbidden("broadcast_obj")

    def get_world_size(self) -> int:
        return self.world_size

    def get_rank(self) -> int:
        return self.rank

    def get_ttp_rank(self) -> int:
        return self.world_size

    def set_name(self, name: str) -> None:
        self._name = name

    def get_name(self) -> str:
        return self._name

    def get_distributed_backend(self) -> str:
        return "tls"

    def link_traffic(self) -> dict[str, dict[str, int]]:
        """Per peer role: application bytes (payloads and 8-byte frame headers) and bytes
        on the wire (TLS records and handshake), this party's side."""
        return {LABELS[p]: dict(t.__dict__) for p, t in self.mesh.traffic().items()}


def ttp_client_setup_generators(client: Any) -> None:
    """CrypTen's TTPClient seed set-up over the TLS mesh: the int64 seed from the dealer,
    then a barrier of all three ranks (what CrypTen does with torch.distributed)."""
    comm = TlsCommunicator.instance
    assert comm is not None
    seed = torch.empty(size=(), dtype=torch.long)
    comm.recv_into(seed, comm.get_ttp_rank())
    comm.barrier(comm.ttp_group)
    client.generator = torch.Generator(device="cpu")
    client.generator.manual_seed(int(seed.item()))
    client.generator_cuda = None


__all__ = [
    "Group",
    "LinkTraffic",
    "Mesh",
    "MeshConfig",
    "PeerLost",
    "TlsCommunicator",
    "configure",
    "connect_mesh",
    "ttp_client_setup_generators",
]
