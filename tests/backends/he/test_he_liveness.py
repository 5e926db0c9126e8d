"""Liveness of an HE session: a peer's `--timeout` measures its silence, not its work.

- One TenSEAL call that holds the GIL for seconds (`CKKSVector.mm` of a 256x256 matrix, in
  a forked process): a Python thread there sees no tick for over twice the receiver's
  0.5 s timeout (so a heartbeat thread would fall silent), yet with the relay the receiver
  hears ALIVE messages and then the answer (without the relay, slow suite: it times out).
  The same process stopped (SIGSTOP of its main process; its relay runs on and must
  notice) inside a second such call: the receiver times out within 0.5 s + slack.
- `secinfer he-party` as on two hosts (server first, over mutual TLS; the client at
  `--timeout 1`) through the server's two Linear(80, 80) in feature-major packing (its
  record must show a run of at least 3 s and a node of at least 1.5 s, else the test says
  the model got too fast for it): the right output (within 1e-3), progress lines on both
  sides' stderr.
- Slow suite: the same through `secinfer run --backend he --timeout 1` (both sides at 1 s;
  the server's progress echoed by the launcher); the he-party server SIGSTOPped mid-run
  (its main process only): the client ends with exit 1 and the one-line timeout error
  within its timeout + 8 s.
- The launcher's echo of each side's own progress lines, and its meeting window: a client
  at a 0.3 s timeout finds a server that starts listening 1 s later.
- Crafted messages on a live session (an unknown kind, the relay's local STATUS kind from
  the network, a version-1 header): the server refuses each with one line.
- The relay's splitting of its party's stream into messages and STATUS frames, for any
  chunking (hypothesis).
- The party's last message survives the race with the peer's ALIVE: the party sends it and
  closes with an ALIVE of the peer unread, and another ALIVE arrives before the relay read
  the message (the relay held by SIGSTOP to fix that order); the peer still receives it
  (it used to get only the header before end-of-file: the relay stopped reading its party
  when a write to it failed).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tenseal as ts
import torch
from helpers.he import start_server
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.he import messages as M
from protocols.he.messages import HEADER, MAGIC, VERSION, MessageKind
from protocols.tls import local_identities
from secinfer.backends.he import relay
from secinfer.backends.he.channel import GREETING, Channel
from secinfer.core.prepare import prepare
from secinfer.errors import PartyError

ROOT = Path(__file__).resolve().parents[3]


# --- one GIL-holding TenSEAL call -----------------------------------------------------------
def _sender(port: int, use_relay: bool, peer_timeout: float) -> None:
    """The forked sender: twice, "ready" then one `CKKSVector.mm` (a single call into C++
    that holds the GIL throughout) then "done" with the call's seconds and the longest gap a
    Python thread ticking every 10 ms saw inside it."""
    context = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    context.global_scale = 2**40
    context.generate_galois_keys()
    vector = ts.ckks_vector(context, list(np.random.rand(256)))
    matrix = np.random.rand(256, 256).tolist()
    ticks: list[float] = []

    def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            time.sleep(0.01)

    threading.Thread(target=tick, daemon=True).start()
    with Channel(socket.create_connection(("127.0.0.1", port)), timeout=30) as channel:
        if use_relay:
            channel.start_session("server", peer_timeout)
        for call in range(2):
            channel.send_json({"kind": "ready"})
            channel.set_status(f"CKKSVector.mm call {call}")
            began = time.monotonic()
            vector.mm(matrix)
            ended = time.monotonic()
            inside = [began] + [t for t in ticks if began <= t <= ended] + [ended]
            gap = max(b - a for a, b in itertools.pairwise(inside))
            channel.send_json({"kind": "done", "seconds": ended - began, "gap": gap})


def _fork(work: Any) -> int:
    """`work()` in a forked child (this process's imports, none to repeat), which leaves
    through os._exit; the child's pid."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            work()
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    return pid


@pytest.mark.parametrize(
    "use_relay", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["relay", "no-relay"]
)
def test_one_long_gil_holding_call_does_not_silence_the_relay(use_relay: bool) -> None:
    """Call 0 runs to its end: the receiver, at a 0.5 s timeout, hears ALIVE messages
    throughout and then the answer (without the relay: a timeout). During call 1 the
    sender's main process is stopped (SIGSTOP; its relay runs on and must notice): the
    receiver times out within its timeout plus scheduling slack."""
    timeout = 0.5
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    sender = _fork(lambda: _sender(port, use_relay, timeout))
    try:
        listener.settimeout(120)
        sock, _ = listener.accept()
        with Channel(sock, timeout=120) as channel:
            channel.start_session("client", 120)
            seen: list[dict[str, Any]] = []
            channel.alive = seen.append  # type: ignore[method-assign]
            assert channel.recv_json()["kind"] == "ready"
            channel.timeout = timeout
            if not use_relay:
                with pytest.raises(M.PeerTimeout, match=r"within 0\.5 s"):
                    channel.recv_json()
                return
            done = channel.recv_json()
            assert done["kind"] == "done"
            # the premise: the call held the GIL (no Python tick) for over twice our timeout
            assert done["gap"] > 2 * timeout, done
            assert len(seen) >= done["seconds"] / timeout  # about 4 per timeout
            assert {f["step"] for f in seen} == {"CKKSVector.mm call 0"}
            channel.timeout = 120
            assert channel.recv_json()["kind"] == "ready"
            channel.timeout = timeout
            seen.clear()
            stopped: list[float] = []

            def stop_the_sender(fields: dict[str, Any]) -> None:
                seen.append(fields)
                if not stopped:
                    os.kill(sender, signal.SIGSTOP)
                    stopped.append(time.monotonic())

            channel.alive = stop_the_sender  # type: ignore[method-assign]
            with pytest.raises(M.PeerTimeout, match=r"within 0\.5 s \(got 0 of 14 header"):
                channel.recv_json()
            assert time.monotonic() - stopped[0] < timeout + 3
            assert seen[0]["step"] == "CKKSVector.mm call 1"
            assert len(seen) <= 2  # at most one more, already on its way
    finally:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(sender, sig)
        os.waitpid(sender, 0)
        listener.close()


# --- he-party, server and client as processes -------------------------------------------------
WIDTH = 80


class TwoLinear(torch.nn.Module):
    """Two Linear(80, 80): 2 x 6400 ciphertext-scalar products in feature-major packing
    (independent of the rows), one level each, so the run needs no refresh."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(WIDTH, WIDTH)
        self.b = torch.nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x) * 0.1)


def _party(role: str, tmp: Path, port: int, timeout: float, *extra: str) -> subprocess.Popen:
    identity = tmp / "identities"
    out = tmp / role
    out.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "secinfer.cli", "he-party", "--role", role]
    command += ["--timeout", str(timeout), "--identity", str(identity), "--out", str(out)]
    log = open(tmp / f"{role}.log", "wb")  # noqa: SIM115 - the process holds it
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [*command, *extra], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
        start_new_session=True,
    )  # fmt: skip


def _listening(port: int) -> bool:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def _wait_for(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.05)


def _stop_group(process: subprocess.Popen) -> None:
    for sig in (signal.SIGCONT, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
    process.wait()


@pytest.fixture
def session(tmp_path: Path) -> Any:
    """A server (`--timeout 30`: its own wait for the client) listening with the TwoLinear
    model, and a function that starts the client with its input and a timeout."""
    x = torch.randn(1, 32, WIDTH)
    model = TwoLinear().eval()
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "m.pt2")
    np.save(tmp_path / "x.npy", x.numpy())
    local_identities(tmp_path / "identities")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = _party(
        "server", tmp_path, port, 30, "--model", str(tmp_path / "m.pt2"), "--port", str(port),
        "--packing", "feature-major",  # the work TwoLinear's docstring counts on
    )  # fmt: skip
    started: list[subprocess.Popen] = [server]

    def client(timeout: float) -> subprocess.Popen:
        _wait_for(lambda: _listening(port) or server.poll() is not None, 120, "the server")
        assert server.poll() is None, (tmp_path / "server.log").read_text()
        process = _party(
            "client", tmp_path, port, timeout, "--connect", f"127.0.0.1:{port}",
            "--input", str(tmp_path / "x.npy"),
        )  # fmt: skip
        started.append(process)
        return process

    with torch.no_grad():
        expected = model(x).numpy()
    yield client, server, tmp_path, expected
    for process in started:
        _stop_group(process)


@pytest.mark.slow
def test_secinfer_run_at_timeout_1_waits_through_seconds_of_server_work(tmp_path: Path) -> None:
    """`secinfer run --backend he --timeout 1`: both sides at a 1 s timeout (the launcher
    lets them meet however long the server takes to start), the server's own progress lines
    echoed to the launcher's stderr, the output right."""
    x = torch.randn(1, 32, WIDTH)
    torch.export.save(torch.export.export(TwoLinear().eval(), (x,)), tmp_path / "m.pt2")
    np.save(tmp_path / "x.npy", x.numpy())
    report_path = tmp_path / "r.json"
    done = subprocess.run(
        [sys.executable, "-m", "secinfer.cli", "run", str(tmp_path / "m.pt2"), "--backend",
         "he", "--timeout", "1", "--input", str(tmp_path / "x.npy"), "--report",
         str(report_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(report_path.read_text())
    matmul = report["he"]["latency"]["matmul"]["seconds"]
    assert matmul >= 3.0, (
        f"the server's linear layers took {matmul:.1f} s: the premise of this test (work far "
        "longer than the 1 s timeout) is gone; give TwoLinear more work"
    )
    assert report["max_abs_error"] < 1e-3
    assert "server progress: node " in done.stderr and "aten.linear" in done.stderr
    assert "server progress: client: " not in done.stderr  # each side's own lines only


def test_the_client_waits_through_server_work_far_longer_than_its_timeout(session) -> None:
    start_client, server, tmp, expected = session
    client = start_client(1.0)
    assert client.wait(300) == 0, (tmp / "client.log").read_text()
    assert server.wait(60) == 0, (tmp / "server.log").read_text()
    record = json.loads((tmp / "server" / "server.json").read_text())
    longest = max(node["seconds"] for node in record["nodes"])
    assert record["run_seconds"] >= 3.0 and longest >= 1.5, (
        f"the server's run took {record['run_seconds']:.1f} s, its longest node {longest:.1f} s: "
        "the premise of this test (work far longer than the client's 1 s timeout) is gone; "
        "give TwoLinear more work"
    )
    output = np.load(tmp / "client" / "output.npy")
    assert np.abs(output - expected).max() < 1e-3
    client_log, server_log = (tmp / "client.log").read_text(), (tmp / "server.log").read_text()
    assert "client progress: server: node " in client_log, client_log
    assert "server progress: node " in server_log, server_log
    assert "aten.linear" in client_log and "received so far" in client_log


def test_a_client_with_a_long_timeout_does_not_silence_the_servers_progress(session) -> None:
    """The server beats every client timeout / 4 (here 150 s, so never in this run), but
    its own progress lines keep their cadence (the make bench runs, at --timeout 7200,
    logged none before)."""
    start_client, server, tmp, _ = session
    client = start_client(600.0)
    assert client.wait(300) == 0, (tmp / "client.log").read_text()
    assert server.wait(60) == 0, (tmp / "server.log").read_text()
    server_log = (tmp / "server.log").read_text()
    assert "server progress: node " in server_log and "aten.linear" in server_log, server_log


@pytest.mark.slow
def test_a_stopped_server_is_given_up_on_after_the_clients_timeout(session) -> None:
    start_client, server, tmp, _ = session
    timeout = 2.0
    client = start_client(timeout)
    log = tmp / "client.log"
    _wait_for(
        lambda: "server: node" in log.read_text() or client.poll() is not None,
        120,
        "the client to see the server working",
    )
    os.kill(server.pid, signal.SIGSTOP)  # the main process only: its relay must notice
    stopped = time.monotonic()
    code = client.wait(timeout + 30)
    elapsed = time.monotonic() - stopped
    lines = log.read_text().strip().splitlines()
    assert code == 1, lines
    assert lines[-1] == (
        f"error: client: no complete message from peer within {timeout} s "
        "(got 0 of 14 header bytes)"
    )
    assert "Traceback" not in log.read_text()
    assert timeout - 0.5 < elapsed < timeout + 8


# --- crafted messages on a live session ---------------------------------------------------------
class Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


@pytest.fixture(scope="module")
def small() -> tuple[Any, Any]:
    x = torch.randn(2, 8)
    return prepare(torch.export.export(Small().eval(), (x,)), "he", [(x,)], None)


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (HEADER.pack(MAGIC, VERSION, 99, 2) + b"{}", "unknown message kind 99"),
        (HEADER.pack(MAGIC, VERSION, relay.STATUS, 2) + b"{}", "unknown message kind 240"),
        (
            HEADER.pack(MAGIC, 1, MessageKind.JSON, 2) + b"{}",
            "unsupported message format version 1",
        ),
    ],
    ids=["unknown-kind", "relay-status-kind", "version-1"],
)
def test_crafted_messages_are_refused_by_a_live_server(small, frame: bytes, error: str) -> None:
    graph, plan = small
    port, outcome, thread = start_server(graph, plan)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        M.send_json(sock, {**GREETING, "timeout": 30})
        assert M.recv_json(sock, timeout=30, max_bytes=1 << 20)["kind"] == "hello"
        sock.sendall(frame)
        with pytest.raises(M.PeerError, match=error):
            M.recv_json(sock, timeout=30, max_bytes=1 << 20)
    thread.join(30)
    assert error in str(outcome["error"])


# --- the relay's view of its party's stream ---------------------------------------------------
def _frame(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(MAGIC, VERSION, kind, len(payload)) + payload


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("message"), st.binary(max_size=40)),
            st.tuples(st.just("status"), st.dictionaries(st.sampled_from("abc"), st.integers())),
        ),
        max_size=8,
    ),
    st.lists(st.integers(1, 30), min_size=1, max_size=20),
)
def test_the_splitter_forwards_messages_and_keeps_statuses_for_any_chunking(
    items: list[tuple[str, Any]], cuts: list[int]
) -> None:
    stream, forwarded, statuses = b"", b"", []
    for kind, value in items:
        if kind == "message":
            stream += _frame(MessageKind.JSON, value)
            forwarded += _frame(MessageKind.JSON, value)
        else:
            stream += relay.status_frame(value)
            statuses.append(value)
    splitter, out, seen, pos, index = relay._Splitter(), b"", [], 0, 0
    while pos < len(stream):
        size = cuts[index % len(cuts)]
        part, got = splitter.feed(stream[pos : pos + size])
        out, seen, pos, index = out + part, seen + got, pos + size, index + 1
    assert out == forwarded and seen == statuses and splitter.at_boundary


# --- the local launcher's parts -----------------------------------------------------------------
def test_the_launcher_echoes_each_sides_own_progress_lines(tmp_path: Path, capsys) -> None:
    from secinfer.backends.parties import echoing_progress

    (tmp_path / "server.log").write_text(
        "server progress: node 1/3 aten.linear (15 s on it, 16 s in all)\n"
        "server progress: client: making keys (15 s on it, 15 s in all); 0.0 MB sent\n"
        "server: refused a connection from 1.2.3.4:5: no client greeting\n"
        "server progress: node 2/3 aten.mul (0 s on it, 31 s in all)"  # not complete yet
    )
    (tmp_path / "client.log").write_text(
        "client progress: making keys (15 s on it, 15 s in all)\n"
        "client progress: server: node 1/3 aten.linear (15 s on it, 16 s in all); 1 MB sent\n"
    )
    with echoing_progress(tmp_path, ["server", "client"], every=0.05):
        time.sleep(0.5)
        with (tmp_path / "client.log").open("a") as log:  # the party's last line, as it ends
            log.write("client progress: decrypting (1 s on it, 40 s in all)\n")
    assert capsys.readouterr().err.splitlines() == [
        "server progress: node 1/3 aten.linear (15 s on it, 16 s in all)",
        "client progress: making keys (15 s on it, 15 s in all)",
        "client progress: decrypting (1 s on it, 40 s in all)",
    ]


def test_the_launchers_meeting_window_outlasts_a_short_timeout(monkeypatch) -> None:
    from secinfer.backends.he.channel import MEET_ENV, PLAIN, connect

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(PartyError, match=r"no server at 127\.0\.0\.1:\d+ within 0\.3 s"):
        connect(("127.0.0.1", port), 0.3, PLAIN)
    monkeypatch.setenv(MEET_ENV, "30")
    accepted: list[Any] = []

    def late_server() -> None:
        time.sleep(1.0)
        with socket.create_server(("127.0.0.1", port)) as listener:
            sock, _ = listener.accept()
            accepted.append(M.recv_json(sock, timeout=10, max_bytes=4096))
            sock.close()

    server = threading.Thread(target=late_server, daemon=True)
    server.start()
    with connect(("127.0.0.1", port), 0.3, PLAIN):
        pass
    server.join(10)
    assert accepted == [{**GREETING, "timeout": 0.3}]


def test_the_seconds_on_a_step_leave_out_the_waits_on_the_peer() -> None:
    """A step set, then 0.2 s of work, 0.4 s waiting on the peer, 0.2 s of work: the ALIVE
    says about 0.4 s on it and 0.8 s in all."""
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    with a, b, c, d:
        loop = relay._Loop(a, c, os.getpid(), "server", 1.0)
        loop._update({"interval": 0.05, "working": True, "step": "node 1/2 aten.linear"})
        for working, pause in ((True, 0.2), (False, 0.4), (True, 0.2)):
            loop._update({"working": working})
            time.sleep(pause)
        loop._beat()
        header = HEADER.unpack(bytes(loop.to_peer[: HEADER.size]))
        fields = json.loads(bytes(loop.to_peer[HEADER.size :]))
    assert header[2] == MessageKind.ALIVE and fields["step"] == "node 1/2 aten.linear"
    assert 0.35 < fields["step_seconds"] < 0.6 and fields["seconds"] > 0.75


def test_a_large_send_to_a_busy_peer_is_judged_by_the_peers_silence() -> None:
    """The sender (0.5 s timeout) sends 24 MB while the peer works for 3 s before reading
    (the client's inputs while the server loads a large public context): the send returns
    (its relay takes it whole once the peer has taken nothing for a second) and the wait
    for the reply is carried by the peer's ALIVE messages."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def busy_peer() -> None:
        with Channel(socket.create_connection(("127.0.0.1", port)), timeout=30) as channel:
            channel.start_session("server", 0.5)
            channel.set_status("loading a large public context")
            time.sleep(3.0)
            size = len(channel.recv_json()["blob"])
            channel.send_json({"kind": "reply", "size": size})

    peer = _fork(busy_peer)
    try:
        listener.settimeout(60)
        sock, _ = listener.accept()
        with Channel(sock, timeout=0.5) as channel:
            channel.start_session("client", 30)
            seen: list[dict[str, Any]] = []
            channel.alive = seen.append  # type: ignore[method-assign]
            began = time.monotonic()
            channel.send_json({"blob": "x" * (24 << 20)})
            assert channel.recv_json() == {"kind": "reply", "size": 24 << 20}
            assert time.monotonic() - began > 2.5 and seen
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(peer, signal.SIGKILL)
        os.waitpid(peer, 0)
        listener.close()


def test_two_sides_waiting_on_each_other_still_time_out() -> None:
    """The peer works for 1 s (ALIVE messages), then waits for us while we wait for it: no
    side's relay may keep the other's wait alive (ALIVE bytes do not count as a message
    arriving), so we time out about 0.5 s after the peer's last word."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def peer() -> None:
        with Channel(socket.create_connection(("127.0.0.1", port)), timeout=30) as channel:
            channel.start_session("server", 0.5)
            time.sleep(1.0)
            channel.recv_json()  # we never send: this waits until we close

    child = _fork(peer)
    try:
        listener.settimeout(60)
        sock, _ = listener.accept()
        with Channel(sock, timeout=0.5) as channel:
            channel.start_session("client", 0.5)
            began, last = time.monotonic(), []

            def heard(fields: dict[str, Any]) -> None:
                last.append(time.monotonic())
                if last[-1] - began > 10:  # the two relays keep each other talking
                    raise AssertionError("ALIVE messages for 10 s from a peer that waits")

            channel.alive = heard  # type: ignore[method-assign]
            with pytest.raises(M.PeerTimeout):
                channel.recv_json()
            assert last and time.monotonic() - last[-1] < 2.0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        listener.close()


def test_the_partys_last_message_survives_an_alive_it_never_read() -> None:
    remote, local = socket.socketpair()
    alive = HEADER.pack(MAGIC, VERSION, MessageKind.ALIVE, 2) + b"{}"
    handle = relay.start(local, "client", flush=5.0)
    try:
        remote.sendall(alive)  # forwarded to the party, which never reads it
        time.sleep(0.5)
        os.kill(handle.pid, signal.SIGSTOP)
        M.send_json(handle.sock, {"kind": "received"}, timeout=5)  # header, then payload
        handle.sock.close()  # the ALIVE still unread
        remote.sendall(alive)  # waits for the relay beside the party's message
        os.kill(handle.pid, signal.SIGCONT)
        got = M.recv_json(remote, timeout=10, max_bytes=1 << 10)
        assert got == {"kind": "received"}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(handle.pid, signal.SIGCONT)
        handle.close(5.0)
        remote.close()
