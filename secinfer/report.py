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

import json
import math
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from secinfer.errors import UserError
from secinfer.execute import RunResult
from secinfer.graph import Graph


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


def build_report(
    *,
    graph: Graph,
    backend: str,
    model: str,
    result: RunResult,
    reference: RunResult,
    output_name: str,
) -> dict[str, Any]:
    out, ref = result.outputs[0], reference.outputs[0]
    max_err, cosine = compare(out, ref)
    report: dict[str, Any] = {
        "backend": backend,
        "model": model,
        "seconds": result.seconds,
        "output_shape": list(out.shape),
        "reference": "plain",
        "max_abs_error": max_err,
        "cosine": cosine,
        "argmax_agreement": None,
        "out_of_range": result.out_of_range,
        "out_of_range_nodes": _out_of_range_nodes(result),
        "comm": {"bytes_sent": {"model_owner": 0, "data_owner": 0}, "rounds": 0},
        "layers": _layers(graph, result, reference),
    }
    if output_name == "logits" and out.dim() >= 1:
        agree = (out.argmax(-1) == ref.argmax(-1)).double().mean()
        report["argmax_agreement"] = float(agree)
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


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write strict JSON (`dumps_strict`) atomically: a half-written report never replaces
    a good one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps_strict(data) + "\n")
    tmp.replace(path)


def dumps_strict(data: Any, indent: int | None = 2) -> str:
    """`data` as strict JSON (RFC 8259: no NaN or Infinity): non-finite numbers become null
    and, when `data` is a dict, their paths are listed under `non_finite` (appended to one
    already there). numpy scalars and arrays become numbers and lists; anything else that
    JSON cannot hold becomes its `str`."""
    found: list[str] = []
    clean = _finite_only(data, "", found)
    if found and isinstance(clean, dict):
        clean["non_finite"] = [*(clean.get("non_finite") or []), *found]
    return json.dumps(clean, indent=indent, allow_nan=False, default=str)


def _finite_only(value: Any, path: str, found: list[str]) -> Any:
    """A copy of `value` with non-finite floats as None, their paths appended to `found`."""
    if isinstance(value, dict):
        return {
            str(k): _finite_only(v, f"{path}.{k}" if path else str(k), found)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_finite_only(v, f"{path}[{i}]", found) for i, v in enumerate(value)]
    if hasattr(value, "tolist") and not isinstance(value, str):  # numpy / torch values
        return _finite_only(value.tolist(), path, found)
    if isinstance(value, float) and not math.isfinite(value):
        found.append(path or "(value)")
        return None
    return value


def check_destination(path: Path | None, flag: str) -> None:
    """UserError unless a file can be created in `path`'s directory: it exists, is a
    directory, and takes a new file (tried: a probe file is created and removed, so /proc
    and read-only mounts fail here, before a long run, not after it)."""
    if path is None:
        return
    parent = path.parent
    if not parent.exists():
        raise UserError(f"{flag} {path}: directory {parent} does not exist")
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is a file, not a directory")
    if path.is_dir():
        raise UserError(f"{flag} {path}: a directory; give a file name in it")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(
            f"{flag} {path}: cannot write in {parent} ({reason}); choose a writable directory"
        ) from None


def write_npy(path: str | Path, array: Any) -> None:
    """Write an array (numpy or torch) as .npy atomically, like `write_json`."""
    import numpy as np

    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, np.asarray(array), allow_pickle=False)
    tmp.replace(path)


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
