"""The three parties of an MPC run as separate processes on this machine.

`run_local_parties(...)` starts `secinfer party` three times (model owner, data owner,
dealer) as fresh processes on a loopback rendezvous (`secinfer.backends.parties`), and
collects the data owner's output and both parties' cost records. The MPC rendezvous port
is bound here, on 127.0.0.1 only, and its socket handed to the model owner
(`protocols.mpc.rendezvous.LISTENER_FD_ENV`): no other program can take it in between.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from protocols.mpc import rendezvous as meeting
from protocols.mpc.runtime import DEFAULT_TIMEOUT, Role
from secinfer.backends import processes
from secinfer.backends.base import PartyEvaluation, PartyRun
from secinfer.backends.parties import (
    RUN_TIMEOUT,
    party_dirs,
    read_evaluation,
    read_run,
    run_parties,
)


def _party_command(role: Role, rendezvous: str, options: dict[str, Any]) -> list[str]:
    command = [sys.executable, "-m", "secinfer.cli", "party", "--role", role.label]
    command += ["--rendezvous", rendezvous, "--timeout", str(options["timeout"])]
    command += ["--provider", options["provider"]]
    command += ["--precision-bits", str(options["precision_bits"])]
    if options.get("identity") is not None:
        command += ["--identity", str(options["identity"])]
    else:
        command.append("--insecure-channel")
    if role is not Role.DEALER:
        command += ["--out", str(options["out"][role])]
    if role is Role.MODEL_OWNER:
        command += ["--model", str(options["model"])]
        if options.get("trust_model"):
            command.append("--trust-model")
        if options.get("config"):
            command += ["--config", str(options["config"])]
    if role is Role.DATA_OWNER and options.get("eval_data") is None:
        command += ["--input", str(options["input"])]
    evaluation = options.get("evaluation")
    if evaluation is not None and role is not Role.DEALER:
        command += evaluation.arguments()
        if role is Role.DATA_OWNER:
            command += ["--eval-data", str(options["eval_data"])]
            command += ["--batch-size", str(options["batch_size"])]
    return command


def _launch(roles: list[Role], options: dict[str, Any], root: Path, run_timeout: float) -> float:
    """The roles' `secinfer party` processes on a fresh loopback rendezvous, until all exit
    (`run_parties`); the wall seconds. Their links are mutual TLS with ephemeral identities
    made in `root` (deleted with it), unless `options["insecure_channel"]` (gloo in clear,
    for measurements against TLS)."""
    if not options.get("insecure_channel"):
        from protocols.tls import local_identities

        options = {**options, "identity": local_identities(root / "identities")}
    with meeting.listen("127.0.0.1", 0) as listener:
        rendezvous = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        began = time.perf_counter()
        commands = {role: _party_command(role, rendezvous, options) for role in roles}
        run_parties(commands, root, run_timeout, env=env, listeners={Role.MODEL_OWNER: listener})
        return time.perf_counter() - began


def run_local_parties(
    model: Path,
    inputs: tuple[torch.Tensor, ...],
    *,
    trust_model: bool = False,
    config: Path | None = None,
    provider: str = "dealer",
    precision_bits: int = 16,
    peer_timeout: float = DEFAULT_TIMEOUT,
    run_timeout: float = RUN_TIMEOUT,
    insecure_channel: bool = False,
) -> PartyRun:
    """Model owner, data owner and dealer as three processes; the data owner's output.
    Their links are mutual TLS 1.3 (ephemeral identities), or gloo in clear with
    `insecure_channel`."""
    roles = [Role.MODEL_OWNER, Role.DATA_OWNER]
    if provider == "dealer":
        roles.append(Role.DEALER)
    with processes.stopping_on_signals(), processes.private_directory("secinfer-mpc-") as root:
        out = party_dirs(root, roles)
        input_path = out[Role.DATA_OWNER] / "input.pt"
        torch.save(tuple(t.detach().clone() for t in inputs), input_path)
        options = {
            "timeout": peer_timeout,
            "provider": provider,
            "precision_bits": precision_bits,
            "out": out,
            "model": Path(model).resolve(),
            "trust_model": trust_model,
            "config": Path(config).resolve() if config else None,
            "input": input_path,
            "insecure_channel": insecure_channel,
        }
        seconds = _launch(roles, options, root, run_timeout)
        records = _records(out)
        return read_run(out[Role.DATA_OWNER] / "output.npy", *records, seconds)


def run_local_evaluation(
    model: Path,
    data: Path,
    evaluation: Any,
    *,
    trust_model: bool = False,
    config: Path | None = None,
    batch_size: int = 64,
    peer_timeout: float = DEFAULT_TIMEOUT,
    run_timeout: float = RUN_TIMEOUT,
) -> PartyEvaluation:
    """A private evaluation by the three MPC parties as processes: the aggregate the chosen
    party learned and both computing parties' records."""
    roles = [Role.MODEL_OWNER, Role.DATA_OWNER, Role.DEALER]
    with processes.stopping_on_signals(), processes.private_directory("secinfer-eval-") as root:
        out = party_dirs(root, roles)
        options = {
            "timeout": peer_timeout,
            "provider": "dealer",
            "precision_bits": 16,
            "out": out,
            "model": Path(model).resolve(),
            "trust_model": trust_model,
            "config": Path(config).resolve() if config else None,
            "evaluation": evaluation,
            "eval_data": Path(data).resolve(),
            "batch_size": batch_size,
        }
        seconds = _launch(roles, options, root, run_timeout)
        learner = out[Role.from_label(evaluation.reveal_to)]
        return read_evaluation(learner / "aggregate.json", *_records(out), seconds)


def _records(out: dict[Role, Path]) -> tuple[Path, Path]:
    """Where the model owner and the data owner write their records."""
    return out[Role.MODEL_OWNER] / "model-owner.json", out[Role.DATA_OWNER] / "data-owner.json"
