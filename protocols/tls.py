"""Identities and mutually authenticated TLS 1.3 channels between the parties.

Roles. One identity per party: `model-owner`, `data-owner` and `dealer` (MPC). The HE
backend reuses them: its server is the model owner and its client the data owner
(`HE_ROLES`), so an organisation keeps one key for both backends.

Files. An identity is DIR/<role>.key (an Ed25519 private key, PKCS#8 PEM, unencrypted,
mode 0600) and DIR/<role>.crt (a self-signed X.509 certificate whose subject is
`CN=secinfer <role>`, `CA:FALSE`, key usage digitalSignature only, serverAuth and
clientAuth). A party's DIR holds its own key and certificate and its peers' certificates
(received out of band); `secinfer keys` writes them.

Trust. Each party trusts exactly its peers' certificates, pinned: the TLS context's trust
store holds only those self-signed certificates (none can sign another: `CA:FALSE`, no
keyCertSign), and after the handshake `check_peer` compares the SHA-256 of the certificate
the peer presented (DER) with the expected role's pinned one. There is no CA that could
mint a certificate for another role. Both sides present a certificate (mutual
authentication); TLS 1.3 only; no session tickets.

Guarantees. `Link.accept` and `Link.connect` return a socket only after the handshake
succeeded and the peer proved the expected role; nothing is read from the peer before that
(application bytes a refused peer sent stay unread). A refusal raises `AuthenticationError`
(naming the expected role), an `ssl.SSLError` or a `TimeoutError`. Bad or missing files
raise `IdentityError` naming the file and the fix.

`Link(None)` is the opt-in plain channel (`--insecure-channel`): no authentication, no
encryption; the command line prints `INSECURE_WARNING`.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import socket
import ssl
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLES = ("model-owner", "data-owner", "dealer")
"""Every party's role; `secinfer keys` writes all of them by default."""

HE_ROLES = {"server": "model-owner", "client": "data-owner"}
"""The HE backend's sides, as the roles whose identities they use."""

VALID_DAYS = 365
"""A certificate's validity from `generate` (from one hour before it was made)."""

INSECURE_WARNING = (
    "warning: --insecure-channel: this link is neither authenticated nor encrypted; anyone "
    "on the network can read or change what the parties send (experiments only)"
)

SUBJECT_PREFIX = "secinfer "


class IdentityError(ValueError):
    """An identity file that is missing, unreadable, exposed or not the role's: the
    message names the file and the fix."""


class AuthenticationError(ConnectionError):
    """The peer did not prove the expected role; the message names that role."""


def key_path(directory: Path, role: str) -> Path:
    return Path(directory) / f"{role}.key"


def cert_path(directory: Path, role: str) -> Path:
    return Path(directory) / f"{role}.crt"


def fingerprint(der: bytes) -> str:
    """SHA-256 of a certificate's DER, hex: what `check_peer` compares."""
    return hashlib.sha256(der).hexdigest()


# --- generation ---------------------------------------------------------------------------
def generate(directory: Path, roles: Iterable[str] = ROLES, *, force: bool = False) -> list[Path]:
    """Write DIR/<role>.key (0600) and DIR/<role>.crt for each role; the paths written, in
    order. DIR is created (0700) when missing. Without `force`, refuses (before writing
    anything) when a target exists. Files appear atomically (written aside, then renamed)."""
    directory = Path(directory)
    roles = list(dict.fromkeys(roles))
    for role in roles:
        _check_role(role)
    targets = [p for r in roles for p in (key_path(directory, r), cert_path(directory, r))]
    if not force:
        for path in targets:
            if path.exists():
                raise IdentityError(f"{path} exists: pass --force to replace it")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for role in roles:
        key, cert = _self_signed(role)
        pem_key = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_atomic(key_path(directory, role), pem_key, 0o600)
        _write_atomic(
            cert_path(directory, role), cert.public_bytes(serialization.Encoding.PEM), 0o644
        )
    return targets


def local_identities(directory: Path) -> Path:
    """Ephemeral identities for every role, for parties started on this machine: `directory`
    is created 0700 (it must not exist) and returned. The caller deletes it after the run
    (put it inside the run's own temporary directory)."""
    directory = Path(directory)
    directory.mkdir(mode=0o700)
    generate(directory, ROLES)
    return directory


def _self_signed(role: str) -> tuple[ed25519.Ed25519PrivateKey, x509.Certificate]:
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "secinfer"),
            x509.NameAttribute(NameOID.COMMON_NAME, SUBJECT_PREFIX + role),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    purposes = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
        .sign(key, None)
    )
    return key, cert


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise IdentityError(f"unknown role {role!r}: one of {', '.join(ROLES)}")


# --- loading ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Identity:
    """A party's own key and certificate, and its peers' pinned certificates (DER)."""

    role: str
    directory: Path
    peers: dict[str, bytes] = field(default_factory=dict)

    @property
    def key_file(self) -> Path:
        return key_path(self.directory, self.role)

    @property
    def cert_file(self) -> Path:
        return cert_path(self.directory, self.role)


def load_identity(directory: Path, role: str, peers: Iterable[str]) -> Identity:
    """`role`'s identity in `directory` with the certificates of `peers` (the roles this
    party will talk to). Checks: the files exist, the key is not readable by others, the key
    matches the certificate, and every certificate names its file's role."""
    directory = Path(directory)
    _check_role(role)
    if not directory.is_dir():
        raise IdentityError(
            f"--identity {directory}: no such directory (make one with `secinfer keys --out DIR`)"
        )
    key_file = key_path(directory, role)
    if not key_file.is_file():
        raise IdentityError(
            f"{key_file}: no such file: this party's private key "
            f"(make it with `secinfer keys --out {directory} --role {role}`)"
        )
    if key_file.stat().st_mode & 0o077:
        raise IdentityError(
            f"{key_file} is readable by other users (mode {key_file.stat().st_mode & 0o777:o}): "
            f"chmod 600 {key_file}"
        )
    _read_cert(directory, role)
    pinned = {}
    for peer in peers:
        _check_role(peer)
        if not cert_path(directory, peer).is_file():
            raise IdentityError(
                f"{cert_path(directory, peer)}: no such file: the {peer}'s certificate "
                f"(get it from the {peer}; it made it with `secinfer keys --role {peer}`)"
            )
        pinned[peer] = _read_cert(directory, peer).public_bytes(serialization.Encoding.DER)
    identity = Identity(role, directory, pinned)
    _context(identity, server=True)  # the key must match the certificate
    return identity


def _read_cert(directory: Path, role: str) -> x509.Certificate:
    path = cert_path(directory, role)
    if not path.is_file():
        raise IdentityError(
            f"{path}: no such file (make it with `secinfer keys --out {directory} --role {role}`)"
        )
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        raise IdentityError(f"{path}: not a PEM certificate ({exc})") from None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    named = str(names[0].value) if names else ""
    if named != SUBJECT_PREFIX + role:
        raise IdentityError(
            f"{path}: the certificate names {named!r}, not {SUBJECT_PREFIX + role!r}: "
            "a file copied under the wrong role's name"
        )
    return cert


# --- contexts -----------------------------------------------------------------------------
def server_context(identity: Identity) -> ssl.SSLContext:
    """TLS 1.3, presents `identity`, requires a client certificate among the peers'."""
    return _context(identity, server=True)


def client_context(identity: Identity) -> ssl.SSLContext:
    """TLS 1.3, presents `identity`, accepts only a server certificate among the peers'."""
    return _context(identity, server=False)


def _context(identity: Identity, *, server: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # identities are pinned certificates, not host names
    context.verify_mode = ssl.CERT_REQUIRED
    if server:
        context.num_tickets = 0
    try:
        context.load_cert_chain(identity.cert_file, identity.key_file)
    except (ssl.SSLError, ValueError) as exc:
        raise IdentityError(
            f"{identity.key_file} does not match {identity.cert_file} or cannot be read "
            f"({exc}): make the pair again with `secinfer keys --role {identity.role} --force`"
        ) from None
    if identity.peers:
        pem = "".join(ssl.DER_cert_to_PEM_cert(der) for der in identity.peers.values())
        context.load_verify_locations(cadata=pem)
    return context


def check_peer(sock: ssl.SSLSocket, identity: Identity, expected: str) -> None:
    """After the handshake: the peer's certificate must be exactly `expected`'s pinned one
    (SHA-256 of the DER); else `AuthenticationError` naming `expected`."""
    presented = sock.getpeercert(binary_form=True)
    pinned = identity.peers.get(expected)
    if pinned is None:
        raise AuthenticationError(f"no pinned certificate for the {expected}")
    if presented is None or fingerprint(presented) != fingerprint(pinned):
        raise AuthenticationError(
            f"the peer did not present the {expected}'s pinned certificate "
            f"({cert_path(identity.directory, expected)})"
        )


# --- links --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Link:
    """How a party secures its connections: mutual TLS with `identity`, or plain sockets
    when `identity` is None (`--insecure-channel`)."""

    identity: Identity | None

    @property
    def secure(self) -> bool:
        return self.identity is not None

    def accept(self, sock: socket.socket, expected: str, timeout: float) -> socket.socket:
        """The server's side of an accepted connection, authenticated as `expected` within
        `timeout` seconds; on a refusal `sock` is closed and the error raised."""
        return self._wrap(sock, expected, timeout, server=True)

    def connect(self, sock: socket.socket, expected: str, timeout: float) -> socket.socket:
        """The client's side of a connected socket, the server authenticated as `expected`."""
        return self._wrap(sock, expected, timeout, server=False)

    def _wrap(
        self, sock: socket.socket, expected: str, timeout: float, *, server: bool
    ) -> socket.socket:
        if self.identity is None:
            return sock
        context = _context(self.identity, server=server)
        sock.settimeout(timeout)
        try:
            secured = context.wrap_socket(sock, server_side=server)
        except BaseException:
            sock.close()
            raise
        try:
            check_peer(secured, self.identity, expected)
        except BaseException:
            secured.close()
            raise
        return secured


def ssl_reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason for `exc`, in words ("tlsv1 alert unknown ca")."""
    return (exc.reason or str(exc)).lower().replace("_", " ")


def describe_refusal(exc: BaseException) -> str:
    """One line for a failed handshake or role check (`ssl` errors by their reason)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the peer's certificate is not a pinned one (OpenSSL: {exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({ssl_reason(exc)})"
    if isinstance(exc, TimeoutError):
        return "no TLS handshake in time"
    return str(exc) or type(exc).__name__
