"""One party of a secure session: what the model owner and the data owner each do.

  model owner  loads the model, calibrates the plan on its own sample data, sends the
               public architecture (weights zeroed) and the plan; offline, before any
               input exists, shares its weights and opens their Beaver masks once
               (`Seeder.prepare`); then, per query, learns the input's shapes and runs
               the graph on shares; gets nothing back.
  data owner   receives the architecture and plan, takes part in the offline phase,
               reads its inputs (one query each), and per query sends the input's shapes
               (or why it gives up), shares the input, runs the graph on shares and alone
               receives the output; says when it is done.
  dealer       serves Beaver triples and keeps reused masks (`protocols.mpc.runtime`).

Each party writes `<role>.json` (its traffic: setup, offline and the queries apart, per
node and in total) into its output directory; the data owner also writes `output.npy`
(`output-1.npy` ... for several queries). Files are written atomically: a failed run
leaves no half-written output.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protocols.mpc.fss_compare import KeySchedule, key_seconds
from protocols.mpc.meter import Meter, Traffic
from protocols.mpc.reveal import reveal_to
from protocols.mpc.runtime import PartySettings, Role, start_party, stop_party
from secinfer.backends.mpc import wire
from secinfer.backends.mpc.kernels.values import OneHot
from secinfer.backends.mpc.kernels.weights import open_weights
from secinfer.backends.parties import output_names
from secinfer.core import architecture
from secinfer.core.execute import Executor, RunResult
from secinfer.core.graph import Graph, build_graph
from secinfer.core.plan import Plan
from secinfer.core.registry import lookup
from secinfer.core.token_ids import token_id_inputs
from secinfer.errors import PartyError, UserError
from secinfer.load.checks import INPUT_DTYPES, input_specs
from secinfer.report.files import write_json, write_npy


class PeerAborted(PartyError):
    """The other party gave up, or sent what this party refuses (the reason is in the
    message): a peer failure, exit 1, as opposed to this party's own user error."""


@dataclass
class Seeder:
    """Shares placeholders: weights from the model owner, inputs from the data owner.

    Floating-point parameters and buffers are the model owner's secrets; integer ones
    (position ids) and non-persistent floating-point buffers (`Graph.public_owned`: rotary
    frequencies) are public architecture. The data owner's token ids (`vocab` names
    them) are shared as one-hot rows; its other integer inputs (attention masks, 0/1)
    and its floating-point inputs are shared as they are.
    """

    role: Role
    vocab: dict[str, int] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)
    public: set[str] = field(default_factory=set)  # `Graph.public_owned`: used as they are

    def prepare(self, *graphs: Graph) -> int:
        """The offline phase, before any input exists: share every floating-point weight
        and open once the masks of those that feed products (`mpc_weights`); returns how
        many weight masks were opened. Several graphs over the same weights (a decoder's
        prefill and step) share and open each weight once."""
        opened = 0
        for graph in graphs:
            self.public |= graph.public_owned
            for name, value in graph.owned.items():
                if name in self.public:
                    continue
                if value.is_floating_point() and name not in self.shared:
                    self.shared[name] = self._share(value, Role.MODEL_OWNER)
            opened += open_weights(graph, self.shared)
        return opened

    def owned(self, name: str, value: torch.Tensor) -> Any:
        if not value.is_floating_point() or name in self.public:
            return value
        if name in self.shared:
            return self.shared[name]
        return self._share(value, Role.MODEL_OWNER)

    def user(self, name: str, value: torch.Tensor) -> Any:
        if name in self.vocab:
            size = self.vocab[name]
            if self.role is Role.DATA_OWNER and (value.min() < 0 or value.max() >= size):
                raise UserError(f"input {name}: token ids must lie in [0, {size})")
            rows = torch.nn.functional.one_hot(value.long().clamp(0, size - 1), size)
            return OneHot(self._share(rows, Role.DATA_OWNER))
        return self._share(value, Role.DATA_OWNER)

    def _share(self, value: torch.Tensor, owner: Role) -> Any:
        from protocols.mpc.crypten_setup import import_crypten

        tensor = value.detach().float() if self.role is owner else torch.zeros(value.shape)
        return import_crypten().cryptensor(tensor, src=int(owner))


MAX_INPUT_ELEMENTS = 1 << 31


def placeholders(spec: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """Zero tensors of the shapes and dtypes the data owner announced (checked: a peer's
    message names no function and allocates no more than MAX_INPUT_ELEMENTS)."""
    shapes, dtypes = spec.get("shapes"), spec.get("dtypes")
    if not isinstance(shapes, list) or not isinstance(dtypes, list) or len(shapes) != len(dtypes):
        raise PeerAborted("the data owner sent a malformed input description")
    out = []
    for shape, dtype in zip(shapes, dtypes, strict=True):
        ok_shape = isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
        if not ok_shape or dtype not in INPUT_DTYPES or math.prod(shape) > MAX_INPUT_ELEMENTS:
            raise PeerAborted(f"the data owner announced an unusable input: {shape} {dtype}")
        out.append(torch.zeros(shape, dtype=INPUT_DTYPES[dtype]))
    return tuple(out)


def node_costs(result: RunResult) -> list[dict[str, Any]]:
    return [
        {
            "node": r.name,
            "op": r.op,
            "block": r.block,
            "seconds": r.seconds,
            **(r.cost.to_dict() if isinstance(r.cost, Traffic) else {}),
        }
        for r in result.records
    ]


@dataclass
class Offline:
    """What the offline phase left: the seeder holding the shared weights, its traffic,
    and the session's FSS key schedule (`protocols.mpc.fss_compare.KeySchedule`)."""

    seeder: Seeder
    traffic: Traffic
    seconds: float
    weights_opened: int
    keys: KeySchedule = field(default_factory=KeySchedule)


def offline_phase(graph: Graph, role: Role, meter: Meter) -> Offline:
    """Before any input exists: share the weights and open once the masks of those that
    feed products (`Seeder.prepare`), metered and timed."""
    before = meter.snapshot()
    began = time.perf_counter()
    seeder = Seeder(role, token_id_inputs(graph))
    opened = seeder.prepare(graph)
    return Offline(seeder, meter.snapshot() - before, time.perf_counter() - began, opened)


@dataclass
class Query:
    """One query's online phase on this party: its traffic, seconds and per-node costs;
    and what dealing its FSS keys ahead, before its input was shared, cost."""

    traffic: Traffic
    seconds: float
    nodes: list[dict[str, Any]]
    keys: Traffic = field(default_factory=Traffic)
    key_seconds: float = 0.0


def keys_ahead(offline: Offline, shapes: Hashable, meter: Meter) -> tuple[Traffic, float]:
    """Deal a query's FSS keys before its input is shared, when the session has seen its
    shapes (`KeySchedule.before`): (the traffic, the seconds)."""
    before = meter.snapshot()
    seconds = offline.keys.before(shapes)
    return meter.snapshot() - before, seconds


def input_shapes(inputs: tuple[torch.Tensor, ...]) -> tuple[tuple[int, ...], ...]:
    """The public shapes a query's FSS key requests depend on."""
    return tuple(tuple(int(n) for n in t.shape) for t in inputs)


def _run_query(
    graph: Graph,
    plan: Plan,
    inputs: tuple[torch.Tensor, ...],
    meter: Meter,
    offline: Offline,
) -> tuple[Query, torch.Tensor | None]:
    """Run the graph on shares once (an online phase, its FSS keys dealt ahead when the
    session knows its shapes); (its costs, the output on the data owner, None on the
    model owner)."""
    shapes = input_shapes(inputs)
    keys, key_seconds = keys_ahead(offline, shapes, meter)
    before = meter.snapshot()
    began = time.perf_counter()
    executor = Executor(graph, "mpc", plan, seeder=offline.seeder, meter=meter.snapshot)
    with offline.keys.during(shapes):
        result = executor.run(inputs)
    revealed = reveal_to(result.outputs[0], int(Role.DATA_OWNER))
    seconds = time.perf_counter() - began
    query = Query(meter.snapshot() - before, seconds, node_costs(result), keys, key_seconds)
    return query, revealed


def announced_queries() -> Iterator[dict[str, Any]]:
    """The model owner's side of the query loop: each description the data owner sends,
    until it says it is done (PeerAborted when it gives up instead)."""
    while True:
        spec = wire.receive_json(src=Role.DATA_OWNER)
        if "error" in spec:
            raise PeerAborted(f"the data owner gave up: {spec['error']}")
        if spec.get("done"):
            return
        yield spec


def announce_model(
    program: torch.export.ExportedProgram, graph: Graph, meta: dict[str, Any], meter: Meter
) -> Offline:
    """The model owner's opening of a session: the public architecture of `graph` (JSON,
    no weight, `secinfer.core.architecture`) and `meta` (the plan and any settings) to the data
    owner, whose answer carries the digest of what it received (or why it refuses); then
    the offline phase."""
    names = list(meta.get("input_names") or program.graph_signature.user_inputs)
    public = architecture.describe(
        graph, input_specs(program, names), names, str(meta.get("output_name", "output"))
    )
    wire.send_json(public, src=Role.MODEL_OWNER)
    wire.send_json(meta, src=Role.MODEL_OWNER)
    await_agreement(public, meta)
    return offline_phase(graph, Role.MODEL_OWNER, meter)


def await_agreement(public: Any, meta: dict[str, Any]) -> None:
    """The model owner's side, after sending `public` (the architecture, or several) and
    `meta`: the data owner's answer must carry their digest (PeerAborted when it refused
    them, or received something else)."""
    answer = wire.receive_json(src=Role.DATA_OWNER)
    if "error" in answer:
        raise PeerAborted(f"the data owner refused the session: {answer['error']}")
    if answer.get("digest") != session_digest(public, meta):
        raise PeerAborted(
            "the data owner received another architecture or plan than this model owner "
            f"sent (digest {str(answer.get('digest'))[:16]}..., sent "
            f"{session_digest(public, meta)[:16]}...): the link altered it"
        )


def receive_model(
    meter: Meter, check: Callable[[dict[str, Any]], None] | None = None
) -> tuple[architecture.Architecture, dict[str, Any], Graph, Plan, Offline]:
    """The data owner's side of `announce_model`: (architecture, meta, graph, plan,
    offline). The architecture is validated and rebuilt (`architecture.rebuild`) and
    `check(meta)` may refuse the settings (a UserError); a refusal is sent to the model
    owner and raised here, before anything is shared."""
    received = [wire.receive_bytes(src=Role.MODEL_OWNER) for _ in ("architecture", "meta")]
    try:
        try:
            message, meta = (wire.parse_json(data) for data in received)
            public = architecture.rebuild(message)
            plan = Plan.from_peer(meta.get("plan"), nonlinear_functions(public.graph))
        except (architecture.ArchitectureError, KeyError, TypeError, ValueError) as exc:
            raise PeerAborted(
                f"the model owner sent an architecture or plan this data owner refuses: {exc}"
            ) from None
        if check is not None:
            check(meta)
    except (UserError, PartyError) as exc:
        wire.send_json({"error": str(exc)}, src=Role.DATA_OWNER)
        raise
    wire.send_json({"digest": session_digest(message, meta)}, src=Role.DATA_OWNER)
    graph = public.graph
    return public, meta, graph, plan, offline_phase(graph, Role.DATA_OWNER, meter)


def nonlinear_functions(graph: Graph) -> dict[str, str | None]:
    """Each op node of `graph` -> the function its op approximates (registry), or None."""
    found: dict[str, str | None] = {}
    for node in graph.calls:
        spec = lookup(node.op)
        found[node.name] = spec.function if spec is not None else None
    return found


def session_digest(public: dict[str, Any], meta: dict[str, Any]) -> str:
    """SHA-256 of the architecture and the plan with settings, as canonical JSON."""
    text = json.dumps([public, meta], sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def run_model_owner(
    settings: PartySettings,
    program: torch.export.ExportedProgram,
    plan: Plan,
    meta: dict[str, Any],
    out_dir: Path,
) -> dict[str, Any]:
    """The model owner's side: the offline phase, then the data owner's queries until it
    says it is done; returns (and writes) its cost record."""
    graph = build_graph(program)
    start_party(Role.MODEL_OWNER, settings)
    meter = Meter().install()
    queries: list[Query] = []
    try:
        offline = announce_model(program, graph, {"plan": plan.to_dict(), **meta}, meter)
        for spec in announced_queries():
            query, _ = _run_query(graph, plan, placeholders(spec), meter, offline)
            queries.append(query)
        record = party_record(Role.MODEL_OWNER, meter, offline, queries)
        record["plan"] = plan.to_dict()  # the plan that ran: the launcher's approx runs it
    finally:
        meter.remove()
        stop_party()
    write_json(out_dir / f"{Role.MODEL_OWNER.label}.json", record)
    return record


def run_data_owner(
    settings: PartySettings,
    read_queries: Any,
    out_dir: Path,
) -> dict[str, Any]:
    """The data owner's side. `read_queries(architecture, meta)` returns one tuple of input
    tensors per query (it may raise UserError, which is sent to the model owner before
    re-raising). All queries run in one session after one offline phase: the weights'
    masks are opened once for all of them. Writes `output.npy` for one query,
    `output-1.npy` ... `output-<n>.npy` for several."""
    start_party(Role.DATA_OWNER, settings)
    meter = Meter().install()
    queries: list[Query] = []
    outputs: list[np.ndarray] = []
    try:
        public, meta, graph, plan, offline = receive_model(meter)
        try:
            inputs_each = [tuple(inputs) for inputs in read_queries(public, meta)]
        except UserError as exc:
            wire.send_json({"error": str(exc)}, src=Role.DATA_OWNER)
            raise
        for inputs in inputs_each:
            wire.send_json(
                {
                    "shapes": [list(t.shape) for t in inputs],
                    "dtypes": [str(t.dtype).removeprefix("torch.") for t in inputs],
                },
                src=Role.DATA_OWNER,
            )
            query, revealed = _run_query(graph, plan, inputs, meter, offline)
            queries.append(query)
            outputs.append(revealed.float().numpy())
        wire.send_json({"done": True}, src=Role.DATA_OWNER)
        record = party_record(Role.DATA_OWNER, meter, offline, queries)
    finally:
        meter.remove()
        stop_party()
    names = output_names(len(outputs))
    for name, output in zip(names, outputs, strict=True):
        write_npy(out_dir / name, output)
    write_json(out_dir / f"{Role.DATA_OWNER.label}.json", record)
    return record


def party_record(
    role: Role, meter: Meter, offline: Offline, queries: list[Query]
) -> dict[str, Any]:
    """setup: agreeing on architecture, plan and shapes; offline: the weights, before any
    input existed, once per session; keys_ahead: FSS keys dealt before a query's input
    was shared (queries whose shapes the session had seen); run: the online phases of all
    queries together; queries: each one's online traffic and seconds; nodes: the first
    query's per-node costs (every query of the same shape costs the same)."""
    online = sum((q.traffic for q in queries), Traffic())
    keys = sum((q.keys for q in queries), Traffic())
    return {
        "role": role.label,
        "seconds": sum(q.seconds for q in queries),
        "setup": (meter.snapshot() - offline.traffic - online - keys).to_dict(),
        "offline": {
            **offline.traffic.to_dict(),
            "seconds": offline.seconds,
            "weights_opened": offline.weights_opened,
        },
        "keys_ahead": {**keys.to_dict(), "seconds": sum(q.key_seconds for q in queries)},
        "fss_key_seconds": key_seconds(),
        "run": online.to_dict(),
        "queries": [
            {"seconds": q.seconds, "key_seconds_ahead": q.key_seconds, **q.traffic.to_dict()}
            for q in queries
        ],
        "nodes": queries[0].nodes if queries else [],
    }


__all__ = [
    "Offline",
    "PeerAborted",
    "Query",
    "Seeder",
    "announce_model",
    "await_agreement",
    "input_shapes",
    "keys_ahead",
    "offline_phase",
    "receive_model",
    "run_data_owner",
    "run_model_owner",
]
