"""Where the MPC parties meet: the torch.distributed TCPStore, made here instead of by
torch's tcp:// handler, and the settings that shape the run compared there first.

Guarantees, for a rendezvous tcp://HOST:PORT:
  - Rank 0 (the model owner) listens on the loopback address when HOST is loopback
    (`localhost`, 127.0.0.0/8, ::1), so no other machine can reach the rendezvous, and
    then gloo's own links use the loopback interface too (`gloo_interface`). For any other
    HOST it listens on every interface: HOST is how the others reach this machine, maybe
    through a NAT, so it need not be one of its own addresses.
  - A port that cannot be bound (already in use, or privileged) raises `RendezvousBusy`
    naming HOST and PORT before anything waits. `claim` binds it early (the model owner
    does so before loading its model); a launcher may bind it itself and hand the socket
    over (`protocols.net.LISTENER_FD_ENV`), so that no other program can take the port in
    between.
  - Before any process group exists, every party publishes the settings that shape the
    groups (the number of parties, the provider of correlated randomness) and checks the
    others' as they appear: a difference raises `SettingsMismatch` naming the setting,
    both values and both roles, at once.
  - Waiting is bounded: up to `timeout` seconds for the model owner's store to answer
    (torch's DistNetworkError, a RuntimeError, for a refused port; `RendezvousTimeout`
    for a listener that never answers), then up to `timeout` seconds for every other
    party to publish its settings (`RendezvousTimeout`).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from protocols.net import LISTENER_FD_ENV

VERSION = 1
"""Version of the settings record the parties publish at the rendezvous."""

CLIENT_GRACE = 2.0
"""Seconds beyond the timeout given to torch's own store client to report its error."""

LINGER = 0.5
"""Seconds the model owner keeps the store up once every party compared the settings."""
LINGER_WAIT = 10.0
"""Seconds the model owner waits, after finding a difference, for parties not yet there."""

_KEY = "secinfer/settings/{rank}"
_SEEN = "secinfer/compared/{rank}"
_claimed: dict[tuple[str, int], socket.socket] = {}


class RendezvousBusy(OSError):
    """The rendezvous port could not be bound; the message names it and the fix."""


class SettingsMismatch(ValueError):
    """Another party runs with different settings; the message names the setting and both
    values."""


class RendezvousTimeout(TimeoutError):
    """Not every party appeared at the rendezvous in time."""


class NothingListening(RendezvousTimeout):
    """No process listened at the rendezvous address for the whole timeout (every
    connection refused): the model owner is not running, or runs elsewhere."""


def address(rendezvous: str) -> tuple[str, int]:
    """(HOST, PORT) of tcp://HOST:PORT; ValueError otherwise."""
    parsed = urlparse(rendezvous)
    if parsed.scheme != "tcp" or not parsed.hostname or parsed.port is None:
        raise ValueError(f"rendezvous {rendezvous}: give tcp://HOST:PORT")
    return parsed.hostname, parsed.port


def is_loopback(host: str) -> bool:
    """True for `localhost` and for loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def gloo_interface(host: str) -> str | None:
    """The loopback interface's name (`lo`, `lo0`) when `host` is loopback and this system
    has one, for gloo's GLOO_SOCKET_IFNAME; otherwise None (gloo chooses)."""
    if not is_loopback(host):
        return None
    names = {name for _, name in socket.if_nameindex()}
    return next((name for name in ("lo", "lo0") if name in names), None)


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on HOST:PORT as the guarantees above say (port 0: any free one)."""
    try:
        if not is_loopback(host):
            if socket.has_dualstack_ipv6():
                return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
            return socket.create_server(("", port))
        if host.lower() == "localhost" or ipaddress.ip_address(host).version == 4:
            bind = "127.0.0.1" if host.lower() == "localhost" else host
            return socket.create_server((bind, port))
        return socket.create_server((host, port), family=socket.AF_INET6)
    except OSError as exc:
        where = "127.0.0.1" if host.lower() == "localhost" else host
        raise RendezvousBusy(
            f"cannot listen on {where} port {port} ({_reason(exc)}): the port is "
            "taken or not allowed; choose another port in --rendezvous tcp://HOST:PORT "
            "(or stop the program that holds it)"
        ) from None


def _reason(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)


def claim(rendezvous: str) -> None:
    """Bind the rendezvous port now (rank 0 only), to fail early when it is taken; `store`
    listens on this socket later. Raises `RendezvousBusy`."""
    host, port = address(rendezvous)
    if (host, port) not in _claimed:
        _claimed[(host, port)] = rendezvous_listener(host, port)


def rendezvous_listener(host: str, port: int) -> socket.socket:
    """The listening socket of the rendezvous at (host, port): the one this process claimed
    earlier, else the one its launcher handed down (`LISTENER_FD_ENV`), else a new one."""
    claimed = _claimed.pop((host, port), None)
    if claimed is not None:
        return claimed
    inherited = os.environ.pop(LISTENER_FD_ENV, None)
    if inherited is not None:
        sock = socket.socket(fileno=int(inherited))
        if sock.getsockname()[1] != port:
            sock.close()
            raise ValueError(f"{LISTENER_FD_ENV}: the inherited socket is not port {port}")
        return sock
    return listen(host, port)


def store(
    rendezvous: str,
    rank: int,
    world_size: int,
    timeout: float,
    settings: Mapping[str, Any],
    roles: Mapping[int, str],
) -> Any:
    """The TCPStore of `rendezvous` for `rank` of `world_size`, after every party published
    the same `settings` (`roles` names each rank in messages). Raises `RendezvousBusy`,
    `SettingsMismatch` or `RendezvousTimeout`; a model owner whose store never answers
    raises torch's own DistNetworkError (a RuntimeError) after `timeout` seconds."""
    import torch.distributed as dist

    host, port = address(rendezvous)
    delta = datetime.timedelta(seconds=timeout)
    if rank == 0:
        descriptor = rendezvous_listener(host, port).detach()  # the store owns and closes it
        tcp_store = dist.TCPStore(
            host,
            port,
            world_size,
            True,
            timeout=delta,
            wait_for_workers=False,
            multi_tenant=True,
            master_listen_fd=descriptor,
        )
    else:
        tcp_store = _client(host, port, world_size, timeout)
    mine = {"version": VERSION, "parties": world_size, **settings}
    tcp_store.set(_KEY.format(rank=rank), json.dumps(mine, sort_keys=True))
    ends = time.monotonic() + timeout
    try:
        _agree(tcp_store, rank, world_size, mine, roles, ends, timeout)
    except SettingsMismatch:
        tcp_store.set(_SEEN.format(rank=rank), "1")
        if rank == 0:  # the store lives here: let the others find the difference first
            _linger(tcp_store, world_size, ends)
        raise
    tcp_store.set(_SEEN.format(rank=rank), "1")
    return tcp_store


def _linger(tcp_store: Any, world_size: int, ends: float) -> None:
    """Wait until every party has compared the settings (its `_SEEN` key: at most
    LINGER_WAIT seconds, within the deadline), then LINGER seconds for each to leave the
    store; a party arriving later finds no rendezvous and ends on its own timeout."""
    keys = [_SEEN.format(rank=r) for r in range(world_size)]
    ends = min(ends, time.monotonic() + LINGER_WAIT)
    while time.monotonic() < ends and not tcp_store.check(keys):
        time.sleep(0.05)
    time.sleep(LINGER)


def _client(host: str, port: int, world_size: int, timeout: float) -> Any:
    """torch's TCPStore client, given up after `timeout` seconds (and a little): torch
    gives up itself on a refused port, but waits without end for a listener that accepts
    and never answers (another program on the port, or a model owner that bound the port
    and is still loading its model). A client still waiting is left behind in a daemon
    thread; the party ends."""
    import torch.distributed as dist

    made: list[Any] = []
    failed: list[BaseException] = []

    def connect() -> None:
        try:
            made.append(
                dist.TCPStore(
                    host, port, world_size, False, timeout=datetime.timedelta(seconds=timeout)
                )
            )
        except BaseException as exc:  # handed to the caller's thread
            failed.append(exc)

    worker = threading.Thread(target=connect, name="rendezvous-client", daemon=True)
    worker.start()
    worker.join(timeout + CLIENT_GRACE)
    if failed:
        raise failed[0]
    if not made and not _listening(host, port):
        raise NothingListening(
            f"nothing listened at {host}:{port} for {timeout:g} s (connection refused)"
        )
    if not made:
        raise RendezvousTimeout(
            f"timed out after {timeout:g} s: {host}:{port} took the connection but never "
            "answered as a rendezvous (another program on that port, or a model owner "
            "still loading its model)"
        )
    return made[0]


def _listening(host: str, port: int) -> bool:
    """Whether a connection to host:port is accepted now (False when refused or unreachable):
    tells "nothing listens" apart from "a listener that never answers", because torch's
    client may keep retrying a refused port past our deadline."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _agree(
    tcp_store: Any,
    rank: int,
    world_size: int,
    mine: dict[str, Any],
    roles: Mapping[int, str],
    ends: float,
    timeout: float,
) -> None:
    """Wait until every other rank published its settings, comparing each on arrival with
    this party's and with every other party's seen so far: each party, the dealer
    included, finds any difference between any two of them."""
    name = {r: roles.get(r, f"rank {r}") for r in range(world_size)}
    published = {rank: mine}
    waiting = [other for other in range(world_size) if other != rank]
    while waiting:
        for other in list(waiting):
            key = _KEY.format(rank=other)
            if tcp_store.check([key]):
                theirs = _parse(tcp_store.get(key), name[other])
                for seen, settings in published.items():  # this party's and the others'
                    compare_settings(settings, theirs, name[seen], name[other])
                published[other] = theirs
                waiting.remove(other)
        if not waiting:
            return
        if time.monotonic() > ends:
            missing = " and the ".join(name[other] for other in waiting)
            raise RendezvousTimeout(
                f"timed out after {timeout:g} s waiting for the {missing} at the rendezvous"
            )
        time.sleep(0.05)


def _parse(raw: bytes, who: str) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError):
        value = None
    if not isinstance(value, dict):
        raise SettingsMismatch(f"the {who} published unreadable settings at the rendezvous")
    return value


BOTH_OR_NONE = ("precision_bits", "job")
"""Settings only the computing parties publish: compared where both sides have them."""


def compare_settings(mine: dict[str, Any], theirs: dict[str, Any], me: str, who: str) -> None:
    """Raise `SettingsMismatch` naming the first setting where `mine` (the `me` party's)
    and `theirs` (the `who` party's) differ; keys only computing parties publish are
    compared only where both have them."""
    first = [name for name in ("version", "protocol", "provider", "parties") if name in mine]
    for name in first + sorted((set(mine) | set(theirs)) - set(first)):
        if name in BOTH_OR_NONE and (name not in mine or name not in theirs):
            continue
        if mine.get(name) != theirs.get(name):
            where, a, b = _first_difference(name, mine.get(name), theirs.get(name))
            raise SettingsMismatch(
                f"{where}: the {me} has {_show(a)}, the {who} "
                f"{_show(b)}; give every party the same settings"
            )


def _show(value: Any) -> str:
    return "nothing" if value is None else str(value)[:60]


def _first_difference(name: str, mine: Any, theirs: Any) -> tuple[str, Any, Any]:
    """The first differing leaf of two settings (JSON text is parsed: the evaluation job),
    as (dotted name, mine, theirs), so that a message names `job.evaluation.reveal_to`
    rather than two long texts that look alike."""
    mine, theirs = _parsed(mine), _parsed(theirs)
    if isinstance(mine, dict) and isinstance(theirs, dict):
        for key in sorted(set(mine) | set(theirs), key=str):
            if mine.get(key) != theirs.get(key):
                return _first_difference(f"{name}.{key}", mine.get(key), theirs.get(key))
    return name, mine, theirs


def _parsed(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


__all__ = [
    "RendezvousBusy",
    "RendezvousTimeout",
    "SettingsMismatch",
    "address",
    "claim",
    "compare_settings",
    "gloo_interface",
    "is_loopback",
    "listen",
    "rendezvous_listener",
    "store",
]
