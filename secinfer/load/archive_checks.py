"""What a torch.export archive's program (`models/model.json`) may say, checked before torch
reads it.

torch's deserializer turns several strings of that JSON into code or calls:

  expression strings   `expr_str` fields go through `sympy.sympify`, which evaluates them with
                       Python's `eval` (a string "__import__('os').system(...)" runs);
  guards               `guards_code` strings are compiled with `exec` by `ExportedProgram.module()`;
  node targets         resolved by name under `torch.*`, `_operator.*`, `math.*`;
  names                input names, keyword names of the input spec and attribute names are
                       pasted into the Python source FX generates for the program.

`check_program(model_json)` walks the whole document and raises `Refused` unless every such
string is in the grammar below. Guaranteed on return:

  - every node target (and operator argument) is an ATen operator overload that exists in this
    torch, outside `DENIED_ATEN` (file, print and global-state side effects), or one of the
    symbolic-size operations torch's serializer itself emits (`SYM_OP_NAMES`);
  - every expression string is a Python expression made only of calls to `SYMPY_FUNCTIONS`,
    `Symbol('<symbol>', <assumption>=True|False ...)`, integer literals (at most 30 digits),
    symbol names, `+ - * // %` and parentheses; powers have literal exponents 0 to 64;
  - every guard is a comparison of such arithmetic over `L['<input>']`, its `.size()[i]`,
    `.stride()[i]` and `.storage_offset()`, joined by `and`, `or`, `not`;
  - every name is an identifier or a dotted path of `[A-Za-z0-9_-]` parts, every input name and
    keyword name of the input spec an identifier;
  - no subgraph, custom-object or opaque-object arguments, no custom-object values, and only
    torch's own verifier dialects.

These checks only read the JSON; they never import or evaluate anything from it.
"""

from __future__ import annotations

import ast
import json
import keyword
import re
from collections.abc import Iterator
from typing import Any

SYM_OP_NAMES = frozenset(
    {
        "_operator.add",
        "_operator.and_",
        "_operator.eq",
        "_operator.floordiv",
        "_operator.ge",
        "_operator.gt",
        "_operator.le",
        "_operator.lshift",
        "_operator.lt",
        "_operator.mod",
        "_operator.mul",
        "_operator.ne",
        "_operator.neg",
        "_operator.or_",
        "_operator.pos",
        "_operator.pow",
        "_operator.rshift",
        "_operator.sub",
        "_operator.truediv",
        "math.trunc",
        "torch._sym_sqrt",
        "torch.sym_float",
        "torch.sym_int",
        "torch.sym_ite",
        "torch.sym_max",
        "torch.sym_min",
        "torch.sym_not",
    }
)
"""The serialized names of torch's `_SYM_OPS` (torch 2.13): Python functions on symbolic sizes."""

DENIED_ATEN = frozenset(
    {
        "from_file",  # reads a file named in the graph
        "save",  # writes a file named in the graph
        "_print",
        "warn",
        "manual_seed",  # global random state
        "seed",
        "initial_seed",
        "set_grad_enabled",  # global autograd state
        "wait",  # futures and streams
        "record_stream",
        "_cufft_set_plan_cache_max_size",
        "_cufft_clear_plan_cache",
    }
)
"""ATen operators refused although torch exports them: they act outside the tensors."""

SYMPY_FUNCTIONS = frozenset(
    {
        # sympy classes of torch's srepr output
        "Add",
        "Mul",
        "Pow",
        "Max",
        "Min",
        "Abs",
        "Integer",
        "Rational",
        "Eq",
        "Ne",
        "Lt",
        "Le",
        "Gt",
        "Ge",
        "Equality",
        "Unequality",
        "StrictLessThan",
        "LessThan",
        "StrictGreaterThan",
        "GreaterThan",
        "And",
        "Or",
        "Not",
        # torch.utils._sympy.functions, as the deserializer names them
        "FloorDiv",
        "ModularIndexing",
        "Where",
        "PythonMod",
        "Mod",
        "CleanDiv",
        "CeilToInt",
        "FloorToInt",
        "CeilDiv",
        "LShift",
        "RShift",
        "PowByNatural",
        "IntTrueDiv",
        "TruncToInt",
        "RoundToInt",
        "Identity",
    }
)
"""Functions an expression string may call (exports with dynamic shapes use Add, Mul, Pow,
FloorDiv, PythonMod, Max, Min; the rest are the integer functions torch's serializer lists)."""

_POWERS = frozenset({"Pow", "PowByNatural", "LShift", "RShift"})
_MAX_EXPONENT = 64
_ASSUMPTIONS = frozenset(
    {"positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "zero"}
)
_SYMBOL = re.compile(r"(?:s|u|zf|zuf)[0-9]+")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DOTTED = re.compile(r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*")
_ATEN = re.compile(r"torch\.ops\.aten\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)")
_MAX_EXPRESSION = 20_000
_MAX_DIGITS = 30
_VERIFIERS = frozenset({"ATEN", "TRAINING"})

_IDENTIFIER_KEYS = frozenset({"name", "as_name"})
"""Names of graph values and arguments: FX pastes placeholder names into the signature."""
_NAME_KEYS = frozenset(
    {
        "name",
        "as_name",
        "parameter_name",
        "buffer_name",
        "tensor_constant_name",
        "user_input_name",
        "fqn",
    }
)
_NAME_TABLES = frozenset({"tensor_values", "sym_int_values", "sym_bool_values", "sym_float_values"})
_REFUSED_KEYS = {
    "as_graph": "a subgraph argument (higher-order operators are refused)",
    "as_custom_obj": "a custom-object argument (custom objects are unpickled)",
    "custom_obj": "a custom-object input (custom objects are unpickled)",
}


class Refused(Exception):
    """A string of the archive outside the grammar; str() says where and why, in one line."""


def check_program(program: Any) -> None:
    """Raise `Refused` unless the parsed `models/model.json` obeys the module's grammar."""
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise Refused("not a serialized exported program")
    verifiers = program.get("verifiers")
    if not isinstance(verifiers, list) or not verifiers or not set(verifiers) <= _VERIFIERS:
        raise Refused(f"verifiers {verifiers!r}: only torch's ATEN and TRAINING dialects")
    for index, guard in enumerate(_strings(program.get("guards_code", []), "guards_code")):
        check_guard(guard, f"guards_code[{index}]")
    ranges = program.get("range_constraints", {})
    if not isinstance(ranges, dict):
        raise Refused("range_constraints is not an object")
    for symbol, bounds in ranges.items():
        check_expression(symbol, "range constraint")  # a symbol, or "2*s74" for derived dims
        if not isinstance(bounds, dict) or not all(
            v is None or type(v) is int for v in bounds.values()
        ):
            raise Refused(f"range constraint {symbol}: bounds are not integers")
    graph_module = program["graph_module"]
    for entry in graph_module.get("module_call_graph") or []:
        _check_call_signature(entry)
    _walk(graph_module, "graph_module", node=None)


def check_target(target: Any, where: str) -> None:
    """Raise `Refused` unless `target` names an allowed ATen overload or symbolic-size op."""
    if not isinstance(target, str):
        raise Refused(f"{where}: target is not a string")
    if target in SYM_OP_NAMES:
        return
    match = _ATEN.fullmatch(target)
    if match is None:
        raise Refused(
            f"{where}: target {target[:80]!r} is not an ATen operator (Python functions, "
            "higher-order and custom operators are refused)"
        )
    name, overload = match.groups()
    if name in DENIED_ATEN:
        raise Refused(f"{where}: target {target} acts outside the tensors (files or global state)")
    import torch

    try:
        resolved = getattr(getattr(torch.ops.aten, name), overload)
    except (AttributeError, RuntimeError):
        resolved = None
    if not isinstance(resolved, torch._ops.OpOverload):
        raise Refused(f"{where}: target {target} is not an ATen operator of this torch")


def check_expression(text: Any, where: str) -> None:
    """Raise `Refused` unless `text` is a symbolic-shape expression of the module's grammar."""
    tree = _parse(text, where, "expression")
    _Expression(where).check(tree.body)


def check_guard(text: Any, where: str) -> None:
    """Raise `Refused` unless `text` is a guard of the module's grammar."""
    tree = _parse(text, where, "guard")
    _Guard(where).check(tree.body)


def check_name(name: Any, where: str, *, dotted: bool = True) -> None:
    """Raise `Refused` unless `name` is an identifier (or, if `dotted`, a dotted path)."""
    pattern = _DOTTED if dotted else _IDENTIFIER
    if not isinstance(name, str) or not pattern.fullmatch(name) or len(name) > 1000:
        raise Refused(f"{where}: name {str(name)[:80]!r} is not a plain identifier")


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Refused(f"{where}: not a list of strings")
    return value


def _parse(text: Any, where: str, what: str) -> ast.Expression:
    """The expression's syntax tree, parsed only (never compiled or evaluated)."""
    if not isinstance(text, str):
        raise Refused(f"{where}: {what} is not a string")
    if len(text) > _MAX_EXPRESSION or not text.isascii() or not text.isprintable():
        raise Refused(f"{where}: {what} {text[:60]!r}... is too long or not printable ASCII")
    try:
        return ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise Refused(f"{where}: {what} {text[:80]!r} is not an expression") from None


class _Grammar:
    """Shared checks of expressions and guards: integers, arithmetic, parentheses."""

    _BINARY: tuple[type, ...] = (ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod)

    def __init__(self, where: str) -> None:
        self.where = where

    def refuse(self, node: ast.AST, why: str) -> Refused:
        shown = ast.unparse(node)[:80]
        return Refused(f"{self.where}: {why}: {shown!r}")

    def check(self, node: ast.AST) -> None:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            if len(str(abs(node.value))) > _MAX_DIGITS:
                raise self.refuse(node, "an integer too large")
            return
        if isinstance(node, ast.BinOp) and isinstance(node.op, self._BINARY):
            self.check(node.left)
            self.check(node.right)
            return
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            self.check(node.operand)
            return
        self.check_other(node)

    def check_other(self, node: ast.AST) -> None:
        raise self.refuse(node, "outside the grammar")


class _Expression(_Grammar):
    """torch's srepr of sympy expressions (and the infix form of older archives)."""

    def check_other(self, node: ast.AST) -> None:
        if isinstance(node, ast.Name):
            if not _SYMBOL.fullmatch(node.id):
                raise self.refuse(node, "a name that is not a size symbol")
            return
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            raise self.refuse(node, "outside the grammar")
        function = node.func.id
        if function == "Symbol":
            self._check_symbol(node)
            return
        if function not in SYMPY_FUNCTIONS:
            raise self.refuse(node, f"function {function} is not allowed")
        if node.keywords:
            raise self.refuse(node, "keyword arguments")
        for argument in node.args:
            self.check(argument)
        if function in _POWERS and not (
            len(node.args) == 2 and 0 <= _literal(node.args[1]) <= _MAX_EXPONENT
        ):
            raise self.refuse(node, f"an exponent other than an integer 0..{_MAX_EXPONENT}")

    def _check_symbol(self, node: ast.Call) -> None:
        if len(node.args) != 1:
            raise self.refuse(node, "Symbol takes one name")
        name = node.args[0]
        if not (
            isinstance(name, ast.Constant)
            and isinstance(name.value, str)
            and _SYMBOL.fullmatch(name.value)
        ):
            raise self.refuse(node, "a symbol name outside s<n>, u<n>")
        for item in node.keywords:
            if item.arg not in _ASSUMPTIONS or not (
                isinstance(item.value, ast.Constant) and type(item.value.value) is bool
            ):
                raise self.refuse(node, "a Symbol assumption outside the allowed ones")


def _literal(node: ast.AST) -> int:
    """The value of an integer literal `n`, `-n`, `Integer(n)`, `Integer(-n)`; else -1."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Integer":
        node = node.args[0] if len(node.args) == 1 and not node.keywords else node
    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        sign, node = -1, node.operand
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return sign * node.value
    return -1


class _Guard(_Grammar):
    """Comparisons of input sizes, as `torch.export` writes `guards_code`."""

    _COMPARE = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
    _METHODS = frozenset({"size", "stride", "storage_offset"})

    def check_other(self, node: ast.AST) -> None:
        if isinstance(node, ast.BoolOp) and isinstance(node.op, (ast.And, ast.Or)):
            for value in node.values:
                self.check(value)
            return
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            self.check(node.operand)
            return
        if isinstance(node, ast.Compare):
            if not all(isinstance(o, self._COMPARE) for o in node.ops):
                raise self.refuse(node, "a comparison other than == != < <= > >=")
            for part in (node.left, *node.comparators):
                self.check(part)
            return
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Call):
            self._check_method(node.value)  # L['x'].size()[0]
            if not (isinstance(node.slice, ast.Constant) and type(node.slice.value) is int):
                raise self.refuse(node, "an index that is not an integer")
            return
        if isinstance(node, ast.Call) and self._is_extremum(node):
            for arg in node.args:  # min(8 + 8 * L['c'].size()[2], ...): a bound on a size
                self.check(arg)
            return
        if isinstance(node, ast.Call):
            self._check_method(node)  # L['x'].storage_offset()
            return
        self._check_source(node)

    @staticmethod
    def _is_extremum(node: ast.Call) -> bool:
        """min(...) or max(...) of two or more positional arguments (the builtins: a guard
        string cannot rebind them), as export writes for a size's two bounds."""
        func = node.func
        return (
            isinstance(func, ast.Name)
            and func.id in ("min", "max")
            and len(node.args) >= 2
            and not node.keywords
            and not any(isinstance(a, ast.Starred) for a in node.args)
        )

    def _check_method(self, node: ast.Call) -> None:
        func = node.func
        if not (
            isinstance(func, ast.Attribute)
            and func.attr in self._METHODS
            and not node.args
            and not node.keywords
        ):
            raise self.refuse(node, "a call other than .size(), .stride(), .storage_offset()")
        self._check_source(func.value)

    def _check_source(self, node: ast.AST) -> None:
        """L['name'], L['name'][0], L['name']['key'] ..."""
        while isinstance(node, ast.Subscript):
            key = node.slice
            if not isinstance(key, ast.Constant) or not (
                type(key.value) is int
                or (isinstance(key.value, str) and _IDENTIFIER.fullmatch(key.value))
            ):
                raise self.refuse(node, "a subscript other than an identifier or integer")
            node = node.value
        if not (isinstance(node, ast.Name) and node.id == "L"):
            raise self.refuse(node, "not an input of the program")


def _check_call_signature(entry: Any) -> None:
    """The module call graph's entry: fqn, forward_arg_names, and the input spec's keys."""
    if not isinstance(entry, dict):
        raise Refused("module_call_graph: an entry that is not an object")
    signature = entry.get("signature")
    if signature is None:
        return
    if not isinstance(signature, dict):
        raise Refused("module_call_graph: a signature that is not an object")
    fqn = entry.get("fqn", "")
    where = f"module_call_graph[{fqn!r}]"
    for name in signature.get("forward_arg_names") or []:
        check_name(name, f"{where}.forward_arg_names", dotted=False)
        if keyword.iskeyword(name):
            raise Refused(f"{where}: argument name {name!r} is a Python keyword")
    for key in ("in_spec", "out_spec"):
        spec = signature.get(key)
        try:
            parsed = json.loads(spec) if isinstance(spec, str) else None
        except (json.JSONDecodeError, RecursionError):
            parsed = None
        if not (isinstance(parsed, list) and len(parsed) == 2 and isinstance(parsed[1], dict)):
            raise Refused(f"{where}.{key}: not a serialized tree spec")
        if key == "in_spec":
            for context in _spec_contexts(parsed[1], f"{where}.{key}"):
                check_name(context, f"{where}.{key}", dotted=False)
                if keyword.iskeyword(context):
                    raise Refused(f"{where}: keyword argument {context!r} is a Python keyword")


def _spec_contexts(spec: dict[str, Any], where: str) -> Iterator[str]:
    """The dictionary keys a serialized tree spec names (keyword argument names)."""
    stack = [spec]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            raise Refused(f"{where}: a tree spec node that is not an object")
        if node.get("type") in ("builtins.dict", "collections.OrderedDict"):
            try:
                keys = json.loads(node.get("context") or "[]")
            except (json.JSONDecodeError, TypeError):
                raise Refused(f"{where}: unreadable dictionary keys") from None
            if not isinstance(keys, list):
                raise Refused(f"{where}: dictionary keys are not a list")
            yield from keys
        stack.extend(node.get("children_spec") or [])


def _walk(value: Any, where: str, node: str | None) -> None:
    """Check every target, expression and name below `value` (iteratively: no recursion limit)."""
    stack: list[tuple[Any, str, str | None]] = [(value, where, node)]
    while stack:
        value, where, node = stack.pop()
        if isinstance(value, list):
            stack.extend((item, where, node) for item in value)
            continue
        if not isinstance(value, dict):
            continue
        if "target" in value and "inputs" in value:  # a graph node
            node = value.get("name") if isinstance(value.get("name"), str) else node
            check_target(value["target"], f"node {str(node)[:60]}")
        here = f"node {node}" if node else where
        for key, item in value.items():
            if key in _REFUSED_KEYS:
                raise Refused(f"{here}: {_REFUSED_KEYS[key]}")
            if key == "metadata":
                continue  # strings torch keeps as text (stack traces, module paths)
            if key == "as_operator":
                check_target(item, here)
            elif key == "expr_str":
                check_expression(item, here)
            elif key in _NAME_KEYS and isinstance(item, str):
                if not (key == "fqn" and item == ""):
                    check_name(item, here, dotted=key not in _IDENTIFIER_KEYS)
            elif key in _NAME_TABLES and isinstance(item, dict):
                for name, entry in item.items():
                    check_name(name, f"{key}", dotted=False)
                    stack.append((entry, f"{key}[{name}]", None))
                continue
            elif key == "custom_obj_values" and item:
                raise Refused(f"{where}: custom-object values (custom objects are unpickled)")
            if isinstance(item, (dict, list)) and key != "target":
                stack.append((item, where, node))
