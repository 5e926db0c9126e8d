"""The public architecture: a Graph as plain JSON, sent by the model owner, rebuilt by the
data owner after validation.

Under `mpc` the data owner runs the same graph as the model owner on shares, so it needs
the architecture: the ops, their arguments and the shapes, but never a weight. It comes
as our own data, not as a torch archive (whose loader can run code): a JSON object

    {"format": "secinfer-architecture", "version": 1,
     "nodes": [node, ...],                 in execution order, the output node last
     "inputs": [InputSpec JSON, ...],      what the data owner's inputs must be
     "input_names": [...], "output_name": "..."}

where a node is {"name", "kind", "module", "shape", "dtype"} plus
  input                               a user input (the data owner's)
  parameter / buffer / constant       the model owner's value: "target" (its state_dict
                                      key); floating-point values travel as their shape
                                      only (the data owner holds zeros), integer and bool
                                      ones (position ids) are public architecture and
                                      travel as "data": base64 of their little-endian bytes,
                                      as do floating-point non-persistent buffers (rotary
                                      frequencies), marked "public": true
  fixed                               a user input traced as a constant: "value"
  call                                "target" ("aten.linear.default", "getitem",
                                      "sym.mul"), "args", "kwargs"
  output                              "args"

Arguments are JSON numbers, booleans, strings, null and lists, plus tagged objects:
{"node": name} (an earlier node), {"tuple": [...]}, {"float": "inf" | "-inf" | "nan"},
{"dtype": name}, {"device": "cpu"}, {"layout": name}, {"memory_format": name}.

`rebuild` accepts only what this module writes: every op must be in the registry (an
aten overload that exists, or one of the few Python functions on symbolic sizes), every
tag known, every name a short identifier defined before its use, sizes bounded. Nothing
in the message is evaluated, imported or unpickled; a peer-supplied name is looked up
only after it was found in the registry.
"""

from __future__ import annotations

import base64
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from secinfer.core.graph import DATA_OWNER, MODEL_OWNER, Graph, Node, op_name
from secinfer.core.registry import lookup
from secinfer.load.checks import INPUT_DTYPES, MAX_RANK, InputSpec, check_count_and_types

FORMAT = "secinfer-architecture"
VERSION = 1
MAX_NODES = 500_000
MAX_ARGUMENTS = 64
MAX_ELEMENTS = 1 << 33
"""Largest tensor (elements) a node may announce: above any model secinfer runs."""
MAX_DATA_ELEMENTS = 1 << 24
"""Largest public integer buffer sent with its values (position ids are a few thousand)."""
MAX_WEIGHT_ELEMENTS = 1 << 31
"""Most weight elements (all owned tensors together) an architecture may announce: the
data owner holds a share of each, 8 bytes an element (2^31: 17 GB; BERT-large has 3.4e8)."""

OWNED_KINDS = ("parameter", "buffer", "constant")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,199}$")
_SYMBOLIC = {
    "getitem": operator.getitem,
    "sym.mul": operator.mul,
    "sym.add": operator.add,
    "sym.sub": operator.sub,
    "sym.floordiv": operator.floordiv,
    "sym.truediv": operator.truediv,
}
"""The Python functions a graph may call (on symbolic sizes), by registry name."""

_LAYOUTS = {"strided": torch.strided}
_MEMORY_FORMATS = {
    "contiguous_format": torch.contiguous_format,
    "preserve_format": torch.preserve_format,
    "channels_last": torch.channels_last,
}


class ArchitectureError(ValueError):
    """A public architecture that this module would not have written."""


@dataclass
class Architecture:
    """What the data owner rebuilt: the graph to run and what its inputs must be."""

    graph: Graph
    inputs: list[InputSpec]
    input_names: list[str]
    output_name: str

    def check_inputs(self, inputs: tuple[torch.Tensor, ...], path: Path) -> None:
        """UserError unless `inputs` (read from `path`) match the described inputs in
        count, dtype and shape (the same checks as `LoadedModel.check_inputs`)."""
        check_count_and_types(inputs, self.input_names, path)
        for spec, got in zip(self.inputs, inputs, strict=True):
            spec.check(got)


# --- the model owner: describe ------------------------------------------------------------
def describe(
    graph: Graph, inputs: list[InputSpec], input_names: list[str], output_name: str
) -> dict[str, Any]:
    """The public architecture of `graph` (see the module docstring). Raises
    ArchitectureError for an argument this format cannot carry."""
    nodes: list[dict[str, Any]] = []
    for fx_node in graph.fx_graph.nodes:
        node = graph.node_by_name.get(fx_node.name)
        entry: dict[str, Any] = {"name": fx_node.name}
        if fx_node.op == "placeholder" and fx_node.name in graph.fixed_inputs:
            entry.update(kind="fixed", value=_encode(graph.fixed_inputs[fx_node.name], fx_node))
        elif fx_node.op == "placeholder":
            assert node is not None
            entry.update(kind=node.kind, module=node.module, shape=node.shape, dtype=node.dtype)
            if node.kind in OWNED_KINDS:
                entry["target"] = node.target_name or ""
                value = graph.owned.get(fx_node.name)
                public = fx_node.name in graph.public_owned
                if value is not None and (public or not value.is_floating_point()):
                    entry["data"] = _tensor_data(value)
                if public and value is not None and value.is_floating_point():
                    entry["public"] = True
        elif fx_node.op == "call_function":
            assert node is not None
            entry.update(
                kind="call",
                target=_target_name(fx_node.target),
                module=node.module,
                shape=node.shape,
                dtype=node.dtype,
                args=_encode(list(fx_node.args), fx_node),
                kwargs={k: _encode(v, fx_node) for k, v in fx_node.kwargs.items()},
            )
        elif fx_node.op == "output":
            entry.update(kind="output", args=_encode(list(fx_node.args), fx_node))
        else:
            raise ArchitectureError(f"node {fx_node.name}: an fx {fx_node.op} node")
        nodes.append(entry)
    return {
        "format": FORMAT,
        "version": VERSION,
        "nodes": nodes,
        "inputs": [spec.to_json() for spec in inputs],
        "input_names": list(input_names),
        "output_name": output_name,
    }


def _target_name(target: Any) -> str:
    """ "aten.linear.default" for an aten overload; the registry name otherwise."""
    name = op_name(target)
    if isinstance(target, torch._ops.OpOverload):
        return f"{name}.{target._overloadname}"
    return name


def _encode(value: Any, where: torch.fx.Node) -> Any:
    if isinstance(value, torch.fx.Node):
        return {"node": value.name}
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, list):
        return [_encode(v, where) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, where) for v in value]}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, torch.layout):
        return {"layout": str(value).removeprefix("torch.")}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    raise ArchitectureError(
        f"node {where.name}: an argument of type {type(value).__name__}, which the public "
        "architecture cannot describe"
    )


def _tensor_data(value: torch.Tensor) -> str:
    array = value.detach().contiguous().cpu().numpy()
    return base64.b64encode(array.astype(array.dtype.newbyteorder("<")).tobytes()).decode()


# --- the data owner: rebuild --------------------------------------------------------------
def rebuild(message: Any) -> Architecture:
    """Validate a peer's public architecture and rebuild the graph it describes.

    Raises ArchitectureError naming the first node or field that this module would not
    have written; nothing in the message is evaluated."""
    if not isinstance(message, dict) or message.get("format") != FORMAT:
        raise ArchitectureError("not a secinfer public architecture")
    if message.get("version") != VERSION:
        raise ArchitectureError(
            f"architecture version {message.get('version')!r}, this secinfer reads {VERSION}; "
            "run the same secinfer version on both sides"
        )
    entries = message.get("nodes")
    if not isinstance(entries, list) or not 0 < len(entries) <= MAX_NODES:
        raise ArchitectureError(f"nodes: a list of 1 to {MAX_NODES} nodes expected")
    builder = _Builder()
    for entry in entries:
        builder.add(entry)
    graph = builder.finish()
    try:
        inputs = [InputSpec.from_json(spec) for spec in _list(message.get("inputs"), "inputs")]
    except ValueError as exc:
        raise ArchitectureError(f"inputs: {exc}") from None
    names = _list(message.get("input_names"), "input_names")
    output_name = message.get("output_name")
    if not all(isinstance(n, str) and len(n) <= 200 for n in names):
        raise ArchitectureError("input_names: short strings expected")
    if len(inputs) != len(graph.user_inputs):
        raise ArchitectureError(
            f"inputs: {len(inputs)} described, the graph takes {len(graph.user_inputs)}"
        )
    if not isinstance(output_name, str) or len(output_name) > 200:
        raise ArchitectureError("output_name: a short string expected")
    return Architecture(graph, inputs, [str(n) for n in names], output_name)


def _list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list) or len(value) > MAX_NODES:
        raise ArchitectureError(f"{field}: a list expected")
    return value


class _Builder:
    """Adds validated nodes, in order, to an fx graph and the Graph's tables."""

    def __init__(self) -> None:
        self.fx_graph = torch.fx.Graph()
        self.fx_nodes: dict[str, torch.fx.Node] = {}
        self.nodes: list[Node] = []
        self.owned: dict[str, torch.Tensor] = {}
        self.user_inputs: list[str] = []
        self.fixed_inputs: dict[str, Any] = {}
        self.public: set[str] = set()
        self.ended = False
        self.weight_elements = 0

    def add(self, entry: Any) -> None:
        if not isinstance(entry, dict):
            raise ArchitectureError("a node must be a JSON object")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ArchitectureError(f"node name {str(name)[:60]!r}: a short identifier expected")
        if name in self.fx_nodes or self.ended:
            raise ArchitectureError(f"node {name}: defined twice, or after the output")
        kind = entry.get("kind")
        try:
            handler = {
                "input": self._input,
                "fixed": self._fixed,
                "call": self._call,
                "output": self._output,
                **dict.fromkeys(OWNED_KINDS, self._owned),
            }[kind]
        except (KeyError, TypeError):
            raise ArchitectureError(f"node {name}: unknown kind {str(kind)[:40]!r}") from None
        handler(name, entry)

    def finish(self) -> Graph:
        if not self.ended:
            raise ArchitectureError("the architecture has no output node")
        return Graph(
            None,
            self.nodes,
            self.owned,
            self.user_inputs,
            self.fx_nodes,
            self.fixed_inputs,
            fx_graph=self.fx_graph,
            public_owned=frozenset(self.public),
        )

    # one method per kind
    def _input(self, name: str, entry: dict[str, Any]) -> None:
        shape, dtype = _shape(entry, name, static=False), _dtype(entry, name)
        self._placeholder(name, shape, dtype)
        self.user_inputs.append(name)
        self.nodes.append(Node(name, "input", "input", "", shape, dtype, DATA_OWNER))

    def _fixed(self, name: str, entry: dict[str, Any]) -> None:
        self._placeholder(name, None, None)
        self.fixed_inputs[name] = self._decode(entry.get("value"), name)

    def _owned(self, name: str, entry: dict[str, Any]) -> None:
        kind = entry["kind"]
        shape, dtype = _shape(entry, name, static=True), _dtype(entry, name)
        target, module = _text(entry, "target", name), _text(entry, "module", name)
        assert shape is not None and dtype is not None
        self.weight_elements += math.prod(shape)
        if self.weight_elements > MAX_WEIGHT_ELEMENTS:
            raise ArchitectureError(
                f"node {name}: the weights announced so far exceed {MAX_WEIGHT_ELEMENTS:,} "
                "elements, more than this data owner will hold shares of"
            )
        self.owned[name] = _owned_value(entry, name, shape, dtype)
        if entry.get("public") is True:
            self.public.add(name)
        self._placeholder(name, shape, dtype)
        self.nodes.append(Node(name, kind, kind, module, shape, dtype, MODEL_OWNER, target))

    def _call(self, name: str, entry: dict[str, Any]) -> None:
        target = _resolve(entry.get("target"), name)
        args = self._decode(entry.get("args"), name)
        kwargs = entry.get("kwargs")
        if not isinstance(args, list) or len(args) > MAX_ARGUMENTS:
            raise ArchitectureError(f"node {name}: args must be a list")
        if not isinstance(kwargs, dict) or len(kwargs) > MAX_ARGUMENTS:
            raise ArchitectureError(f"node {name}: kwargs must be an object")
        for key in kwargs:
            if not _NAME.match(key):
                raise ArchitectureError(f"node {name}: keyword {key[:40]!r} is not an identifier")
        kw = {key: self._decode(value, name) for key, value in kwargs.items()}
        shape = _shape(entry, name, static=False, optional=True)
        dtype = _dtype(entry, name, optional=True)
        fx_node = self.fx_graph.create_node("call_function", target, tuple(args), kw, name=name)
        self._named(fx_node, name, shape, dtype)
        module = _text(entry, "module", name)
        self.nodes.append(Node(name, "call", op_name(target), module, shape, dtype))

    def _output(self, name: str, entry: dict[str, Any]) -> None:
        args = self._decode(entry.get("args"), name)
        if not isinstance(args, list) or len(args) != 1:
            raise ArchitectureError(f"node {name}: the output takes one argument")
        fx_node = self.fx_graph.create_node("output", "output", (args[0],), name=name)
        self._named(fx_node, name, None, None)
        self.nodes.append(Node(name, "output", "output", "", None, None, DATA_OWNER))
        self.ended = True

    # helpers
    def _placeholder(self, name: str, shape: tuple[int, ...] | None, dtype: str | None) -> None:
        self._named(self.fx_graph.placeholder(name), name, shape, dtype)

    def _named(
        self, fx_node: torch.fx.Node, name: str, shape: tuple[int, ...] | None, dtype: str | None
    ) -> None:
        # fx renames names it reserves for generated code ("input"); this graph is only
        # interpreted, never turned into code, and the plan keys on the model owner's names
        fx_node.name = name
        if shape is not None and dtype is not None and all(d >= 0 for d in shape):
            fx_node.meta["val"] = torch.empty(shape, dtype=INPUT_DTYPES[dtype], device="meta")
        self.fx_nodes[name] = fx_node

    def _decode(self, value: Any, where: str, depth: int = 0) -> Any:
        if depth > 8:
            raise ArchitectureError(f"node {where}: arguments nested too deeply")
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            if len(value) > 200:
                raise ArchitectureError(f"node {where}: a string argument longer than 200")
            return value
        if isinstance(value, list):
            if len(value) > MAX_RANK * 64:
                raise ArchitectureError(f"node {where}: an argument list too long")
            return [self._decode(v, where, depth + 1) for v in value]
        if not isinstance(value, dict) or len(value) != 1:
            raise ArchitectureError(f"node {where}: an argument this format does not write")
        ((tag, content),) = value.items()
        decoder = _TAGS.get(tag)
        if tag == "node":
            if content not in self.fx_nodes:
                used = str(content)[:60]
                raise ArchitectureError(f"node {where}: uses {used!r} before it exists")
            return self.fx_nodes[content]
        if tag == "tuple" and isinstance(content, list):
            return tuple(self._decode(v, where, depth + 1) for v in content)
        if decoder is not None:
            try:
                return decoder(content)
            except (KeyError, TypeError, ValueError):
                pass
        raise ArchitectureError(f"node {where}: argument {str(value)[:60]} is not allowed")


def _float(text: Any) -> float:
    if text not in ("inf", "-inf", "nan"):
        raise ValueError(text)
    return float(text)


def _device(text: Any) -> torch.device:
    if text != "cpu":
        raise ValueError(text)
    return torch.device("cpu")


_TAGS: dict[str, Callable[[Any], Any]] = {
    "float": _float,
    "dtype": lambda text: INPUT_DTYPES[text],
    "device": _device,
    "layout": lambda text: _LAYOUTS[text],
    "memory_format": lambda text: _MEMORY_FORMATS[text],
}


def _resolve(target: Any, where: str) -> Callable[..., Any]:
    """The op a registry name denotes: an existing overload of a registered aten op, or
    one of the symbolic-size functions. Nothing else is looked up."""
    if not isinstance(target, str) or len(target) > 100:
        raise ArchitectureError(f"node {where}: target must be an op name")
    if target in _SYMBOLIC and lookup(target) is not None:
        return _SYMBOLIC[target]
    namespace, _, rest = target.partition(".")
    op, _, overload = rest.partition(".")
    spec = lookup(f"{namespace}.{op}")
    if namespace != "aten" or spec is None or not overload:
        raise ArchitectureError(
            f"node {where}: op {target[:60]!r} is not one secinfer runs; the model owner's "
            "secinfer is of another version, or the message was tampered with"
        )
    packet = getattr(torch.ops.aten, op)
    if overload not in packet.overloads():
        raise ArchitectureError(f"node {where}: aten.{op} has no overload {overload[:40]!r}")
    return getattr(packet, overload)


def _shape(
    entry: dict[str, Any], where: str, *, static: bool, optional: bool = False
) -> tuple[int, ...] | None:
    shape = entry.get("shape")
    if shape is None and optional:
        return None
    low = 0 if static else -1
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(type(d) is int and low <= d < 1 << 31 for d in shape)
    ):
        raise ArchitectureError(f"node {where}: shape must be a list of sizes")
    if math.prod(max(d, 1) for d in shape) > MAX_ELEMENTS:
        raise ArchitectureError(f"node {where}: shape {shape} is too large")
    return tuple(shape)


def _dtype(entry: dict[str, Any], where: str, *, optional: bool = False) -> str | None:
    dtype = entry.get("dtype")
    if dtype is None and optional:
        return None
    if dtype not in INPUT_DTYPES:
        raise ArchitectureError(f"node {where}: dtype {str(dtype)[:40]!r} is not allowed")
    return dtype


def _text(entry: dict[str, Any], field: str, where: str) -> str:
    value = entry.get(field, "")
    if not isinstance(value, str) or len(value) > 500:
        raise ArchitectureError(f"node {where}: {field} must be a short string")
    return value


def _owned_value(
    entry: dict[str, Any], where: str, shape: tuple[int, ...], dtype: str
) -> torch.Tensor:
    """Zeros for a floating-point weight (the model owner's secret); the public values of
    an integer or bool buffer, or of a floating-point one marked public (a non-persistent
    buffer: architecture, such as rotary frequencies)."""
    torch_dtype = INPUT_DTYPES[dtype]
    data = entry.get("data")
    public = entry.get("public", False)
    if public not in (True, False) or (public and not torch_dtype.is_floating_point):
        raise ArchitectureError(f"node {where}: 'public' marks floating-point buffers only")
    if torch_dtype.is_floating_point and not public:
        if data is not None:
            raise ArchitectureError(f"node {where}: a floating-point weight sent with values")
        return torch.zeros((), dtype=torch_dtype).expand(shape)  # no memory: only its shape
    count = math.prod(shape)
    if not isinstance(data, str) or count > MAX_DATA_ELEMENTS:
        raise ArchitectureError(f"node {where}: an integer buffer needs its values (bounded)")
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        raise ArchitectureError(f"node {where}: its values are not base64") from None
    itemsize = torch.empty((), dtype=torch_dtype).element_size()
    if len(raw) != count * itemsize:
        raise ArchitectureError(f"node {where}: {len(raw)} bytes of values for shape {shape}")
    flat = torch.frombuffer(bytearray(raw), dtype=torch_dtype) if raw else torch.empty(0)
    return flat.to(torch_dtype).reshape(shape).clone()


__all__ = ["FORMAT", "VERSION", "Architecture", "ArchitectureError", "describe", "rebuild"]
