"""A secure backend's parties as separate processes on this machine: start, wait, stop.

`run_parties` starts one fresh process per role, waits for all of them with a deadline,
and on the first failure raises that party's one-line error (`UserError` when it exited
2, else `PartyError`), never leaving a process behind. The mpc and he local launchers
(`secinfer.backends.mpc.local`, `secinfer.backends.he.local`) build the command lines
(with `save_inputs` and `evaluation_arguments` from here) and read the results with
`read_run` / `read_evaluation`; on another host each role runs by hand with
the same command (see the README).

Process safety (`secinfer.backends.processes`): each party leads a process group of its
own; on success, failure, the deadline, or SIGTERM, SIGINT or SIGHUP to this process
(which then raise `Interrupted`), every party's group is killed and reaped and the run's
temporary folder (mode 0700: the input, outputs, records and logs) is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protocols.net import LISTENER_FD_ENV
from secinfer.backends import processes
from secinfer.backends.base import PartyEvaluation, PartyRun
from secinfer.core.evaluation import Evaluation
from secinfer.errors import PartyError, UserError


def last_error(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[-1].removeprefix("error:").strip()
    return lines[-1] if lines else "exited without a message"


def party_dirs(root: Path, roles: list[Any]) -> dict[Any, Path]:
    """One output directory per role under `root`, each mode 0700."""
    return {role: processes.private_subdirectory(root, role.label) for role in roles}


def output_names(count: int) -> list[str]:
    """The data owner's output files for `count` queries: output.npy for one, else
    output-1.npy, output-2.npy, ..."""
    return ["output.npy"] if count == 1 else [f"output-{k}.npy" for k in range(1, count + 1)]


def save_inputs(inputs: tuple[torch.Tensor, ...], directory: Path) -> Path:
    """The data owner's query inputs saved as `directory/input.pt` for its `--input` (a
    party reads it with `torch.load(weights_only=True)`: `secinfer.load.inputs`); the path."""
    path = directory / "input.pt"
    torch.save(tuple(t.detach().clone() for t in inputs), path)
    return path


def evaluation_arguments(
    evaluation: Evaluation, data: Path, batch_size: int
) -> tuple[list[str], list[str]]:
    """The arguments, besides each role's own, that make the model owner's and the data
    owner's party processes (`secinfer party`, `secinfer he-party`) run `evaluation` over
    `data` (the data owner's) in batches of `batch_size` rows."""
    arguments = evaluation.arguments()
    data_owner = [*arguments, "--eval-data", str(Path(data).resolve())]
    return arguments, [*data_owner, "--batch-size", str(batch_size)]


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
    `listeners` hands a role a listening socket (`protocols.net.LISTENER_FD_ENV`)."""
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
                    role_env[LISTENER_FD_ENV] = str(listener.fileno())
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
    processes: dict[Any, subprocess.Popen[bytes]], logs: dict[Any, Path], timeout: float
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
            message = f"{role.label}: {last_error(logs[role])}"
            raise (UserError if processes[role].returncode == 2 else PartyError)(message)
        if all(code == 0 for code in codes.values()):
            return
        if time.monotonic() > deadline:
            raise PartyError(f"the parties did not finish within {timeout:.0f} s; stopped them")
        time.sleep(0.1)


def _record(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def read_run(output: Path, model_owner: Path, data_owner: Path, seconds: float) -> PartyRun:
    """A finished query's files: the data owner's output (.npy, no pickle) and both records."""
    return PartyRun(
        output=np.load(output, allow_pickle=False),
        model_owner=_record(model_owner),
        data_owner=_record(data_owner),
        seconds=seconds,
    )


def read_evaluation(
    aggregate: Path, model_owner: Path, data_owner: Path, seconds: float
) -> PartyEvaluation:
    """A finished evaluation's files: the aggregate the chosen party wrote, both records."""
    return PartyEvaluation(
        aggregate=_record(aggregate),
        model_owner=_record(model_owner),
        data_owner=_record(data_owner),
        seconds=seconds,
    )


@contextlib.contextmanager
def echoing_progress(root: Path, labels: list[str], every: float = 0.5) -> Iterator[None]:
    """While the block runs, copy each party's own progress lines ("<label> progress: ...")
    from `root/<label>.log` to stderr, not its view of another's progress ("<label>
    progress: <other>: ...": that would repeat the other's own lines)."""
    done = threading.Event()
    echo = threading.Thread(target=_echo, args=(root, labels, done, every), daemon=True)
    echo.start()
    try:
        yield
    finally:
        done.set()
        echo.join(2.0)


def _echo(root: Path, labels: list[str], done: threading.Event, every: float) -> None:
    offsets = dict.fromkeys(labels, 0)
    finished = False
    while not finished:
        finished = done.wait(every)  # one more pass after the parties end: their last lines
        for label in labels:
            try:
                with (root / f"{label}.log").open("rb") as stream:
                    stream.seek(offsets[label])
                    chunk = stream.read()
            except OSError:
                continue
            complete = chunk[: chunk.rfind(b"\n") + 1]
            offsets[label] += len(complete)
            own = f"{label} progress: "
            peers = tuple(f"{own}{other}: " for other in labels if other != label)
            for line in complete.decode(errors="replace").splitlines():
                if line.startswith(own) and not line.startswith(peers):
                    print(line, file=sys.stderr, flush=True)
