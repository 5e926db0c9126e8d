"""The `secinfer` command run in this process, and the shape of a user error."""

from __future__ import annotations

import subprocess
import traceback

from click.testing import CliRunner

from secinfer.cli import main


def secinfer_here(*args: str) -> subprocess.CompletedProcess:
    """`secinfer` in this process; an exception that escapes the command shows as the
    traceback a user would see."""
    result = CliRunner().invoke(main, list(args))
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(["secinfer", *args], result.exit_code, result.stdout, stderr)


def assert_user_error(done: subprocess.CompletedProcess, needle: str) -> None:
    """A user error as the rules have it: exit 2, no traceback, exactly one `error:` line,
    and that line contains `needle`."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], done.stderr
