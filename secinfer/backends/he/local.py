"""The server and the client of an HE run as separate processes on this machine.

`run_local_he(model, inputs, options)` and `run_local_he_evaluation(model, data,
evaluation, batch_size, options)` start `secinfer he-party` twice (server: the model
owner; client: the data owner) on a loopback port (`secinfer.backends.parties`), their
link authenticated by ephemeral identities, and collect the result and both records.

While they run, each side's own progress lines ("server progress: node 3/7 aten.linear
(40 s on it, 95 s in all)", written by its relay while it works: see
`secinfer.backends.he.channel`) are echoed from its log to this process's stderr.
"""

from __future__ import annotations

import os
import sys
import time
from enum import Enum
from pathlib import Path

import numpy as np
import torch

from protocols.net import free_port
from secinfer.backends import processes
from secinfer.backends.base import PartyEvaluation, PartyRun, RunOptions
from secinfer.backends.parties import (
    echoing_progress,
    evaluation_arguments,
    party_dirs,
    read_evaluation,
    read_run,
    run_parties,
    save_inputs,
)
from secinfer.core.evaluation import Evaluation
from secinfer.core.sampling import GREEDY, Sampling
from secinfer.load.huggingface import tokenizer_arguments


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
    options: RunOptions,
) -> PartyRun:
    """Server (model owner) and client (data owner) of an HE run as two processes on
    loopback; the client's decrypted output and both records. The server re-encrypts
    through the client unless `options.refresh` is off, and sends the embedding table to
    the client under `options.public_embedding`, floods the output's noise with
    `options.flood_bits` and packs each layer by `options.packing`."""
    with processes.stopping_on_signals(), processes.private_directory("secinfer-he-") as root:
        out = party_dirs(root, list(HeRole))
        server = _server_options(options)
        if options.public_embedding:
            server.append("--public-embedding")
        client = ["--input", str(save_inputs(inputs, out[HeRole.CLIENT]))]
        seconds = _run_he(model, options, out, server, client, root)
        return read_run(out[HeRole.CLIENT] / "output.npy", *_records(out), seconds)


def run_local_he_generation(
    model: Path,
    prompt: torch.Tensor,
    max_new_tokens: int,
    stop_token: int | None,
    options: RunOptions,
    sampling: Sampling = GREEDY,
) -> PartyRun:
    """Generation (each token picked by `sampling`) by the server and the client as
    processes (`secinfer he-party --generate`, `secinfer.backends.he.generation`): `output`
    holds the client's token ids; each token's progress line is echoed on stderr as it
    comes."""
    with processes.stopping_on_signals(), processes.private_directory("secinfer-he-gen-") as root:
        out = party_dirs(root, list(HeRole))
        ids = out[HeRole.CLIENT] / "prompt.npy"
        np.save(ids, prompt.numpy().astype(np.int64), allow_pickle=False)
        server = ["--generate", *_server_options(options)]
        client = ["--generate", "--input", str(ids), "--max-new-tokens", str(max_new_tokens)]
        if stop_token is not None:
            client += ["--stop-token", str(stop_token)]
        client += sampling.arguments() + tokenizer_arguments(model)
        seconds = _run_he(model, options, out, server, client, root)
        run = read_run(out[HeRole.CLIENT] / "tokens.npy", *_records(out), seconds)
        run.logits = np.load(out[HeRole.CLIENT] / "logits.npy", allow_pickle=False)
        return run


def _server_options(options: RunOptions) -> list[str]:
    """The server's arguments for `options`' refresh, flooding and packing."""
    server = [] if options.refresh else ["--no-refresh"]
    server += ["--flood-bits", str(options.flood_bits)]
    if options.packing != "auto":
        server += ["--packing", options.packing.replace("_", "-")]
    return server


def run_local_he_evaluation(
    model: Path,
    data: Path,
    evaluation: Evaluation,
    batch_size: int,
    options: RunOptions,
) -> PartyEvaluation:
    """A private evaluation under HE, server and client as processes: the aggregate the
    chosen side learned, the server's record (as the model owner's), the client's."""
    with processes.stopping_on_signals(), processes.private_directory("secinfer-he-eval-") as root:
        out = party_dirs(root, list(HeRole))
        server, client = evaluation_arguments(evaluation, data, batch_size)
        seconds = _run_he(model, options, out, server, client, root)
        learner = out[HeRole.SERVER if evaluation.reveal_to == "model-owner" else HeRole.CLIENT]
        return read_evaluation(learner / "aggregate.json", *_records(out), seconds)


def _records(out: dict[HeRole, Path]) -> tuple[Path, Path]:
    """Where the server (model owner) and the client (data owner) write their records."""
    return out[HeRole.SERVER] / "server.json", out[HeRole.CLIENT] / "client.json"


def _run_he(
    model: Path,
    options: RunOptions,
    out: dict[HeRole, Path],
    server_job: list[str],
    client_job: list[str],
    root: Path,
) -> float:
    """The two `secinfer he-party` processes on a fresh loopback port, each given its
    arguments in `server_job` / `client_job` besides the common ones, authenticated by
    ephemeral identities made in the run's own temporary directory (deleted with it), until
    both exit (`run_parties`); the wall seconds."""
    from protocols.tls import local_identities
    from secinfer.backends.he.channel import MEET_ENV

    port = free_port()
    identity = local_identities(root / "identities")
    base = [sys.executable, "-m", "secinfer.cli", "he-party", "--timeout"]
    base += [str(options.peer_timeout), "--identity", str(identity)]
    server = [*base, "--role", "server", "--port", str(port), "--out", str(out[HeRole.SERVER])]
    server += ["--model", str(Path(model).resolve()), "--hiding-bits", str(options.hiding_bits)]
    if options.trust_model:
        server.append("--trust-model")
    if options.config:
        server += ["--config", str(Path(options.config).resolve())]
    client = [*base, "--role", "client", "--connect", f"127.0.0.1:{port}"]
    client += ["--out", str(out[HeRole.CLIENT])]
    commands = {HeRole.SERVER: server + server_job, HeRole.CLIENT: client + client_job}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", MEET_ENV: str(options.run_timeout)}
    began = time.perf_counter()
    with echoing_progress(root, [role.label for role in HeRole]):
        run_parties(commands, root, options.run_timeout, env=env)
    return time.perf_counter() - began
