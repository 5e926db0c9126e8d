"""The Plan: per nonlinear node, which approximation, on which interval, with which options.

A plan is data (JSON), not code: `Plan.to_json()` prints it, `--config FILE` (JSON or YAML)
overrides it. Its layers, lowest first:
  1. DEFAULTS per function (below), valid on every input where possible;
  2. the config's "defaults" per function;
  3. the config's "nodes" per node name;
  4. calibration (`secinfer.calibrate`): the observed input range of each node, widened by
     MARGIN, becomes the node's interval; for interval-bound methods (a single polynomial)
     the approximation is refit there rather than clipping the inputs.

Config file example:
    {"defaults": {"gelu": {"method": "minimax"}, "softmax": {"options": {"squarings": 6}}},
     "nodes": {"gelu_1": {"method": "exact"}}}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from secinfer.errors import UserError
from secinfer.graph import Graph
from secinfer.kernels.mpc_precision import OPTION, check_bits, check_headroom
from secinfer.registry import lookup

MARGIN = 1.25  # calibrated ranges are widened by this factor around their centre

# function -> (default method, allowed methods, default options)
DEFAULTS: dict[str, tuple[str, tuple[str, ...], dict[str, Any]]] = {
    "gelu": (
        "puma_refit",
        (
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
        {},
    ),
    "softmax": (
        "exp_limit",
        ("exact", "exp_limit", "power", "2quad"),
        {"squarings": 7, "order": 2, "cutoff": 14.0, "reciprocal": "goldschmidt"},
    ),
    "log_softmax": ("exp_limit", ("exact", "exp_limit"), {"squarings": 8}),
    "layer_norm": ("newton", ("exact", "newton", "poly"), {}),
    "tanh": ("saturated", ("exact", "saturated"), {}),
    "sigmoid": ("saturated", ("exact", "saturated"), {}),
    "erf": ("saturated", ("exact", "saturated"), {}),
    "silu": ("saturated", ("exact", "saturated"), {}),
    "exp": ("squaring", ("exact", "squaring"), {"squarings": 8}),
    "log": ("normalised", ("exact", "normalised"), {}),
    "rsqrt": ("newton", ("exact", "newton"), {}),
    "sqrt": ("newton", ("exact", "newton"), {}),
    "reciprocal": ("goldschmidt", ("exact", "goldschmidt", "newton", "polynomial"), {}),
}
# defaults that differ per backend: under MPC a comparison costs ~25x a product's bytes, so
# GELU is x/2 + q(x^2) on the calibrated interval when that reaches 5e-3 ("auto", see
# approximations.even_gelu), the one-comparison sign_exp form otherwise; under HE GELU must be
# one polynomial (minimax, refit on the calibrated interval) and a reciprocal has no
# normalisation ("polynomial": approximations.iterative.he_reciprocal)
BACKEND_DEFAULTS: dict[str, dict[str, str]] = {
    "mpc": {"gelu": "auto"},
    "he": {"gelu": "minimax", "reciprocal": "polynomial"},
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
    backend: str
    choices: dict[str, Choice]

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "nodes": {k: asdict(c) for k, c in self.choices.items()}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """The inverse of `to_dict` (how the model owner's plan reaches the data owner)."""
        return cls(data["backend"], {k: Choice(**c) for k, c in data["nodes"].items()})

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))


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
    backend: str,
    config: dict[str, Any] | None = None,
    calibration: dict[str, tuple[float, float]] | None = None,
) -> Plan:
    """Choose an approximation for every nonlinear node of `graph` (see module docstring)."""
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
        method, allowed, options = DEFAULTS[function]
        method = BACKEND_DEFAULTS.get(backend, {}).get(function, method)
        layer = {**defaults.get(function, {}), **per_node.get(node.name, {})}
        method = layer.get("method", method)
        if method not in allowed:
            raise UserError(
                f"config: method {method!r} for {function} ({node.name}) is not one of "
                f"{', '.join(allowed)}"
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
        choices[node.name] = choice
    return Plan(backend, choices)


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
        if function not in DEFAULTS:
            raise UserError(
                f"config: unknown function {function!r} in 'defaults'; known: {', '.join(DEFAULTS)}"
            )
    names = {n.name for n in graph.calls}
    for name in per_node:
        if name not in names:
            raise UserError(
                f"config: no node named {name!r} in this model (see `secinfer inspect`)"
            )
