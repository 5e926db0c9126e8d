"""The MPC links over mutual TLS 1.3 (protocols/mpc/tls_communicator.py).

Real sockets, real TLS, real CrypTen processes: the mesh authenticates every pair by role,
carries nothing readable, and a run over it gives what the same run over gloo gives.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from protocols import tls
from protocols.mpc import tls_communicator as tc

SETTINGS = {"provider": "dealer", "protocol": 2, "timeout": 20.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tls.local_identities(tmp_path_factory.mktemp("mesh") / "ids")


def _join(
    directory: Path,
    rank: int,
    port: int,
    out: dict[int, Any],
    settings: dict[str, Any] | None = None,
    role: str | None = None,
    timeout: float = 10.0,
) -> None:
    role = role or tc.LABELS[rank]
    peers = [r for r in tls.ROLES if r != role]
    identity = tls.load_identity(directory, role, peers)
    config = tc.MeshConfig(
        f"tcp://127.0.0.1:{port}", rank, 3, identity, timeout, settings or SETTINGS
    )
    try:
        out[rank] = tc.connect_mesh(config)
    except Exception as exc:  # handed to the test's thread
        out[rank] = exc


def _mesh(directory: Path, port: int, **per_rank: Any) -> dict[int, Any]:
    out: dict[int, Any] = {}
    threads = [
        threading.Thread(
            target=_join, args=(directory, r, port, out), kwargs=per_rank.get(str(r), {})
        )
        for r in (0, 1, 2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return out


def _close(meshes: dict[int, Any]) -> None:
    for mesh in meshes.values():
        if isinstance(mesh, tc.Mesh):
            mesh.close()


def test_the_mesh_carries_large_frames_both_ways_at_once(identities: Path) -> None:
    meshes = _mesh(identities, free_port())
    try:
        assert all(isinstance(m, tc.Mesh) for m in meshes.values()), meshes
        assert {p for p in meshes[2].channels} == {0, 1}
        message = {r: bytes([r + 1]) * 3_000_000 for r in (0, 1)}
        got: dict[int, bytes] = {}

        def exchange(rank: int) -> None:
            other = 1 - rank
            meshes[rank].send(other, message[rank])
            got[rank] = meshes[rank].receive(other, expected=len(message[other]))

        threads = [threading.Thread(target=exchange, args=(r,)) for r in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert got == {0: message[1], 1: message[0]}
        link = meshes[0].traffic()[1]
        assert link.app_sent >= 3_000_000 and link.wire_sent > link.app_sent
    finally:
        _close(meshes)


def test_a_listener_with_another_roles_certificate_is_refused(identities: Path) -> None:
    """The data owner reaches a 'model owner' that holds the dealer's identity: refused
    after the handshake, before any application byte."""
    port = free_port()
    out: dict[int, Any] = {}
    impostor = threading.Thread(
        target=_join, args=(identities, 0, port, out), kwargs={"role": "dealer", "timeout": 3.0}
    )
    impostor.start()
    _join(identities, 1, port, out, timeout=5.0)
    impostor.join(30)
    assert isinstance(out[1], tls.AuthenticationError), out
    assert "model-owner" in str(out[1])
    assert isinstance(out[0], tc.PeerLost)  # the impostor never got a data owner


def test_a_different_setting_stops_every_party(identities: Path) -> None:
    port = free_port()
    other = {**SETTINGS, "timeout": 30.0}
    meshes = _mesh(identities, port, **{"1": {"settings": other}})
    try:
        for rank in (0, 1, 2):
            assert isinstance(meshes[rank], Exception), meshes
        assert "timeout" in str(meshes[1]) and "30" in str(meshes[1])
    finally:
        _close(meshes)


def compute(role: Any) -> dict[str, Any]:
    """A small private computation touching every communicator path a run uses: shares
    from both parties, products and comparisons from the dealer, an opened result."""
    import crypten
    import torch

    from protocols.mpc.crypten_setup import import_crypten

    import_crypten()
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 24).reshape(4, 6)
    w = torch.linspace(-1, 1, 18).reshape(6, 3)
    sx = crypten.cryptensor(x, src=1)
    sw = crypten.cryptensor(w, src=0)
    y = (sx.matmul(sw)).relu() + sx[:, :3].square()
    comm = crypten.communicator.get()
    links = comm.link_traffic() if hasattr(comm, "link_traffic") else {}
    return {"y": y.get_plain_text().double().numpy(), "links": links}


def test_a_crypten_run_over_tls_equals_the_run_over_gloo(identities: Path) -> None:
    from protocols.mpc.local import run_local
    from protocols.mpc.runtime import Role

    over_tls = run_local(compute, timeout=120, peer_timeout=20, identity=str(identities))
    over_gloo = run_local(compute, timeout=120, peer_timeout=20)
    for role in (Role.MODEL_OWNER, Role.DATA_OWNER):
        a, b = over_tls[role].value["y"], over_gloo[role].value["y"]
        # fresh random seeds each run: the truncations' rounding differs by a few 2^-16
        assert np.abs(a - b).max() < 8 * 2.0**-16, (a, b)
        assert over_tls[role].traffic.bytes_sent == over_gloo[role].traffic.bytes_sent
        assert over_tls[role].value["links"] and not over_gloo[role].value["links"]
    import torch

    x = torch.linspace(-2, 2, 24).reshape(4, 6).double()
    w = torch.linspace(-1, 1, 18).reshape(6, 3).double()
    plain = (x @ w).relu() + x[:, :3] ** 2
    for run in (over_tls, over_gloo):
        assert np.abs(run[Role.MODEL_OWNER].value["y"] - plain.numpy()).max() < 1e-3


class Relay:
    """A TCP relay that records every byte it forwards (what a network observer sees)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.recorded = bytearray()
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            for _ in range(100):  # the model owner may not listen yet
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.target))
                    break
                except ConnectionRefusedError:
                    time.sleep(0.1)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                with self.lock:
                    self.recorded += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


def test_a_network_observer_sees_no_plaintext(identities: Path) -> None:
    """Both computing parties' link and the dealer's link to the model owner pass through a
    recording relay: neither the settings, the certificates' names nor a known tensor
    appear in what it forwarded, while the parties receive them intact."""
    port = free_port()
    relay = Relay(port)
    out: dict[int, Any] = {}
    threads = [threading.Thread(target=_join, args=(identities, 0, port, out))] + [
        threading.Thread(target=_join, args=(identities, r, relay.port, out)) for r in (1, 2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert all(isinstance(m, tc.Mesh) for m in out.values()), out
        secret = b"THE-DATA-OWNER'S-INPUT-" * 2000
        got: dict[int, bytes] = {}

        def talk(rank: int) -> None:
            out[rank].send(1 - rank, secret)
            got[rank] = out[rank].receive(1 - rank, expected=len(secret))

        talkers = [threading.Thread(target=talk, args=(r,)) for r in (0, 1)]
        for thread in talkers:
            thread.start()
        for thread in talkers:
            thread.join(30)
        assert got == {0: secret, 1: secret}
        time.sleep(0.2)
        with relay.lock:
            seen = bytes(relay.recorded)
        assert len(seen) > 2 * len(secret)  # the relay did carry the traffic
        for clear in (b"DATA-OWNER", b"provider", b"secinfer", b"model-owner", b"dealer"):
            assert clear not in seen, clear
    finally:
        _close(out)
        relay.close()


CLI = [sys.executable, "-m", "secinfer.cli", "party"]


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def _one_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-2000:]
    return lines[0]


def test_a_party_needs_an_identity_or_the_explicit_opt_out(
    identities: Path, tmp_path: Path
) -> None:
    base = ["--role", "dealer", "--rendezvous", "tcp://127.0.0.1:9", "--timeout", "2"]
    done = _cli(*base)
    assert done.returncode == 2 and "--identity DIR" in _one_error(done.stderr)
    assert "--insecure-channel" in done.stderr
    done = _cli(*base, "--identity", str(identities), "--insecure-channel")
    assert done.returncode == 2 and "not both" in _one_error(done.stderr)
    done = _cli(*base, "--identity", str(tmp_path / "none"))
    assert done.returncode == 2 and "secinfer keys" in _one_error(done.stderr)


def test_a_listener_that_does_not_speak_tls_is_one_line(identities: Path) -> None:
    """A plain TCP program on the rendezvous port (or a gloo model owner): the dealer
    refuses it after the handshake's timeout, exit 1, one line."""
    with socket.create_server(("127.0.0.1", 0)) as foreign:
        port = foreign.getsockname()[1]
        began = time.monotonic()
        done = _cli(
            "--role", "dealer", "--rendezvous", f"tcp://127.0.0.1:{port}",
            "--timeout", "3", "--identity", str(identities),
        )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    line = _one_error(done.stderr)
    assert "model-owner" in line and f"127.0.0.1:{port}" in line
    assert time.monotonic() - began < 60


@pytest.mark.slow
def test_the_bench_row_measures_both_channels_in_one_run() -> None:
    from benchmarks import mpc_tls

    record = mpc_tls.run(quick=True)
    assert record["tls"]["payload_bytes"] == record["gloo"]["payload_bytes"] > 0
    assert record["tls"]["wire_bytes"] > record["tls"]["framed_bytes"]
    assert record["tls"]["framed_bytes"] > record["tls"]["payload_bytes"]
    assert record["tls"]["max_abs_error"] < 0.01 and record["gloo"]["max_abs_error"] < 0.01
    assert "mutual TLS 1.3" in mpc_tls.markdown(record)


def test_a_vanished_or_silent_peer_is_one_line_within_the_timeout(identities: Path) -> None:
    meshes = _mesh(identities, free_port())
    try:
        assert all(isinstance(m, tc.Mesh) for m in meshes.values()), meshes
        meshes[1].close()  # the data owner's process ends
        began = time.monotonic()
        with pytest.raises(tc.PeerLost, match="data-owner closed the connection"):
            meshes[0].receive(1, expected=8)
        meshes[0].timeout = 1.0  # the dealer is alive but says nothing
        with pytest.raises(tc.PeerLost, match="timed out after 1 s waiting for the dealer"):
            meshes[0].receive(2, expected=8)
        assert time.monotonic() - began < 5
        meshes[2].send(0, b"\0" * 16)  # a frame of another length than expected
        with pytest.raises(tc.PeerLost, match="16 bytes where 8 were expected"):
            meshes[0].receive(2, expected=8)
    finally:
        _close(meshes)


def test_a_connecting_peer_with_the_wrong_roles_certificate_is_refused(
    identities: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The data owner's listener wants the dealer; the model owner's certificate (pinned,
    but not the dealer's) is refused after the handshake, and nothing that peer sent
    after it is decrypted."""
    server_side, client_side = socket.socketpair()
    owner = tls.load_identity(identities, "data-owner", ["model-owner", "dealer"])
    impostor = tls.load_identity(identities, "model-owner", ["data-owner", "dealer"])
    config = tc.MeshConfig("tcp://127.0.0.1:1", 1, 3, owner, 5.0, SETTINGS)
    outcome: dict[str, Any] = {}

    def connect() -> None:
        context = tls.client_context(impostor)
        with contextlib.suppress(OSError), context.wrap_socket(client_side) as secured:
            secured.sendall(b"APPLICATION BYTES")  # may race with the refusal
            outcome["sent"] = True
            secured.recv(1)

    decrypted: list[int] = []
    monkeypatch.setattr(tc._Channel, "drain", lambda channel: decrypted.append(channel.peer))
    thread = threading.Thread(target=connect)
    thread.start()
    with pytest.raises(tls.AuthenticationError, match="dealer"):
        tc._authenticate_any(server_side, config, {"dealer": 2})
    server_side.close()
    thread.join(10)
    assert decrypted == []  # whatever it sent after the handshake was never decrypted


def _established(pid: int) -> int:
    """Established TCP connections of process `pid` (its sockets in /proc/net/tcp)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[3] == "01" and line.split()[9] in inodes)


@pytest.mark.slow
def test_a_killed_data_owner_stops_the_others_over_tls(identities: Path, tmp_path: Path) -> None:
    """Three `secinfer party` processes over TLS on the digits model; SIGKILL to the data
    owner once its two links are up (the mesh is complete): the model owner and the dealer
    exit 1 with one line each, within the timeout."""
    import signal

    from secinfer.zoo.digits import load_split

    _, _, test_x, _ = load_split(0)
    x = tmp_path / "x.npy"
    np.save(x, test_x[:4].numpy())
    port, timeout = free_port(), 30.0
    base = [*CLI, "--rendezvous", f"tcp://127.0.0.1:{port}", "--timeout", str(timeout)]
    base += ["--identity", str(identities)]
    model = Path(__file__).resolve().parents[3] / "secinfer" / "data" / "digits.safetensors"
    commands = {
        "model-owner": [*base, "--role", "model-owner", "--model", str(model)],
        "data-owner": [*base, "--role", "data-owner", *(["--input", str(x)] * 6)],
        "dealer": [*base, "--role", "dealer"],
    }
    for role in ("model-owner", "data-owner"):
        commands[role] += ["--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = {role: open(tmp_path / f"{role}.log", "w") for role in commands}  # noqa: SIM115
    started = {
        role: subprocess.Popen(command, stdout=logs[role], stderr=logs[role], env=env)
        for role, command in commands.items()
    }
    try:
        deadline = time.monotonic() + 240
        victim = started["data-owner"].pid
        while _established(victim) < 2 and time.monotonic() < deadline:
            assert all(p.poll() is None for p in started.values()), "a party ended early"
            time.sleep(0.2)
        time.sleep(2.0)
        began = time.monotonic()
        started["data-owner"].send_signal(signal.SIGKILL)
        for role in ("model-owner", "dealer"):
            code = started[role].wait(timeout=timeout + 60)
            seconds = time.monotonic() - began
            log = (tmp_path / f"{role}.log").read_text()
            assert code == 1, (role, log[-2000:])
            _one_error(log)
            assert seconds < timeout + 10, (role, seconds)
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        for handle in logs.values():
            handle.close()


def test_the_trusted_first_party_provider_runs_over_tls_too(identities: Path) -> None:
    """Two processes, no dealer (CrypTen's scatter of the model owner's triples)."""
    from protocols.mpc.local import run_local
    from protocols.mpc.runtime import Role

    run = run_local(
        compute,
        timeout=120,
        peer_timeout=20,
        identity=str(identities),
        provider="trusted-first-party",
    )
    x = np.linspace(-2, 2, 24).reshape(4, 6)
    w = np.linspace(-1, 1, 18).reshape(6, 3)
    plain = np.maximum(x @ w, 0) + x[:, :3] ** 2
    assert np.abs(run[Role.DATA_OWNER].value["y"] - plain).max() < 1e-3
    assert set(run[Role.MODEL_OWNER].value["links"]) == {"data-owner"}
