"""The server's side of an HE session once a client is accepted (`ServerSession`): the set-up
that makes it (`open_server`: hello, the client's shapes, layouts and embedding tables, the
public context and handshake) and what it does afterwards: receive encrypted inputs, run the
graph on ciphertexts (asking the client to refresh a masked tensor when a product finds no
level left, `protocols.he.refresh`), send encrypted tensors. The server never holds a key
that decrypts. `server_record` is what it writes to `server.json`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from protocols.he import messages
from protocols.he.engine import Engine
from protocols.he.layout import Layout
from protocols.he.params import CkksParams
from protocols.he.refresh import MaskingRefresher, default_mask_bits
from protocols.he.relayout import RelayoutRefresher
from protocols.he.tensor import HeTensor
from secinfer.backends.he.channel import MAX_MESSAGE, Channel, receive_grid
from secinfer.backends.he.inputs import embedding_table, input_specs, layouts_for, plan_inputs
from secinfer.core.execute import Executor, RunResult
from secinfer.core.graph import Graph
from secinfer.core.plan import Plan
from secinfer.errors import UserError
from secinfer.report.he import latency_table

DEFAULT_PARAMS = CkksParams(8192, [60, 40, 40, 60], 40)
"""The CKKS parameters a server uses unless told otherwise."""


class Announced(Protocol):
    """A private evaluation as the server's hello announces it
    (`secinfer.backends.he.evaluation.HeEvaluation`)."""

    def announce(self) -> dict[str, Any]: ...


@dataclass
class ServerSession:
    """The server's side once the keys are in: what runs the graph on the client's inputs."""

    graph: Graph
    plan: Plan
    channel: Channel
    params: CkksParams
    specs: list[dict[str, Any]]
    engine: Engine
    refresher: RelayoutRefresher | None
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


def open_server(
    graph: Graph,
    plan: Plan,
    channel: Channel,
    allow_refresh: bool,
    public_embedding: bool,
    params: CkksParams,
    check_inputs: Callable[[tuple[torch.Tensor, ...]], None] | None,
    evaluation: Announced | None,
    packing: str = "auto",
) -> ServerSession:
    """hello -> shapes -> layouts (and embedding tables) -> public context -> handshake.
    `packing`: the policy of linear layers and attention (`protocols.he.relayout.POLICIES`)."""
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
    rotations = plan_inputs(
        graph, plan, specs, params, evaluation, policy=packing if allow_refresh else None
    )
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
    context, digest = messages.recv_context_with_digest(
        channel.sock, timeout=channel.timeout, max_bytes=MAX_MESSAGE, counter=channel.counter
    )
    if context.is_private():
        raise UserError("the client sent a context holding its secret key; refusing it")
    messages.verify_handshake(channel.recv_json(), digest)
    channel.context, channel.digest = context, digest
    engine = Engine(context)

    def transport(cts: list[Any], layout: Layout) -> list[Any]:
        channel.send_json({"kind": "refresh", "count": len(cts), "layout": layout.to_dict()})
        channel.send_cts(cts)
        return channel.recv_cts(len(cts))

    def relayout_transport(cts: list[Any], parts: list[dict[str, Any]], expected: int) -> list[Any]:
        channel.send_json({"kind": "relayout", "parts": parts})
        channel.send_cts(cts)
        return channel.recv_cts(expected)

    refresher = None
    if allow_refresh:
        masking = MaskingRefresher(engine, transport, mask_bits)
        refresher = RelayoutRefresher(masking, relayout_transport, packing)
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


def server_record(
    graph: Graph,
    params: CkksParams,
    engine: Engine,
    refresher: RelayoutRefresher | None,
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
        "packing": {
            "policy": refresher.policy if refresher else "feature_major",
            "relayouts": refresher.relayouts if refresher else 0,
            "relayout_ciphertexts": list(refresher.relayout_ciphertexts) if refresher else [0, 0],
            "products": refresher.choices_summary() if refresher else {},
        },
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


__all__ = ["DEFAULT_PARAMS", "Announced", "ServerSession", "open_server", "server_record"]
