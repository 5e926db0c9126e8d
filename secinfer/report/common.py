"""Run reports: the same run on `plain` is the reference; errors per block and overall.

Report fields (JSON; later backends add fields, never rename these):
  backend, model, seconds, output_shape, reference ("plain"),
  max_abs_error, cosine (flattened output vs plain), argmax_agreement (logits only),
  out_of_range (count of inputs outside their approximation's interval) and
  out_of_range_nodes (per node: count, worst value, interval),
  comm: {bytes_sent: {model_owner, data_owner}, rounds} (zeros for local backends),
  layers: [{name, max_abs_error, seconds, out_of_range}] per block in execution order.

Written reports are strict JSON (`dumps_strict`): a non-finite number (a NaN error, an
infinite loss) is written as null and its path is listed in a top-level `non_finite` field,
e.g. "non_finite": ["max_abs_error", "layers[2].max_abs_error"].
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

from secinfer.core.execute import RunResult
from secinfer.core.graph import Graph


def block_ends(graph: Graph) -> OrderedDict[str, str]:
    """block -> name of the last call node of that block (execution order)."""
    ends: OrderedDict[str, str] = OrderedDict()
    for node in graph.calls:
        if node.shape is None:
            continue
        ends.pop(node.block, None)
        ends[node.block] = node.name
    return ends


def block_error(result: RunResult, reference: RunResult, node: str) -> float | None:
    """Max abs error of a watched node's value against the reference run (None if unseen)."""
    got, want = result.watched.get(node), reference.watched.get(node)
    if isinstance(got, torch.Tensor) and isinstance(want, torch.Tensor):
        return compare(got, want)[0]
    return None


def compare(a: Any, b: Any) -> tuple[float, float]:
    """(max abs error, cosine) between two tensors, flattened, in float64."""
    x = a.detach().double().reshape(-1)
    y = b.detach().double().reshape(-1)
    if x.numel() == 0:
        return 0.0, 1.0
    err = float((x - y).abs().max())
    denom = float(x.norm() * y.norm())
    cosine = float(x @ y) / denom if denom > 0 else float(torch.equal(x, y))
    return err, cosine


def report_header(
    *,
    backend: str,
    model: str,
    seconds: float,
    output: torch.Tensor,
    reference: torch.Tensor,
    output_name: str,
) -> dict[str, Any]:
    """The fields every run report starts with, whatever the backend: what ran, how long,
    and how far its output is from plaintext (max abs error, cosine; for logits the share
    of rows whose argmax agrees, else None)."""
    max_err, cosine = compare(output, reference)
    agreement = None
    if output_name == "logits" and output.dim() >= 1:
        agreement = float((output.argmax(-1) == reference.argmax(-1)).double().mean())
    return {
        "backend": backend,
        "model": model,
        "seconds": seconds,
        "output_shape": list(output.shape),
        "reference": "plain",
        "max_abs_error": max_err,
        "cosine": cosine,
        "argmax_agreement": agreement,
    }


def build_report(
    *,
    graph: Graph,
    backend: str,
    model: str,
    result: RunResult,
    reference: RunResult,
    output_name: str,
) -> dict[str, Any]:
    """A local run's report: `report_header`, the inputs outside the approximations'
    intervals, no communication, and each block's error."""
    out, ref = result.outputs[0], reference.outputs[0]
    report: dict[str, Any] = {
        **report_header(
            backend=backend,
            model=model,
            seconds=result.seconds,
            output=out,
            reference=ref,
            output_name=output_name,
        ),
        "out_of_range": result.out_of_range,
        "out_of_range_nodes": _out_of_range_nodes(result),
        "comm": {"bytes_sent": {"model_owner": 0, "data_owner": 0}, "rounds": 0},
        "layers": _layers(graph, result, reference),
    }
    return report


def _layers(graph: Graph, result: RunResult, reference: RunResult) -> list[dict[str, Any]]:
    seconds: dict[str, float] = {}
    outside: dict[str, int] = {}
    for record in result.records:
        seconds[record.block] = seconds.get(record.block, 0.0) + record.seconds
        outside[record.block] = outside.get(record.block, 0) + record.stats.count
    layers = []
    for block, node in block_ends(graph).items():
        err = block_error(result, reference, node)
        layers.append(
            {
                "name": block,
                "node": node,
                "max_abs_error": err,
                "seconds": seconds.get(block, 0.0),
                "out_of_range": outside.get(block, 0),
            }
        )
    return layers


def _out_of_range_nodes(result: RunResult) -> list[dict[str, Any]]:
    return [
        {
            "node": r.name,
            "op": r.op,
            "module": r.module,
            "count": r.stats.count,
            "worst": r.stats.worst,
            "interval": list(r.stats.interval) if r.stats.interval else None,
        }
        for r in result.records
        if r.stats.count
    ]


def summary(report: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    lines = [
        f"backend {report['backend']}: output {tuple(report['output_shape'])} in "
        f"{report['seconds']:.3f} s",
    ]
    if report["backend"] != "plain":
        lines.append(
            f"vs plain: max abs error {report['max_abs_error']:.3g}, cosine {report['cosine']:.6f}"
            + (
                f", argmax agreement {report['argmax_agreement']:.4f}"
                if report["argmax_agreement"] is not None
                else ""
            )
        )
    if report["out_of_range"]:
        worst = max(report["out_of_range_nodes"], key=lambda n: n["count"])
        lines.append(
            f"warning: {report['out_of_range']} inputs fell outside their approximation's "
            f"interval (most at {worst['node']} {worst['module']}: {worst['count']}, worst "
            f"{worst['worst']:.4g} outside {worst['interval']}); widen with --config or calibrate "
            "on more samples"
        )
    return "\n".join(lines)
