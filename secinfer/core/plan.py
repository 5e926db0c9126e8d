"""The Plan: per nonlinear node, which approximation, on which interval, with which options.

A plan is data (JSON), not code: `Plan.to_json()` prints it, `--config FILE` (JSON or YAML)
overrides it. A plan is made for one target, a secure backend ("mpc" or "he"); the
`approx` backend runs the plan of the target it stands for (`--target`, default "mpc"), so
its error is the approximation part of that target's error. Its layers, lowest first:
  1. DEFAULTS[target] per function (below: the one table of defaults), valid on every
     input where possible;
  2. the config's "defaults" per function;
  3. the config's "nodes" per node name;
  4. calibration (`secinfer.core.calibrate`): the observed input range of each node, widened by
     MARGIN, becomes the node's interval; for interval-bound methods (a single polynomial)
     the approximation is refit there rather than clipping the inputs;
  5. what the target's kernel derives from the above (under mpc: softmax's squarings and
     cut-off, `mpc_softmax_exp`), stored in the choice so that the plan says what runs.

Config file example:
    {"defaults": {"gelu": {"method": "minimax"}, "softmax": {"options": {"squarings": 6}}},
     "nodes": {"gelu_1": {"method": "exact"}}}
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from secinfer.core.graph import Graph
from secinfer.core.masks import MASK_LIMIT
from secinfer.core.precision import OPTION, check_bits, check_headroom
from secinfer.core.registry import lookup
from secinfer.errors import UserError

MARGIN = 1.25  # calibrated ranges are widened by this factor around their centre

TARGETS = ("mpc", "he")
"""The secure backends a plan is made for. The `approx` backend has no plan of its own: it
runs the plan of the target it stands for (`--target`, DEFAULT_TARGET), so that its error
predicts the approximation part of that backend's error."""
DEFAULT_TARGET = "mpc"

# function -> the methods a config may choose (on every target)
METHODS: dict[str, tuple[str, ...]] = {
    "gelu": (
        "exact",
        "tanh",
        "sigmoid",
        "puma",
        "puma_refit",
        "bolt",
        "minimax",
        "quad",
        "auto",
        "sign_exp",
    ),
    "softmax": ("exact", "exp_limit", "power", "2quad"),
    "log_softmax": ("exact", "exp_limit"),
    "layer_norm": ("exact", "newton", "poly"),
    "tanh": ("exact", "saturated"),
    "sigmoid": ("exact", "saturated"),
    "erf": ("exact", "saturated"),
    "silu": ("exact", "saturated"),
    "exp": ("exact", "squaring"),
    "log": ("exact", "normalised"),
    "rsqrt": ("exact", "newton", "poly"),
    "sqrt": ("exact", "newton", "poly"),
    "reciprocal": ("exact", "goldschmidt", "newton", "polynomial"),
}

SOFTMAX_OPTIONS: dict[str, Any] = {
    "squarings": 7,
    "order": 2,
    "cutoff": 14.0,
    "reciprocal": "goldschmidt",
}
"""exp by squaring of the base 1 + u + u^2/2 (order 2), zero below -cutoff, Goldschmidt
reciprocal of the row sum. Under `mpc` the plan then drops the cut-off when enough
squarings cover the calibrated spread (`mpc_softmax_exp`)."""

# THE defaults: target -> function -> (method, options). Every kernel reads its settings
# from the plan's choice, which starts from this table; nothing else holds a default.
# mpc: a comparison costs ~25x a product's bytes, so GELU is x/2 + q(x^2) on the calibrated
#   interval when that reaches 5e-3 ("auto", approximations.even_gelu), the one-comparison
#   sign_exp form otherwise; rsqrt / reciprocal are range-normalised (a stacked comparison).
# he: GELU must be one polynomial (minimax, refit on the calibrated interval); a reciprocal
#   or inverse square root has no normalisation: a polynomial guess and Newton / Goldschmidt
#   steps on the calibrated interval (approximations.iterative.he_reciprocal,
#   InverseSqrt.polynomial_only). Softmax and LayerNorm as one op have no CKKS kernel
#   (convert the model: README); their rows only keep the table complete.
_MPC_DEFAULTS: dict[str, tuple[str, dict[str, Any]]] = {
    "gelu": ("auto", {}),
    "softmax": ("exp_limit", SOFTMAX_OPTIONS),
    "log_softmax": ("exp_limit", {"squarings": 8, "cutoff": 14.0}),
    "layer_norm": ("newton", {}),
    "tanh": ("saturated", {}),
    "sigmoid": ("saturated", {}),
    "erf": ("saturated", {}),
    "silu": ("saturated", {}),
    "exp": ("squaring", {"squarings": 8, "cutoff": 14.0}),
    "log": ("normalised", {}),
    "rsqrt": ("newton", {}),
    "sqrt": ("newton", {}),
    "reciprocal": ("goldschmidt", {}),
}
DEFAULTS: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "mpc": _MPC_DEFAULTS,
    "he": {  # mpc's rows but where CKKS needs another method (comments above)
        **_MPC_DEFAULTS,
        "gelu": ("minimax", {}),
        "rsqrt": ("poly", {}),
        "sqrt": ("poly", {}),
        "reciprocal": ("polynomial", {}),
    },
}
# functions whose calibrated quantity is positive (for layer_norm: var + eps); a reciprocal
# whose observed denominators are all positive is widened the same (geometrically)
POSITIVE_DOMAIN = frozenset({"layer_norm", "log", "rsqrt", "sqrt"})
# ops that are nonlinear only for some arguments (division by a tensor, fractional powers)
CONDITIONAL = {"aten.div": "reciprocal", "aten.pow": "reciprocal"}


@dataclass
class Choice:
    """The plan for one node."""

    node: str
    op: str
    module: str
    function: str
    method: str
    interval: list[float] | None = None  # where the approximation must hold (calibrated)
    observed: list[float] | None = None  # calibrated input range before widening
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    """Every nonlinear node's `Choice`, made for one secure backend: `backend` is the target
    ("mpc" or "he"), also when the `approx` backend runs the plan to predict that target."""

    backend: str
    choices: dict[str, Choice]

    @property
    def target(self) -> str:
        return self.backend

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "nodes": {k: asdict(c) for k, c in self.choices.items()}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """The inverse of `to_dict` (how the model owner's plan reaches the data owner)."""
        return cls(data["backend"], {k: Choice(**c) for k, c in data["nodes"].items()})

    @classmethod
    def from_peer(cls, data: Any, functions: dict[str, str | None]) -> Plan:
        """A plan received from another party, checked before anything uses it: the target,
        and per choice an op node of the graph (`functions`: node -> the function its op
        approximates, None for ops such as pow that a plan may still approximate), that
        function, one of its METHODS, finite ordered intervals, and options of plain
        bounded values (counts such as squarings at most MAX_COUNT). ValueError naming the
        first field that is wrong."""
        if not isinstance(data, dict) or set(data) != {"backend", "nodes"}:
            raise ValueError("plan: an object with backend and nodes expected")
        if data["backend"] not in TARGETS or not isinstance(data["nodes"], dict):
            raise ValueError(f"plan: backend {str(data['backend'])[:20]!r} is not a target")
        choices = {}
        fields = set(Choice.__dataclass_fields__)
        for name, entry in data["nodes"].items():
            where = f"plan node {str(name)[:60]!r}"
            if name not in functions or not isinstance(entry, dict) or set(entry) != fields:
                raise ValueError(f"{where}: not a nonlinear node of the graph, or malformed")
            wanted = functions[name]
            if entry["node"] != name or wanted not in (None, entry["function"]):
                raise ValueError(f"{where}: its node or function differs from the graph's")
            if entry["method"] not in METHODS.get(entry["function"], ()):
                raise ValueError(f"{where}: method {str(entry['method'])[:30]!r} is unknown")
            if not all(
                isinstance(entry[k], str) and len(entry[k]) <= 500 for k in ("op", "module")
            ):
                raise ValueError(f"{where}: op and module must be short strings")
            for key in ("interval", "observed"):
                _check_interval(entry[key], f"{where}.{key}")
            _check_options(entry["options"], where)
            choices[name] = Choice(**entry)
        return cls(data["backend"], choices)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))


MAX_COUNT = 64
"""Largest count a peer's plan may set (squarings, iterations, degrees, orders)."""
_COUNTS = ("squarings", "order", "iterations", "degree", "newton", "steps", "p")


def _check_interval(value: Any, where: str) -> None:
    if value is None:
        return
    ok = isinstance(value, list) and len(value) == 2
    ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    if not ok or not all(math.isfinite(v) for v in value) or not value[0] <= value[1]:
        raise ValueError(f"{where}: a finite [low, high] expected")


def _check_options(options: Any, where: str) -> None:
    if not isinstance(options, dict) or len(options) > 32:
        raise ValueError(f"{where}.options: an object of at most 32 settings expected")
    for key, value in options.items():
        if not isinstance(key, str) or len(key) > 40:
            raise ValueError(f"{where}.options: a setting name must be a short string")
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, str):
            if len(value) > 40:
                raise ValueError(f"{where}.options.{key}: a string longer than 40")
        elif isinstance(value, int | float):
            limit = MAX_COUNT if key in _COUNTS or key.endswith(("_steps", "_count")) else 1e12
            if not math.isfinite(value) or abs(value) > limit:
                raise ValueError(f"{where}.options.{key}: {value!r} is beyond {limit:g}")
        elif (
            isinstance(value, list)
            and len(value) <= 64
            and all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in value
            )
        ):
            continue
        else:
            raise ValueError(f"{where}.options.{key}: a number, string or short list expected")


def plan_target(backend: str, target: str | None = None) -> str:
    """The target whose plan a `backend` runs: a secure backend its own (a different
    `--target` is a UserError), `approx` (and `plain`, which ignores the plan) `target`,
    by default DEFAULT_TARGET."""
    if target is not None and target not in TARGETS:
        raise UserError(f"--target {target}: choose one of {', '.join(TARGETS)}")
    if backend in TARGETS:
        if target not in (None, backend):
            raise UserError(
                f"--target {target} with --backend {backend}: a secure backend runs its own "
                f"plan; --target says which one --backend approx predicts"
            )
        return backend
    return target or DEFAULT_TARGET


def option(choice: Choice, name: str) -> Any:
    """A kernel's setting `name` for `choice`: the plan's value (`make_plan` fills every
    default in), else, for a choice made by hand, the DEFAULT_TARGET table's."""
    if name in choice.options:
        return choice.options[name]
    return DEFAULTS[DEFAULT_TARGET][choice.function][1][name]


def mpc_softmax_exp(
    options: dict[str, Any], interval: list[float] | tuple[float, float] | None
) -> tuple[int, float | None, int]:
    """(squarings, cutoff, order) of softmax's exp by squaring on shares, from the options.

    After the row maximum is subtracted, z >= -(spread + MASK_LIMIT) where spread is the
    calibrated width of the scores and MASK_LIMIT what masked positions add. The base
    stays in [0, 1] for z >= -2^(squarings + order - 1); when that covers the reach,
    masked positions come out 0 (exp(-200) is below the grid) and the cut-off comparison
    per entry (about 40 % of softmax's bytes) is skipped; one more squaring is allowed for
    it. Without a calibrated interval the cut-off stays. Idempotent: `make_plan` stores the
    result in the mpc plan's options, and the kernel reads the same three values back.
    """
    squarings, order, cutoff = int(options["squarings"]), int(options["order"]), options["cutoff"]
    if interval and cutoff is not None:
        reach = (interval[1] - interval[0]) + MASK_LIMIT
        needed = max(squarings, math.ceil(math.log2(reach)) - (order - 1))
        if needed <= squarings + 1:
            return needed, None, order
    return squarings, cutoff, order


def read_config(path: str | Path | None) -> dict[str, Any]:
    """A plan config from JSON or YAML; {} for None. User mistakes raise UserError."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config {path}: no such file")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"--config {path}: not valid JSON or YAML ({first})") from None
    if not isinstance(data, dict) or set(data) - {"defaults", "nodes"}:
        raise UserError(f"--config {path}: expected an object with keys 'defaults' and/or 'nodes'")
    return data


def make_plan(
    graph: Graph,
    target: str,
    config: dict[str, Any] | None = None,
    calibration: dict[str, tuple[float, float]] | None = None,
) -> Plan:
    """Choose an approximation for every nonlinear node of `graph` (see module docstring),
    for `target` ("mpc" or "he"; a local backend's name means DEFAULT_TARGET). Every option
    the target's kernels read is in the choice: the plan is what runs, on the target and
    under `approx` alike."""
    target = target if target in TARGETS else DEFAULT_TARGET
    table = DEFAULTS[target]
    config = config or {}
    defaults = config.get("defaults", {})
    per_node = config.get("nodes", {})
    _check_config_keys(defaults, per_node, graph)
    choices: dict[str, Choice] = {}
    for node in graph.calls:
        spec = lookup(node.op)
        function = (spec.function if spec else None) or CONDITIONAL.get(node.op)
        if function is None:
            continue
        method, options = table[function]
        layer = {**defaults.get(function, {}), **per_node.get(node.name, {})}
        method = layer.get("method", method)
        if method not in METHODS[function]:
            raise UserError(
                f"config: method {method!r} for {function} ({node.name}) is not one of "
                f"{', '.join(METHODS[function])}"
            )
        choice = Choice(
            node.name,
            node.op,
            node.module,
            function,
            method,
            options={**options, **layer.get("options", {})},
        )
        if layer.get("interval"):
            choice.interval = [float(v) for v in layer["interval"]]
        if calibration and node.name in calibration:
            lo, hi = calibration[node.name]
            choice.observed = [lo, hi]
            if not layer.get("interval"):
                positive = function in POSITIVE_DOMAIN or (function == "reciprocal" and lo > 0)
                choice.interval = widen(lo, hi, positive=positive)
        _check_precision(choice)
        _settle(choice, target)
        choices[node.name] = choice
    return Plan(target, choices)


def _settle(choice: Choice, target: str) -> None:
    """Store what the target's kernel derives from the options, so that the plan says it."""
    if target == "mpc" and choice.function == "softmax" and choice.method == "exp_limit":
        squarings, cutoff, order = mpc_softmax_exp(choice.options, choice.interval)
        choice.options.update(squarings=squarings, cutoff=cutoff, order=order)


def widen(lo: float, hi: float, margin: float = MARGIN, *, positive: bool = False) -> list[float]:
    """[lo, hi] stretched by `margin` about its centre (and never empty); for a positive
    quantity (a variance, a denominator) stretched geometrically: [lo / m^2, hi * m^2]."""
    if positive and lo > 0:
        return [lo / margin**2, hi * margin**2]
    centre, half = (lo + hi) / 2, max((hi - lo) / 2, 1e-6)
    return [centre - margin * half, centre + margin * half]


def _check_precision(choice: Choice) -> None:
    """`precision_bits` (mpc backend): an allowed value that the calibrated range fits."""
    bits = choice.options.get(OPTION)
    if bits is None:
        return
    where = f"config: {choice.function} ({choice.node})"
    try:
        bits = check_bits(bits, where)
        check_headroom(bits, choice.function, choice.observed or choice.interval, where)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _check_config_keys(defaults: dict, per_node: dict, graph: Graph) -> None:
    for function in defaults:
        if function not in METHODS:
            raise UserError(
                f"config: unknown function {function!r} in 'defaults'; known: {', '.join(METHODS)}"
            )
    names = {n.name for n in graph.calls}
    for name in per_node:
        if name not in names:
            raise UserError(
                f"config: no node named {name!r} in this model (see `secinfer inspect`)"
            )
