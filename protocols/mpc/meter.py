"""Count what this party sends and receives, and optionally keep what it received.

`Meter.install()` wraps the methods of CrypTen's communicator instance (this process
only; CrypTen's own `verbose` statistics stay off). For two computing parties it counts,
per call, the bytes this party actually puts on the wire and takes off it:

  all_reduce of n bytes      sends n, receives n (each party sends its share once)
  broadcast from this party  sends n per other member of the group; others receive n
  reduce / gather            the non-destination sends n; the destination receives them
  send / recv, *_obj         the tensor's bytes, or the pickled object's length
  a dealer request           (`protocols.mpc.dealer`, the model owner only) the frames
                             whole: 8-byte length prefixes, JSON headers and the reply's
                             raw tensor bytes; one dealer round per request

A **round** is a call in which this party waits for data from another (it receives):
the sequential latency a network adds. Traffic with the dealer (requests to it, the
correlated randomness it returns) is counted apart from the traffic between the two
computing parties; the seeds it sends once at set-up are not counted. Traffic between
the parties inside `offline_traffic()` (FSS keys the model owner forwards) is counted
apart too, as offline.

The counts are the protocol's payload, the same over gloo and over the TLS mesh
(`protocols.mpc.tls_communicator`, `--identity`); there, the frames' 8-byte headers, the
set-up messages (settings, the dealer's seeds) and the TLS records and handshakes are
counted apart, per link, by the communicator's `link_traffic()`.

With `keep_views=True` the meter also keeps every tensor received from the other
computing party (for an all-reduce: the result minus this party's own contribution),
(XOR for binary shares), which is exactly the party's view of the protocol; the privacy
tests inspect it.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from protocols.mpc import dealer as dealer_link
from protocols.mpc.crypten_setup import communicator


@dataclass
class Traffic:
    """Counters of one party (bytes are logical payload bytes)."""

    bytes_sent: int = 0
    bytes_received: int = 0
    rounds: int = 0
    dealer_bytes_sent: int = 0  # to the dealer (triple requests)
    dealer_bytes_received: int = 0  # from the dealer (triples, seeds)
    dealer_rounds: int = 0
    offline_bytes_sent: int = 0  # between the parties, before any input (forwarded keys)
    offline_bytes_received: int = 0

    def copy(self) -> Traffic:
        return Traffic(**self.__dict__)

    def __sub__(self, other: Traffic) -> Traffic:
        return Traffic(**{k: v - getattr(other, k) for k, v in self.__dict__.items()})

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(**{k: v + getattr(other, k) for k, v in self.__dict__.items()})

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.nelement() * value.element_size()
    if isinstance(value, list | tuple):
        return sum(_nbytes(v) for v in value)
    return 0


_offline = 0


@contextmanager
def offline_traffic() -> Iterator[None]:
    """Count the traffic between the parties inside this block as offline (keys forwarded
    from one party to the other before the input exists), apart from the online figures."""
    global _offline
    _offline += 1
    try:
        yield
    finally:
        _offline -= 1


@dataclass
class Meter:
    """Counts this party's traffic from `install()` on."""

    keep_views: bool = False
    traffic: Traffic = field(default_factory=Traffic)
    views: list[torch.Tensor] = field(default_factory=list)
    _comm: Any = None
    _originals: dict[str, Any] = field(default_factory=dict)

    # --- install / remove ---------------------------------------------------------------
    def install(self) -> Meter:
        comm = communicator()
        self._comm = comm
        for name in (
            "send",
            "recv",
            "isend",
            "irecv",
            "all_reduce",
            "reduce",
            "broadcast",
            "gather",
            "all_gather",
            "scatter",
            "send_obj",
            "recv_obj",
            "broadcast_obj",
        ):
            original = getattr(comm, name)
            self._originals[name] = original
            setattr(comm, name, self._wrap(name, original))
        dealer_link.observe(self._dealer_request)
        return self

    def remove(self) -> None:
        dealer_link.unobserve(self._dealer_request)
        for name, original in self._originals.items():
            setattr(self._comm, name, original)
        self._originals.clear()

    def snapshot(self) -> Traffic:
        return self.traffic.copy()

    # --- counting -----------------------------------------------------------------------
    def _dealer(self, group: Any) -> bool:
        return group is not None and group is not self._comm.main_group

    def _count(self, sent: int, received: int, dealer: bool) -> None:
        t = self.traffic
        if _offline and not dealer:
            t.offline_bytes_sent += sent
            t.offline_bytes_received += received
        elif dealer:
            t.dealer_bytes_sent += sent
            t.dealer_bytes_received += received
            t.dealer_rounds += received > 0
        else:
            t.bytes_sent += sent
            t.bytes_received += received
            t.rounds += received > 0

    def _dealer_request(self, sent: int, received: int) -> None:
        self._count(sent, received, dealer=True)

    def _keep(self, value: Any, dealer: bool) -> None:
        if not self.keep_views or dealer:
            return
        items = value if isinstance(value, list | tuple) else [value]
        self.views.extend(v.detach().clone() for v in items if isinstance(v, torch.Tensor))

    def _wrap(self, name: str, original: Any) -> Any:
        rank = self._comm.get_rank()
        members = self._comm.get_world_size()

        def metered(*args: Any, **kwargs: Any) -> Any:
            group = kwargs.get("group")
            if name in ("send_obj", "broadcast_obj") and len(args) > 2:
                group = args[2]
            if name == "recv_obj" and len(args) > 1:
                group = args[1]
            if name == "broadcast" and len(args) > 2:
                group = args[2]
            dealer = self._dealer(group)
            result = original(*args, **kwargs)
            self._account(name, args, kwargs, result, rank, members, dealer)
            return result

        return metered

    def _account(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        result: Any,
        rank: int,
        members: int,
        dealer: bool,
    ) -> None:
        payload = args[0] if args else None
        n = _nbytes(payload)
        if name in ("send", "isend"):
            self._count(n, 0, dealer)
        elif name in ("recv", "irecv"):
            self._count(0, n, dealer)
            if name == "recv":
                self._keep(result, dealer)
            elif self.keep_views and not dealer:
                self.views.append(payload)  # filled in when the receive completes
        elif name == "all_reduce":
            self._count(n, n, dealer)
            if self.keep_views:
                own = payload if isinstance(payload, list) else [payload]
                total = result if isinstance(result, list) else [result]
                xor = "BXOR" in str(kwargs.get("op", args[1] if len(args) > 1 else ""))
                peer = [r ^ o if xor else r - o for r, o in zip(total, own, strict=True)]
                self._keep(peer, dealer)
        elif name in ("reduce", "gather"):
            dst = args[1] if len(args) > 1 else kwargs.get("dst")
            if dst == rank:
                self._count(0, n * (members - 1), dealer)
                if self.keep_views and name == "reduce":
                    own = payload if isinstance(payload, list) else [payload]
                    total = result if isinstance(result, list) else [result]
                    self._keep([r - o for r, o in zip(total, own, strict=True)], dealer)
                elif self.keep_views:
                    self._keep([r for i, r in enumerate(result) if i != rank], dealer)
            else:
                self._count(n, 0, dealer)
        elif name == "broadcast":
            src = args[1] if len(args) > 1 else kwargs.get("src")
            group_size = 2 if dealer else members
            if src == rank:
                self._count(n * (group_size - 1), 0, dealer)
            else:
                self._count(0, n, dealer)
                self._keep(result, dealer)
        elif name == "all_gather":
            self._count(n * (members - 1), n * (members - 1), dealer)
            self._keep([r for i, r in enumerate(result) if i != rank], dealer)
        elif name == "scatter":
            src = args[1] if len(args) > 1 else kwargs.get("src")
            if src == rank:
                self._count(sum(_nbytes(t) for i, t in enumerate(payload) if i != rank), 0, dealer)
            else:
                self._count(0, _nbytes(result), dealer)
                self._keep(result, dealer)
        elif name == "send_obj":
            self._count(len(pickle.dumps(payload)), 0, dealer)
        elif name == "recv_obj":
            self._count(0, len(pickle.dumps(result)), dealer)
        elif name == "broadcast_obj":
            src = args[1] if len(args) > 1 else kwargs.get("src")
            size = len(pickle.dumps(result))
            if src == rank:
                self._count(size * (members - 1), 0, dealer)
            else:
                self._count(0, size, dealer)


__all__ = ["Meter", "Traffic"]
