"""The three parties of an MPC run as separate processes on this machine.

`run_local_parties(model, inputs, options)` starts `secinfer party` three times (model
owner, data owner, dealer) as fresh processes on a loopback rendezvous
(`secinfer.backends.parties`), and collects the data owner's output and both parties' cost
records; `run_local_evaluation` does the same for a private evaluation. The MPC rendezvous
port is bound here, on 127.0.0.1 only, and its socket handed to the model owner
(`protocols.net.LISTENER_FD_ENV`): no other program can take it in between.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protocols.mpc import rendezvous as meeting
from protocols.mpc.runtime import Role
from secinfer.backends import processes
from secinfer.backends.base import PartyEvaluation, PartyRun, RunOptions
from secinfer.backends.parties import (
    echoing_progress,
    evaluation_arguments,
    output_names,
    party_dirs,
    read_evaluation,
    read_run,
    run_parties,
    save_inputs,
)
from secinfer.core.evaluation import Evaluation
from secinfer.core.sampling import GREEDY, Sampling
from secinfer.load.huggingface import tokenizer_arguments


def run_local_parties(
    model: Path,
    inputs: tuple[torch.Tensor, ...],
    options: RunOptions,
    insecure_channel: bool = False,
) -> PartyRun:
    """Model owner, data owner and (under `options.provider` "dealer") the dealer as
    processes; the data owner's output. Their links are mutual TLS 1.3 (ephemeral
    identities), or gloo in clear with `insecure_channel`."""
    roles = [Role.MODEL_OWNER, Role.DATA_OWNER]
    if options.provider == "dealer":
        roles.append(Role.DEALER)
    with processes.stopping_on_signals(), processes.private_directory("secinfer-mpc-") as root:
        out = party_dirs(root, roles)
        query = {Role.DATA_OWNER: ["--input", str(save_inputs(inputs, out[Role.DATA_OWNER]))]}
        seconds = _launch(model, options, out, query, root, insecure_channel)
        return read_run(out[Role.DATA_OWNER] / "output.npy", *_records(out), seconds)


@dataclass
class PartyQueries:
    """Several queries in one session (the weights' masks opened once for all): the data
    owner's outputs in order, both records (each query's traffic in `queries`)."""

    outputs: list[np.ndarray]
    model_owner: dict[str, Any]
    data_owner: dict[str, Any]
    seconds: float


def run_local_queries(
    model: Path, queries: list[tuple[torch.Tensor, ...]], options: RunOptions
) -> PartyQueries:
    """The three parties as processes for `queries` in one session (`secinfer party` with
    one `--input` per query; their shapes may differ)."""
    roles = [Role.MODEL_OWNER, Role.DATA_OWNER, Role.DEALER]
    options = replace(options, provider="dealer")
    with processes.stopping_on_signals(), processes.private_directory("secinfer-mpc-") as root:
        out = party_dirs(root, roles)
        job: list[str] = []
        for index, inputs in enumerate(queries):
            folder = out[Role.DATA_OWNER] / f"query-{index}"
            folder.mkdir()
            job += ["--input", str(save_inputs(inputs, folder))]
        seconds = _launch(model, options, out, {Role.DATA_OWNER: job}, root, False)
        runs = [
            read_run(out[Role.DATA_OWNER] / name, *_records(out), seconds)
            for name in output_names(len(queries))
        ]
        owner, data_owner = runs[0].model_owner, runs[0].data_owner
        return PartyQueries([r.output for r in runs], owner, data_owner, seconds)


def run_local_generation(
    model: Path,
    prompt: torch.Tensor,
    max_new_tokens: int,
    stop_token: int | None,
    options: RunOptions,
    sampling: Sampling = GREEDY,
) -> PartyRun:
    """Generation (each token picked by `sampling`) by the three parties as processes
    (`secinfer party --generate`, `secinfer.backends.mpc.generation`): `output` holds the
    data owner's token ids; each token's progress line is echoed on stderr as it comes."""
    roles = [Role.MODEL_OWNER, Role.DATA_OWNER, Role.DEALER]
    options = replace(options, provider="dealer")
    with processes.stopping_on_signals(), processes.private_directory("secinfer-gen-") as root:
        out = party_dirs(root, roles)
        ids = out[Role.DATA_OWNER] / "prompt.npy"
        np.save(ids, prompt.numpy().astype(np.int64), allow_pickle=False)
        data_owner = ["--generate", "--input", str(ids), "--max-new-tokens", str(max_new_tokens)]
        if stop_token is not None:
            data_owner += ["--stop-token", str(stop_token)]
        data_owner += sampling.arguments() + tokenizer_arguments(model)
        job = {Role.MODEL_OWNER: ["--generate"], Role.DATA_OWNER: data_owner}
        with echoing_progress(root, [Role.MODEL_OWNER.label, Role.DATA_OWNER.label]):
            seconds = _launch(model, options, out, job, root, False)
        return read_run(out[Role.DATA_OWNER] / "tokens.npy", *_records(out), seconds)


def run_local_evaluation(
    model: Path,
    data: Path,
    evaluation: Evaluation,
    batch_size: int,
    options: RunOptions,
) -> PartyEvaluation:
    """A private evaluation by the three MPC parties as processes: the aggregate the chosen
    party learned and both computing parties' records. It always runs with the dealer and
    16 fractional bits (`secinfer eval` offers neither choice), whatever `options` says."""
    options = replace(options, provider="dealer", precision_bits=16)
    roles = [Role.MODEL_OWNER, Role.DATA_OWNER, Role.DEALER]
    with processes.stopping_on_signals(), processes.private_directory("secinfer-eval-") as root:
        out = party_dirs(root, roles)
        owner, data_owner = evaluation_arguments(evaluation, data, batch_size)
        job = {Role.MODEL_OWNER: owner, Role.DATA_OWNER: data_owner}
        seconds = _launch(model, options, out, job, root, False)
        learner = out[Role.from_label(evaluation.reveal_to)]
        return read_evaluation(learner / "aggregate.json", *_records(out), seconds)


def _launch(
    model: Path,
    options: RunOptions,
    out: dict[Role, Path],
    job: dict[Role, list[str]],
    root: Path,
    insecure_channel: bool,
) -> float:
    """The roles' (`out`'s) `secinfer party` processes on a fresh loopback rendezvous, each
    given its arguments in `job` besides the common ones, until all exit (`run_parties`);
    the wall seconds. Their links are mutual TLS with ephemeral identities made in `root`
    (deleted with it), unless `insecure_channel` (gloo in clear, for measurements against
    TLS)."""
    identity = None
    if not insecure_channel:
        from protocols.tls import local_identities

        identity = local_identities(root / "identities")
    with meeting.listen("127.0.0.1", 0) as listener:
        rendezvous = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        began = time.perf_counter()
        commands = {
            role: _party_command(role, rendezvous, model, options, out, identity, job.get(role))
            for role in out
        }
        run_parties(
            commands, root, options.run_timeout, env=env, listeners={Role.MODEL_OWNER: listener}
        )
        return time.perf_counter() - began


def _party_command(
    role: Role,
    rendezvous: str,
    model: Path,
    options: RunOptions,
    out: dict[Role, Path],
    identity: Path | None,
    job: list[str] | None,
) -> list[str]:
    """`role`'s `secinfer party` command line: the arguments every run gives it, then the
    run's own (`job`)."""
    command = [sys.executable, "-m", "secinfer.cli", "party", "--role", role.label]
    command += ["--rendezvous", rendezvous, "--timeout", str(options.peer_timeout)]
    command += ["--provider", options.provider]
    command += ["--precision-bits", str(options.precision_bits)]
    if identity is not None:
        command += ["--identity", str(identity)]
    else:
        command.append("--insecure-channel")
    if role is not Role.DEALER:
        command += ["--out", str(out[role])]
    if role is Role.MODEL_OWNER:
        command += ["--model", str(Path(model).resolve())]
        if options.trust_model:
            command.append("--trust-model")
        if options.config:
            command += ["--config", str(Path(options.config).resolve())]
    return command + (job or [])


def _records(out: dict[Role, Path]) -> tuple[Path, Path]:
    """Where the model owner and the data owner write their records."""
    return out[Role.MODEL_OWNER] / "model-owner.json", out[Role.DATA_OWNER] / "data-owner.json"
