"""Every mpc case in ONE session of real parties (model owner, data owner, dealer).

`run_jobs(role, jobs)` is what each computing party runs (`protocols.mpc.local.run_local`
starts the processes): per job, as `secinfer.backends.mpc.party` does for a query, the
party rebuilds the graph from the model owner's public architecture (`architecture.rebuild`,
weights zeroed), the model owner puts its own weights back, both check the plan as the data
owner checks a peer's (`Plan.from_peer`), share the weights (`Seeder.prepare`: the model
owner's, opened once) and the data owner's inputs (its secret; the model owner holds zeros
of the same shapes), run `Executor(graph, "mpc", plan, seeder=...)` and reveal the output to
the data owner. Each party uses only what its role owns from a job.

Kernels raise the same way on both parties (their code paths do not depend on the
secret values), so a job that fails is recorded as its error and the session goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from protocols.mpc.runtime import Role


@dataclass
class Job:
    """One one-op graph to run: built by the parent, sent to both parties."""

    key: str
    architecture: dict[str, Any]
    weights: dict[str, np.ndarray]  # the model owner's floating-point values
    plan: dict[str, Any]
    inputs: list[np.ndarray]  # the data owner's


def run_jobs(role: Role, jobs: list[Job]) -> dict[str, tuple[str, Any, float]]:
    """Run every job on this party: key -> ("ok", output as float64 numpy, on the data
    owner; None on the model owner) or ("error", one line), and the job's seconds."""
    import time

    from protocols.mpc.reveal import reveal_to
    from secinfer.backends.mpc.kernels.values import is_secret
    from secinfer.backends.mpc.party import Seeder, nonlinear_functions
    from secinfer.core import architecture
    from secinfer.core.execute import Executor
    from secinfer.core.plan import Plan
    from secinfer.core.token_ids import token_id_inputs

    mine = role is Role.DATA_OWNER
    results: dict[str, tuple[str, Any, float]] = {}
    for job in jobs:
        began = time.perf_counter()
        try:
            graph = architecture.rebuild(job.architecture).graph
            if role is Role.MODEL_OWNER:
                for name, value in job.weights.items():
                    graph.owned[name] = torch.from_numpy(value)
            plan = Plan.from_peer(job.plan, nonlinear_functions(graph))
            seeder = Seeder(role, token_id_inputs(graph))
            seeder.prepare(graph)
            values = [torch.from_numpy(v) for v in job.inputs]
            if not mine:
                values = [torch.zeros_like(v) for v in values]
            result = Executor(graph, "mpc", plan, seeder=seeder).run(tuple(values))
            output = result.outputs[0]
            if is_secret(output):
                output = reveal_to(output, int(Role.DATA_OWNER))
            value = np.asarray(torch.as_tensor(output).double()) if mine else None
            results[job.key] = ("ok", value, time.perf_counter() - began)
        except Exception as exc:  # recorded; the test names it
            text = str(exc).splitlines()[0] if str(exc) else ""
            message = f"{type(exc).__name__}: {text}"[:500]
            results[job.key] = ("error", message, time.perf_counter() - began)
    return results


__all__ = ["Job", "run_jobs"]
