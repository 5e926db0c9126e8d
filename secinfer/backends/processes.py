"""A launcher's child processes and private temporary folders, cleaned up on every exit path.

Used by the local launchers (`secinfer.backends.parties`, `examples/two_party/run_demo.py`):

  `stopping_on_signals()`  inside it, in the main thread, SIGTERM (what `kill` and `timeout`
                           send), SIGINT (Ctrl-C) and SIGHUP raise `Interrupted`, so that
                           every `finally` block and context manager on the way out runs.
                           A signal the process ignores (SIG_IGN: `nohup`, a background job)
                           stays ignored; the previous handlers come back on exit.
  `deferred()`             a signal arriving inside it is raised when it ends, so that a
                           started child is always registered and a cleanup always finishes.
  `private_directory()`    a fresh folder, mode 0700 (the owner only), removed with all it
                           holds when the block ends: success, error or signal.
  `start()` / `stop()`     a child in a process group (and session) of its own, so that its
                           parent alone decides when it ends (a terminal's Ctrl-C reaches the
                           launcher, not the parties); `stop` kills the whole group with
                           SIGKILL and reaps the child.

Not covered: SIGKILL of the launcher itself runs nothing; its children then finish or
fail on their own deadlines (`--timeout`), and its temporary folder stays behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from secinfer.errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""The signals a launcher turns into `Interrupted`."""

_deferring = 0
_pending: list[int] = []


def _handler(signum: int, _frame: object) -> None:
    if _deferring:
        _pending.append(signum)
        return
    raise Interrupted(signum)


@contextmanager
def stopping_on_signals() -> Iterator[None]:
    """SIGTERM, SIGINT and SIGHUP raise `Interrupted` inside this block (main thread only;
    elsewhere, and for signals set to SIG_IGN, nothing changes). Nesting is allowed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for number, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(number, _handler)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold back `Interrupted` until the block ends (then the first signal is raised)."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending:
            signum = _pending[0]
            _pending.clear()
            raise Interrupted(signum)


@contextmanager
def private_directory(prefix: str) -> Iterator[Path]:
    """A new folder under the system's temporary directory, mode 0700, removed with
    everything in it when the block ends, however it ends (a signal arriving while it
    is made or removed waits until that is done)."""
    path: Path | None = None
    try:
        with deferred():
            path = Path(tempfile.mkdtemp(prefix=prefix))  # mkdtemp: mode 0700
        yield path
    finally:
        if path is not None:
            with deferred():
                shutil.rmtree(path, ignore_errors=True)


def private_subdirectory(parent: Path, name: str) -> Path:
    """`parent / name`, made with mode 0700."""
    path = parent / name
    path.mkdir(mode=0o700)
    path.chmod(0o700)  # mkdir's mode is filtered by the umask
    return path


def start(
    command: Sequence[str],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """`command` as a child leading its own process group, stdout and stderr to `log`
    (mode 0600). Call it inside `deferred()` together with recording the child, so that a
    signal cannot leave a started child unrecorded."""
    descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(descriptor, "wb") as stream:
        return subprocess.Popen(
            list(command),
            stdout=stream,
            stderr=subprocess.STDOUT,
            env=env,
            pass_fds=tuple(pass_fds),
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    """Kill `process`'s whole process group (SIGKILL) and reap it; nothing happens to a
    group already gone."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


__all__ = [
    "SIGNALS",
    "deferred",
    "private_directory",
    "private_subdirectory",
    "start",
    "stop",
    "stopping_on_signals",
]
