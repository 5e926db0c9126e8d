"""`secinfer inspect`: what a model needs before any cryptography.

Ops and their counts with the backends that support each, coverage per backend, the
model owner's parameters and the data owner's inputs, calibrated input ranges of the
nonlinear nodes (plain run on the calibration samples), and an estimate of the multiplicative
depth an HE run would need.

Depth estimate: the longest path through the graph where each node adds the CKKS levels
of its HE-friendly evaluation: 1 for a product with a weight, another activation or a
non-integer scalar (a mean is a product by 1/n); ceil(log2 k) for an integer power k;
the catalog depth of the polynomial or iterative approximation for nonlinear ops (GELU:
gelu.minimax; exp: exp.squaring; tanh/sigmoid/erf: their minimax polynomials; division
by a tensor: reciprocal.goldschmidt_he; LayerNorm: mean, variance, polynomial inverse
square root on its calibrated interval, two products). Additions, shapes and selections
by public masks are free. It is an estimate: packing and refresh placement come with
the HE backend.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from approximations import catalog
from approximations.functions import rsqrt_approximation
from secinfer.core.calibrate import calibrate
from secinfer.core.graph import Graph
from secinfer.core.registry import BACKENDS, PUBLIC_INPUTS, lookup, supported_backends

FREE_CATEGORIES = ("shape", "create", "select")
CATALOG_DEPTH = {
    "gelu": "gelu.minimax",
    "tanh": "tanh.minimax",
    "sigmoid": "sigmoid.minimax",
    "erf": "erf.minimax",
    "silu": "silu.minimax",
    "exp": "exp.squaring",
    "reciprocal": "reciprocal.goldschmidt_he",
    "log": "log.minimax",
}


def op_table(graph: Graph) -> list[dict[str, Any]]:
    rows = []
    for op, count in sorted(graph.op_counts().items(), key=lambda kv: (-kv[1], kv[0])):
        spec = lookup(op)
        rows.append(
            {
                "op": op,
                "count": count,
                "category": spec.category if spec else "unsupported",
                "backends": supported_backends(op),
            }
        )
    return rows


SHAPE_ONLY = frozenset({"aten.sym_size", "aten.full_like", "aten.ones_like", "aten.zeros_like"})
"""Ops whose result depends on their input's shape only (public), not its values."""


def input_dependent(graph: Graph, public: set[str] | frozenset[str] = frozenset()) -> set[str]:
    """Nodes whose value depends on the data owner's inputs (what a secure backend holds
    encrypted or shared), but for the inputs named `public` (sent in the clear); the rest
    are plain computations."""
    tainted = set(graph.user_inputs) - set(public)
    for node in graph.calls:
        if node.op in SHAPE_ONLY:
            continue
        inputs = graph.fx_nodes[node.name].all_input_nodes
        if any(i.name in tainted for i in inputs):
            tainted.add(node.name)
    return tainted


def coverage(graph: Graph) -> dict[str, dict[str, Any]]:
    """Per backend: nodes it can run (an input-dependent node needs a kernel that computes
    on secret values; the others, and those on inputs the backend sends in the clear
    (`registry.PUBLIC_INPUTS`), are plain computations any backend does)."""
    calls = graph.calls
    result = {}

    def runs(op: str, backend: str) -> bool:
        """A kernel that computes on the backend's secret values (the he backend's
        `plain_only` kernels run the model owner's plain computations only)."""
        spec = lookup(op)
        kernel = spec.kernels.get(backend) if spec else None
        return kernel is not None and not getattr(kernel, "plain_only", False)

    for backend in BACKENDS:
        public = PUBLIC_INPUTS[backend](graph) if backend in PUBLIC_INPUTS else set()
        secret = input_dependent(graph, public)
        ok = [runs(n.op, backend) or n.name not in secret for n in calls]
        missing = sorted({n.op for n, good in zip(calls, ok, strict=True) if not good})
        supported = sum(ok)
        result[backend] = {
            "supported_nodes": supported,
            "nodes": len(calls),
            "missing_ops": missing,
        }
    return result


def he_depth(
    graph: Graph,
    ranges: dict[str, tuple[float, float]],
    levels: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Longest-path multiplicative depth estimate (see the module docstring); `levels`
    gives the exact levels of some nodes (the he backend's own count for its plan)."""
    depth: dict[str, int] = {name: 0 for name in graph.owned}
    owned = set(graph.owned)
    costs: dict[str, int] = {}
    for name in graph.user_inputs:
        depth[name] = 0
    for node in graph.calls:
        fx_node = graph.fx_nodes[node.name]
        inputs = [n.name for n in fx_node.all_input_nodes]
        base = max((depth.get(i, 0) for i in inputs if i not in owned), default=0)
        if levels and node.name in levels:
            cost = levels[node.name]
        else:
            cost = _node_cost(node.op, fx_node, node.name, inputs, owned, ranges)
        costs[node.name] = cost
        depth[node.name] = base + cost
    deepest = max((depth[n.name] for n in graph.calls), default=0)
    contributors: dict[str, int] = {}
    for node in graph.calls:
        spec = lookup(node.op)
        key = spec.function if spec and spec.function else node.op
        contributors[key] = contributors.get(key, 0) + costs[node.name]
    return {
        "depth": deepest,
        "levels_by_op": dict(sorted(contributors.items(), key=lambda kv: -kv[1])),
    }


def _node_cost(
    op: str,
    fx_node: torch.fx.Node,
    name: str,
    inputs: list[str],
    owned: set[str],
    ranges: dict[str, tuple[float, float]],
) -> int:
    spec = lookup(op)
    if spec is None or spec.category in FREE_CATEGORIES:
        return 0
    if spec.category == "linear":
        return 1
    if spec.category == "arith":
        return _arith_cost(op, fx_node, inputs, owned)
    function = spec.function
    if function == "layer_norm":
        interval = ranges.get(name)
        rsqrt = (
            rsqrt_approximation("poly", interval)
            if interval
            else catalog["rsqrt.poly_he"].approximation
        )
        return 3 + rsqrt.depth + 2  # mean, square, mean; rsqrt; times x - mean, times weight
    if function in ("softmax", "log_softmax"):
        return catalog["exp.squaring"].depth + catalog["reciprocal.goldschmidt_he"].depth + 1
    if function in ("rsqrt", "sqrt"):
        return catalog["rsqrt.poly_he"].depth + (1 if function == "sqrt" else 0)
    entry = CATALOG_DEPTH.get(function or "")
    return (catalog[entry].depth or 0) if entry else 0


def _arith_cost(op: str, fx_node: torch.fx.Node, inputs: list[str], owned: set[str]) -> int:
    args = fx_node.args
    if op in ("aten.add", "aten.sub", "aten.rsub", "aten.neg", "aten.sum", "aten.cumsum"):
        return 0
    if op == "aten.mean":
        return 1
    if op in ("aten.square",):
        return 1
    if op == "aten.pow":
        exponent = args[1] if len(args) > 1 else 1
        if isinstance(exponent, (int, float)) and float(exponent).is_integer() and exponent > 0:
            return max(1, math.ceil(math.log2(int(exponent))))
        return catalog["reciprocal.goldschmidt_he"].depth
    if op == "aten.div":
        divisor = args[1] if len(args) > 1 else None
        if isinstance(divisor, torch.fx.Node) and divisor.name not in owned:
            return catalog["reciprocal.goldschmidt_he"].depth + 1
        return 1
    if op == "aten.mul":
        operand = args[1] if len(args) > 1 else None
        if isinstance(operand, (int,)) or (isinstance(operand, float) and operand.is_integer()):
            return 0
        return 1
    return 1


def inspect_graph(graph: Graph, samples: list[tuple[torch.Tensor, ...]]) -> dict[str, Any]:
    ranges = calibrate(graph, samples) if samples else {}
    nonlinear = []
    for node in graph.calls:
        spec = lookup(node.op)
        if node.name in ranges and spec is not None:
            lo, hi = ranges[node.name]
            nonlinear.append(
                {
                    "node": node.name,
                    "op": node.op,
                    "module": node.module,
                    "function": spec.function or node.op,
                    "range": [lo, hi],
                }
            )
    return {
        "ops": op_table(graph),
        "coverage": coverage(graph),
        "parameters": graph.parameter_count(),
        "parameter_bytes": sum(t.numel() * t.element_size() for t in graph.owned.values()),
        "calibrated_ranges": nonlinear,
        "he_depth_estimate": he_depth(graph, ranges),
    }


def format_inspection(info: dict[str, Any], header: list[str]) -> str:
    lines = [*header, "", "ops:", f"  {'op':<28} {'count':>5}  {'category':<10} backends"]
    for row in info["ops"]:
        backends = ", ".join(row["backends"]) or "none"
        lines.append(f"  {row['op']:<28} {row['count']:>5}  {row['category']:<10} {backends}")
    lines += ["", "coverage:"]
    for backend, cov in info["coverage"].items():
        missing = f" (missing: {', '.join(cov['missing_ops'])})" if cov["missing_ops"] else ""
        lines.append(f"  {backend:<7} {cov['supported_nodes']}/{cov['nodes']} nodes{missing}")
    lines += [
        "",
        f"parameters (model owner): {info['parameters']:,} "
        f"({info['parameter_bytes'] / 1e6:.2f} MB)",
        "",
        "calibrated input ranges of nonlinear nodes (plain run on the calibration samples):",
    ]
    for row in info["calibrated_ranges"]:
        lo, hi = row["range"]
        lines.append(
            f"  {row['node']:<16} {row['function']:<12} [{lo:.4g}, {hi:.4g}]  {row['module']}"
        )
    depth = info["he_depth_estimate"]
    top = ", ".join(f"{k} {v}" for k, v in list(depth["levels_by_op"].items())[:5])
    lines += [
        "",
        f"HE multiplicative depth estimate: {depth['depth']} levels (sum of levels by op: {top})",
    ]
    return "\n".join(lines)
