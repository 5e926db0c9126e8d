"""The Graph: a model's computation as ordered nodes of ATen ops, with owners and shapes.

Built from a `torch.export.ExportedProgram`, decomposed to core ATen except for the ops we
map to approximations as a whole (`KEPT_OPS`: linear and matmul, softmax, layer_norm,
gelu), so that a GELU stays one node with one approximation instead of a dozen arithmetic
nodes. Parameters and buffers belong to the model owner; user inputs to the data owner.
"""

from __future__ import annotations

import operator
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

aten = torch.ops.aten

KEPT_OPS = (
    aten.linear.default,
    aten.matmul.default,
    aten.softmax.int,
    aten.log_softmax.int,
    aten.layer_norm.default,
    aten.gelu.default,
    aten.silu.default,
)

MODEL_OWNER = "model owner"
DATA_OWNER = "data owner"
_BLOCK = re.compile(r"^(.*?\.\d+)(?:\.|$)")


def op_name(target: Any) -> str:
    """ "aten.gelu" for torch.ops.aten.gelu.default, "getitem" for operator.getitem,
    "sym.mul" for Python arithmetic on symbolic sizes."""
    if target is operator.getitem:
        return "getitem"
    if getattr(target, "__module__", None) == "_operator":
        return f"sym.{target.__name__}"  # integer arithmetic on symbolic sizes
    schema = getattr(target, "_schema", None)
    if schema is not None:
        namespace, name = schema.name.split("::", 1)
        return f"{namespace}.{name}"
    return getattr(target, "__name__", str(target))


@dataclass(frozen=True)
class Node:
    """One step of the graph.

    kind: "input" (data owner's), "parameter" / "buffer" / "constant" (model owner's),
    "call" (an op), "output". `op` is the registry name ("aten.linear"); `module` is the
    path of the module it came from ("encoder.layer.0.attention.self.query").
    """

    name: str
    kind: str
    op: str
    module: str
    shape: tuple[int, ...] | None
    dtype: str | None
    owner: str | None = None
    target_name: str | None = None  # the state_dict key of a parameter or buffer

    @property
    def block(self) -> str:
        """The repeated block this node belongs to ("encoder.layer.0"), else the first two
        levels of its module path ("model.embeddings"), else "model": the granularity of
        per-layer reports."""
        if not self.module:
            return "model"
        match = _BLOCK.match(self.module)
        return match.group(1) if match else ".".join(self.module.split(".")[:2])


@dataclass
class Graph:
    """Ordered nodes, the fx graph that executes them, and the values the model owns.

    `program` is the exported program the graph came from, on the model owner's side; a
    graph rebuilt from the public architecture (`secinfer.core.architecture`) has none, and its
    floating-point `owned` values are zeros of the right shapes.
    """

    program: ExportedProgram | None
    nodes: list[Node]
    owned: dict[str, torch.Tensor] = field(repr=False)  # placeholder name -> tensor
    user_inputs: list[str]
    fx_nodes: dict[str, torch.fx.Node] = field(repr=False)
    fixed_inputs: dict[str, Any] = field(default_factory=dict)  # user inputs traced as constants
    fx_graph: torch.fx.Graph = field(default=None, repr=False)  # type: ignore[assignment]
    public_owned: frozenset[str] = frozenset()
    """Floating-point owned values that are architecture, not weights: non-persistent
    buffers (left out of the state_dict, computed from the config when the model is
    built, such as LLaMA's rotary frequencies). They travel with the architecture and no
    secure backend hides them."""
    node_by_name: dict[str, Node] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.fx_graph is None:
            if self.program is None:
                raise ValueError("a Graph needs its program or its fx graph")
            self.fx_graph = self.program.graph
        self.node_by_name = {n.name: n for n in self.nodes}

    @property
    def calls(self) -> list[Node]:
        return [n for n in self.nodes if n.kind == "call"]

    def op_counts(self) -> Counter[str]:
        return Counter(n.op for n in self.calls)

    def parameter_count(self) -> int:
        return sum(int(t.numel()) for t in self.owned.values())


def decompose(program: ExportedProgram) -> ExportedProgram:
    """Core ATen decomposition that keeps `KEPT_OPS` whole."""
    table = torch.export.default_decompositions()
    for op in KEPT_OPS:
        table.pop(op, None)
    return program.run_decompositions(table)


def build_graph(program: ExportedProgram, *, decomposed: bool = False) -> Graph:
    """The Graph of an exported program (decomposed first unless `decomposed`)."""
    if not decomposed:
        program = decompose(program)
    signature = program.graph_signature
    kinds = {spec.arg.name: spec for spec in signature.input_specs if hasattr(spec.arg, "name")}
    state = program.state_dict
    constants = program.constants
    owned: dict[str, torch.Tensor] = {}
    nodes: list[Node] = []
    fx_nodes: dict[str, torch.fx.Node] = {}
    user_inputs: list[str] = []
    fixed_inputs: dict[str, Any] = {}
    public: set[str] = set()
    for fx_node in program.graph.nodes:
        fx_nodes[fx_node.name] = fx_node
        shape, dtype = _shape_dtype(fx_node)
        if fx_node.op == "placeholder":
            spec = kinds.get(fx_node.name)
            if (
                spec is not None
                and spec.kind == InputKind.USER_INPUT
                and hasattr(spec.arg, "value")
            ):
                fixed_inputs[fx_node.name] = spec.arg.value  # e.g. an argument passed as None
                continue
            if spec is None or spec.kind == InputKind.USER_INPUT:
                user_inputs.append(fx_node.name)
                nodes.append(Node(fx_node.name, "input", "input", "", shape, dtype, DATA_OWNER))
                continue
            kind = {
                InputKind.PARAMETER: "parameter",
                InputKind.BUFFER: "buffer",
            }.get(spec.kind, "constant")
            value = state.get(spec.target) if spec.target in state else constants.get(spec.target)
            if isinstance(value, torch.Tensor):
                owned[fx_node.name] = value.detach()
                if spec.kind == InputKind.BUFFER and spec.persistent is False:
                    public.add(fx_node.name)
            nodes.append(
                Node(
                    fx_node.name,
                    kind,
                    kind,
                    _module_of(spec.target),
                    shape,
                    dtype,
                    MODEL_OWNER,
                    spec.target,
                )
            )
        elif fx_node.op == "call_function":
            nodes.append(
                Node(
                    fx_node.name,
                    "call",
                    op_name(fx_node.target),
                    _module_path(fx_node),
                    shape,
                    dtype,
                )
            )
        elif fx_node.op == "output":
            nodes.append(Node(fx_node.name, "output", "output", "", None, None, DATA_OWNER))
    return Graph(
        program, nodes, owned, user_inputs, fx_nodes, fixed_inputs, public_owned=frozenset(public)
    )


def _shape_dtype(fx_node: torch.fx.Node) -> tuple[tuple[int, ...] | None, str | None]:
    val = fx_node.meta.get("val")
    if isinstance(val, torch.Tensor):
        shape = tuple(int(s) if isinstance(s, int) else -1 for s in val.shape)
        return shape, str(val.dtype).replace("torch.", "")
    return None, None


def _module_path(fx_node: torch.fx.Node) -> str:
    """The innermost module path recorded by export ("encoder.layer.0.output.dense")."""
    stack = fx_node.meta.get("nn_module_stack") or {}
    path = str(list(stack.values())[-1][0]) if stack else ""
    return "" if path.startswith("_empty_nn_module_stack") else path


def _module_of(state_key: str | None) -> str:
    """The module path of a state_dict key ("encoder.layer.0.output.dense.weight")."""
    return state_key.rsplit(".", 1)[0] if state_key and "." in state_key else ""
