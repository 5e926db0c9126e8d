"""The server's side of an HE session once a client is accepted (`ServerSession`): the set-up
that makes it (`open_server`: hello, the client's shapes, layouts and embedding tables, the
public context and handshake) and what it does afterwards: receive encrypted inputs, run the
graph on ciphertexts (asking the client to refresh a masked tensor when a product finds no
level left, `protocols.he.refresh`), send encrypted tensors. The server never holds a key
that decrypts. `server_record` is what it writes to `server.json`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from protocols.he import messages
from protocols.he.engine import Engine
from protocols.he.layout import Layout
from protocols.he.params import CkksParams
from protocols.he.refresh import (
    CoefficientRefresher,
    MaskingRefresher,
    make_refresher,
)
from protocols.he.relayout import RelayoutRefresher, runnable_policy
from protocols.he.tensor import HeTensor
from secinfer.backends.he.channel import Channel, receive_grid
from secinfer.backends.he.choice import ParameterChoice, default_choice
from secinfer.backends.he.inputs import (
    embedding_table,
    input_specs,
    layouts_for,
    plan_inputs,
    server_input,
)
from secinfer.core.execute import Executor, RunResult
from secinfer.core.graph import Graph
from secinfer.core.plan import Plan
from secinfer.errors import UserError
from secinfer.report.he import latency_table

DEFAULT_PARAMS = CkksParams(8192, [60, 40, 40, 60], 40)
"""The CKKS parameters of an in-process session that is given no `ParameterChoice` (the
party entry point always chooses: `choice.choose_parameters`)."""


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
    refresher: RelayoutRefresher | MaskingRefresher | CoefficientRefresher | None
    mask_bits: int
    choice: ParameterChoice
    packing: str = "auto"  # the policy asked for (`relayout.runnable_policy`: the one run)
    step: str = ""  # prefixes the status of each node ("batch 3: ")

    def receive_inputs(self) -> tuple[Any, ...]:
        """The client's inputs for one run: encrypted tensors, or public values."""
        self.channel.set_status(f"{self.step}loading the encrypted inputs")
        inputs: list[Any] = []
        for spec in self.specs:
            if spec["mode"] == "public":
                values = self.channel.recv_json()["values"]
                inputs.append(torch.tensor(values).reshape(spec["shape"]))
                continue
            tensor = self.receive_tensor(Layout.from_dict(spec["layout"]))
            inputs.append(server_input(spec, tensor))
        return tuple(inputs)

    def receive_tensor(self, layout: Layout) -> HeTensor:
        grid = receive_grid(self.channel, layout)
        return HeTensor(self.engine, layout, grid, clean=True, refresher=self.refresher)

    def send_tensor(self, kind: str, tensor: HeTensor, **fields: Any) -> None:
        self.channel.send_json({"kind": kind, "layout": tensor.layout.to_dict(), **fields})
        self.channel.send_cts(list(tensor.grid.flat))

    def run(self, inputs: tuple[Any, ...], given: dict[str, Any] | None = None) -> RunResult:
        """The graph on `inputs` (and the user inputs in `given`, by name: a generation
        step's caches, as the previous run left them)."""
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
        hook = _NodeStatus(self.graph, self.channel, self.step)
        return executor.run(inputs, hook=hook, given=given)


def open_server(
    graph: Graph,
    plan: Plan,
    channel: Channel,
    allow_refresh: bool,
    public_embedding: bool,
    choice: ParameterChoice | CkksParams,
    check_inputs: Callable[[tuple[torch.Tensor, ...]], None] | None,
    evaluation: Announced | None,
    packing: str = "auto",
) -> ServerSession:
    """hello -> shapes -> layouts (and embedding tables) -> public context -> handshake.
    `choice`: the parameters and the refresh (bare `CkksParams`: `choice.default_choice`).
    `packing`: the policy of linear layers and attention (`protocols.he.relayout.POLICIES`);
    re-layouts ride on refreshes (`relayout.runnable_policy`), so a run without them is
    feature-major."""
    if isinstance(choice, CkksParams):
        choice = default_choice(choice, allow_refresh)
    specs = input_specs(graph, public_embedding)
    hello: dict[str, Any] = {"kind": "hello", "inputs": specs, "timeout": channel.timeout}
    if evaluation is not None:
        hello["evaluation"] = evaluation.announce()
    channel.send_json(hello)
    check_shapes(specs, channel.recv_json(), check_inputs)
    return establish(graph, plan, channel, specs, choice, allow_refresh, evaluation, packing)


def establish(
    graph: Graph,
    plan: Plan,
    channel: Channel,
    specs: list[dict[str, Any]],
    choice: ParameterChoice,
    allow_refresh: bool,
    evaluation: Announced | None = None,
    packing: str = "auto",
    *,
    follow: Any = None,
    announce: Callable[[CkksParams], dict[str, Any]] | None = None,
) -> ServerSession:
    """The set-up after the client's shapes (in `specs`): layouts (and embedding tables),
    the Galois keys of a dry run (`inputs.plan_inputs`; `follow` continues it, as a
    generation's steps do), the public context and handshake. `announce(params)` adds
    fields to the layouts message."""
    params = choice.params
    refresh = choice.refresh if allow_refresh else None
    reserve = refresh.reserve if refresh else 0
    policy = runnable_policy(refresh, packing)
    tables = {
        s["name"]: embedding_table(graph, s["name"]) for s in specs if s["mode"] == "embedded"
    }
    dim = next((int(t.shape[1]) for t in tables.values() if t is not None), None)
    layouts_for(graph, specs, dim, params.slots)
    rotations = plan_inputs(
        graph, plan, specs, params, evaluation, reserve, policy=policy, follow=follow
    )
    mask_bits = choice.mask_bits
    channel.send_json(
        {
            "kind": "layouts",
            "params": params.to_dict(),
            "inputs": specs,
            "mask_bits": mask_bits,
            "refresh": refresh.to_dict() if refresh else None,
            "galois_steps": rotations.keys,
            **(announce(params) if announce else {}),
        }
    )
    for name, table in tables.items():
        channel.send_json({"kind": "embedding", "name": name, "table": table.double().tolist()})
    channel.set_status("loading the public context")
    context, digest = channel.recv_context()
    if context.is_private():
        raise UserError("the client sent a context holding its secret key; refusing it")
    messages.verify_handshake(channel.recv_json(), digest)
    channel.context, channel.digest = context, digest
    engine = Engine(context, reserve=reserve)

    def transport(cts: list[Any], layout: Layout) -> list[Any]:
        channel.send_json({"kind": "refresh", "count": len(cts), "layout": layout.to_dict()})
        channel.send_cts(cts)
        return channel.recv_cts(len(cts))

    def relayout_transport(cts: list[Any], parts: list[dict[str, Any]], expected: int) -> list[Any]:
        channel.send_json({"kind": "relayout", "parts": parts})
        channel.send_cts(cts)
        return channel.recv_cts(expected)

    refresher: RelayoutRefresher | MaskingRefresher | CoefficientRefresher | None = None
    if refresh is not None:
        refresher = make_refresher(engine, transport, refresh)
        if policy is not None:
            refresher = RelayoutRefresher(refresher, relayout_transport, policy)
    return ServerSession(
        graph, plan, channel, params, specs, engine, refresher, mask_bits, choice, packing
    )


def packing_record(session: ServerSession) -> dict[str, Any]:
    """The report's `he.packing`: the policy asked for and the one run (with why, when they
    differ), re-layouts and the ciphertexts they moved, products by strategy."""
    refresher = session.refresher
    moving = refresher if isinstance(refresher, RelayoutRefresher) else None
    record: dict[str, Any] = {
        "asked": session.packing,
        "policy": moving.policy if moving else "feature_major",
        "relayouts": moving.relayouts if moving else 0,
        "relayout_ciphertexts": list(moving.relayout_ciphertexts) if moving else [0, 0],
        "products": moving.choices_summary() if moving else {},
    }
    if record["policy"] != session.packing:
        record["why"] = "refresh is off: no client round trip to re-lay out in"
    return record


def check_shapes(
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


class _NodeStatus:
    """The executor's hook: after each node, tell the channel which node runs next, so that
    the client and the server's log see "node i/n op" while a long node runs."""

    def __init__(self, graph: Graph, channel: Channel, prefix: str) -> None:
        self.ops = [node.op for node in graph.calls]
        self.channel, self.prefix, self.done = channel, prefix, 0
        self._tell()

    def _tell(self) -> None:
        if self.done < len(self.ops):
            op = self.ops[self.done]
            self.channel.set_status(f"{self.prefix}node {self.done + 1}/{len(self.ops)} {op}")

    def __call__(self, name: str, call: Any, value: Any) -> None:
        self.done += 1
        self._tell()


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
    session: ServerSession,
    result: RunResult,
) -> dict[str, Any]:
    """What the server writes to `server.json`: parameters and why, the hiding, counts,
    bytes, per-node costs."""
    params, engine, channel = session.params, session.engine, session.channel
    stats = session.refresher.stats if session.refresher else None
    usable = engine.top_level
    refreshed = stats.ciphertexts if stats else 0
    hiding = session.choice.hiding()
    if hiding["hiding_bits"] is not None and refreshed:
        masked = refreshed * (2 * engine.slots if hiding["mode"] == "coefficient" else engine.slots)
        hiding["masked_values"] = masked
        hiding["run_hiding_bits"] = hiding["hiding_bits"] - math.log2(masked)
    return {
        "role": "server",
        "params": params.to_dict(),
        "params_explained": params.explain(),
        "params_choice": session.choice.to_dict(),
        "hiding": hiding,
        "depth_per_context": usable,
        "reserved_levels": engine.reserve,
        "refreshes": stats.refreshes if stats else 0,
        "refreshed_ciphertexts": refreshed,
        "packing": packing_record(session),
        "levels_used": usable * (stats.refreshes + 1 if stats else 1),
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


__all__ = [
    "DEFAULT_PARAMS",
    "Announced",
    "ServerSession",
    "check_shapes",
    "establish",
    "open_server",
    "packing_record",
    "server_record",
]
