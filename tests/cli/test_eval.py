"""`secinfer eval` on every backend: each promise the backends share, checked on each of them.

What a backend promises against plaintext is in one table, `BACKENDS`: the relative error
of every mean loss (cross-entropy apart where it differs), with accuracy identical on
every backend.

    approx  1e-4        float64 with the plan's approximations
    mpc     1e-2        fixed point 2^-16 and the loss polynomials (measured on the test
                        split: 2e-5 to 1.5e-3)
    he      1e-2        CKKS noise and the loss schedule's approximations; cross-entropy 2e-2

The promises:
- on the bundled digits model's test split (360 images), every loss (the Fenchel-Young
  ones included) within the backend's bound and accuracy identical (above 0.9): approx in
  the default suite, mpc and he in the slow one; a directory of shards gives the figures
  of one file;
- in several batches (the last one partial, totals carried across batches), the secure
  backends reveal only the aggregate to the chosen party and report bytes, rounds and the
  LAN/WAN estimates: he on a small classifier in the default suite, mpc on the digits
  model in the slow one;
- user mistakes get one line and exit 2: a bad --loss name on every backend (before any
  party starts), a label out of range on the small classifier (plain by default; mpc and
  he, where the data owner's party finds it, in the slow suite), inputs of the wrong
  width, bad data files.

Backend-specific checks stay with their backend: `tests/backends/he/test_he_eval.py` (what
the HE server receives, the HE costs in the report, both sides stopping).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import assert_user_error, secinfer_here
from helpers.evaluation import (
    DIGITS,
    DIGITS_HE,
    LOSSES,
    QUICK_LOSSES,
    digits_split,
    export_classifier,
)

from secinfer.core.evaluation import parse_losses
from secinfer.errors import UserError
from secinfer.load.dataset import open_dataset

slow = pytest.mark.slow


@dataclass(frozen=True)
class Backend:
    """How a backend is evaluated here and what it promises against plaintext."""

    model: Path  # the digits model it runs
    loss: float  # relative error of each mean loss
    ce: float  # relative error of the mean cross-entropy
    batch_size: int | None = None  # on the whole test split (None: the CLI's default)
    rounds: str | None = None  # the report's round counter (secure backends)


BACKENDS = {
    "plain": Backend(DIGITS_HE, 0.0, 0.0),  # the reference itself
    "approx": Backend(DIGITS_HE, 1e-4, 1e-4),
    "mpc": Backend(DIGITS, 1e-2, 1e-2, batch_size=64, rounds="rounds"),
    "he": Backend(DIGITS_HE, 1e-2, 2e-2, batch_size=180, rounds="round_trips"),
}


def evaluate(
    model: Path, data: Path, backend: str, *extra: str, names: tuple[str, ...] = LOSSES
) -> tuple[subprocess.CompletedProcess, dict]:
    """`secinfer eval` of the losses `names` in this process; (the command's outcome, its
    report)."""
    report = data.parent / f"report-{backend}.json"
    done = secinfer_here("eval", str(model), str(data), "-b", backend, "--loss", ",".join(names),
                         "--report", str(report), *extra)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done, json.loads(report.read_text())


def check_losses(report: dict, backend: str) -> None:
    """Every loss of the report within the backend's bound of plaintext; accuracy
    identical."""
    bound = BACKENDS[backend]
    for name in report["losses"]:
        pair = report["losses"][name]
        tolerance = bound.ce if name == "ce" else bound.loss
        assert abs(pair["secure"] - pair["plain"]) <= tolerance * abs(pair["plain"]), name
    assert report["accuracy"]["secure"] == report["accuracy"]["plain"]


def check_secure(
    done: subprocess.CompletedProcess, report: dict, backend: str, reveal_to: str
) -> None:
    """A secure backend's report: who learned the aggregate, traffic both ways, rounds and
    the LAN/WAN estimates above the measured seconds."""
    assert f"revealed to the {reveal_to} only" in done.stdout
    assert "estimated wall time: LAN (1 ms, 5 Gbps)" in done.stdout
    sent = report["comm"]["bytes_sent"]
    assert sent["model_owner"] > 0 and sent["data_owner"] > 0
    assert report["comm"][BACKENDS[backend].rounds] > 0
    assert report["estimates"]["wan"] > report["estimates"]["lan"] > report["seconds"]


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return digits_split(tmp_path_factory.mktemp("data") / "test.npz")


@pytest.fixture(scope="module")
def on_the_split(split: Path) -> Callable[[str], tuple[subprocess.CompletedProcess, dict]]:
    """`evaluate` of the whole test split on a backend, once per backend in this module."""
    done: dict[str, tuple[subprocess.CompletedProcess, dict]] = {}

    def run(backend: str) -> tuple[subprocess.CompletedProcess, dict]:
        if backend not in done:
            chosen = BACKENDS[backend]
            extra = [] if chosen.batch_size is None else ["--batch-size", str(chosen.batch_size)]
            if chosen.rounds:
                extra += ["--reveal-to", "model-owner"]
            done[backend] = evaluate(chosen.model, split, backend, *extra)
        return done[backend]

    return run


# --- the figures --------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["approx", pytest.param("mpc", marks=slow),
                                     pytest.param("he", marks=slow)])  # fmt: skip
def test_losses_match_plaintext_on_the_digits_test_split(on_the_split, backend: str) -> None:
    done, report = on_the_split(backend)
    assert report["examples"] == 360
    check_losses(report, backend)
    assert report["accuracy"]["plain"] > 0.9
    if BACKENDS[backend].rounds:
        check_secure(done, report, backend, "model-owner")


def test_shards_give_the_figures_of_one_file(on_the_split, split: Path, tmp_path: Path) -> None:
    _, whole = on_the_split("approx")  # its plaintext side: the one-file figures
    shards = tmp_path / "shards"
    shards.mkdir()
    with np.load(split) as data:
        for k, rows in enumerate((slice(0, 100), slice(100, 250), slice(250, 360))):
            np.savez(shards / f"part{k}.npz", inputs=data["inputs"][rows],
                     labels=data["labels"][rows])  # fmt: skip
    report = tmp_path / "r.json"
    done = secinfer_here("eval", str(DIGITS_HE), str(shards), "-b", "plain", "--loss", "ce",
                         "--batch-size", "7", "--report", str(report))  # fmt: skip
    assert done.returncode == 0, done.stderr
    sharded = json.loads(report.read_text())
    assert sharded["examples"] == 360
    assert abs(sharded["losses"]["ce"]["plain"] - whole["losses"]["ce"]["plain"]) < 1e-9
    assert sharded["accuracy"]["plain"] == whole["accuracy"]["plain"]


@dataclass(frozen=True)
class Streamed:
    """A small evaluation in several batches: its model and data, and who learns it."""

    build: Callable[[Path], tuple[Path, Path]]  # a folder -> (model, data)
    rows: int
    batch_size: int
    reveal_to: str
    plain_accuracy: float | None = None  # when the data fixes it
    extra: tuple[str, ...] = ()  # further options of the command


STREAMED = {
    # the digits model, two batches of 12 test images
    "mpc": Streamed(lambda root: (DIGITS, digits_split(root / "d.npz", 24)), 24, 12, "data-owner"),
    # the small classifier: 10 rows in batches of 4 (the last padded and masked)
    # --hiding-bits 12: the evaluation's flow at N = 8192; the default 40 bits need
    # N = 16384 and cost 3x the time (the refresh's hiding: tests/backends/he)
    "he": Streamed(
        export_classifier, 10, 4, "model-owner", plain_accuracy=0.7, extra=("--hiding-bits", "12")
    ),
}


@pytest.mark.parametrize("backend", [pytest.param("mpc", marks=slow), "he"])
def test_several_batches_reveal_the_aggregate_to_the_chosen_party(
    tmp_path: Path, backend: str
) -> None:
    case = STREAMED[backend]
    model, data = case.build(tmp_path)
    done, report = evaluate(model, data, backend, "--batch-size", str(case.batch_size),
                            "--reveal-to", case.reveal_to, *case.extra,
                            names=QUICK_LOSSES)  # fmt: skip
    assert report["examples"] == case.rows
    if case.extra:
        assert "warning: --hiding-bits 12" in done.stderr
    check_losses(report, backend)
    if case.plain_accuracy is not None:
        assert report["accuracy"]["plain"] == case.plain_accuracy
    check_secure(done, report, backend, case.reveal_to)
    assert "| zloss |" in done.stdout


# --- user mistakes ------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["plain", "approx", "mpc", "he"])
def test_a_bad_loss_name_is_one_line(split: Path, backend: str) -> None:
    model = BACKENDS[backend].model
    done = secinfer_here("eval", str(model), str(split), "-b", backend, "--loss", "ce,hinge")
    assert_user_error(done, "'hinge'")
    assert "revealed" not in done.stdout


@pytest.mark.parametrize("backend", ["plain", pytest.param("mpc", marks=slow),
                                     pytest.param("he", marks=slow)])  # fmt: skip
def test_a_label_out_of_range_is_one_line(tmp_path: Path, backend: str) -> None:
    """Row 5 (the second batch of 4) of the small classifier's 4 classes labelled 4: found
    where the labels are, here under plain, by the data owner's party under mpc (before it
    shares them) and he (once the server's logits tell it the classes), which then stops
    the other party too."""
    model, data = export_classifier(tmp_path, bad_label=4)
    done = secinfer_here("eval", str(model), str(data), "-b", backend, "--loss", "ce",
                         "--batch-size", "4")  # fmt: skip
    assert_user_error(done, "label 4 at row 5")


@pytest.mark.parametrize(
    ("backend", "tau", "needle"),
    [
        ("plain", "-1", "--compsum-tau -1.0: expected a finite tau >= 0"),
        ("mpc", "0.5", "--compsum-tau 0.5: secure backends take tau >= 1"),
        ("he", "0.5", "--compsum-tau 0.5: secure backends take tau >= 1"),
    ],
)
def test_a_compsum_tau_outside_its_range_is_one_line(
    split: Path, backend: str, tau: str, needle: str
) -> None:
    """Refused before any party starts; tau below 1 is the plaintext backends' alone."""
    model = BACKENDS[backend].model
    done = secinfer_here("eval", str(model), str(split), "-b", backend, "--loss", "compsum",
                         "--compsum-tau", tau)  # fmt: skip
    assert_user_error(done, needle)


def test_inputs_of_the_wrong_width_are_one_line(tmp_path: Path) -> None:
    wrong_inputs = tmp_path / "inputs.npz"
    np.savez(wrong_inputs, inputs=np.zeros((3, 63), np.float32), labels=np.array([1, 2, 0]))
    assert_user_error(secinfer_here("eval", str(DIGITS_HE), str(wrong_inputs)), "63")


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
