"""The `he` backend behind the common interface (`secinfer.backends.base.SecureBackend`):
the model owner serves encrypted inference, the data owner holds the only CKKS key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from secinfer.backends.base import PartyEvaluation, PartyRun, RunOptions
from secinfer.backends.he.limits import he_limit
from secinfer.core.evaluation import Evaluation
from secinfer.core.execute import RunResult
from secinfer.core.graph import Graph
from secinfer.core.plan import Plan
from secinfer.core.registry import RangeStats
from secinfer.core.sampling import GREEDY, Sampling
from secinfer.load.values import ValueLimit


class HeBackend:
    """CKKS: a server (model owner) and a client (data owner, the secret key)."""

    name = "he"
    secure = True

    def value_limit(self, options: RunOptions) -> ValueLimit:
        return he_limit()

    def notices(self, options: RunOptions) -> list[str]:
        from secinfer.backends.he.choice import hiding_warning

        warning = hiding_warning(options.hiding_bits)
        return [warning] if warning else []

    def check(self, graph: Graph, plan: Plan, options: RunOptions | None = None) -> None:
        """Ops CKKS cannot run (comparisons, exact GELU, ...) name the conversion to apply;
        a model too wide for every 128-bit ring (its example inputs' layouts), or too deep
        for every 128-bit chain when refresh is off, is refused here, before any party
        starts (`choice.check_serviceable`)."""
        from secinfer.backends.he.choice import check_serviceable
        from secinfer.backends.he.kernels import check_he_plan

        check_he_plan(graph, plan)
        options = options or RunOptions()
        check_serviceable(graph, plan, refresh=options.refresh,
                          public_embedding=options.public_embedding)  # fmt: skip

    def run_parties(
        self, model: Path, inputs: tuple[torch.Tensor, ...], options: RunOptions
    ) -> PartyRun:
        from secinfer.backends.he.local import run_local_he

        return run_local_he(model, inputs, options)

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
        from secinfer.backends.he.local import run_local_he_generation

        return run_local_he_generation(model, prompt, max_new_tokens, stop_token, options, sampling)

    def evaluate_parties(
        self, model: Path, data: Path, evaluation: Evaluation, batch_size: int, options: RunOptions
    ) -> PartyEvaluation:
        from secinfer.backends.he.local import run_local_he_evaluation

        return run_local_he_evaluation(model, data, evaluation, batch_size, options)

    def outside_counter(self, graph: Graph, plan: Plan) -> None:
        return None  # HE kernels saturate nothing: the plan's intervals are its depth budget

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
        from secinfer.report.he import build_he_report

        return build_he_report(
            graph=graph,
            model=model,
            output=torch.from_numpy(run.output),
            seconds=run.seconds,
            server=run.model_owner,
            client=run.data_owner,
            reference=reference,
            approx=approx,
            output_name=output_name,
        )

    def evaluation_costs(self, evaluated: PartyEvaluation) -> dict[str, Any]:
        """comm (bytes, refreshes, round trips, the public context), the LAN/WAN estimates
        and the loss schedule's depth and cost."""
        from secinfer.report.he import PROTOCOL_ROUND_TRIPS, he_estimates

        server, client = evaluated.model_owner, evaluated.data_owner
        # besides refreshes: the query's three exchanges (the totals and their answer in
        # place of the output's) and two per batch (labels, next)
        trips = server["refreshes"] + PROTOCOL_ROUND_TRIPS + 2 * server["batches"]
        return {
            "estimates": he_estimates(evaluated.seconds, trips, server, client),
            "comm": {
                "bytes_sent": {
                    "model_owner": server["bytes_sent"],
                    "data_owner": client["bytes_sent"],
                },
                "refreshes": server["refreshes"],
                "round_trips": trips,
                "public_context_bytes": client["public_context_bytes"],
            },
            "he": {
                "params": server["params"],
                "hiding": server.get("hiding"),
                "params_choice": server.get("params_choice"),
                "loss_depth": server["loss_depth"],
                "loss_seconds": server["loss_seconds"],
                "loss_refreshes": server["loss_refreshes"],
                "approximations": server["evaluation"]["approximations"],
            },
        }

    def summary(self, report: dict[str, Any]) -> str:
        from secinfer.report.he import he_summary

        return he_summary(report)


HE = HeBackend()
