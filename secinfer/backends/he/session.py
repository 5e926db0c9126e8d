"""An HE session: the client (data owner) and the server (model owner), one process each.

  server  loads the model, calibrates and plans it for `he`, listens on a socket; tells the
          client the CKKS parameters and how to pack each input (`Layout`); receives the
          public context (relinearisation and Galois keys, no secret key) and the encrypted
          inputs; runs the graph on ciphertexts; when a product finds no level left it asks
          the client to refresh a masked tensor (`protocols.he.refresh`); sends the
          encrypted output. It never holds a key that decrypts.
  client  owns the input and the secret key; encrypts, answers refreshes (it sees masked
          values only), decrypts the output alone.

Inputs: a float input is encrypted; token ids that feed an embedding are encrypted as a
one-hot encoding over the vocabulary (`public_embedding=False`, the default) or looked up
by the client in the table the server then sends (`public_embedding=True`: the table is
public, the server gets the embedded vectors encrypted); other integer inputs (attention
masks, token types) are public (their values travel in clear: padding is visible).

A private evaluation (`secinfer.backends.he.evaluation`) uses the same set-up (the hello then
carries the evaluation's settings, and the keys include the rotations that sum over rows) and
replaces the single query by a loop over the client's batches.

The link: with a `protocols.tls.Link` holding an identity, every connection is mutual TLS 1.3
and the peer must prove its role (the server is the model owner, the client the data owner,
`tls.HE_ROLES`) before a byte of the session is read; without one it is a plain socket
(`--insecure-channel`). The client speaks first, a `GREETING`; the server accepts connections
until one passes the handshake, the role check and the greeting within its timeout, logging
one line per refused connection (a port scanner, a browser, a peer with the wrong
certificate), and only then sends its hello: nothing of the session goes to anyone else.

Records: the server writes `server.json` (parameters and why, refreshes, counts, bytes,
per-node costs), the client `client.json` (bytes each way) and `output.npy` (a private
evaluation: `aggregate.json` on the side that learns it), atomically.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protocols.he import messages as M
from protocols.he.codec import Codec
from protocols.he.engine import Engine
from protocols.he.galois import public_context_with_steps
from protocols.he.layout import Layout
from protocols.he.params import CkksParams, make_context
from protocols.he.refresh import MaskingRefresher, default_mask_bits
from protocols.he.tensor import HeTensor
from protocols.tls import HE_ROLES, AuthenticationError, Link, describe_refusal
from secinfer.backends.he.inputs import (
    embedding_table,
    input_specs,
    layouts_for,
    parameter_reason,
    rotation_plan,
)
from secinfer.core.execute import Executor, RunResult
from secinfer.core.graph import Graph
from secinfer.core.plan import Plan
from secinfer.errors import PartyError, UserError
from secinfer.report.files import write_json, write_npy
from secinfer.report.he import latency_table

DEFAULT_PARAMS = CkksParams(8192, [60, 40, 40, 60], 40)
MAX_MESSAGE = 1 << 31
GREETING = {"kind": "greeting", "protocol": "secinfer-he"}
"""The client's first message, after the TLS handshake: a connection that sends anything
else first is not a client (`accept_client`)."""
GREETING_MAX_BYTES = 4096
HANDSHAKE_SECONDS = 10.0
"""Bound on one connection's TLS handshake and greeting, within the server's timeout."""
MAX_VETTING = 16
"""Connections vetted at once (each in its own thread); more are closed at once."""
PLAIN = Link(None)
"""A plain socket: the `--insecure-channel` link, and the default of the functions here."""


class Channel:
    """A connected socket with its timeout, traffic counter and context digest."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self.counter = M.Counter()
        self.digest = b""
        self.context: Any = None

    def send_json(self, message: dict[str, Any]) -> None:
        M.send_json(self.sock, message, timeout=self.timeout, counter=self.counter)

    def recv_json(self) -> dict[str, Any]:
        return M.recv_json(
            self.sock, timeout=self.timeout, max_bytes=MAX_MESSAGE, counter=self.counter
        )

    def send_cts(self, cts: list[Any]) -> None:
        M.send_ciphertexts(
            self.sock,
            cts,
            self.context,
            context_digest=self.digest,
            timeout=self.timeout,
            counter=self.counter,
        )

    def recv_cts(self, count: int) -> list[Any]:
        return M.recv_ciphertexts(
            self.sock,
            self.context,
            timeout=self.timeout,
            max_bytes=MAX_MESSAGE,
            expected_context_digest=self.digest,
            count=count,
            counter=self.counter,
        )

    def send_error(self, reason: str) -> None:
        with contextlib.suppress(OSError):
            M.send_error(self.sock, reason, timeout=5.0, counter=self.counter)


# --- server -------------------------------------------------------------------------------
def serve(
    graph: Graph,
    plan: Plan,
    listener: socket.socket,
    out_dir: Path,
    *,
    timeout: float,
    allow_refresh: bool = True,
    public_embedding: bool = False,
    params: CkksParams = DEFAULT_PARAMS,
    check_inputs: Callable[[tuple[torch.Tensor, ...]], None] | None = None,
    evaluation: Any = None,
    link: Link = PLAIN,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Accept one client (`accept_client`) and answer its query (module docstring); returns
    the record. `check_inputs` sees placeholder tensors of the client's shapes and dtypes.
    With `evaluation` (a `he_eval.HeEvaluation`) the session is a private evaluation."""
    channel = accept_client(listener, timeout, link, log)
    with channel.sock:
        try:
            settings = (allow_refresh, public_embedding, params, check_inputs, evaluation)
            return _serve(graph, plan, channel, out_dir, *settings)
        except Exception as exc:
            channel.send_error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise


def accept_client(
    listener: socket.socket,
    timeout: float,
    link: Link = PLAIN,
    log: Callable[[str], None] | None = None,
) -> Channel:
    """The first connection within `timeout` seconds that completes the TLS handshake, proves
    the data owner's certificate (`link`) and sends the `GREETING`; every other connection is
    closed with one line to `log` (default: stderr) and the server goes on listening. Each
    connection is vetted in its own thread (at most MAX_VETTING at once, each within
    HANDSHAKE_SECONDS), so connections that stay silent cannot keep the real client out.
    Raises `PartyError` when no such client came in time."""
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    deadline = time.monotonic() + timeout
    passed: queue.Queue[Channel] = queue.Queue()
    chosen = threading.Event()
    vetting = threading.BoundedSemaphore(MAX_VETTING)

    def vet(sock: socket.socket, where: str) -> None:
        try:
            bound = max(min(HANDSHAKE_SECONDS, deadline - time.monotonic()), 1e-3)
            try:
                secured = link.accept(sock, HE_ROLES["client"], bound)
            except (ssl.SSLError, AuthenticationError, OSError) as exc:
                say(f"server: refused a connection from {where}: {describe_refusal(exc)}")
                return
            channel = Channel(secured, timeout)
            try:
                _expect_greeting(channel, bound)
            except (M.MessageError, M.PeerError, M.PeerTimeout, OSError) as exc:
                secured.close()
                say(f"server: refused a connection from {where}: no client greeting ({exc})")
                return
            if chosen.is_set():  # another client already passed: one session at a time
                secured.close()
                return
            passed.put(channel)
        finally:
            vetting.release()

    while True:
        with contextlib.suppress(queue.Empty):
            channel = passed.get_nowait()
            chosen.set()
            return channel
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PartyError(
                f"server: no {'authenticated ' if link.secure else ''}client connected "
                f"within {timeout:g} s"
            )
        listener.settimeout(min(remaining, 0.1))
        try:
            sock, (host, port, *_) = listener.accept()
        except TimeoutError:
            continue
        if not vetting.acquire(blocking=False):
            sock.close()
            say(f"server: refused a connection from {host}:{port}: too many at once")
            continue
        threading.Thread(target=vet, args=(sock, f"{host}:{port}"), daemon=True).start()


def _expect_greeting(channel: Channel, timeout: float) -> None:
    message = M.recv_json(
        channel.sock, timeout=timeout, max_bytes=GREETING_MAX_BYTES, counter=channel.counter
    )
    if {k: message.get(k) for k in GREETING} != GREETING:
        raise M.MessageError(f"got {str(message)[:80]}")


@dataclass
class ServerSession:
    """The server's side once the keys are in: what runs the graph on the client's inputs."""

    graph: Graph
    plan: Plan
    channel: Channel
    params: CkksParams
    specs: list[dict[str, Any]]
    engine: Engine
    refresher: MaskingRefresher | None
    mask_bits: int

    def receive_inputs(self) -> tuple[Any, ...]:
        """The client's inputs for one run: encrypted tensors, or public values."""
        inputs: list[Any] = []
        for spec in self.specs:
            if spec["mode"] == "public":
                values = self.channel.recv_json()["values"]
                inputs.append(torch.tensor(values).reshape(spec["shape"]))
                continue
            layout = Layout.from_dict(spec["layout"])
            tensor = self.receive_tensor(layout)
            tensor.embedded = spec["mode"] == "embedded"
            inputs.append(tensor)
        return tuple(inputs)

    def receive_tensor(self, layout: Layout) -> HeTensor:
        grid = receive_grid(self.channel, layout)
        return HeTensor(self.engine, layout, grid, clean=True, refresher=self.refresher)

    def send_tensor(self, kind: str, tensor: HeTensor, **fields: Any) -> None:
        self.channel.send_json({"kind": kind, "layout": tensor.layout.to_dict(), **fields})
        self.channel.send_cts(list(tensor.grid.flat))

    def run(self, inputs: tuple[Any, ...]) -> RunResult:
        refresher, engine = self.refresher, self.engine

        def meter() -> _Counts:
            stats = refresher.stats if refresher else None
            return _Counts(
                **engine.cost.to_dict(),
                key_switches=engine.key_switches,
                refreshes=stats.refreshes if stats else 0,
                refresh_seconds=stats.seconds if stats else 0.0,
            )

        executor = Executor(self.graph, "he", self.plan, seeder=_ServerSeeder(), meter=meter)
        return executor.run(inputs)


def _serve(
    graph: Graph,
    plan: Plan,
    channel: Channel,
    out_dir: Path,
    allow_refresh: bool,
    public_embedding: bool,
    params: CkksParams,
    check_inputs: Callable[[tuple[torch.Tensor, ...]], None] | None,
    evaluation: Any,
) -> dict[str, Any]:
    began = time.perf_counter()
    session = _open_server(
        graph, plan, channel, allow_refresh, public_embedding, params, check_inputs, evaluation
    )
    if evaluation is None:
        result = session.run(session.receive_inputs())
        output = result.outputs[0]
        if not isinstance(output, HeTensor):
            raise UserError("the model's output does not depend on the encrypted input")
        output.ensure_level(0)
        session.send_tensor("output", output)
        if channel.recv_json().get("kind") != "received":
            raise M.MessageError("the client did not confirm the output")
        extra: dict[str, Any] = {}
    else:
        from secinfer.backends.he.evaluation import serve_evaluation

        result, extra = serve_evaluation(session, evaluation, out_dir)
    record = _server_record(graph, params, session.engine, session.refresher, result, channel)
    record["params_reason"] = parameter_reason(graph, plan, params, allow_refresh)
    record["plan"] = plan.to_dict()  # the plan that ran: the launcher's approx runs it
    if evaluation is not None:  # per-node figures are one batch's; the rest covers all
        record["last_batch"] = {k: record.pop(k) for k in ("run_seconds", "latency", "nodes")}
    record.update(extra)
    record["seconds"] = time.perf_counter() - began
    write_json(out_dir / "server.json", record)
    return record


def _open_server(
    graph: Graph,
    plan: Plan,
    channel: Channel,
    allow_refresh: bool,
    public_embedding: bool,
    params: CkksParams,
    check_inputs: Callable[[tuple[torch.Tensor, ...]], None] | None,
    evaluation: Any,
) -> ServerSession:
    """hello -> shapes -> layouts (and embedding tables) -> public context -> handshake."""
    specs = input_specs(graph, public_embedding)
    hello: dict[str, Any] = {"kind": "hello", "inputs": specs}
    if evaluation is not None:
        hello["evaluation"] = evaluation.announce()
    channel.send_json(hello)
    _check_shapes(specs, channel.recv_json(), check_inputs)
    tables = {
        s["name"]: embedding_table(graph, s["name"]) for s in specs if s["mode"] == "embedded"
    }
    dim = next((int(t.shape[1]) for t in tables.values() if t is not None), None)
    layouts_for(graph, specs, dim, params.slots)
    rotations = rotation_plan(graph, plan, specs, params, evaluation)
    mask_bits = default_mask_bits(params.coeff_mod_bit_sizes[0], params.scale_bits)
    channel.send_json(
        {
            "kind": "layouts",
            "params": params.to_dict(),
            "inputs": specs,
            "mask_bits": mask_bits,
            "galois_steps": rotations.keys,
        }
    )
    for name, table in tables.items():
        channel.send_json({"kind": "embedding", "name": name, "table": table.double().tolist()})
    context, digest = M.recv_context_with_digest(
        channel.sock, timeout=channel.timeout, max_bytes=MAX_MESSAGE, counter=channel.counter
    )
    if context.is_private():
        raise UserError("the client sent a context holding its secret key; refusing it")
    M.verify_handshake(channel.recv_json(), digest)
    channel.context, channel.digest = context, digest
    engine = Engine(context)

    def transport(cts: list[Any], layout: Layout) -> list[Any]:
        channel.send_json({"kind": "refresh", "count": len(cts), "layout": layout.to_dict()})
        channel.send_cts(cts)
        return channel.recv_cts(len(cts))

    refresher = MaskingRefresher(engine, transport, mask_bits) if allow_refresh else None
    return ServerSession(graph, plan, channel, params, specs, engine, refresher, mask_bits)


def _check_shapes(
    specs: list[dict[str, Any]],
    message: dict[str, Any],
    check_inputs: Callable[[tuple[torch.Tensor, ...]], None] | None,
) -> None:
    """The client's input shapes and dtypes, checked against the model; stored in `specs`."""
    shapes, dtypes = message.get("shapes"), message.get("dtypes")
    if message.get("kind") != "shapes" or not isinstance(shapes, list) or len(shapes) != len(specs):
        raise UserError(f"the model takes {len(specs)} inputs; the client announced {shapes}")
    placeholders = []
    for spec, shape, dtype in zip(specs, shapes, dtypes or [], strict=False):
        if not (isinstance(shape, list) and all(isinstance(n, int) and n > 0 for n in shape)):
            raise UserError(f"input {spec['name']}: shape {shape} is not a list of sizes")
        spec["shape"] = shape
        kind = torch.float32 if dtype == "float" else torch.int64
        placeholders.append(torch.zeros(shape, dtype=kind))
    if check_inputs is not None:
        check_inputs(tuple(placeholders))


class _ServerSeeder:
    """The model owner's tensors enter the run in plain float64."""

    def owned(self, name: str, value: torch.Tensor) -> Any:
        return value.double() if value.is_floating_point() else value

    def user(self, name: str, value: Any) -> Any:
        return value


class _Counts(dict):
    """Counter snapshot; `after - before` is a node's share."""

    def __sub__(self, other: dict[str, Any]) -> dict[str, Any]:
        return {k: self[k] - other.get(k, 0) for k in self}


def receive_grid(channel: Channel, layout: Layout) -> np.ndarray:
    """The ciphertexts of one tensor in `layout`, as its grid."""
    cts = channel.recv_cts(int(np.prod(layout.grid_shape)))
    grid = np.empty(len(cts), dtype=object)
    grid[:] = cts
    return grid.reshape(layout.grid_shape)


def _server_record(
    graph: Graph,
    params: CkksParams,
    engine: Engine,
    refresher: MaskingRefresher | None,
    result: RunResult,
    channel: Channel,
) -> dict[str, Any]:
    stats = refresher.stats if refresher else None
    return {
        "role": "server",
        "params": params.to_dict(),
        "params_explained": params.explain(),
        "depth_per_context": params.depth,
        "refreshes": stats.refreshes if stats else 0,
        "refreshed_ciphertexts": stats.ciphertexts if stats else 0,
        "levels_used": params.depth * (stats.refreshes + 1 if stats else 1),
        "counts": {**engine.cost.to_dict(), "key_switches": engine.key_switches},
        "bytes_sent": channel.counter.bytes_sent,
        "bytes_received": channel.counter.bytes_received,
        "messages_sent": channel.counter.messages_sent,
        "run_seconds": result.seconds,
        "latency": latency_table(result.records),
        "nodes": [
            {"name": r.name, "op": r.op, "module": r.module, "seconds": r.seconds, "cost": r.cost}
            for r in result.records
        ],
        "nodes_total": len(graph.calls),
    }


# --- client -------------------------------------------------------------------------------
def connect(address: tuple[str, int], timeout: float, link: Link = PLAIN) -> Channel:
    """The client's connection, retried until `timeout` (the server may start later); under
    TLS the server must prove the model owner's certificate before anything is sent; then
    the `GREETING` goes out. A server that fails the check raises `PartyError` at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection(address, timeout=timeout)
        except OSError:
            if time.monotonic() > deadline:
                raise PartyError(
                    f"client: no server at {address[0]}:{address[1]} within {timeout:g} s"
                ) from None
            time.sleep(0.2)
            continue
        expected = HE_ROLES["server"]
        try:
            secured = link.connect(sock, expected, timeout)
        except (ssl.SSLError, AuthenticationError, TimeoutError) as exc:
            raise PartyError(
                f"client: the server at {address[0]}:{address[1]} did not prove it is the "
                f"{expected}: {describe_refusal(exc)}"
            ) from None
        channel = Channel(secured, timeout)
        channel.send_json(GREETING)
        return channel


def guarded(channel: Channel, work: Callable[[], Any]) -> Any:
    """Run the client's `work`; on its own failure tell the server why, then re-raise."""
    with channel.sock:
        try:
            return work()
        except M.PeerError:
            raise
        except Exception as exc:
            channel.send_error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise


def query(
    address: tuple[str, int],
    read_inputs: Callable[[list[str]], tuple[torch.Tensor, ...]],
    out_dir: Path,
    *,
    timeout: float,
    link: Link = PLAIN,
) -> np.ndarray:
    """Connect (over `link`), read the inputs (`read_inputs(input_names)`), encrypt them,
    answer refreshes, decrypt the output (module docstring)."""
    channel = connect(address, timeout, link)
    return guarded(channel, lambda: _query(channel, read_inputs, out_dir))


@dataclass
class ClientSession:
    """The client's side once its keys are made: encrypts, refreshes, decrypts."""

    channel: Channel
    codec: Codec
    specs: list[dict[str, Any]]
    tables: dict[str, np.ndarray]
    bound: float
    context_bytes: int
    refreshes: int = 0

    def send_inputs(self, inputs: tuple[torch.Tensor, ...]) -> None:
        for spec, value in zip(self.specs, inputs, strict=True):
            if spec["mode"] == "public":
                self.channel.send_json({"values": value.reshape(-1).tolist()})
                continue
            self.send_values(_client_values(spec, value, self.tables), spec["layout"])

    def send_values(self, values: np.ndarray, layout: dict[str, Any]) -> None:
        cts = self.codec.encrypt(values, Layout.from_dict(layout), seeded=True)
        self.channel.send_cts(list(cts.flat))

    def await_message(self, kind: str) -> dict[str, Any]:
        """Answer refreshes until the server sends a message of `kind`; return it."""
        while True:
            message = self.channel.recv_json()
            if message.get("kind") == kind:
                return message
            if message.get("kind") != "refresh":
                raise M.MessageError(f"unexpected message {message.get('kind')!r}")
            masked = self.channel.recv_cts(int(message["count"]))
            used = Layout.from_dict(message["layout"]).positions().reshape(-1)
            fresh = []
            for ct in masked:
                values = np.zeros(self.codec.slots)
                slots = self.codec.decrypt_slots(ct)[used]
                values[used] = _plausible(slots, self.bound, "a refresh")
                fresh.append(self.codec.encrypt_slots(values, seeded=True))
            self.channel.send_cts(fresh)
            self.refreshes += 1

    def receive_values(self, message: dict[str, Any], what: str) -> np.ndarray:
        """Decrypt the tensor that follows `message` (which carries its layout)."""
        layout = Layout.from_dict(message["layout"])
        grid = receive_grid(self.channel, layout)
        return _plausible(self.codec.decrypt(grid, layout), self.bound, what)

    def record(self, began: float) -> dict[str, Any]:
        return {
            "role": "client",
            "refreshes_answered": self.refreshes,
            "bytes_sent": self.channel.counter.bytes_sent,
            "bytes_received": self.channel.counter.bytes_received,
            "public_context_bytes": self.context_bytes,
            "seconds": time.perf_counter() - began,
        }


def open_client(channel: Channel, inputs: tuple[torch.Tensor, ...]) -> ClientSession:
    """shapes -> layouts (and embedding tables) -> keys made here, public context sent."""
    channel.send_json(
        {
            "kind": "shapes",
            "shapes": [list(t.shape) for t in inputs],
            "dtypes": ["float" if t.is_floating_point() else "int" for t in inputs],
        }
    )
    plan = expect_kind(channel, "layouts")
    params = CkksParams.from_dict(plan["params"])
    specs = plan["inputs"]
    tables = {}
    for spec in specs:
        if spec["mode"] == "embedded":
            message = expect_kind(channel, "embedding")
            tables[message["name"]] = np.asarray(message["table"], dtype=np.float64)
    context = make_context(params, galois_steps=[])
    public = public_context_with_steps(context, plan["galois_steps"])
    digest = M.send_context_bytes(
        channel.sock, public, timeout=channel.timeout, counter=channel.counter
    )
    context_bytes = channel.counter.bytes_sent
    channel.send_json(M.handshake_message(digest))
    channel.context, channel.digest = context, digest
    bound = 2.0 ** (int(plan["mask_bits"]) + 1)
    return ClientSession(channel, Codec(context), specs, tables, bound, context_bytes)


def _query(
    channel: Channel,
    read_inputs: Callable[[list[str]], tuple[torch.Tensor, ...]],
    out_dir: Path,
) -> np.ndarray:
    began = time.perf_counter()
    hello = expect_kind(channel, "hello")
    if "evaluation" in hello:
        raise UserError(
            "the server runs a private evaluation, this client sent a query: start the "
            "client with --eval-data (and the same --loss and --reveal-to)"
        )
    inputs = read_inputs([spec["name"] for spec in hello["inputs"]])
    client = open_client(channel, inputs)
    client.send_inputs(inputs)
    output = client.receive_values(client.await_message("output"), "the output")
    channel.send_json({"kind": "received"})
    write_npy(out_dir / "output.npy", output)
    write_json(out_dir / "client.json", client.record(began))
    return output


FOREIGN = 1e15
"""Decrypted magnitude above which a ciphertext is taken as foreign or damaged (those decrypt
to about 1e31), not as a computed value that outgrew the message space."""


def _plausible(values: np.ndarray, bound: float, what: str) -> np.ndarray:
    """Decrypted values beyond twice the refresh mask's bound (itself a quarter of the
    message space) are refused. CKKS decrypts a ciphertext not made under this key, or
    damaged, to huge numbers (about 1e31) rather than failing; a moderately large value
    (below FOREIGN) is a value the model computed that outgrew the message space: an input
    far outside the range the plan was calibrated on."""
    worst = float(np.max(np.abs(values))) if values.size else 0.0
    if np.isfinite(worst) and bound < worst < FOREIGN:
        raise M.MessageError(
            f"{what} decrypted to {worst:.3g}, beyond the message space (|x| <= {bound:g}): "
            "a value the model computed outgrew it, so the input lies far outside the range "
            "the plan was calibrated on; bring the input into that range"
        )
    if not np.isfinite(worst) or worst > bound:
        raise M.MessageError(
            f"{what} decrypted to {worst:.3g}, beyond the message space (|x| <= {bound:g}): "
            "a ciphertext not made under this key, or damaged on the way"
        )
    return values


def expect_kind(channel: Channel, kind: str) -> dict[str, Any]:
    message = channel.recv_json()
    if message.get("kind") != kind:
        raise M.MessageError(f"expected a {kind!r} message, got {message.get('kind')!r}")
    return message


def _client_values(
    spec: dict[str, Any], value: torch.Tensor, tables: dict[str, np.ndarray]
) -> np.ndarray:
    if spec["mode"] == "encrypted":
        return value.detach().double().numpy()
    ids = value.detach().long().numpy()
    vocab = int(spec["vocab"])
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= vocab:
        raise UserError(f"input {spec['name']}: token ids outside [0, {vocab})")
    if spec["mode"] == "one_hot":
        return np.eye(vocab)[ids]
    return tables[spec["name"]][ids]
