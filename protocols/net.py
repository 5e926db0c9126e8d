"""What the parties of either protocol share about the network, besides TLS (`protocols.tls`).

`PEER_TIMEOUT` is the default bound on each wait for a peer (`secinfer party`,
`secinfer he-party`, `RunOptions`); `free_port` names a loopback port for a local run;
`LISTENER_FD_ENV` is how a launcher that bound a port itself hands the listening socket to
the party it starts (`protocols.mpc.rendezvous` listens on it), so that no other program
can take the port in between. Imports nothing of the project: `protocols.mpc`,
`protocols.he` and `secinfer` may all import it.
"""

from __future__ import annotations

import socket

PEER_TIMEOUT = 60.0
"""Seconds a party waits for a peer to connect or to send the next message."""

LISTENER_FD_ENV = "SECINFER_RENDEZVOUS_FD"
"""Environment variable: a listening socket's file descriptor, inherited from a launcher
that bound the port itself; the party listens on it instead of binding again."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (another program may take it
    before it is bound again: a launcher that cannot allow that hands its own listening
    socket down through `LISTENER_FD_ENV`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


__all__ = ["LISTENER_FD_ENV", "PEER_TIMEOUT", "free_port"]
