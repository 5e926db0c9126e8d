"""A pretrained-like BERT with trained models' outliers runs UNCONVERTED under `he`.

`helpers.models.outlier_bert`: attention scores to +-40, GELU inputs to +-17, LayerNorm
variances from about 1e-3 (embeddings) to several hundred (a residual channel pushed to
100). No conversion: the graph keeps aten.layer_norm, aten.softmax and aten.gelu, and the
he plan's defaults serve them (LayerNorm as one op with a minimax-Newton inverse square
root, exp-based softmax with a composite-sign tournament for the row maximum, GELU as one
polynomial on its calibrated interval). Server and client for real (a server thread, a
client, loopback sockets, TenSEAL CKKS at N = 8192, masked refreshes), the client's
decrypted hidden states against the plaintext run of the same graph:

  hidden 32, 2 heads, 1 layer, 8 tokens     cosine >= 0.999 (measured 1 - 7e-14, max error
                                            1.8e-5); approx under the same plan within
                                            1e-3 of the decrypted output (measured 1e-5)
  hidden 64, 2 heads, 2 layers (slow)       the same bounds
  `secinfer run DIR --backend he` on the saved Hugging Face directory (slow): the whole CLI
  path, two processes, its default sample.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.he import encrypted_run
from helpers.models import hidden_states, outlier_bert, outlier_inputs

from secinfer.core.execute import Executor
from secinfer.core.prepare import prepare

ROOT = Path(__file__).resolve().parents[3]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize(
    ("hidden", "layers", "intermediate"),
    [(32, 1, 32), pytest.param(64, 2, 128, marks=pytest.mark.slow)],
    ids=["hidden32-1layer", "hidden64-2layers"],
)
def test_an_unconverted_outlier_bert_runs_encrypted(
    hidden: int, layers: int, intermediate: int
) -> None:
    model = hidden_states(outlier_bert(hidden, 2, layers, intermediate))
    query = outlier_inputs(100)
    program = torch.export.export(model, query)
    graph, plan = prepare(program, "he", [outlier_inputs(seed) for seed in range(4)], None)

    # the he defaults serve every nonlinear node, calibrated on outlier ranges
    methods = {(c.function, c.method) for c in plan.choices.values()}
    assert methods == {
        ("layer_norm", "minimax_newton"),
        ("softmax", "exp_max"),
        ("gelu", "chebyshev"),
    }
    observed = {c.function: [] for c in plan.choices.values()}
    for choice in plan.choices.values():
        observed[choice.function].append(choice.observed)
    assert max(max(-lo, hi) for lo, hi in observed["gelu"]) >= 15.0
    assert max(hi - lo for lo, hi in observed["softmax"]) >= 60.0
    assert max(hi for _, hi in observed["layer_norm"]) >= 150.0
    assert min(lo for lo, _ in observed["layer_norm"]) <= 2e-3

    y, expected, outcome = encrypted_run(graph, plan, query, timeout=1800)
    predicted = Executor(graph, "approx", plan).run(query).outputs[0].double().numpy()
    print(
        f"cosine {_cosine(y, expected):.15f}, max error {np.abs(y - expected).max():.2e}, "
        f"vs approx {np.abs(y - predicted).max():.2e}, refreshes {outcome['record']['refreshes']}"
    )
    assert _cosine(y, expected) >= 0.999
    assert np.abs(y - expected).max() < 1e-2
    assert np.abs(y - predicted).max() < 1e-3


@pytest.mark.slow
def test_secinfer_run_on_the_hugging_face_directory(tmp_path: Path) -> None:
    """The issue's command on a saved directory: no conversion, no config, no --input."""
    path = tmp_path / "outlier-bert"
    outlier_bert(32, 2, 1, 32, seq=16).save_pretrained(path)
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "secinfer.cli", "run", str(path), "--backend", "he",
         "--timeout", "1800", "--report", str(report)],
        capture_output=True, text=True, timeout=3600, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["backend"] == "he" and result["cosine"] >= 0.999, result["cosine"]
