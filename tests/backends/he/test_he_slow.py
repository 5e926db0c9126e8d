"""HE on the digits model: 99 of 100 classes as plaintext, logits within 1e-2 (`make test-all`).

100 test images of the digits split through `secinfer run --backend he` (server and client
as processes): the predicted class equals the plaintext converted model's for at least 99
of 100, and the logits are within 1e-2 (max abs). 100 images x 16 patches fill 1600 of the
4096 slots of one ciphertext, so the run costs about what 2 images cost.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from secinfer.zoo.digits import load_split

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_one_hundred_digits_fully_encrypted(tmp_path: Path) -> None:
    images = load_split(0)[2][:100]
    path = tmp_path / "x.npy"
    np.save(path, images.numpy())
    report_path, output_path = tmp_path / "r.json", tmp_path / "y.npy"
    done = subprocess.run(
        [
            sys.executable, "-m", "secinfer.cli", "run", "secinfer/data/digits_he.pt2",
            "--backend", "he", "--input", str(path), "--report", str(report_path),
            "--output", str(output_path), "--timeout", "300",
        ],
        capture_output=True, text=True, timeout=1800, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(report_path.read_text())
    program = torch.export.load(ROOT / "secinfer/data/digits_he.pt2")
    with torch.no_grad():
        plain = program.module()(images).double().numpy()
    secure = np.load(output_path)
    agree = int((secure.argmax(-1) == plain.argmax(-1)).sum())
    assert agree >= 99, agree
    assert np.abs(secure - plain).max() < 1e-2
    assert report["max_abs_error"] < 1e-2
    print(f"agreement {agree}/100, max abs error {np.abs(secure - plain).max():.3g}")
