"""The `mpc` backend behind the common interface (`secinfer.backends.base.SecureBackend`):
three processes (model owner, data owner, dealer) over CrypTen secret shares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from secinfer.backends.base import PartyEvaluation, PartyRun, RunOptions
from secinfer.backends.mpc.limits import mpc_limit
from secinfer.core.evaluation import Evaluation
from secinfer.core.execute import RunResult
from secinfer.core.graph import Graph
from secinfer.core.plan import Plan
from secinfer.core.registry import Call, RangeStats
from secinfer.core.sampling import GREEDY, Sampling
from secinfer.load.values import ValueLimit


class MpcBackend:
    """Secret sharing between the model owner and the data owner, a dealer's randomness."""

    name = "mpc"
    secure = True

    def value_limit(self, options: RunOptions) -> ValueLimit:
        return mpc_limit(options.precision_bits)

    def notices(self, options: RunOptions) -> list[str]:
        if options.provider == "trusted-first-party":
            from protocols.mpc.runtime import INSECURE_PROVIDER_WARNING

            return [INSECURE_PROVIDER_WARNING]
        return []

    def check(self, graph: Graph, plan: Plan, options: RunOptions | None = None) -> None:
        return None  # the registry check (`check_supported`) covers what mpc can run

    def run_parties(
        self, model: Path, inputs: tuple[torch.Tensor, ...], options: RunOptions
    ) -> PartyRun:
        from secinfer.backends.mpc.local import run_local_parties

        return run_local_parties(model, inputs, options)

    def generate_parties(
        self,
        model: Path,
        prompt: torch.Tensor,
        max_new_tokens: int,
        stop_token: int | None,
        options: RunOptions,
        *,
        sampling: Sampling = GREEDY,
    ) -> PartyRun:
        from secinfer.backends.mpc.local import run_local_generation

        return run_local_generation(model, prompt, max_new_tokens, stop_token, options, sampling)

    def evaluate_parties(
        self, model: Path, data: Path, evaluation: Evaluation, batch_size: int, options: RunOptions
    ) -> PartyEvaluation:
        from secinfer.backends.mpc.local import run_local_evaluation

        return run_local_evaluation(model, data, evaluation, batch_size, options)

    def outside_counter(self, graph: Graph, plan: Plan) -> OutsideCounter:
        return OutsideCounter(graph, plan)

    def report(
        self,
        *,
        graph: Graph,
        model: str,
        run: PartyRun,
        reference: RunResult,
        approx: RunResult,
        outside: dict[str, RangeStats],
        output_name: str,
    ) -> dict[str, Any]:
        from secinfer.report.mpc import build_secure_report

        return build_secure_report(
            graph=graph,
            backend=self.name,
            model=model,
            output=torch.from_numpy(run.output),
            seconds=run.seconds,
            model_owner=run.model_owner,
            data_owner=run.data_owner,
            reference=reference,
            approx=approx,
            outside=outside,
            output_name=output_name,
        )

    def evaluation_costs(self, evaluated: PartyEvaluation) -> dict[str, Any]:
        """comm (online bytes and rounds, the offline phase) and the LAN/WAN estimates."""
        from secinfer.report.mpc import estimate

        model_owner, data_owner = evaluated.model_owner, evaluated.data_owner
        mo, do = model_owner["run"], data_owner["run"]
        rounds = max(mo["rounds"], do["rounds"])
        return {
            "comm": {
                "bytes_sent": {"model_owner": mo["bytes_sent"], "data_owner": do["bytes_sent"]},
                "rounds": rounds,
                "offline": {
                    "model_owner": model_owner["offline"],
                    "data_owner": data_owner["offline"],
                },
            },
            "estimates": estimate(
                evaluated.seconds, rounds, max(mo["bytes_sent"], do["bytes_sent"])
            ),
        }

    def summary(self, report: dict[str, Any]) -> str:
        from secinfer.report.mpc import comm_summary

        return comm_summary(report)


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


MPC = MpcBackend()
