"""The executor: one interpreter for every backend (the torch.fx Interpreter pattern).

`Executor(graph, backend, plan).run(inputs)` walks the nodes in order: placeholders are
seeded with the model owner's tensors and the data owner's inputs; each call is
dispatched to the registry's kernel for the backend with the plan's choice for the node;
values are freed after their last use. The executor knows nothing about cryptography.
Failures are re-raised naming the node, its op and the module it came from.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch.fx.node import map_arg

import secinfer.core.kernels  # noqa: F401 - registers the local backends' kernels
from secinfer.core.graph import Graph, op_name
from secinfer.core.plan import Plan
from secinfer.core.registry import REGISTRY, Call, RangeStats, lookup, supported_backends
from secinfer.errors import UserError

FLOAT = {"approx": torch.float64}  # backends that compute in a dtype of their own
Hook = Callable[[str, Call, Any], None]


class Seeder(Protocol):
    """Turns placeholder tensors into a backend's values (the mpc backend shares them)."""

    def owned(self, name: str, value: torch.Tensor) -> Any:
        """A model owner's parameter, buffer or constant."""

    def user(self, name: str, value: torch.Tensor) -> Any:
        """A data owner's input."""


Meter = Callable[[], Any]
"""Returns a snapshot of a secure backend's cost counters; differences are per node."""


class UnsupportedOpError(UserError):
    """The graph holds an op that the chosen backend has no kernel for."""


class ExecutionError(RuntimeError):
    """A kernel failed; the message names the node, op and module."""


@dataclass
class NodeRecord:
    """What one node cost and saw."""

    name: str
    op: str
    module: str
    block: str
    seconds: float
    stats: RangeStats
    cost: Any = None  # the meter's difference over this node (secure backends)


@dataclass
class RunResult:
    outputs: list[Any]
    seconds: float
    records: list[NodeRecord]
    watched: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def out_of_range(self) -> int:
        return sum(r.stats.count for r in self.records)


def check_supported(graph: Graph, backend: str) -> None:
    """Raise UnsupportedOpError for the first op without a kernel on `backend`; a backend
    with no kernel at all was never imported, which is a programming error (RuntimeError)."""
    if not any(backend in spec.kernels for spec in REGISTRY.values()):
        raise RuntimeError(
            f"no {backend} kernel is registered: import the backend's package first "
            f"(secinfer.backends.load({backend!r}))"
        )
    for node in graph.calls:
        spec = lookup(node.op)
        if spec is None or backend not in spec.kernels:
            where = f" at {node.module}" if node.module else ""
            backends = supported_backends(node.op)
            raise UnsupportedOpError(
                f"{node.op} (node {node.name}){where} has no {backend} kernel; supported on: "
                f"{', '.join(backends) if backends else 'no backend'}"
            )


class Executor:
    """Runs `graph` on one backend with `plan` (required for approximating backends).

    `seeder` turns placeholders into the backend's values (default: the tensors, cast to
    the backend's dtype); `meter` snapshots cost counters around every node.
    """

    def __init__(
        self,
        graph: Graph,
        backend: str,
        plan: Plan | None = None,
        *,
        seeder: Seeder | None = None,
        meter: Meter | None = None,
    ) -> None:
        check_supported(graph, backend)
        self.graph = graph
        self.backend = backend
        self.plan = plan
        self.dtype = FLOAT.get(backend)
        self.seeder = seeder
        self.meter = meter
        self._last_use = self._last_uses()

    def _last_uses(self) -> dict[str, int]:
        last: dict[str, int] = {}
        for index, fx_node in enumerate(self.graph.fx_graph.nodes):
            for used in fx_node.all_input_nodes:
                last[used.name] = index
        return last

    def _cast(self, value: Any) -> Any:
        if self.dtype is not None and isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.to(self.dtype)
        return value

    def run(
        self,
        inputs: tuple[torch.Tensor, ...],
        *,
        watch: frozenset[str] | set[str] = frozenset(),
        hook: Hook | None = None,
        progress: bool = False,
        given: Mapping[str, Any] | None = None,
    ) -> RunResult:
        """Execute once. `watch` names nodes whose values are kept in the result; `hook`
        sees every call (calibration uses it). `given` holds values for user inputs (by
        placeholder name) already in the backend's form, used as they are instead of being
        seeded: what a previous run left, such as a generation's key/value cache or its
        next token kept secret; `inputs` supply the other user inputs, in order."""
        given = given or {}
        env: dict[str, Any] = {}
        records: list[NodeRecord] = []
        watched: dict[str, torch.Tensor] = {}
        user = iter(inputs)
        outputs: list[Any] = []
        nodes = list(self.graph.fx_graph.nodes)
        bar = _progress(len(self.graph.calls), progress)
        start = time.perf_counter()
        for index, fx_node in enumerate(nodes):
            if fx_node.op == "placeholder":
                if fx_node.name in self.graph.owned:
                    value = self.graph.owned[fx_node.name]
                    env[fx_node.name] = (
                        self.seeder.owned(fx_node.name, value) if self.seeder else self._cast(value)
                    )
                elif fx_node.name in self.graph.fixed_inputs:
                    env[fx_node.name] = self.graph.fixed_inputs[fx_node.name]
                elif fx_node.name in given:
                    env[fx_node.name] = given[fx_node.name]
                else:
                    value = next(user)
                    env[fx_node.name] = (
                        self.seeder.user(fx_node.name, value) if self.seeder else self._cast(value)
                    )
            elif fx_node.op == "call_function":
                env[fx_node.name], record = self._call(fx_node, env, hook)
                records.append(record)
                if fx_node.name in watch:
                    watched[fx_node.name] = env[fx_node.name]
                if bar is not None:
                    bar.update(1)
            elif fx_node.op == "output":
                outputs = list(map_arg(fx_node.args[0], lambda n: env[n.name]))
            for used in fx_node.all_input_nodes:
                if self._last_use.get(used.name) == index:
                    env.pop(used.name, None)
        if bar is not None:
            bar.close()
        return RunResult(outputs, time.perf_counter() - start, records, watched)

    def _call(
        self, fx_node: torch.fx.Node, env: dict[str, Any], hook: Hook | None
    ) -> tuple[Any, NodeRecord]:
        node = self.graph.node_by_name[fx_node.name]
        spec = lookup(node.op)
        assert spec is not None  # checked in __init__
        args = map_arg(fx_node.args, lambda n: env[n.name])
        kwargs = map_arg(fx_node.kwargs, lambda n: env[n.name])
        choice = self.plan.choices.get(fx_node.name) if self.plan else None
        call = Call(fx_node.target, tuple(args), dict(kwargs), choice)
        before = self.meter() if self.meter else None
        began = time.perf_counter()
        try:
            value = spec.kernels[self.backend](call)
        except UserError:
            raise
        except Exception as exc:
            where = f" at {node.module}" if node.module else ""
            raise ExecutionError(
                f"{node.op} (node {node.name}){where} failed on {self.backend}: {exc}"
            ) from exc
        seconds = time.perf_counter() - began
        cost = self.meter() - before if self.meter else None
        if hook is not None:
            hook(fx_node.name, call, value)
        record = NodeRecord(node.name, node.op, node.module, node.block, seconds, call.stats, cost)
        return value, record


def _progress(total: int, enabled: bool) -> Any:
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="op", leave=False, file=sys.stderr)


__all__ = [
    "ExecutionError",
    "Executor",
    "Meter",
    "RunResult",
    "Seeder",
    "UnsupportedOpError",
    "op_name",
]
