"""A model converted with `convert(model, target="he", samples=batch)` and exported with
`torch.export` needs nothing else to run under `--backend he`.

- Fast: the HE plan of the exported program accepts every node (GELU and LayerNorm are
  additions and products only; the one nonlinear op left is power-softmax's reciprocal,
  which the plan calibrates from the archive's example input and which lies inside the
  interval `convert` reports).
- Slow (`make test-all`): `secinfer run tiny.pt2 --backend he` for real, server and client
  processes, no other argument: the decrypted output matches the plaintext run of the same
  program (measured: max abs error 3.3e-5, cosine 1.000000, 59 refreshes, 46 s of HE here).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import secinfer.backends.he.kernels as he_kernels
from approximations.conversion import Replacement, convert
from secinfer.core.prepare import prepare

ROOT = Path(__file__).resolve().parents[2]


class Block(nn.Module):
    """A pre-norm transformer block (width 8, 2 heads) with outlier weights: GELU inputs to
    about +-15, attention scores to about +-60, LayerNorm variances to about 28."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.ln1 = nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.ln2 = nn.LayerNorm(8)
        self.up = nn.Linear(8, 16)
        self.act = nn.GELU()
        self.down = nn.Linear(16, 8)
        with torch.no_grad():
            self.attn.in_proj_weight[:16].mul_(6.0)
            self.up.weight.mul_(8.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.down(self.act(self.up(self.ln2(x))))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, torch.Tensor, nn.Module, list[Replacement]]:
    generator = torch.Generator().manual_seed(1)
    samples = torch.randn(32, 4, 8, generator=generator) * 3
    query = torch.randn(1, 4, 8, generator=generator) * 3
    model, replaced = convert(Block().eval(), target="he", samples=samples)
    path = tmp_path_factory.mktemp("he") / "tiny.pt2"
    torch.export.save(torch.export.export(model.eval(), (query,)), path)
    return path, query, model, replaced


def test_the_he_plan_accepts_the_exported_conversion(exported) -> None:
    path, query, _model, replaced = exported
    graph, plan = prepare(torch.export.load(path), "he", [(query,)])
    he_kernels.check_he_plan(graph, plan)
    functions = {choice.function for choice in plan.choices.values()}
    assert functions == {"reciprocal"}  # power-softmax's; GELU and LayerNorm are polynomials
    (softmax,) = (r for r in replaced if r.kind == "softmax")
    denominators = [c.observed for c in plan.choices.values() if c.op == "aten.reciprocal"]
    assert len(denominators) == 1  # divisions by public constants need no interval
    lo, hi = denominators[0]
    assert softmax.interval[0] <= lo <= hi <= softmax.interval[1]


@pytest.mark.slow
def test_secinfer_runs_the_converted_model_under_he_with_no_other_argument(exported) -> None:
    path, query, model, _ = exported
    done = subprocess.run(
        [sys.executable, "-m", "secinfer.cli", "run", str(path), "--backend", "he"],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.search(r"vs plain: max abs error ([0-9.e+-]+), cosine ([0-9.]+)", done.stdout)
    assert found is not None, done.stdout
    assert float(found.group(1)) < 1e-3 and float(found.group(2)) >= 0.99999
    with torch.no_grad():  # and the converted model is near the original (power-softmax)
        assert (
            float(F.cosine_similarity(model(query).flatten(), Block()(query).flatten(), 0)) > 0.99
        )
