"""One model run end to end: graph, calibration, plan, backend run, plain reference, report.

Calibration runs `plain` on the model owner's samples (`LoadedModel.calibration_samples`:
the default sample, or the digits models' 256 training images), never on the data owner's
input: the run then reports how many of the real input's values fell outside the
calibrated intervals. `run_secure` starts a secure backend's parties as processes
(`SecureBackend.run_parties`): the three MPC parties, or the HE server and client.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from secinfer import backends
from secinfer.backends.base import RunOptions
from secinfer.core.execute import Executor, RunResult
from secinfer.core.graph import Graph
from secinfer.core.plan import Plan
from secinfer.core.prepare import prepare
from secinfer.report.common import block_ends, build_report


@dataclass
class Outcome:
    output: torch.Tensor
    report: dict[str, Any]
    plan: Plan
    graph: Graph


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
    target: str | None = None,
) -> Outcome:
    """Run on `backend` and on `plain`, and compare (see `secinfer.report.common`); `approx` runs
    the plan of `target` (default mpc), named in the report's `plan_for`."""
    backends.load(backend)
    graph, plan = prepare(program, backend, samples, config_path, target)
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
    if backend != "plain":
        report["plan_for"] = plan.target
    return Outcome(result.outputs[0], report, plan, graph)


def run_secure(
    backend: str,
    model_path: str | Path,
    program: torch.export.ExportedProgram,
    inputs: tuple[torch.Tensor, ...],
    *,
    samples: list[tuple[torch.Tensor, ...]],
    model_name: str,
    output_name: str,
    options: RunOptions,
) -> Outcome:
    """A secure backend's parties as local processes, then plain and approx here beside it.

    The parties compute their own plan (the model owner calibrates it); the plan computed
    here checks the model before any party starts (`Backend.check`). The plan that ran, as
    the model owner records it (`ran_plan`), drives the plaintext reference run, which
    counts the inputs outside the secure kernels' intervals (`outside_counter`, where the
    backend has one), and the `approx` run, which gives each block's approximation error:
    approx predicts the run under its very plan."""
    chosen = backends.get(backend)
    config = Path(options.config) if options.config else None
    graph, plan = prepare(program, backend, samples, config)
    chosen.check(graph, plan, options)
    run = chosen.run_parties(Path(model_path), inputs, replace(options, config=config))
    plan = ran_plan(run.model_owner, plan)
    watch = frozenset(block_ends(graph).values())
    outside = chosen.outside_counter(graph, plan)
    reference = Executor(graph, "plain").run(inputs, watch=watch, hook=outside)
    approx = Executor(graph, "approx", plan).run(inputs, watch=watch)
    report = chosen.report(
        graph=graph,
        model=model_name,
        run=run,
        reference=reference,
        approx=approx,
        outside=outside.stats if outside is not None else {},
        output_name=output_name,
    )
    report["plan_for"] = plan.target
    return Outcome(torch.from_numpy(run.output), report, plan, graph)


def ran_plan(record: dict[str, Any], prepared: Plan) -> Plan:
    """The plan a secure run ran, from its model owner's record (`plan`), for the approx
    and reference runs beside it; `prepared` (this process's own) only if the record has
    none. A plan that is not the target's is an internal error, never silently used."""
    data = record.get("plan")
    plan = Plan.from_dict(data) if data is not None else prepared
    if plan.target != prepared.target:
        raise RuntimeError(f"the parties ran a plan for {plan.target}, not {prepared.target}")
    return plan
