"""Labelled data and models for the `secinfer eval` tests: the bundled digits models on their
test split, and a small exported classifier that the secure backends evaluate in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from secinfer.zoo.digits import load_split

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "secinfer" / "data" / "digits.pt2"
"""The bundled digits classifier (the mpc tests' model)."""
DIGITS_HE = ROOT / "secinfer" / "data" / "digits_he.pt2"
"""The bundled HE-friendly digits classifier (runs on every backend)."""
LOSSES = ("ce", "square", "zloss", "gce", "mae", "compsum", "sparsemax", "entmax15")
"""Every loss `secinfer eval` offers."""
QUICK_LOSSES = LOSSES[:-2]
"""All but the Fenchel-Young losses, whose thresholds cost about a minute of refreshes per
batch under he: what the default suite's he evaluations compute."""


def digits_split(path: Path, rows: int | None = None) -> Path:
    """The digits test split (360 images), or its first `rows`, written to `path` as DATA
    for `secinfer eval`."""
    _, _, x, y = load_split(0)
    np.savez(path, inputs=x[:rows].numpy(), labels=y[:rows].numpy())
    return path


class Classifier(torch.nn.Module):
    """8 features, 4 classes, a square activation between two linear layers (HE-friendly);
    seeded, so every instance holds the same weights."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(8, 12)
        self.fc2 = torch.nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(0.3 * h * h - h)


def export_classifier(root: Path, bad_label: int | None = None) -> tuple[Path, Path]:
    """(model, data) in `root`: `Classifier` exported with a dynamic batch (2 to 64 rows),
    and 10 labelled rows whose first three labels are not the argmax (plain accuracy 0.7);
    `bad_label`: row 5's label replaced by that value."""
    torch.manual_seed(1)
    x = torch.randn(10, 8)
    batch = torch.export.Dim("batch", min=2, max=64)
    program = torch.export.export(Classifier().eval(), (x,), dynamic_shapes=({0: batch},))
    model = root / "classifier.pt2"
    torch.export.save(program, model)
    with torch.no_grad():
        labels = Classifier()(x).argmax(-1)
    labels[:3] = (labels[:3] + 1) % 4  # three misses
    if bad_label is not None:
        labels[5] = bad_label
    data = root / "data.npz"
    np.savez(data, inputs=x.numpy(), labels=labels.numpy())
    return model, data
