"""Graph and plan for a backend, from a program, calibration samples and the user's config."""

from __future__ import annotations

from pathlib import Path

import torch

from secinfer.core.calibrate import calibrate
from secinfer.core.execute import check_supported
from secinfer.core.graph import Graph, build_graph
from secinfer.core.plan import Plan, check_config, make_plan, plan_target, read_config


def prepare(
    program: torch.export.ExportedProgram,
    backend: str,
    samples: list[tuple[torch.Tensor, ...]],
    config_path: str | Path | None = None,
    target: str | None = None,
) -> tuple[Graph, Plan]:
    """Graph and plan for `backend`; fails on unsupported ops before any work.

    The plan is made for `plan_target(backend, target)`: a secure backend's own, and for
    `approx` the target it stands for (default mpc), through this one function, so that
    `approx --target mpc` runs exactly the plan the mpc parties run (same graph, samples
    and config give the same `Plan.to_dict()`)."""
    chosen = plan_target(backend, target)
    check_config(read_config(config_path), None, chosen)  # before the model is traced
    return prepare_graph(build_graph(program), backend, samples, config_path, target)


def prepare_graph(
    graph: Graph,
    backend: str,
    samples: list[tuple[torch.Tensor, ...]],
    config_path: str | Path | None = None,
    target: str | None = None,
) -> tuple[Graph, Plan]:
    """`prepare` on a graph already built (a generation's programs run many times)."""
    chosen = plan_target(backend, target)
    config = read_config(config_path)
    check_config(config, None, chosen)
    check_supported(graph, backend)
    check_config(config, graph, chosen)  # node names too, before calibrating
    calibration = calibrate(graph, samples) if samples else {}
    return graph, make_plan(graph, chosen, config, calibration)
