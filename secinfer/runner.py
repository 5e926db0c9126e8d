"""One model run end to end: graph, calibration, plan, backend run, plain reference, report.

Calibration runs `plain` on the model's documented default sample (the model owner's
sample data), never on the data owner's input: the run then reports how many of the real
input's values fell outside the calibrated intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from secinfer.calibrate import calibrate
from secinfer.execute import Executor, RunResult, check_supported
from secinfer.graph import Graph, build_graph
from secinfer.plan import Plan, make_plan, read_config
from secinfer.report import block_ends, build_report

LOCAL_BACKENDS = ("plain", "approx")


@dataclass
class Outcome:
    output: torch.Tensor
    report: dict[str, Any]
    plan: Plan
    graph: Graph


def prepare(
    program: torch.export.ExportedProgram,
    backend: str,
    samples: list[tuple[torch.Tensor, ...]],
    config_path: str | Path | None = None,
) -> tuple[Graph, Plan]:
    """Graph and plan for `backend`; fails on unsupported ops before any work."""
    graph = build_graph(program)
    check_supported(graph, backend)
    config = read_config(config_path)
    calibration = calibrate(graph, samples) if samples else {}
    return graph, make_plan(graph, backend, config, calibration)


def run(
    program: torch.export.ExportedProgram,
    backend: str,
    inputs: tuple[torch.Tensor, ...],
    *,
    samples: list[tuple[torch.Tensor, ...]],
    model_name: str,
    output_name: str,
    config_path: str | Path | None = None,
    progress: bool = False,
) -> Outcome:
    """Run on `backend` and on `plain`, and compare (see `secinfer.report`)."""
    graph, plan = prepare(program, backend, samples, config_path)
    watch = frozenset(block_ends(graph).values())
    reference = Executor(graph, "plain").run(inputs, watch=watch, progress=progress)
    result: RunResult
    if backend == "plain":
        result = reference
    else:
        result = Executor(graph, backend, plan).run(inputs, watch=watch, progress=progress)
    report = build_report(
        graph=graph,
        backend=backend,
        model=model_name,
        result=result,
        reference=reference,
        output_name=output_name,
    )
    return Outcome(result.outputs[0], report, plan, graph)
