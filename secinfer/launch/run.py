"""One model run end to end: graph, calibration, plan, backend run, plain reference, report.

Calibration runs `plain` on the model owner's samples (`LoadedModel.calibration_samples`:
the default sample, or the digits models' 256 training images), never on the data owner's
input: the run then reports how many of the real input's values fell outside the
calibrated intervals. `run_mpc` starts the three MPC parties as processes, `run_he` the
HE server and client.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from secinfer import backends
from secinfer.core.execute import Executor, RunResult
from secinfer.core.graph import Graph
from secinfer.core.plan import Plan
from secinfer.core.prepare import prepare
from secinfer.core.registry import Call, RangeStats
from secinfer.report.common import block_ends, build_report

LOCAL_BACKENDS = ("plain", "approx")


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


def run_mpc(
    model_path: str | Path,
    program: torch.export.ExportedProgram,
    inputs: tuple[torch.Tensor, ...],
    *,
    samples: list[tuple[torch.Tensor, ...]],
    model_name: str,
    output_name: str,
    config_path: str | Path | None = None,
    trust_model: bool = False,
    provider: str = "dealer",
    precision_bits: int = 16,
    peer_timeout: float = 60.0,
) -> Outcome:
    """The three parties as local processes, then plain and approx here for comparison.

    The parties compute their own plan (the model owner calibrates it); the plan computed
    here checks the model before any party starts. The plan that ran, as the model owner
    records it (`ran_plan`), drives the plaintext reference run, which counts the inputs
    outside the mpc kernels' intervals (`OutsideCounter`), and the `approx` run, which
    gives each block's approximation error: approx predicts the run under its very plan.
    """
    from secinfer.launch.local import run_local_parties
    from secinfer.report.mpc import build_secure_report

    backends.load("mpc")
    graph, plan = prepare(program, "mpc", samples, config_path)
    local = run_local_parties(
        Path(model_path),
        inputs,
        trust_model=trust_model,
        config=Path(config_path) if config_path else None,
        provider=provider,
        precision_bits=precision_bits,
        peer_timeout=peer_timeout,
    )
    plan = ran_plan(local.model_owner, plan)
    watch = frozenset(block_ends(graph).values())
    outside = OutsideCounter(graph, plan)
    reference = Executor(graph, "plain").run(inputs, watch=watch, hook=outside)
    approx = Executor(graph, "approx", plan).run(inputs, watch=watch)
    output = torch.from_numpy(local.output)
    report = build_secure_report(
        graph=graph,
        backend="mpc",
        model=model_name,
        output=output,
        seconds=local.seconds,
        model_owner=local.model_owner,
        data_owner=local.data_owner,
        reference=reference,
        approx=approx,
        outside=outside.stats,
        output_name=output_name,
    )
    report["plan_for"] = plan.target
    return Outcome(output, report, plan, graph)


def run_he(
    model_path: str | Path,
    program: torch.export.ExportedProgram,
    inputs: tuple[torch.Tensor, ...],
    *,
    samples: list[tuple[torch.Tensor, ...]],
    model_name: str,
    output_name: str,
    config_path: str | Path | None = None,
    trust_model: bool = False,
    refresh: bool = True,
    public_embedding: bool = False,
    peer_timeout: float = 60.0,
) -> Outcome:
    """Server and client as two local processes, then plain and approx here for comparison,
    approx under the plan the server ran (`ran_plan`)."""
    from secinfer.backends.he.kernels import check_he_plan
    from secinfer.launch.local import run_local_he
    from secinfer.report.he import build_he_report

    backends.load("he")
    graph, plan = prepare(program, "he", samples, config_path)
    check_he_plan(graph, plan)
    local = run_local_he(
        Path(model_path),
        inputs,
        trust_model=trust_model,
        config=Path(config_path) if config_path else None,
        refresh=refresh,
        public_embedding=public_embedding,
        peer_timeout=peer_timeout,
    )
    plan = ran_plan(local.model_owner, plan)
    watch = frozenset(block_ends(graph).values())
    reference = Executor(graph, "plain").run(inputs, watch=watch)
    approx = Executor(graph, "approx", plan).run(inputs, watch=watch)
    output = torch.from_numpy(local.output)
    report = build_he_report(
        graph=graph,
        model=model_name,
        output=output,
        seconds=local.seconds,
        server=local.model_owner,
        client=local.data_owner,
        reference=reference,
        approx=approx,
        output_name=output_name,
    )
    report["plan_for"] = plan.target
    return Outcome(output, report, plan, graph)


def ran_plan(record: dict[str, Any], prepared: Plan) -> Plan:
    """The plan a secure run ran, from its model owner's record (`plan`), for the approx
    and reference runs beside it; `prepared` (this process's own) only if the record has
    none. A plan that is not the target's is an internal error, never silently used."""
    data = record.get("plan")
    plan = Plan.from_dict(data) if data is not None else prepared
    if plan.target != prepared.target:
        raise RuntimeError(f"the parties ran a plan for {plan.target}, not {prepared.target}")
    return plan


class OutsideCounter:
    """Hook for a plaintext run: counts each node's approximated input outside the interval
    where its mpc kernel is accurate (a secure kernel cannot look at its inputs)."""

    def __init__(self, graph: Graph, plan: Plan) -> None:
        self.graph, self.plan = graph, plan
        self.stats: dict[str, RangeStats] = {}

    def __call__(self, name: str, call: Call, _value: object) -> None:
        from secinfer.backends.mpc.kernels.nonlinear import kernel_interval
        from secinfer.core.calibrate import approximated_input

        interval = kernel_interval(self.plan.choices.get(name))
        if interval is None:
            return
        tensor = approximated_input(self.graph.node_by_name[name].op, call)
        if tensor is not None:
            self.stats.setdefault(name, RangeStats()).record(tensor, interval)
