"""`secinfer eval` on the local backends, and its bad-input errors.

The losses under `approx` against the plaintext references on the bundled digits model (its
test split: within 1e-4 relative, accuracy identical), a directory of shards giving the same
figures as one file, and one clear line for each user mistake.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from secinfer.cli import main
from secinfer.core.evaluation import parse_losses
from secinfer.errors import UserError
from secinfer.load.dataset import open_dataset
from secinfer.zoo.digits import load_split

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "secinfer" / "data" / "digits_he.pt2"


@pytest.fixture(scope="module")
def test_split(tmp_path_factory) -> Path:
    _, _, x, y = load_split(0)
    path = tmp_path_factory.mktemp("data") / "test.npz"
    np.savez(path, inputs=x.numpy(), labels=y.numpy())
    return path


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


def secinfer(*args: str) -> Done:
    """The CLI in this process (click's runner: no interpreter start-up per call)."""
    result = CliRunner().invoke(main, list(args))
    return Done(result.exit_code, result.stdout, result.stderr)


def test_approx_losses_match_plaintext_and_shards_match_one_file(test_split, tmp_path) -> None:
    report = tmp_path / "r.json"
    done = secinfer("eval", str(MODEL), str(test_split), "--loss", "ce,square,zloss,gce,mae",
                    "--report", str(report))  # fmt: skip
    assert done.returncode == 0, done.stderr
    whole = json.loads(report.read_text())
    assert whole["examples"] == 360
    for name in ("ce", "square", "zloss", "gce", "mae"):
        pair = whole["losses"][name]
        assert abs(pair["secure"] - pair["plain"]) <= 1e-4 * abs(pair["plain"])
    assert whole["accuracy"]["secure"] == whole["accuracy"]["plain"] > 0.9
    shards = tmp_path / "shards"
    shards.mkdir()
    with np.load(test_split) as data:
        for k, rows in enumerate((slice(0, 100), slice(100, 250), slice(250, 360))):
            np.savez(shards / f"part{k}.npz", inputs=data["inputs"][rows],
                     labels=data["labels"][rows])  # fmt: skip
    report2 = tmp_path / "r2.json"
    done = secinfer("eval", str(MODEL), str(shards), "-b", "plain", "--loss", "ce",
                    "--batch-size", "7", "--report", str(report2))  # fmt: skip
    assert done.returncode == 0, done.stderr
    sharded = json.loads(report2.read_text())
    assert abs(sharded["losses"]["ce"]["plain"] - whole["losses"]["ce"]["plain"]) < 1e-9
    assert sharded["accuracy"]["plain"] == whole["accuracy"]["plain"]


def _one_error(done: Done, needle: str) -> None:
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_user_mistakes_get_one_line(test_split, tmp_path) -> None:
    bad_labels = tmp_path / "labels.npz"
    np.savez(bad_labels, inputs=np.zeros((3, 64), np.float32), labels=np.array([1, 12, 0]))
    _one_error(secinfer("eval", str(MODEL), str(bad_labels)), "label 12 at row 1")
    wrong_inputs = tmp_path / "inputs.npz"
    np.savez(wrong_inputs, inputs=np.zeros((3, 63), np.float32), labels=np.array([1, 2, 0]))
    _one_error(secinfer("eval", str(MODEL), str(wrong_inputs)), "63")
    _one_error(secinfer("eval", str(MODEL), str(test_split), "--loss", "ce,hinge"), "'hinge'")


@pytest.mark.parametrize(
    ("arrays", "needle"),
    [
        ({"inputs": np.zeros((0, 64)), "labels": np.zeros(0, np.int64)}, "empty"),
        ({"x": np.zeros((2, 64)), "labels": np.zeros(2, np.int64)}, "no array 'inputs'"),
        ({"inputs": np.zeros((2, 64)), "labels": np.zeros(2)}, "integer"),
        ({"inputs": np.zeros((3, 64)), "labels": np.zeros(2, np.int64)}, "3 input rows"),
    ],
)
def test_bad_data_files_are_named(tmp_path, arrays, needle) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(UserError, match=needle):
        open_dataset(path)


def test_missing_paths_and_loss_lists() -> None:
    with pytest.raises(UserError, match="no such file"):
        open_dataset("/nonexistent/d.npz")
    with pytest.raises(UserError, match="choose from"):
        parse_losses(" , ")
    assert parse_losses("ce, square,ce") == ["ce", "square"]
