"""Run the three parties of an MPC run as separate processes on this machine.

`run_local_parties(...)` starts `secinfer party` three times (model owner, data owner,
dealer) as fresh processes on a loopback rendezvous, waits for them with a deadline, and
collects the data owner's output and both parties' cost records. If any party fails, the
others are stopped (no orphan processes) and the failing party's one-line error is raised.
On another host each role runs by hand with the same command (see the README).

Process safety (`secinfer.launch.processes`): each party leads a process group of its own; on
success, failure, the deadline, or SIGTERM, SIGINT or SIGHUP to this process (which then
raise `Interrupted`), every party's group is killed and reaped and the run's temporary
folder (mode 0700: the input, outputs, records and logs) is removed. The MPC rendezvous
port is bound here, on 127.0.0.1 only, and its socket handed to the model owner
(`protocols.mpc.rendezvous.LISTENER_FD_ENV`): no other program can take it in between.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protocols.mpc import rendezvous as meeting
from protocols.mpc.local import free_port
from protocols.mpc.runtime import DEFAULT_TIMEOUT, Role
from secinfer.errors import PartyError, UserError
from secinfer.launch import processes

RUN_TIMEOUT = 3600.0
"""Default bound on a whole local run (seconds); each peer wait has its own timeout."""


@dataclass
class LocalRun:
    output: np.ndarray
    model_owner: dict[str, Any]
    data_owner: dict[str, Any]
    seconds: float


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


def _last_error(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[-1].removeprefix("error:").strip()
    return lines[-1] if lines else "exited without a message"


def _party_dirs(root: Path, roles: list[Any]) -> dict[Any, Path]:
    """One output directory per role under `root`, each mode 0700."""
    return {role: processes.private_subdirectory(root, role.label) for role in roles}


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
) -> LocalRun:
    """Model owner, data owner and dealer as three processes; the data owner's output.
    Their links are mutual TLS 1.3 (ephemeral identities), or gloo in clear with
    `insecure_channel`."""
    roles = [Role.MODEL_OWNER, Role.DATA_OWNER]
    if provider == "dealer":
        roles.append(Role.DEALER)
    with processes.stopping_on_signals(), processes.private_directory("secinfer-mpc-") as root:
        out = _party_dirs(root, roles)
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
        return LocalRun(
            output=np.load(out[Role.DATA_OWNER] / "output.npy", allow_pickle=False),
            model_owner=json.loads((out[Role.MODEL_OWNER] / "model-owner.json").read_text()),
            data_owner=json.loads((out[Role.DATA_OWNER] / "data-owner.json").read_text()),
            seconds=seconds,
        )


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
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], float]:
    """A private evaluation by the three MPC parties as processes: (the aggregate the chosen
    party learned, the model owner's record, the data owner's record, seconds)."""
    roles = [Role.MODEL_OWNER, Role.DATA_OWNER, Role.DEALER]
    with processes.stopping_on_signals(), processes.private_directory("secinfer-eval-") as root:
        out = _party_dirs(root, roles)
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
        return (
            json.loads((learner / "aggregate.json").read_text()),
            json.loads((out[Role.MODEL_OWNER] / "model-owner.json").read_text()),
            json.loads((out[Role.DATA_OWNER] / "data-owner.json").read_text()),
            seconds,
        )


def run_parties(
    commands: dict[Any, list[str]],
    root: Path,
    timeout: float,
    env: dict[str, str] | None = None,
    listeners: dict[Any, socket.socket] | None = None,
) -> None:
    """Start one process per role (output to `root/<role>.log`), wait until all exit 0;
    on the first failure, the deadline or a signal (`Interrupted`) raise, and never leave
    a process behind: every started party's process group is killed and reaped first.
    `listeners` hands a role a listening socket (`meeting.LISTENER_FD_ENV`)."""
    logs = {role: root / f"{role.label}.log" for role in commands}
    processes_by_role: dict[Any, subprocess.Popen[bytes]] = {}
    with processes.stopping_on_signals():
        try:
            for role, command in commands.items():
                listener = (listeners or {}).get(role)
                role_env = dict(os.environ if env is None else env)
                fds: tuple[int, ...] = ()
                if listener is not None:
                    fds = (listener.fileno(),)
                    role_env[meeting.LISTENER_FD_ENV] = str(listener.fileno())
                with processes.deferred():
                    processes_by_role[role] = processes.start(
                        command, logs[role], env=role_env, pass_fds=fds
                    )
            wait_for_parties(processes_by_role, logs, timeout)
        finally:
            with processes.deferred():
                for process in processes_by_role.values():
                    processes.stop(process)


def wait_for_parties(
    processes: dict[Role, subprocess.Popen[bytes]], logs: dict[Role, Path], timeout: float
) -> None:
    """Until every party exits 0; on the first failure or the deadline, raise."""
    deadline = time.monotonic() + timeout
    while True:
        codes = {role: p.poll() for role, p in processes.items()}
        failed = [role for role, code in codes.items() if code not in (None, 0)]
        if failed:
            time.sleep(0.5)  # let the peer that caused it report too
            failed = [r for r, p in processes.items() if p.poll() not in (None, 0)]
            user = [r for r in failed if processes[r].returncode == 2]
            role = (user or failed)[0]
            message = f"{role.label}: {_last_error(logs[role])}"
            raise (UserError if processes[role].returncode == 2 else PartyError)(message)
        if all(code == 0 for code in codes.values()):
            return
        if time.monotonic() > deadline:
            raise PartyError(f"the parties did not finish within {timeout:.0f} s; stopped them")
        time.sleep(0.1)


class HeRole(Enum):
    """The two processes of an HE run."""

    SERVER = "server"
    CLIENT = "client"

    @property
    def label(self) -> str:
        return self.value


def run_local_he(
    model: Path,
    inputs: tuple[torch.Tensor, ...],
    *,
    trust_model: bool = False,
    config: Path | None = None,
    refresh: bool = True,
    public_embedding: bool = False,
    peer_timeout: float = DEFAULT_TIMEOUT,
    run_timeout: float = RUN_TIMEOUT,
) -> LocalRun:
    """Server (model owner) and client (data owner) of an HE run as two processes on
    loopback; the client's decrypted output and both records."""
    with processes.stopping_on_signals(), processes.private_directory("secinfer-he-") as root:
        out = _party_dirs(root, list(HeRole))
        input_path = out[HeRole.CLIENT] / "input.pt"
        torch.save(tuple(t.detach().clone() for t in inputs), input_path)
        server, client = _he_commands(model, out, peer_timeout, trust_model, config)
        if not refresh:
            server.append("--no-refresh")
        if public_embedding:
            server.append("--public-embedding")
        client += ["--input", str(input_path)]
        seconds = _run_he(server, client, root, run_timeout)
        return LocalRun(
            output=np.load(out[HeRole.CLIENT] / "output.npy", allow_pickle=False),
            model_owner=json.loads((out[HeRole.SERVER] / "server.json").read_text()),
            data_owner=json.loads((out[HeRole.CLIENT] / "client.json").read_text()),
            seconds=seconds,
        )


def run_local_he_evaluation(
    model: Path,
    data: Path,
    evaluation: Any,
    *,
    trust_model: bool = False,
    config: Path | None = None,
    batch_size: int = 64,
    peer_timeout: float = DEFAULT_TIMEOUT,
    run_timeout: float = RUN_TIMEOUT,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], float]:
    """A private evaluation under HE, server and client as processes: (the aggregate the
    chosen side learned, the server's record, the client's record, seconds)."""
    with processes.stopping_on_signals(), processes.private_directory("secinfer-he-eval-") as root:
        out = _party_dirs(root, list(HeRole))
        server, client = _he_commands(model, out, peer_timeout, trust_model, config)
        server += evaluation.arguments()
        client += [*evaluation.arguments(), "--eval-data", str(Path(data).resolve())]
        client += ["--batch-size", str(batch_size)]
        seconds = _run_he(server, client, root, run_timeout)
        learner = out[HeRole.SERVER if evaluation.reveal_to == "model-owner" else HeRole.CLIENT]
        return (
            json.loads((learner / "aggregate.json").read_text()),
            json.loads((out[HeRole.SERVER] / "server.json").read_text()),
            json.loads((out[HeRole.CLIENT] / "client.json").read_text()),
            seconds,
        )


def _he_commands(
    model: Path,
    out: dict[HeRole, Path],
    peer_timeout: float,
    trust_model: bool,
    config: Path | None,
) -> tuple[list[str], list[str]]:
    """The two `secinfer he-party` command lines on a fresh loopback port, authenticated by
    ephemeral identities made in the run's own temporary directory (deleted with it)."""
    from protocols.tls import local_identities

    port = free_port()
    identity = local_identities(out[HeRole.SERVER].parent / "identities")
    base = [sys.executable, "-m", "secinfer.cli", "he-party", "--timeout", str(peer_timeout)]
    base += ["--identity", str(identity)]
    server = [*base, "--role", "server", "--port", str(port), "--out", str(out[HeRole.SERVER])]
    server += ["--model", str(Path(model).resolve())]
    if trust_model:
        server.append("--trust-model")
    if config:
        server += ["--config", str(Path(config).resolve())]
    client = [*base, "--role", "client", "--connect", f"127.0.0.1:{port}"]
    client += ["--out", str(out[HeRole.CLIENT])]
    return server, client


def _run_he(server: list[str], client: list[str], root: Path, run_timeout: float) -> float:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    began = time.perf_counter()
    run_parties({HeRole.SERVER: server, HeRole.CLIENT: client}, root, run_timeout, env=env)
    return time.perf_counter() - began


__all__ = [
    "HeRole",
    "LocalRun",
    "run_local_he",
    "run_local_he_evaluation",
    "run_local_parties",
    "run_parties",
    "wait_for_parties",
]
