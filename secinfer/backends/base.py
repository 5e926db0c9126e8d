"""The one interface every backend offers to the launcher and the CLI.

A backend is where a model runs: `plain` and `approx` in this process (`LocalBackend`),
`mpc` and `he` as parties in separate processes (`SecureBackend`). The launcher
(`secinfer.launch`) and the CLI know backends only through these two protocols and the
registry (`secinfer.backends.get`): a new backend is one new package and one line there.

What each backend answers:
  value_limit     the bound its encoding puts on the data owner's values (checked before
                  any run: `secinfer.load.values`)
  notices         lines to print before a run (say, an insecure option)
  check           a model and plan it cannot run are refused before any party starts
  summary         the terminal lines its report adds to the common summary
A secure backend also:
  run_parties     its parties on this machine for one query: the data owner's output and
                  both sides' records
  evaluate_parties  its private evaluation on this machine: what the chosen party learned
                  and both sides' records
  outside_counter a hook for the plaintext reference run that counts inputs outside its
                  kernels' intervals (a secure kernel cannot look), or None
  report          the run report from its parties' records beside the plaintext and
                  approx runs under the same plan
  evaluation_costs  the cost fields of an evaluation report
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from protocols.net import PEER_TIMEOUT
from secinfer.core.evaluation import Evaluation
from secinfer.core.execute import RunResult
from secinfer.core.graph import Graph
from secinfer.core.plan import Plan
from secinfer.core.registry import RangeStats
from secinfer.core.sampling import GREEDY, Sampling
from secinfer.load.values import ValueLimit

RUN_TIMEOUT = 3600.0
"""Default bound on a whole local run (seconds); each peer wait has its own timeout."""

Hook = Any
"""An executor hook: called with (node name, `Call`, value) for each node."""


@dataclass(frozen=True)
class RunOptions:
    """The user's choices for a run or an evaluation; each backend reads its own."""

    trust_model: bool = False
    config: Path | None = None
    peer_timeout: float = PEER_TIMEOUT
    provider: str = "dealer"  # mpc: who deals the correlated randomness
    precision_bits: int = 16  # mpc: fixed-point fractional bits
    refresh: bool = True  # he: the client may re-encrypt between contexts
    public_embedding: bool = False  # he: the client embeds token ids itself
    hiding_bits: int = 40  # he: statistical hiding of what a refresh shows the client
    flood_bits: int = 0  # he: flood the output's noise (0: off)
    packing: str = "auto"  # he: "auto" (cost model per layer) or "feature_major" (baseline)
    run_timeout: float = RUN_TIMEOUT  # local runs: the launcher stops the parties after it
    target: str | None = None  # approx: the secure backend whose plan it runs


@dataclass
class PartyRun:
    """One query by a secure backend's parties: the data owner's output, both sides'
    records (bytes, rounds, per-node costs, the plan that ran) and the wall seconds."""

    output: np.ndarray
    model_owner: dict[str, Any]
    data_owner: dict[str, Any]
    seconds: float
    logits: np.ndarray | None = None  # a generation under he: the client's, one row a token


@dataclass
class PartyEvaluation:
    """A private evaluation by a secure backend's parties: the aggregate the chosen party
    learned, both sides' records and the wall seconds."""

    aggregate: dict[str, Any]
    model_owner: dict[str, Any]
    data_owner: dict[str, Any]
    seconds: float


class Backend(Protocol):
    """What every backend answers (see the module's docstring)."""

    name: str
    secure: bool

    def value_limit(self, options: RunOptions) -> ValueLimit: ...

    def notices(self, options: RunOptions) -> list[str]: ...

    def check(self, graph: Graph, plan: Plan, options: RunOptions | None = None) -> None: ...

    def summary(self, report: dict[str, Any]) -> str: ...


class SecureBackend(Backend, Protocol):
    """A backend whose model owner and data owner are separate processes."""

    def run_parties(
        self, model: Path, inputs: tuple[torch.Tensor, ...], options: RunOptions
    ) -> PartyRun: ...

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
        """Generation by the parties as local processes, each token picked by `sampling`
        (`secinfer.core.sampling`): `output` holds the token ids, the records each party's
        cost of the prefill and of every token."""
        ...

    def evaluate_parties(
        self, model: Path, data: Path, evaluation: Evaluation, batch_size: int, options: RunOptions
    ) -> PartyEvaluation: ...

    def outside_counter(self, graph: Graph, plan: Plan) -> Hook | None: ...

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
    ) -> dict[str, Any]: ...

    def evaluation_costs(self, evaluated: PartyEvaluation) -> dict[str, Any]: ...
