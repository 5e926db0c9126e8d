"""MPCFormer's 2Quad softmax without fine-tuning: the bundled digits model's test accuracy
with its softmax replaced by 2Quad, (x + 5)^2 normalised, against its own softmax.

2Quad is not an approximation of softmax: MPCFormer distils a model into it. This
measures what a model trained with softmax keeps without that step, in float64 (the mpc
kernel, `protocols.mpc.softmax.two_quad_softmax`, matches this plaintext form within 1e-3
per weight: `tests/protocols/mpc/test_mpc_kernels.py`). Its cost beside our softmax is a
row of the op table (`variants.VARIANTS["softmax.2quad"]`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from approximations.functions import softmax
from secinfer.zoo import accuracy, load_model, load_split

MODEL = Path(__file__).resolve().parents[1] / "secinfer" / "data" / "digits.safetensors"
C = 5.0


class TwoQuad(nn.Module):
    """softmax(x, dim) replaced by (x + c)^2 normalised along dim."""

    def __init__(self, dim: int, c: float = C) -> None:
        super().__init__()
        self.dim, self.c = dim, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return softmax(x, self.dim, "2quad", c=self.c)


def model_accuracy() -> dict[str, Any]:
    """The digits test split's accuracy with softmax and with 2Quad in its place, and the
    largest change of a logit (float64)."""
    _, _, x, y = load_split()
    model = load_model(MODEL).double().eval()
    x = x.double()
    with torch.no_grad():
        exact_logits = model(x)
        exact = accuracy(model, x, y)
        replaced = 0
        for module in model.modules():
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Softmax):
                    setattr(module, name, TwoQuad(child.dim if child.dim is not None else -1))
                    replaced += 1
        quad_logits = model(x)
        quad = accuracy(model, x, y)
    return {
        "model": "the bundled digits model (secinfer/data/digits), test split",
        "examples": len(y),
        "softmax_nodes": replaced,
        "accuracy_softmax": exact,
        "accuracy_2quad": quad,
        "logits_max_abs_change": float((quad_logits - exact_logits).abs().max()),
        "c": C,
    }


__all__ = ["model_accuracy"]
