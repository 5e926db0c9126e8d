"""CrypTen's side of the comparisons: its built-ins as the op baselines (GELU, LayerNorm;
softmax is `x.softmax(-1)`), the BERT encoder layer written by hand with them, and how many
output elements CrypTen's own decode (`get_plain_text`) would get wrong."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from protocols.mpc.reveal import decode


def crypten_layer_norm(x: Any, weight: Any, bias: Any, eps: float) -> Any:
    """LayerNorm with CrypTen's built-ins: mean, variance (`square`, which opens its input
    once, not `c * c`, which opens it twice), `(var + eps).inv_sqrt()`."""
    centred = x - x.mean(-1, keepdim=True)
    variance = centred.square().mean(-1, keepdim=True)
    out = centred * (variance + eps).inv_sqrt()
    if weight is not None:
        out = out * weight
    return out if bias is None else out + bias


def crypten_gelu(x: Any) -> Any:
    """CrypTen has no GELU (issue 474); the usual stand-in is x sigmoid(1.702 x)."""
    return x * (x * 1.702).sigmoid()


def crypten_gelu_erf(x: Any) -> Any:
    """GELU's definition with CrypTen's `erf`: 0.5 x (1 + erf(x / sqrt 2))."""
    return (x * 0.5) * ((x * (1 / math.sqrt(2))).erf() + 1)


def crypten_bert_layer(x: Any, w: dict[str, Any], heads: int, eps: float, mark: Callable) -> Any:
    """A BertLayer written with CrypTen's built-ins. `w` holds the model owner's shared
    weights, linear weights already transposed to (in, out). `mark(stage)` is called at the
    end of each stage (cost attribution)."""

    def linear(t: Any, name: str) -> Any:
        return t.matmul(w[f"{name}.weight"]) + w[f"{name}.bias"]

    batch, seq, hidden = (int(s) for s in x.size())
    d = hidden // heads

    def split(t: Any) -> Any:  # (b, s, h) -> (b, heads, s, d)
        return t.reshape([batch, seq, heads, d]).permute(0, 2, 1, 3)

    q = split(linear(x, "attention.self.query"))
    k = split(linear(x, "attention.self.key"))
    v = split(linear(x, "attention.self.value"))
    scores = q.matmul(k.transpose(-1, -2))
    mark("matmul")
    scores = scores * (1.0 / math.sqrt(d))
    mark("other")
    probs = scores.softmax(-1)
    mark("softmax")
    context = probs.matmul(v).permute(0, 2, 1, 3).reshape([batch, seq, hidden])
    attention = linear(context, "attention.output.dense")
    mark("matmul")
    h1 = attention + x
    mark("other")
    h1 = crypten_layer_norm(
        h1, w["attention.output.LayerNorm.weight"], w["attention.output.LayerNorm.bias"], eps
    )
    mark("layer_norm")
    inner = linear(h1, "intermediate.dense")
    mark("matmul")
    inner = crypten_gelu(inner)
    mark("gelu")
    out = linear(inner, "output.dense")
    mark("matmul")
    h2 = out + h1
    mark("other")
    h2 = crypten_layer_norm(h2, w["output.LayerNorm.weight"], w["output.LayerNorm.bias"], eps)
    mark("layer_norm")
    return h2


def crypten_decode_errors(values: torch.Tensor, scale: int) -> int:
    """How many elements CrypTen's own decode (`get_plain_text`) would get wrong by more
    than half a unit, given the exactly decoded outputs (`protocols.mpc.reveal`).

    CrypTen 0.4.1 divides the integer part of negative values by 2^16 - 1, so some come
    back exactly 1.0 too low. The ring integers are recovered as values x scale, which is
    exact while |value| < 2^53 / scale (2^37 at 16 bits)."""
    from protocols.mpc.crypten_setup import import_crypten

    ring = torch.round(values.double() * scale).long()
    encoder = import_crypten().encoder.FixedPointEncoder(int(math.log2(scale)))
    theirs = encoder.decode(ring).double()
    return int(((theirs - decode(ring, scale)).abs() > 0.5).sum())


__all__ = [
    "crypten_bert_layer",
    "crypten_decode_errors",
    "crypten_gelu",
    "crypten_gelu_erf",
    "crypten_layer_norm",
]
