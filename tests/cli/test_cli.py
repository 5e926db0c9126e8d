"""The `secinfer` command line as a user runs it: installed console script, exit codes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# The console script installed beside this interpreter (the project's .venv), else PATH's.
_BESIDE = Path(sys.executable).with_name("secinfer")
SECINFER = str(_BESIDE) if _BESIDE.exists() else (shutil.which("secinfer") or "secinfer")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SECINFER, *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_help_lists_commands() -> None:
    done = run("--help")
    assert done.returncode == 0
    assert "catalog" in done.stdout


def test_eval_help_names_every_loss() -> None:
    """--loss's help is written out (the CLI does not import torch to print help); it must
    name every loss `approximations.losses` has (it missed the Fenchel-Young losses and
    comp-sum once)."""
    from approximations.losses import LOSS_NAMES

    done = run("eval", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    listed = text.split("Comma-separated:")[1].split("(accuracy")[0]
    assert [name.strip() for name in listed.split(",")] == list(LOSS_NAMES)


def test_catalog_json_rows() -> None:
    import json

    done = run("catalog", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    names = {r["name"] for r in rows}
    assert {"gelu.puma", "exp.squaring", "rsqrt.newton"} <= names
    assert all(r["max_error"] >= 0 for r in rows)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("catalog", "--plot", "errors.jpg"), "ending in .png"),
        (("catalog", "--bogus"), "No such option"),
        (("nonsense",), "No such command"),
    ],
)
def test_user_errors_exit_2_without_traceback(args: tuple[str, ...], needle: str, tmp_path) -> None:
    done = subprocess.run(
        [SECINFER, *args], capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path
    )
    assert done.returncode == 2
    assert needle in done.stderr
    assert "Traceback" not in done.stderr
    assert not any(tmp_path.iterdir())  # nothing half-written
