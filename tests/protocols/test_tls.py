"""Identities and mutual TLS (`protocols.tls`), and the HE link over it
(`secinfer.backends.he.session`).

- `secinfer keys` / `tls.generate`: a key (0600) and a certificate naming the role per role,
  no overwrite without --force; a party's own role only with --role.
- A mutual-TLS pair connects and carries bytes; a peer presenting another role's certificate,
  an unknown self-signed certificate of the right name, or no certificate is refused during
  the handshake or the role check, before the server reads any application byte; a client
  refuses a server that is not the pinned model owner.
- The HE server survives a stray plain-TCP `GET /` and a TLS client with the wrong identity
  (one line each), then serves the real client: output within 1e-4 of plaintext.
- On the wire (a relay that records every byte): under TLS none of the session's plaintext
  markers appear; over the plain channel they do (the capture can see them).
- `he-party`: without --identity it refuses, saying how to make keys; --insecure-channel
  prints the warning.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import stat
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.cli import assert_user_error, secinfer_here

from benchmarks.he_tls import WireTap, query_through_tap
from protocols import tls
from secinfer.backends.he import channel as he_channel
from secinfer.backends.he import main as he_main
from secinfer.backends.he import session as he_session
from secinfer.backends.he.channel import PLAIN
from secinfer.core.execute import Executor
from secinfer.core.prepare import prepare
from secinfer.errors import PartyError


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    return tls.local_identities(tmp_path_factory.mktemp("tls") / "keys")


@pytest.fixture(scope="module")
def stranger(tmp_path_factory) -> Path:
    """Another set of identities with the same role names, never exchanged with `keys`."""
    return tls.local_identities(tmp_path_factory.mktemp("tls") / "other")


def link(directory: Path, role: str, *peers: str) -> tls.Link:
    return tls.Link(tls.load_identity(directory, role, peers))


# --- identities ---------------------------------------------------------------------------
def test_keys_writes_one_private_key_and_one_certificate_per_role(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    done = secinfer_here("keys", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip().splitlines()) == 2 * len(tls.ROLES)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for role in tls.ROLES:
        key, cert = out / f"{role}.key", out / f"{role}.crt"
        assert f"wrote {key}" in done.stdout and f"wrote {cert}" in done.stdout
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert b"PRIVATE KEY" in key.read_bytes() and b"CERTIFICATE" in cert.read_bytes()
        decoded = ssl._ssl._test_decode_cert(str(cert))  # the certificate as ssl reads it
        assert ((("organizationName", "secinfer"),), (("commonName", f"secinfer {role}"),)) == (
            decoded["subject"]
        )
    before = (out / "dealer.key").read_bytes()
    assert_user_error(secinfer_here("keys", "--out", str(out)), "--force")
    assert (out / "dealer.key").read_bytes() == before
    assert secinfer_here("keys", "--out", str(out), "--force").returncode == 0
    assert (out / "dealer.key").read_bytes() != before


def test_keys_for_one_role_writes_only_that_party_files(tmp_path: Path) -> None:
    done = secinfer_here("keys", "--out", str(tmp_path), "--role", "data-owner")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data-owner.crt", "data-owner.key"]


def test_loading_refuses_missing_exposed_or_misnamed_files(tmp_path: Path, keys: Path) -> None:
    with pytest.raises(tls.IdentityError, match="secinfer keys"):
        tls.load_identity(tmp_path, "data-owner", ["model-owner"])
    tls.generate(tmp_path, ["data-owner"])
    with pytest.raises(tls.IdentityError, match="model-owner's certificate"):
        tls.load_identity(tmp_path, "data-owner", ["model-owner"])
    (tmp_path / "model-owner.crt").write_bytes((keys / "dealer.crt").read_bytes())
    with pytest.raises(tls.IdentityError, match="wrong role"):
        tls.load_identity(tmp_path, "data-owner", ["model-owner"])
    (tmp_path / "data-owner.key").chmod(0o644)
    with pytest.raises(tls.IdentityError, match="chmod 600"):
        tls.load_identity(tmp_path, "data-owner", [])


# --- handshakes ---------------------------------------------------------------------------
def handshake(
    server: tls.Link, expected: str, client: Any, send: bytes = b"SIHE application bytes"
) -> tuple[Any, Any]:
    """A server thread accepting one connection with `server.accept(..., expected)`; the
    client (`client(sock)` returns a connected socket, or raises) sends `send` at once.
    (what the server got: the authenticated peer's first bytes or the exception; the
    client's socket or exception)."""
    listener = socket.create_server(("127.0.0.1", 0))
    got: dict[str, Any] = {}

    def accept() -> None:
        with listener:
            sock, _ = listener.accept()
            try:
                secured = server.accept(sock, expected, 10)
            except Exception as exc:
                got["server"] = exc
                return
            with secured:
                got["server"] = secured.recv(100)
                secured.sendall(b"ok")

    thread = threading.Thread(target=accept)
    thread.start()
    raw = socket.create_connection(listener.getsockname(), timeout=10)
    try:
        sock = client(raw)
        sock.sendall(send)
        got["client"] = sock
    except Exception as exc:
        got["client"] = exc
    thread.join(10)
    return got["server"], got["client"]


def test_a_mutual_tls_pair_connects(keys: Path) -> None:
    server = link(keys, "model-owner", "data-owner")
    client = link(keys, "data-owner", "model-owner")
    got, sock = handshake(server, "data-owner", lambda s: client.connect(s, "model-owner", 10))
    assert got == b"SIHE application bytes"
    assert sock.version() == "TLSv1.3"
    assert tls.fingerprint(sock.getpeercert(binary_form=True)) == tls.fingerprint(
        client.identity.peers["model-owner"]
    )
    assert sock.recv(2) == b"ok"
    sock.close()


@pytest.mark.parametrize("who", ["dealer", "stranger data-owner", "no certificate"])
def test_a_client_that_cannot_prove_the_role_is_refused_before_any_byte_is_read(
    keys: Path, stranger: Path, who: str
) -> None:
    """The server's `accept` raises: it never returns a socket to read the bytes from."""
    server = link(keys, "model-owner", "data-owner")
    if who == "dealer":  # a real party's certificate, but not the data owner's
        context = tls.client_context(tls.load_identity(keys, "dealer", ["model-owner"]))
    elif who == "stranger data-owner":  # self-signed, named data-owner, never exchanged
        context = tls.client_context(tls.load_identity(stranger, "data-owner", []))
        context.load_verify_locations(keys / "model-owner.crt")
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.load_verify_locations(keys / "model-owner.crt")
    got, _ = handshake(server, "data-owner", lambda s: context.wrap_socket(s))
    assert isinstance(got, ssl.SSLError | tls.AuthenticationError), got


def test_the_role_check_refuses_a_trusted_peer_of_another_role(keys: Path) -> None:
    """A model owner trusts the data owner and the dealer; expecting the data owner, the
    dealer's valid handshake still fails the pinned-certificate check, naming the role."""
    server = link(keys, "model-owner", "data-owner", "dealer")
    dealer = link(keys, "dealer", "model-owner")
    got, _ = handshake(server, "data-owner", lambda s: dealer.connect(s, "model-owner", 10))
    assert isinstance(got, tls.AuthenticationError) and "data-owner" in str(got)


def test_a_client_refuses_a_server_that_is_not_the_pinned_model_owner(
    keys: Path, stranger: Path
) -> None:
    impostor = link(stranger, "model-owner", "data-owner")
    client = link(keys, "data-owner", "model-owner")
    _, refused = handshake(impostor, "data-owner", lambda s: client.connect(s, "model-owner", 10))
    assert isinstance(refused, ssl.SSLCertVerificationError), refused


# --- the HE link --------------------------------------------------------------------------
class Square(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return (y * y).mean(-1)


@pytest.fixture(scope="module")
def small() -> tuple[Any, Any, torch.Tensor]:
    x = torch.randn(2, 3, 8)
    graph, plan = prepare(torch.export.export(Square().eval(), (x,)), "he", [(x,)], None)
    return graph, plan, x


def nothing_but_close(sock: socket.socket) -> bool:
    """The peer closed without sending a byte (a reset: it closed with our bytes unread)."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def test_the_he_server_survives_stray_connections_then_serves_the_client(
    small, keys: Path, stranger: Path, tmp_path: Path
) -> None:
    graph, plan, x = small
    listener = socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()
    lines: list[str] = []
    outcome: dict[str, Any] = {}
    server_link = link(keys, "model-owner", "data-owner")

    def serve() -> None:
        with listener:
            try:
                outcome["record"] = he_session.serve(
                    graph, plan, listener, tmp_path, timeout=60, link=server_link, log=lines.append
                )
            except Exception as exc:
                outcome["error"] = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with socket.create_connection(address) as browser:  # what a browser or scanner sends
        browser.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert nothing_but_close(browser)  # nothing of the session sent
    # a TLS client with a certificate of the right name the server never pinned, which
    # pins the real server (its own handshake succeeds) and sends a valid greeting
    with pytest.raises(PartyError, match="did not prove") as refused:
        he_session.connect(address, 10, link(stranger, "data-owner", "model-owner"))
    assert "model-owner" in str(refused.value)
    # he-party's client with an unknown data-owner key that pins the real server: its
    # handshake completes, the server refuses it; one line naming the fix
    impostor = tmp_path / "impostor"
    impostor.mkdir()
    for source in (stranger / "data-owner.key", stranger / "data-owner.crt"):
        shutil.copy(source, impostor)
    shutil.copy(keys / "model-owner.crt", impostor)
    np.save(tmp_path / "x.npy", x.numpy())
    with pytest.raises(PartyError, match=r"give it this side's data-owner\.crt"):
        he_main.client_main(
            connect=f"127.0.0.1:{address[1]}",
            input_paths=(tmp_path / "x.npy",),
            out_dir=tmp_path,
            timeout=10,
            link=he_main.he_link("client", impostor, False),
        )
    y = he_session.query(
        address,
        lambda names: (x,),
        tmp_path,
        timeout=60,
        link=link(keys, "data-owner", "model-owner"),
    )
    thread.join(60)
    assert "error" not in outcome, outcome.get("error")
    expected = Executor(graph, "plain").run((x,)).outputs[0].double().numpy()
    assert np.abs(y - expected).max() < 1e-4
    assert len(lines) == 3, lines
    assert all(line.startswith("server: refused a connection from 127.0.0.1") for line in lines)
    assert "TLS handshake failed (http request)" in lines[0]
    assert "TLS handshake failed (tlsv1 alert unknown ca)" in lines[1]  # client refused
    assert "certificate is not a pinned one" in lines[2]


def test_a_server_that_hangs_up_after_the_handshake_names_the_certificate_fix(
    keys: Path, tmp_path: Path
) -> None:
    """Under TLS 1.3 the client's handshake completes before the server has checked the
    client's certificate; the server's refusal (its alert) may be lost when it closes. A
    server that reads the greeting and hangs up, every time, gives the client the same one
    line as a refusal it did see: give the server this side's certificate."""
    listener = socket.create_server(("127.0.0.1", 0))
    server_link = link(keys, "model-owner", "data-owner")

    def hang_up() -> None:
        with listener:
            sock, _ = listener.accept()
            with server_link.accept(sock, "data-owner", 10) as secured:
                secured.recv(4096)  # the greeting, then close without a hello

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    np.save(tmp_path / "x.npy", np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(
        PartyError, match=r"before its hello; .*give it this side's data-owner\.crt"
    ):
        he_main.client_main(
            connect=f"127.0.0.1:{listener.getsockname()[1]}",
            input_paths=(tmp_path / "x.npy",),
            out_dir=tmp_path,
            timeout=10,
            link=he_main.he_link("client", keys, False),
        )
    thread.join(10)


def test_the_plain_channel_also_skips_a_stray_connection(small, tmp_path: Path) -> None:
    """Without TLS the greeting is what tells a client from a stray connection."""
    graph, plan, x = small
    listener = socket.create_server(("127.0.0.1", 0))
    lines: list[str] = []
    outcome: dict[str, Any] = {}

    def serve() -> None:
        with listener:
            outcome["record"] = he_session.serve(
                graph, plan, listener, tmp_path, timeout=60, log=lines.append, link=PLAIN
            )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with socket.create_connection(listener.getsockname()) as browser:
        browser.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert nothing_but_close(browser)
    y = he_session.query(
        listener.getsockname(), lambda names: (x,), tmp_path, timeout=60, link=PLAIN
    )
    thread.join(60)
    assert "record" in outcome and y.shape == (2, 3) and len(lines) == 1
    assert "no client greeting" in lines[0] and "bad magic" in lines[0]


def test_a_silent_connection_does_not_keep_the_client_out(
    small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connections are vetted side by side: one that connects and says nothing (held for a
    whole minute here) does not delay the real client, which is served meanwhile."""
    monkeypatch.setattr(he_channel, "HANDSHAKE_SECONDS", 60.0)
    graph, plan, x = small
    listener = socket.create_server(("127.0.0.1", 0))
    outcome: dict[str, Any] = {}

    def serve() -> None:
        with listener:
            outcome["record"] = he_session.serve(
                graph,
                plan,
                listener,
                tmp_path,
                timeout=90,
                log=lambda line: None,
                link=PLAIN,
            )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with socket.create_connection(listener.getsockname()) as silent:
        began = time.monotonic()
        y = he_session.query(
            listener.getsockname(),
            lambda names: (x,),
            tmp_path,
            timeout=30,
            link=PLAIN,
        )
        assert time.monotonic() - began < 60 and y.shape == (2, 3)
        silent.settimeout(0.01)
        with pytest.raises(TimeoutError):  # still being vetted: nobody waited for it
            silent.recv(1)
    thread.join(60)
    assert "record" in outcome


def test_the_bytes_on_the_wire_are_not_plaintext(small) -> None:
    """The same query through a recording relay: the plain channel shows the session's JSON
    (the capture works), the TLS channel none of it; the outputs agree."""
    graph, plan, x = small
    markers = [b"SIHE", b'"kind"', b"greeting", b"hello", b"layouts", b"galois_steps"]
    plain = query_through_tap(graph, plan, (x,), secure=False, keep=True, timeout=60)
    assert all(marker in plain["captured"] for marker in markers)
    secure = query_through_tap(graph, plan, (x,), secure=True, keep=True, timeout=60)
    assert not [marker for marker in markers if marker in secure["captured"]]
    assert len(secure["captured"]) == secure["wire_to_server"] + secure["wire_to_client"]
    assert secure["wire_to_server"] > secure["app_to_server"] > 1e6
    assert np.abs(secure["output"] - plain["output"]).max() < 1e-4


def test_the_wire_tap_counts_every_byte() -> None:
    echo = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        with echo:
            sock, _ = echo.accept()
            with sock:
                sock.sendall(sock.recv(100) * 2)

    threading.Thread(target=answer, daemon=True).start()
    tap = WireTap(echo.getsockname(), keep=True)
    with socket.create_connection(("127.0.0.1", tap.port)) as sock:
        sock.sendall(b"abc")
        assert sock.recv(100) == b"abcabc"
    tap.close()
    assert (tap.to_server, tap.to_client, bytes(tap.captured)) == (3, 6, b"abcabcabc")


# --- he-party options ---------------------------------------------------------------------
def test_he_party_without_identity_says_how_to_make_keys(tmp_path: Path) -> None:
    done = secinfer_here("he-party", "--role", "client", "--connect", "127.0.0.1:9")
    assert_user_error(done, "secinfer keys --out DIR")
    done = secinfer_here(
        "he-party", "--role", "client", "--connect", "127.0.0.1:9", "--identity", str(tmp_path)
    )
    assert_user_error(done, "data-owner.key")


def test_insecure_channel_prints_the_warning(tmp_path: Path) -> None:
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 3, 8), dtype=np.float32))
    with socket.create_server(("127.0.0.1", 0)) as unused:
        port = unused.getsockname()[1]
    done = secinfer_here(
        "he-party", "--role", "client", "--connect", f"127.0.0.1:{port}", "--input", str(x),
        "--insecure-channel", "--timeout", "0.5", "--out", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 1 and "no server" in done.stderr
    assert tls.INSECURE_WARNING in done.stderr and "Traceback" not in done.stderr
