"""`secinfer eval` on a model exported with a static batch (issue 13).

The defect: the README's export recipe gives a batch-1 program, and `eval` fed it batches
of 64 ("shape (64, 20), the model wants (1, 20)"). Now the data streams in the model's
static batch, the last batch padded with copies of its first row that count in no total.

The same classifier is exported three ways (static batch 1, static batch 4, dynamic batch)
and calibrated on the same rows, so all three plans are one plan: on the same 10 labelled
rows (not a multiple of 4: the static-4 export pads its last batch) every aggregate must
agree with the dynamic export's to float64 rounding, under plain and approx; under mpc the
static-4 export (a padded last batch on shares) within the fixed-point error of plaintext.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from secinfer.cli import main

LOSSES = "ce,square,zloss,gce,mae"
ROWS = 10


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three exports of one model, each calibrated on the same example row, and the data."""
    root = tmp_path_factory.mktemp("static")
    torch.manual_seed(0)
    model = Classifier().eval()
    g = torch.Generator().manual_seed(1)
    row = torch.randn(1, 20, generator=g)
    paths = {}
    for name, example, dynamic in [
        ("batch1", row, None),
        ("batch4", row.expand(4, 20).clone(), None),
        ("dynamic", row.expand(2, 20).clone(), ({0: torch.export.Dim("batch", max=1024)},)),
    ]:
        paths[name] = root / f"{name}.pt2"
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic)
        torch.export.save(program, paths[name])
    paths["data"] = root / "data.npz"
    x = torch.randn(ROWS, 20, generator=g).numpy()
    y = np.arange(ROWS) % 3
    np.savez(paths["data"], inputs=x, labels=y)
    return paths


def evaluate(model: Path, data: Path, backend: str, *extra: str) -> dict:
    report = data.parent / f"{model.stem}-{backend}.json"
    args = ["eval", str(model), str(data), "-b", backend, "--loss", LOSSES,
            "--report", str(report), *extra]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return json.loads(report.read_text())


@pytest.mark.parametrize("backend", ["plain", "approx"])
def test_static_batches_give_the_dynamic_exports_aggregate(files: dict, backend: str) -> None:
    dynamic = evaluate(files["dynamic"], files["data"], backend)
    assert dynamic["examples"] == ROWS and dynamic["batch_size"] == 64
    for name, size in (("batch1", 1), ("batch4", 4)):
        report = evaluate(files[name], files["data"], backend)
        assert report["examples"] == ROWS and report["batch_size"] == size
        for loss in LOSSES.split(","):
            for side in ("secure", "plain"):
                got, want = report["losses"][loss][side], dynamic["losses"][loss][side]
                assert got == pytest.approx(want, rel=1e-6), (name, loss, side)  # float32 plain
        assert report["accuracy"] == dynamic["accuracy"]


def test_a_batch_size_the_model_cannot_take_is_one_line(files: dict) -> None:
    args = ["eval", str(files["batch4"]), str(files["data"]), "--batch-size", "8"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "--batch-size 8: the model takes batches of exactly 4 rows" in result.stderr
    ok = CliRunner().invoke(main, [*args[:3], "--batch-size", "4"])
    assert ok.exit_code == 0, ok.output


@pytest.mark.slow  # make test-all; the default suite keeps the cheaper checks
def test_mpc_evaluates_a_static_batch_with_a_padded_last_batch(files: dict) -> None:
    """Three parties, batches of 4 and 2 real rows (the last padded to 4 on shares)."""
    data = files["data"].parent / "six.npz"
    with np.load(files["data"]) as whole:
        np.savez(data, inputs=whole["inputs"][:6], labels=whole["labels"][:6])
    report = evaluate(files["batch4"], data, "mpc")
    assert report["examples"] == 6 and report["batch_size"] == 4
    # measured on these 6 rows: relative errors 1.9e-3 to 3.3e-3 (alike in two runs);
    # padding rows counted would shift every loss by 14 to 29 %
    for loss in LOSSES.split(","):
        pair = report["losses"][loss]
        assert abs(pair["secure"] - pair["plain"]) <= 1e-2 * abs(pair["plain"]), loss
    assert report["accuracy"]["secure"] == report["accuracy"]["plain"]
