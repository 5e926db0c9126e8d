"""The Plan: per nonlinear node, which approximation, on which interval, with which options.

A plan is data (JSON), not code: `Plan.to_json()` prints it, `--config FILE` (JSON or YAML)
overrides it. A plan is made for one target, a secure backend ("mpc" or "he"); the
`approx` backend runs the plan of the target it stands for (`--target`, default "mpc"), so
its error is the approximation part of that target's error. Its layers, lowest first:
  1. DEFAULT_METHODS[target] per function (below: the one table of default methods),
     valid on every input where possible, with each method's default options (declared
     once, with their types and ranges, in `secinfer.core.options`);
  2. the config's "defaults" per function;
  3. the config's "nodes" per node name (both checked by `check_config` before any work:
     an option the method does not declare, or a value it does not allow, is refused);
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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from secinfer.core.graph import Graph
from secinfer.core.masks import MASK_LIMIT
from secinfer.core.options import MAX_COUNT, OptionError, SoftmaxExpLimit, check, complete
from secinfer.core.options import defaults as option_defaults
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
        "tail",
        "chebyshev",
        "piecewise",
    ),
    "softmax": ("exact", "exp_limit", "power", "2quad", "exp_max"),
    "log_softmax": ("exact", "exp_limit"),
    "layer_norm": ("exact", "newton", "poly", "minimax_newton"),
    "tanh": ("exact", "saturated", "chebyshev"),
    "sigmoid": ("exact", "saturated", "chebyshev"),
    "erf": ("exact", "saturated", "chebyshev"),
    "silu": ("exact", "saturated", "chebyshev"),
    "exp": ("exact", "squaring", "calibrated"),
    "log": ("exact", "normalised"),
    "rsqrt": ("exact", "newton", "poly"),
    "sqrt": ("exact", "newton", "poly"),
    "reciprocal": ("exact", "goldschmidt", "newton", "polynomial"),
}

# THE default methods: target -> function -> method. A method's default options are its
# options class's (`secinfer.core.options`, the one source of option defaults); every kernel
# reads its settings from the plan's choice, which `make_plan` fills from there.
# mpc: comparisons come from the dealer's FSS keys (option `comparisons`, default
#   options.MPC_COMPARISONS): one opening of x + r for any number of thresholds, so GELU
#   "auto" is the tail form relu(x) - p(min(|x|, 4)) (approximations.tail_gelu, 2.4e-4 on
#   every input). With CrypTen's comparisons (~25x a product's bytes) "auto" is x/2 +
#   q(x^2) on the calibrated interval when that reaches 5e-3 (approximations.even_gelu),
#   the one-comparison sign_exp form otherwise; rsqrt / reciprocal are range-normalised
#   (a stacked comparison);
#   softmax exp_limit: the base 1 + u + u^2/2 raised by 7 squarings, zero below -14,
#   Goldschmidt reciprocal of the row sum (`options.SoftmaxExpLimit`), then the plan drops
#   the cut-off when enough squarings cover the calibrated spread (`mpc_softmax_exp`).
# he: no comparison is cheap and no input can be clipped, so every form is sized from the
#   node's calibrated interval and certified there (secinfer.backends.he.nonlinear):
#   GELU, tanh, sigmoid, erf, silu one Chebyshev polynomial of the degree its error target
#   needs (GELU on [-21, 21]: degree 82, 8 levels; the sign-selected "piecewise" GELU
#   takes 17 there, so it is the option, not the default); softmax "exp_max": a row-max
#   stand-in (composite-sign tournament, or the row mean or the calibrated bound when that
#   is shallower and as accurate), exp by squaring, one Goldschmidt reciprocal on the
#   denominator interval this implies; LayerNorm as one op, its 1/sqrt by Newton steps
#   with minimax coefficients on the calibrated variance interval. A reciprocal or
#   inverse square root has no normalisation: a polynomial guess and Newton / Goldschmidt
#   steps on the calibrated interval (approximations.iterative.he_reciprocal,
#   InverseSqrt.polynomial_only). exp "calibrated": e^s exp(x - s) by squaring, s the
#   calibrated upper end (approximations.shifted_exp). log_softmax and log have no CKKS
#   kernel.
_MPC_METHODS: dict[str, str] = {
    "gelu": "auto",
    "softmax": "exp_limit",
    "log_softmax": "exp_limit",
    "layer_norm": "newton",
    "tanh": "saturated",
    "sigmoid": "saturated",
    "erf": "saturated",
    "silu": "saturated",
    "exp": "squaring",
    "log": "normalised",
    "rsqrt": "newton",
    "sqrt": "newton",
    "reciprocal": "goldschmidt",
}
DEFAULT_METHODS: dict[str, dict[str, str]] = {
    "mpc": _MPC_METHODS,
    "he": {  # mpc's rows but where CKKS needs another method (comments above)
        **_MPC_METHODS,
        "gelu": "chebyshev",
        "softmax": "exp_max",
        "layer_norm": "minimax_newton",
        "tanh": "chebyshev",
        "sigmoid": "chebyshev",
        "erf": "chebyshev",
        "silu": "chebyshev",
        "rsqrt": "poly",
        "sqrt": "poly",
        "reciprocal": "polynomial",
        "exp": "calibrated",
    },
}
DEFAULTS: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    target: {f: (m, option_defaults(f, m)) for f, m in methods.items()}
    for target, methods in DEFAULT_METHODS.items()
}
"""target -> function -> (method, its default options): a view of DEFAULT_METHODS and
`secinfer.core.options` (it holds no default of its own)."""
SOFTMAX_OPTIONS: dict[str, Any] = option_defaults("softmax", "exp_limit")
"""softmax exp_limit's default options (`options.SoftmaxExpLimit`), as data."""
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
    """The method's options as JSON data: in a plan that `make_plan`, `from_dict` or
    `from_peer` made, checked and complete (`secinfer.core.options.complete`); kernels read
    them typed through `secinfer.core.options.options_for`."""


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
        """The inverse of `to_dict` (a plan this program wrote, e.g. the model owner's
        record), each choice's options checked and completed (`options.complete`):
        ValueError naming the node and the option that is wrong. A plan from another party
        goes through `from_peer`, which checks every field."""
        choices = {}
        for name, entry in data["nodes"].items():
            choice = Choice(**entry)
            choice.options = _checked_options(choice.function, choice.method, choice.options, name)
            choices[name] = choice
        return cls(data["backend"], choices)

    @classmethod
    def from_peer(cls, data: Any, functions: dict[str, str | None]) -> Plan:
        """A plan received from another party, checked before anything uses it: the target,
        and per choice an op node of the graph (`functions`: node -> the function its op
        approximates, None for ops such as pow that a plan may still approximate), that
        function, one of its METHODS, finite ordered intervals, and the options that method
        declares, typed and in range (`secinfer.core.options`: counts such as squarings at
        most MAX_COUNT). ValueError naming the first field that is wrong."""
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
            options = _checked_options(entry["function"], entry["method"], entry["options"], name)
            choices[name] = Choice(**{**entry, "options": options})
        return cls(data["backend"], choices)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))


def _check_interval(value: Any, where: str) -> None:
    if value is None:
        return
    ok = isinstance(value, list) and len(value) == 2
    ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    if not ok or not all(math.isfinite(v) for v in value) or not value[0] <= value[1]:
        raise ValueError(f"{where}: a finite [low, high] expected")


def _checked_options(function: Any, method: Any, options: Any, node: Any) -> dict[str, Any]:
    """A received plan's options for one node, complete, or ValueError naming the node."""
    try:
        return complete(str(function), str(method), options)
    except OptionError as exc:
        raise ValueError(f"plan node {str(node)[:60]!r}: {exc}") from None


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


def mpc_softmax_exp(
    options: SoftmaxExpLimit | Mapping[str, Any],
    interval: list[float] | tuple[float, float] | None,
) -> tuple[int, float | None, int]:
    """(squarings, cutoff, order) of softmax's exp by squaring on shares, from softmax
    exp_limit's options (typed, or as data: checked, unset ones at their defaults).

    After the row maximum is subtracted, z >= -(spread + MASK_LIMIT) where spread is the
    calibrated width of the scores and MASK_LIMIT what masked positions add. The base
    stays in [0, 1] for z >= -2^(squarings + order - 1); when that covers the reach,
    masked positions come out 0 (exp(-200) is below the grid) and the cut-off comparison
    per entry (about 40 % of softmax's bytes) is skipped; one more squaring is allowed for
    it. Without a calibrated interval the cut-off stays. Idempotent: `make_plan` stores the
    result in the mpc plan's options, and the kernel reads the same three values back.
    """
    if not isinstance(options, SoftmaxExpLimit):
        options = check("softmax", "exp_limit", options)
    squarings, order, cutoff = options.squarings, options.order, options.cutoff
    if interval and cutoff is not None:
        reach = (interval[1] - interval[0]) + MASK_LIMIT
        needed = max(squarings, math.ceil(math.log2(reach)) - (order - 1))
        if needed <= min(squarings + 1, MAX_COUNT):  # a plan's counts stay <= MAX_COUNT
            return needed, None, order
    return squarings, cutoff, order


def read_config(path: str | Path | None) -> dict[str, Any]:
    """A plan config from JSON or YAML; {} for None. User mistakes raise UserError; what
    it sets is checked against a graph and a target by `check_config`."""
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


ENTRY_KEYS = ("method", "options", "interval")
"""What a config may set for a function ("defaults") or a node ("nodes")."""


def check_config(config: Any, graph: Graph | None, target: str) -> None:
    """Every setting of a plan `config` (`read_config`'s, or a dict made in code) checked
    against `graph` and `target`'s default methods before any work: known functions and
    node names, entries of ENTRY_KEYS only, each method one of the function's METHODS,
    finite ordered intervals, and each method's options declared by it, typed and in range
    (`secinfer.core.options`); for a node, its function's defaults merged under its own
    entry, as `make_plan` merges them. UserError, one line naming the setting and what is
    allowed. Without a `graph`, what needs none: the "defaults", and the nodes' keys. The
    same on every backend: `prepare` calls it before tracing the model and calibrating."""
    methods = DEFAULT_METHODS[target if target in TARGETS else DEFAULT_TARGET]
    if not isinstance(config, dict) or set(config) - {"defaults", "nodes"}:
        raise UserError("--config: expected an object with keys 'defaults' and/or 'nodes'")
    defaults, per_node = config.get("defaults", {}), config.get("nodes", {})
    for key, value in (("defaults", defaults), ("nodes", per_node)):
        if not isinstance(value, dict):
            raise UserError(f"--config: '{key}' must be an object, not {type(value).__name__}")
    for function, entry in defaults.items():
        if function not in METHODS:
            known = ", ".join(METHODS)
            raise UserError(
                f"--config: unknown function {function!r} in 'defaults'; known: {known}"
            )
        _check_entry(entry, f"--config: {function}")
        _check_choice(entry, function, methods[function], "--config")
    functions = None if graph is None else {n.name: _function_of(n.op) for n in graph.calls}
    for name, entry in per_node.items():
        if functions is None:
            _check_entry(entry, f"--config: node {name}")
            continue
        if name not in functions:
            raise UserError(
                f"--config: no node named {name!r} in this model (see `secinfer inspect`)"
            )
        function, where = functions[name], f"--config: node {name}"
        _check_entry(entry, where)
        if function is not None:  # else an op the plan does not approximate
            _check_choice(
                {**defaults.get(function, {}), **entry}, function, methods[function], where
            )


def _check_entry(entry: Any, where: str) -> None:
    """A config entry: an object of ENTRY_KEYS."""
    if not isinstance(entry, dict):
        raise UserError(f"{where}: an object with {', '.join(ENTRY_KEYS)} expected")
    unknown = [key for key in entry if key not in ENTRY_KEYS]
    if unknown:
        raise UserError(
            f"{where}: {unknown[0]!r} is not a setting; settings: {', '.join(ENTRY_KEYS)}"
        )


def _check_choice(entry: dict, function: str, default_method: str, where: str) -> None:
    """A config entry's method (else `default_method`), interval and that method's options."""
    method = entry.get("method", default_method)
    if method not in METHODS[function]:
        raise UserError(
            f"{where}: method {method!r} for {function} is not one of "
            f"{', '.join(METHODS[function])}"
        )
    try:
        _check_interval(entry.get("interval"), f"{where}: {function} interval")
        check(function, method, entry.get("options", {}))
    except OptionError as exc:
        raise UserError(f"{where}: {exc}") from None
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _function_of(op: str) -> str | None:
    """The function a node's op approximates (registry, or CONDITIONAL), None if none."""
    spec = lookup(op)
    return (spec.function if spec else None) or CONDITIONAL.get(op)


def make_plan(
    graph: Graph,
    target: str,
    config: dict[str, Any] | None = None,
    calibration: dict[str, tuple[float, float]] | None = None,
) -> Plan:
    """Choose an approximation for every nonlinear node of `graph` (see module docstring),
    for `target` ("mpc" or "he"; a local backend's name means DEFAULT_TARGET). Every option
    the method declares is in the choice (`secinfer.core.options`): the plan is what runs,
    on the target and under `approx` alike. The config is checked first (`check_config`)."""
    target = target if target in TARGETS else DEFAULT_TARGET
    config = config or {}
    check_config(config, graph, target)
    defaults = config.get("defaults", {})
    per_node = config.get("nodes", {})
    choices: dict[str, Choice] = {}
    for node in graph.calls:
        function = _function_of(node.op)
        if function is None:
            continue
        layer = {**defaults.get(function, {}), **per_node.get(node.name, {})}
        method = layer.get("method", DEFAULT_METHODS[target][function])
        options = complete(function, method, layer.get("options", {}))
        choice = Choice(node.name, node.op, node.module, function, method, options=options)
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
    where = f"--config: node {choice.node} ({choice.function})"
    try:
        bits = check_bits(bits, where)
        check_headroom(bits, choice.function, choice.observed or choice.interval, where)
    except ValueError as exc:
        raise UserError(str(exc)) from None
