"""The server and the client of an HE run as separate processes on this machine."""

from __future__ import annotations

import os
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from protocols.mpc.local import free_port
from protocols.mpc.runtime import DEFAULT_TIMEOUT
from secinfer.backends import processes
from secinfer.backends.base import PartyEvaluation, PartyRun
from secinfer.backends.parties import (
    RUN_TIMEOUT,
    party_dirs,
    read_evaluation,
    read_run,
    run_parties,
)


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
    packing: str = "auto",
) -> PartyRun:
    """Server (model owner) and client (data owner) of an HE run as two processes on
    loopback; the client's decrypted output and both records."""
    with processes.stopping_on_signals(), processes.private_directory("secinfer-he-") as root:
        out = party_dirs(root, list(HeRole))
        input_path = out[HeRole.CLIENT] / "input.pt"
        torch.save(tuple(t.detach().clone() for t in inputs), input_path)
        server, client = _he_commands(model, out, peer_timeout, trust_model, config)
        if not refresh:
            server.append("--no-refresh")
        if public_embedding:
            server.append("--public-embedding")
        if packing != "auto":
            server += ["--packing", packing.replace("_", "-")]
        client += ["--input", str(input_path)]
        seconds = _run_he(server, client, root, run_timeout)
        return read_run(out[HeRole.CLIENT] / "output.npy", *_records(out), seconds)


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
) -> PartyEvaluation:
    """A private evaluation under HE, server and client as processes: the aggregate the
    chosen side learned, the server's record (as the model owner's), the client's."""
    with processes.stopping_on_signals(), processes.private_directory("secinfer-he-eval-") as root:
        out = party_dirs(root, list(HeRole))
        server, client = _he_commands(model, out, peer_timeout, trust_model, config)
        server += evaluation.arguments()
        client += [*evaluation.arguments(), "--eval-data", str(Path(data).resolve())]
        client += ["--batch-size", str(batch_size)]
        seconds = _run_he(server, client, root, run_timeout)
        learner = out[HeRole.SERVER if evaluation.reveal_to == "model-owner" else HeRole.CLIENT]
        return read_evaluation(learner / "aggregate.json", *_records(out), seconds)


def _records(out: dict[HeRole, Path]) -> tuple[Path, Path]:
    """Where the server (model owner) and the client (data owner) write their records."""
    return out[HeRole.SERVER] / "server.json", out[HeRole.CLIENT] / "client.json"


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
