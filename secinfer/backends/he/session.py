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
replaces the single query by a loop over the client's batches: `serve` hands the opened
session to its `serve_evaluation`.

Here: the two entry points, `serve` (the server) and `query` (the client). Their parts: the
link and its vetting (`secinfer.backends.he.channel`: mutual TLS with the peer's role proven,
or a plain socket; a relay process per side tells the other it is working, so a timeout
measures silence, not work: `secinfer.backends.he.relay`), the server's session
(`secinfer.backends.he.server`) and the client's (`secinfer.backends.he.client`).

Records: the server writes `server.json` (parameters and why, refreshes, counts, bytes,
per-node costs), the client `client.json` (bytes each way) and `output.npy` (a private
evaluation: `aggregate.json` on the side that learns it), atomically.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protocols.he import messages
from protocols.he.params import CkksParams
from protocols.he.tensor import HeTensor
from protocols.tls import Link
from secinfer.backends.he.channel import (
    Channel,
    accept_client,
    connect,
    expect_hello,
    guarded,
)
from secinfer.backends.he.choice import ParameterChoice
from secinfer.backends.he.client import open_client
from secinfer.backends.he.evaluation import HeEvaluation, serve_evaluation
from secinfer.backends.he.inputs import parameter_reason
from secinfer.backends.he.server import DEFAULT_PARAMS, open_server, server_record
from secinfer.core.graph import Graph
from secinfer.core.plan import Plan
from secinfer.errors import UserError
from secinfer.report.files import write_json, write_npy


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
    params: CkksParams | ParameterChoice = DEFAULT_PARAMS,
    check_inputs: Callable[[tuple[torch.Tensor, ...]], None] | None = None,
    evaluation: HeEvaluation | None = None,
    link: Link,
    log: Callable[[str], None] | None = None,
    flood_bits: int = 0,
    packing: str = "auto",
) -> dict[str, Any]:
    """Accept one client (`accept_client`) and answer its query (module docstring); returns
    the record. `params`: the `choice.ParameterChoice` (parameters, refresh and why), or
    bare parameters with a slot-mode refresh. `check_inputs` sees placeholder tensors of
    the client's shapes and dtypes. With `evaluation` (a `HeEvaluation`) the session is a
    private evaluation. `flood_bits` > 0 floods the output (`protocols.he.flood`)."""
    channel = accept_client(listener, timeout, link, log)
    with channel:
        try:
            settings = (
                allow_refresh, public_embedding, params, check_inputs, evaluation, flood_bits
            )  # fmt: skip
            return _serve(graph, plan, channel, out_dir, *settings, packing)
        except Exception as exc:
            channel.send_error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise


def _serve(
    graph: Graph,
    plan: Plan,
    channel: Channel,
    out_dir: Path,
    allow_refresh: bool,
    public_embedding: bool,
    params: CkksParams | ParameterChoice,
    check_inputs: Callable[[tuple[torch.Tensor, ...]], None] | None,
    evaluation: HeEvaluation | None,
    flood_bits: int,
    packing: str,
) -> dict[str, Any]:
    began = time.perf_counter()
    session = open_server(
        graph, plan, channel, allow_refresh, public_embedding, params, check_inputs, evaluation,
        packing,
    )  # fmt: skip
    if evaluation is None:
        result = session.run(session.receive_inputs())
        output = result.outputs[0]
        if not isinstance(output, HeTensor):
            raise UserError("the model's output does not depend on the encrypted input")
        output.ensure_level(0)
        if flood_bits:
            output = flooded(session, output, flood_bits)
        channel.set_status("sending the output")
        session.send_tensor("output", output)
        if channel.recv_json().get("kind") != "received":
            raise messages.MessageError("the client did not confirm the output")
        extra: dict[str, Any] = {}
    else:
        result, extra = serve_evaluation(session, evaluation, out_dir)
    record = server_record(graph, session, result)
    record["params_reason"] = session.choice.reason or parameter_reason(
        graph, plan, session.params, allow_refresh
    )
    record["flood"] = flood_record(session, flood_bits) if evaluation is None else None
    record["plan"] = plan.to_dict()  # the plan that ran: the launcher's approx runs it
    if evaluation is not None:  # per-node figures are one batch's; the rest covers all
        record["last_batch"] = {k: record.pop(k) for k in ("run_seconds", "latency", "nodes")}
    record.update(extra)
    record["seconds"] = time.perf_counter() - began
    write_json(out_dir / "server.json", record)
    return record


def flooded(session: Any, output: HeTensor, flood_bits: int) -> HeTensor:
    """`output` with every ciphertext flooded (`protocols.he.flood`), at the bottom level."""
    from protocols.he.flood import flood

    grid = np.empty(output.grid.size, dtype=object)
    grid[:] = flood(session.engine, list(output.grid.flat), flood_bits)
    return HeTensor(
        session.engine, output.layout, grid.reshape(output.grid.shape), clean=output.clean,
        refresher=None,
    )  # fmt: skip


def flood_record(session: Any, flood_bits: int) -> dict[str, Any]:
    """The report's `flood` entry: the bits, the slot error it may add (2^-40 failure)."""
    from protocols.he.flood import FAILURE_BITS, slot_error_bound

    params = session.params
    if not flood_bits:
        return {"flood_bits": 0}
    return {
        "flood_bits": flood_bits,
        "slot_error_bound": slot_error_bound(
            flood_bits, params.poly_modulus_degree, params.scale_bits
        ),
        "failure_probability_bits": FAILURE_BITS,
        "explained": (
            f"integers uniform on +-2^{flood_bits} added to every output coefficient: an "
            f"output noise of at most 2^n per coefficient is hidden to 2^(n - {flood_bits + 1})"
        ),
    }


# --- client -------------------------------------------------------------------------------
def query(
    address: tuple[str, int],
    read_inputs: Callable[[list[str]], tuple[torch.Tensor, ...]],
    out_dir: Path,
    *,
    timeout: float,
    link: Link,
) -> np.ndarray:
    """Connect (over `link`), read the inputs (`read_inputs(input_names)`), encrypt them,
    answer refreshes, decrypt the output (module docstring)."""
    channel = connect(address, timeout, link)
    return guarded(channel, lambda: _query(channel, read_inputs, out_dir))


def _query(
    channel: Channel,
    read_inputs: Callable[[list[str]], tuple[torch.Tensor, ...]],
    out_dir: Path,
) -> np.ndarray:
    began = time.perf_counter()
    hello = expect_hello(channel)
    if "evaluation" in hello:
        raise UserError(
            "the server runs a private evaluation, this client sent a query: start the "
            "client with --eval-data (and the same --loss and --reveal-to)"
        )
    if "generation" in hello:
        raise UserError(
            "the server generates text, this client sent a query: start the client with "
            "--generate and the prompt's ids as --input"
        )
    inputs = read_inputs([spec["name"] for spec in hello["inputs"]])
    client = open_client(channel, inputs)
    channel.set_status("encrypting the inputs")
    client.send_inputs(inputs)
    message = client.await_message("output")
    channel.set_status("decrypting the output")
    output = client.receive_values(message, "the output")
    channel.send_json({"kind": "received"})
    write_npy(out_dir / "output.npy", output)
    write_json(out_dir / "client.json", client.record(began))
    return output


__all__ = ["DEFAULT_PARAMS", "Channel", "connect", "query", "serve"]
