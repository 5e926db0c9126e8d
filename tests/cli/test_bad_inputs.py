"""A careless user's mistakes: bad values, unwritable destinations, NaN reports, plots.

- NaN, inf, 1e30 and an empty input on plain, approx, mpc and he: one line naming the input,
  the value, its index and the backend's limit, exit 2, before any party starts (mpc used
  to return finite garbage with exit 0, he to blame the key); the labelled data of
  `secinfer eval` the same way.
- --output, --report, --plot under a regular file or under /proc: one line, exit 2, before
  the run (it used to be a traceback after the whole secure run).
- A run whose error is not finite writes strict JSON (null and a `non_finite` list).
- --plot on every backend draws what the report knows: approx's per-block error under the
  same plan for mpc and he (their intermediate values are never revealed), bytes and rounds
  per block for mpc, seconds and operations per block for he (it used to end in
  `KeyError: 'seconds'` under he, and to draw 1e-16 for every mpc block).

The refusals call the CLI in this process (`secinfer_here`); the mpc and he runs with
--plot start their parties as processes, on a two-layer model of width 8.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.cli import assert_user_error, secinfer_here

from secinfer import backends
from secinfer.backends.base import RunOptions
from secinfer.backends.he.limits import he_limit
from secinfer.backends.mpc.limits import mpc_limit
from secinfer.errors import UserError
from secinfer.load.dataset import open_dataset
from secinfer.load.values import check_values
from secinfer.report.files import dumps_strict, write_json
from secinfer.report.plots import layer_panels, plot_layers

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "secinfer" / "data" / "digits.pt2"
BACKENDS = ("plain", "approx", "mpc", "he")


class Tiny(torch.nn.Module):
    """Two linear blocks and a square between them: runs on every backend in seconds."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(8, 8), torch.nn.Linear(8, 4)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks[0](x)
        return self.blocks[1](y * y)


class Overflow(torch.nn.Module):
    """x 1e30 1e30: infinite in float32 (plain), 1e60 in float64 (approx)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1e30 * 1e30


def export(module: torch.nn.Module, path: Path) -> Path:
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(module.eval(), (torch.ones(2, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(program, path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    np.save(root / "x.npy", np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32))
    return export(Tiny(), root / "tiny.pt2")


def saved(tmp_path: Path, name: str, array: np.ndarray) -> str:
    path = tmp_path / name
    np.save(path, array)
    return str(path)


def bad_input(case: str) -> np.ndarray:
    """A (2, 8) input with one bad value at [1, 5], or an empty (0, 8) one."""
    if case == "empty":
        return np.zeros((0, 8), np.float32)
    x = np.ones((2, 8), np.float32)
    x[1, 5] = {"nan": np.nan, "inf": np.inf, "1e30": 1e30}[case]
    return x


def strict_loads(text: str) -> Any:
    """json.loads that refuses NaN and Infinity (Python's json accepts them)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


# --- values ------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["nan", "inf", "empty"])
def test_nan_inf_and_empty_inputs_get_the_same_line_on_every_backend(
    tiny: Path, tmp_path: Path, case: str
) -> None:
    path = saved(tmp_path, f"{case}.npy", bad_input(case))
    lines = {}
    for backend in BACKENDS:
        done = secinfer_here("run", str(tiny), "-b", backend, "--input", path)
        needle = "holds no values" if case == "empty" else f"x[1, 5] = {case}"
        assert_user_error(done, needle)
        assert "communication" not in done.stdout and "backend" not in done.stdout
        lines[backend] = done.stderr.strip()
    heads = {line.split(";")[0] for line in lines.values()}
    assert len(heads) == 1, lines  # the same words; only the stated limit differs
    if case != "empty":
        assert "|x| < 2^31" in lines["mpc"] and "|x| <= 2^17" in lines["he"]


@pytest.mark.slow  # make test-all: the default suite keeps one case each
def test_1e30_is_refused_by_the_secure_backends_and_run_by_the_plaintext_ones(
    tiny: Path, tmp_path: Path
) -> None:
    path = saved(tmp_path, "big.npy", bad_input("1e30"))
    for backend in ("mpc", "he"):
        done = secinfer_here("run", str(tiny), "-b", backend, "--input", path)
        assert_user_error(done, "x[1, 5] = 1e+30 is beyond the limit")
    done = secinfer_here("run", str(tiny), "-b", "mpc", "--precision-bits", "24", "--input",
                         saved(tmp_path, "40k.npy", np.full((2, 8), 4e4, np.float32)))  # fmt: skip
    assert_user_error(done, "x[0, 0] = 40000 is beyond the limit")
    assert "|x| < 2^15" in done.stderr and "24 fractional bits" in done.stderr
    for backend in ("plain", "approx"):  # finite: float64 holds it
        done = secinfer_here("run", str(tiny), "-b", backend, "--input", path)
        assert done.returncode == 0, done.stderr


def test_the_limits_are_what_the_encodings_hold() -> None:
    """mpc: |x| 2^(2b) < 2^63; he: |x| <= 2^mask_bits = 2^17 at the default chain."""
    assert mpc_limit(16).bound == 2.0**31 and mpc_limit(20).bound == 2.0**23
    assert he_limit().bound == 2.0**17
    assert math.isinf(backends.get("approx").value_limit(RunOptions()).bound)
    assert backends.get("mpc").value_limit(RunOptions(precision_bits=20)).bound == 2.0**23
    check_values([torch.tensor([2.0**31 - 256])], ["x"], mpc_limit(16))  # float32 below 2^31
    with pytest.raises(UserError, match=r"x\[0\] = 2.14748e\+09 is beyond"):
        check_values([torch.tensor([2.0**31])], ["x"], mpc_limit(16))
    check_values([np.array([-(2.0**17)])], ["x"], he_limit())
    with pytest.raises(UserError, match=r"x\[1\] = -131073 is beyond"):
        check_values([np.array([0.0, -(2.0**17) - 1])], ["x"], he_limit())
    # token ids and masks are integers: one-hot under both secure backends, not bounded here
    check_values([torch.tensor([[50_000, 1]])], ["input_ids"], mpc_limit(24))
    with pytest.raises(UserError, match=r"attention_mask: shape \(1, 0\) holds no values"):
        check_values([torch.ones(1, 3), torch.ones(1, 0)], ["input_ids", "attention_mask"])
    with pytest.raises(UserError, match=r"x\[2, 0\] = -inf"):  # the first in C order
        x = torch.zeros(3, 2, dtype=torch.bfloat16)
        x[2, 0], x[2, 1] = -math.inf, math.nan
        check_values([x], ["x"])


@pytest.mark.slow  # make test-all: the default suite keeps one case each
@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_refuses_labelled_data_with_bad_values(tmp_path: Path, backend: str) -> None:
    """Checked when the data set is opened: before the model loads or a party starts."""
    inputs = np.ones((3, 64), np.float32)
    inputs[2, 7] = np.nan
    data = tmp_path / "bad.npz"
    np.savez(data, inputs=inputs, labels=np.zeros(3, np.int64))
    done = secinfer_here("eval", str(DIGITS), str(data), "-b", backend)
    assert_user_error(done, f"DATA {data}: array inputs: inputs[2, 7] = nan is not a finite")
    inputs[2, 7] = 1e30
    np.savez(data, inputs=inputs, labels=np.zeros(3, np.int64))
    if backend in ("mpc", "he"):
        done = secinfer_here("eval", str(DIGITS), str(data), "-b", backend)
        assert_user_error(done, "inputs[2, 7] = 1e+30 is beyond the limit")
    else:  # finite: the plaintext backends take it (the CLI opens the data so)
        limit = backends.get(backend).value_limit(RunOptions())
        assert open_dataset(data, limit=limit).rows == 3


# --- destinations ------------------------------------------------------------------------
@pytest.mark.parametrize("flag, name", [("--output", "y.npy"), ("--report", "r.json"),
                                        ("--plot", "p.png")])  # fmt: skip
def test_unwritable_destinations_are_refused_before_the_run(
    tiny: Path, tmp_path: Path, flag: str, name: str
) -> None:
    regular = tmp_path / "file"
    regular.write_text("")
    done = secinfer_here("run", str(tiny), "-b", "mpc", flag, str(regular / name))
    assert_user_error(done, f"{flag} {regular / name}: {regular} is a file, not a directory")
    assert "communication" not in done.stdout
    proc = Path("/proc")
    if proc.is_dir():
        done = secinfer_here("run", str(tiny), "-b", "he", flag, str(proc / name))
        assert_user_error(done, f"{flag} {proc / name}: cannot write in /proc")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]  # no probe left behind


def test_eval_report_under_a_file_is_refused(tmp_path: Path) -> None:
    regular = tmp_path / "file"
    regular.write_text("")
    data = tmp_path / "d.npz"
    np.savez(data, inputs=np.ones((2, 64), np.float32), labels=np.zeros(2, np.int64))
    done = secinfer_here("eval", str(DIGITS), str(data), "--report", str(regular / "r.json"))
    assert_user_error(done, "is a file, not a directory")


# --- strict JSON -------------------------------------------------------------------------
def test_reports_are_strict_json_with_non_finite_numbers_flagged(tmp_path: Path) -> None:
    data = {
        "max_abs_error": math.nan,
        "cosine": 0.5,
        "layers": [{"max_abs_error": math.inf}, {"max_abs_error": np.float32(-np.inf)}],
        "shape": torch.tensor([2, 3]),
        "sums": np.array([1.0, np.nan]),
    }
    write_json(tmp_path / "r.json", data)
    report = strict_loads((tmp_path / "r.json").read_text())
    assert report["max_abs_error"] is None and report["cosine"] == 0.5
    assert report["shape"] == [2, 3] and report["sums"] == [1.0, None]
    assert report["non_finite"] == [
        "max_abs_error", "layers[0].max_abs_error", "layers[1].max_abs_error", "sums[1]",
    ]  # fmt: skip
    assert "non_finite" not in strict_loads(dumps_strict({"a": 1.0}))


def test_a_run_whose_error_is_infinite_writes_strict_json(tmp_path: Path) -> None:
    model = export(Overflow(), tmp_path / "overflow.pt2")
    x = saved(tmp_path, "x.npy", np.ones((2, 8), np.float32))
    report_path = tmp_path / "r.json"
    done = secinfer_here("run", str(model), "-b", "approx", "--input", x,
                         "--report", str(report_path), "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    for text in (report_path.read_text(), done.stdout):
        report = strict_loads(text)
        assert report["max_abs_error"] is None and report["cosine"] is None
        assert {"max_abs_error", "cosine"} <= set(report["non_finite"])


# --- plots -------------------------------------------------------------------------------
def panels_by_label(report: dict[str, Any]) -> dict[str, Any]:
    return {panel.ylabel: panel for panel in layer_panels(report)[1]}


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("backend", ["plain", "approx"])
def test_plot_on_the_local_backends(tiny: Path, tmp_path: Path, backend: str) -> None:
    x = str(tiny.with_name("x.npy"))
    plot, report_path = tmp_path / "p.png", tmp_path / "r.json"
    done = secinfer_here("run", str(tiny), "-b", backend, "--input", x, "--plot", str(plot),
                         "--report", str(report_path))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert_png(plot)
    report = json.loads(report_path.read_text())
    panels = panels_by_label(report)
    seconds = [layer["seconds"] for layer in report["layers"]]
    assert panels["seconds"].series == {"seconds": seconds}
    if backend == "plain":  # the reference: no error to draw
        assert list(panels) == ["seconds"]
    else:
        errors = [layer["max_abs_error"] for layer in report["layers"]]
        assert panels["max abs error vs plain"].series == {"approx": errors}


@pytest.mark.slow  # make test-all: a heavier duplicate of a default check
def test_plot_on_mpc_draws_approx_error_bytes_and_rounds(tiny: Path, tmp_path: Path) -> None:
    """Per-block errors of the secure run are not revealed (null in the report): the plot
    draws approx's under the same plan, named so, with the run's own error as a line."""
    report = secure_run_with_plot(tiny, tmp_path, "mpc")
    layers = report["layers"]
    assert all(layer["max_abs_error"] is None for layer in layers)
    panels = panels_by_label(report)
    error = panels["approx, same plan:\nmax abs error vs plain"]
    assert error.series == {
        "approx (same plan), per block": [la["approx_max_abs_error"] for la in layers]
    }
    assert error.line == (report["max_abs_error"], "mpc run: output error")
    assert panels["MB sent (online)"].series["data owner"] == [
        la["bytes_sent"]["data_owner"] / 1e6 for la in layers
    ]
    assert panels["rounds"].series == {"rounds": [la["rounds"] for la in layers]}
    assert sum(la["rounds"] for la in layers) > 0


@pytest.mark.slow  # make test-all: a heavier duplicate of a default check
def test_plot_on_he_draws_seconds_and_operations_per_block(tiny: Path, tmp_path: Path) -> None:
    report = secure_run_with_plot(tiny, tmp_path, "he")
    layers = report["layers"]
    panels = panels_by_label(report)
    assert "approx, same plan:\nmax abs error vs plain" in panels
    assert panels["seconds (server, no refresh)"].series["seconds"] == [
        la["seconds"] for la in layers
    ]
    operations = panels["HE operations"].series
    counts = report["he"]["counts"]  # the per-block counts add up to the run's
    assert sum(operations["ct-pt products"]) == counts["ct_pt_mults"] > 0
    assert sum(operations["ct-ct products"]) == counts["ct_ct_mults"] > 0
    assert sum(operations["refreshes"]) == report["he"]["depth"]["refreshes"]


def secure_run_with_plot(model: Path, tmp_path: Path, backend: str) -> dict[str, Any]:
    plot, report_path = tmp_path / "p.png", tmp_path / "r.json"
    done = secinfer_here("run", str(model), "-b", backend, "--input",
                         str(model.with_name("x.npy")), "--plot", str(plot),
                         "--report", str(report_path))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert_png(plot)
    report = strict_loads(report_path.read_text())
    assert report["max_abs_error"] < 1e-3
    return report


def test_plot_of_an_older_report_without_per_block_costs(tmp_path: Path) -> None:
    """What used to raise KeyError: 'seconds' (an he report) or draw 1e-16 (mpc nulls)."""
    report = {
        "backend": "he",
        "model": "m.pt2",
        "max_abs_error": 0.01,
        "cosine": 0.99,
        "layers": [
            {"name": "a", "max_abs_error": None, "approx_max_abs_error": 0.002},
            {"name": "b", "max_abs_error": None, "approx_max_abs_error": None},
            {"name": "c", "max_abs_error": None, "approx_max_abs_error": 0.0},
        ],
    }
    title, panels = layer_panels(report)
    assert [p.ylabel for p in panels] == ["approx, same plan:\nmax abs error vs plain"]
    assert panels[0].series["approx (same plan), per block"] == [0.002, None, 0.0]
    assert "he reveals no intermediate" in title
    assert_png(plot_layers(report, tmp_path / "old.png"))
