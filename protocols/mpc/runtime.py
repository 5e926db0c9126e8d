"""Start and stop one party of a CrypTen run: model owner, data owner, or dealer.

Ranks are fixed: the model owner is CrypTen rank 0, the data owner rank 1, and the dealer
(CrypTen's trusted third party, which only deals Beaver triples and other correlated
randomness and never sees a share of any value) rank 2. Each party is its own OS process;
they meet at a torch.distributed rendezvous (`tcp://HOST:PORT`, the model owner's host
listens: on loopback only when HOST is loopback, `protocols.mpc.rendezvous`) over gloo
sockets in clear, or, when `PartySettings.identity` names a TLS identity, over a mesh of
mutually authenticated TLS 1.3 links (`protocols.mpc.tls_communicator`, settings compared
on each link instead of at a store).

Every connection and every receive has a deadline (`PartySettings.timeout`): gloo raises
when a peer does not connect or stops answering, so a vanished peer ends the run with an
error instead of a hang.

Providers of correlated randomness:
  "dealer" (default)     CrypTen's TrustedThirdParty, a third process.
  "trusted-first-party"  CrypTen's default: the model owner generates every triple itself,
                         so it knows the masks the data owner's values are opened under. It
                         is insecure against the model owner and exists for quick local
                         experiments only; choosing it prints that warning.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from protocols.mpc.crypten_setup import import_crypten
from protocols.net import PEER_TIMEOUT

PROVIDERS = ("dealer", "trusted-first-party")
INSECURE_PROVIDER_WARNING = (
    "warning: --provider trusted-first-party lets the model owner generate every Beaver "
    "triple, so it can unmask the data owner's input; use it only for local experiments"
)


class Role(IntEnum):
    """The CrypTen rank of each role."""

    MODEL_OWNER = 0
    DATA_OWNER = 1
    DEALER = 2

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")

    @classmethod
    def from_label(cls, label: str) -> Role:
        return cls[label.upper().replace("-", "_")]


COMPUTING_PARTIES = 2

PROTOCOL_VERSION = 2
"""Version of what the parties exchange (the public architecture, the dealer link's
requests, the query and evaluation messages): compared at the rendezvous with the
provider, the timeout and, between the computing parties, the precision and the job."""


@dataclass(frozen=True)
class PartySettings:
    """How a party reaches the others."""

    rendezvous: str  # tcp://HOST:PORT (or file:///path for one machine)
    timeout: float = PEER_TIMEOUT  # seconds per wait for a peer
    provider: str = "dealer"
    precision_bits: int = 16  # fractional bits of CrypTen's fixed-point encoding
    job: str = "query"
    """What the computing parties run, compared at the rendezvous: "query", or an
    evaluation's settings (losses, hyper-parameters, reveal) as canonical JSON."""
    identity: str | None = None
    """Directory of this party's TLS identity and its peers' certificates
    (`protocols.tls`): every link is mutual TLS 1.3 bound to the roles
    (`protocols.mpc.tls_communicator`). None: CrypTen's gloo sockets in clear (the
    command line asks for `--insecure-channel`)."""

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider {self.provider!r}: choose one of {', '.join(PROVIDERS)}")
        if self.timeout <= 0:
            raise ValueError(f"timeout {self.timeout}: must be positive (seconds)")


_agreed: dict[str, Any] = {}
"""What `_configure` recorded for the rendezvous to compare between the parties."""


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Give torch.distributed's process groups a timeout (CrypTen passes none), and meet
    at a tcp:// rendezvous through `protocols.mpc.rendezvous`: the store listens on
    loopback only for a loopback HOST, a port in use is one clear error, and the parties'
    settings (`_agreed`) are compared before any group is made, within `seconds` in all.

    gloo applies the timeout to its connections and to every later send, receive and
    collective.
    """
    import torch.distributed as dist

    from protocols.mpc import rendezvous

    original = dist.init_process_group
    new_group = dist.new_group
    delta = datetime.timedelta(seconds=seconds)
    labels = {int(role): role.label for role in Role}

    def init_process_group(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", delta)
        method = kwargs.get("init_method")
        if kwargs.get("store") is None and str(method).startswith("tcp://"):
            del kwargs["init_method"]
            rank, size = int(kwargs["rank"]), int(kwargs["world_size"])
            kwargs["store"] = rendezvous.store(method, rank, size, seconds, _agreed, labels)
        return original(*args, **kwargs)

    def make_group(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", delta)
        return new_group(*args, **kwargs)

    dist.init_process_group = init_process_group
    dist.new_group = make_group
    try:
        yield
    finally:
        dist.init_process_group = original
        dist.new_group = new_group


def _configure(role: Role, settings: PartySettings) -> Any:
    crypten = import_crypten()
    os.environ.update(
        {
            "RANK": str(int(role)),
            "WORLD_SIZE": str(COMPUTING_PARTIES),
            "RENDEZVOUS": settings.rendezvous,
            "DISTRIBUTED_BACKEND": "gloo",
        }
    )
    if settings.rendezvous.startswith("tcp://"):
        from protocols.mpc.rendezvous import address, gloo_interface

        interface = gloo_interface(address(settings.rendezvous)[0])
        if interface is not None:  # a local run: gloo's links on loopback too
            os.environ["GLOO_SOCKET_IFNAME"] = interface
    _agreed.clear()
    _agreed.update(provider=settings.provider, protocol=PROTOCOL_VERSION, timeout=settings.timeout)
    if role is not Role.DEALER:  # the dealer's ring arithmetic needs neither
        _agreed.update(precision_bits=settings.precision_bits, job=settings.job)
    _select_channel(role, settings)
    crypten.cfg.mpc.provider = "TTP" if settings.provider == "dealer" else "TFP"
    crypten.cfg.encoder.precision_bits = settings.precision_bits
    crypten.cfg.communicator.verbose = False  # protocols.mpc.meter counts instead
    return crypten


def peers_of(role: Role, provider: str) -> list[str]:
    """The roles `role` talks to: everyone else, without the dealer under the
    trusted-first-party provider."""
    present = [r for r in Role if provider == "dealer" or r is not Role.DEALER]
    return [r.label for r in present if r is not role]


def _select_channel(role: Role, settings: PartySettings) -> None:
    """TLS mesh when the settings name an identity (loaded and checked now: a bad file is
    `protocols.tls.IdentityError`), else gloo."""
    from protocols.mpc.crypten_setup import select_communicator

    if settings.identity is None:
        select_communicator()
        return
    from protocols import tls
    from protocols.mpc import tls_communicator

    identity = tls.load_identity(settings.identity, role.label, peers_of(role, settings.provider))
    tls_communicator.configure(identity, settings.timeout, _agreed)
    select_communicator(
        tls_communicator.TlsCommunicator, tls_communicator.ttp_client_setup_generators
    )


def start_party(role: Role, settings: PartySettings) -> Any:
    """Join the run as a computing party; returns the `crypten` module, ready to use."""
    if role is Role.DEALER:
        raise ValueError("the dealer runs run_dealer(), not start_party()")
    crypten = _configure(role, settings)
    if settings.provider == "trusted-first-party" and role is Role.MODEL_OWNER:
        print(INSECURE_PROVIDER_WARNING, file=sys.stderr)
    with _deadline(settings.timeout):
        crypten.init()
    if settings.provider == "dealer" and role is Role.MODEL_OWNER:
        from protocols.mpc import dealer

        dealer.install_client()  # requests as JSON headers, never CrypTen's pickles
    return crypten


def run_dealer(settings: PartySettings) -> None:
    """Serve correlated randomness until the model owner says the run is over.

    Returns when the model owner ends a run that succeeded. Raises
    `protocols.mpc.dealer.DealerError` (one line) when it refuses a request outside its
    allow-list, when the model owner reports that the run failed, or when the model owner
    is lost or silent for longer than the timeout."""
    if settings.provider != "dealer":
        raise ValueError("a dealer process is only needed with provider 'dealer'")
    _configure(Role.DEALER, settings)
    from protocols.mpc import dealer

    with _deadline(settings.timeout):
        dealer.serve()
    _shutdown_quietly()


def stop_party(failed: bool | None = None) -> None:
    """Leave the run; the model owner also tells the dealer to stop, and whether the run
    failed (`failed` None: it failed when an exception is propagating, e.g. when this is
    called from a `finally` block on the way out of an error)."""
    from protocols.mpc import dealer, reuse

    if failed is None:
        failed = sys.exc_info()[0] is not None
    reuse.reset()
    dealer.close_client(failed=failed)
    crypten = import_crypten()
    if crypten.is_initialized():
        crypten.uninit()


def _shutdown_quietly() -> None:
    import torch.distributed as dist

    from protocols.mpc.tls_communicator import TlsCommunicator

    TlsCommunicator.shutdown()

    if dist.is_initialized():
        with suppress(Exception):
            dist.destroy_process_group()


__all__ = [
    "INSECURE_PROVIDER_WARNING",
    "PROVIDERS",
    "PartySettings",
    "Role",
    "run_dealer",
    "start_party",
    "stop_party",
]
