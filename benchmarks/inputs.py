"""The MPC section's inputs: trained-model-like op inputs, the benchmark encoder layer
(seeded weights rescaled to trained-model ranges) and its input, the float64 references,
and the statistics of both that the tables report."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.cases import EPS, LayerSize

# Inputs of the op benchmark (trained-model-like ranges)
GELU_STD, GELU_OUTLIER_RATE, GELU_OUTLIER = 3.0, 0.002, (6.0, 12.0)
SCORE_STDS = (0.5, 2.75)  # per head, linearly spaced: largest row spread about 20
LN_VARIANCES = (1e-2, 1e2)  # per row, log-uniform

# Weights of the benchmark layers: BERT's initializer (N(0, 0.02) weights), small random
# biases and LayerNorm affines, then query/key and intermediate weights rescaled so that the
# attention scores and GELU inputs have the spread of a trained model's.
INIT_STD = 0.02
TARGET_SCORE_STD = 3.0
TARGET_GELU_STD = 2.5


def op_input(op: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Trained-model-like inputs (see the module constants)."""
    gen = torch.Generator().manual_seed(seed)
    if op == "GELU":
        x = torch.randn(shape, generator=gen) * GELU_STD
        lo, hi = GELU_OUTLIER
        outlier = torch.rand(shape, generator=gen) < GELU_OUTLIER_RATE
        sign = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0)
        size = lo + (hi - lo) * torch.rand(shape, generator=gen)
        return torch.where(outlier, sign * size, x).clamp(-hi, hi)
    if op == "softmax":
        stds = torch.linspace(*SCORE_STDS, shape[0]).view(-1, *([1] * (len(shape) - 1)))
        return torch.randn(shape, generator=gen) * stds
    if op == "LayerNorm":
        rows = shape[:-1]
        lo, hi = (math.log10(v) for v in LN_VARIANCES)
        variance = 10 ** (lo + (hi - lo) * torch.rand(*rows, 1, generator=gen))
        mean = torch.randn(*rows, 1, generator=gen) * 2
        z = torch.randn(shape, generator=gen)
        z = (z - z.mean(-1, keepdim=True)) / z.std(-1, unbiased=False, keepdim=True)
        return mean + variance.sqrt() * z  # each row's variance exactly as drawn
    raise ValueError(op)


def exact(op: str, x: torch.Tensor) -> torch.Tensor:
    """The float64 torch reference of an op."""
    x = x.double()
    if op == "GELU":
        return F.gelu(x)
    if op == "softmax":
        return torch.softmax(x, -1)
    if op == "LayerNorm":
        return F.layer_norm(x, (x.shape[-1],), eps=EPS)
    raise ValueError(op)


def input_stats(inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The measured op inputs' spread: GELU std and range, the largest softmax row spread,
    the range of LayerNorm row variances."""
    stats: dict[str, Any] = {}
    if "GELU" in inputs:
        x = inputs["GELU"]
        stats["GELU"] = {"std": float(x.std()), "min": float(x.min()), "max": float(x.max())}
    if "softmax" in inputs:
        x = inputs["softmax"]
        spread = x.amax(-1) - x.amin(-1)
        stats["softmax"] = {"max_row_spread": float(spread.max())}
    if "LayerNorm" in inputs:
        var = inputs["LayerNorm"].double().var(-1, unbiased=False)
        stats["LayerNorm"] = {"row_variance": [float(var.min()), float(var.max())]}
    return stats


class EncoderLayer(torch.nn.Module):
    """A transformers BertLayer returning its hidden states only (batch 1, no mask)."""

    def __init__(self, size: LayerSize, seed: int) -> None:
        super().__init__()
        import transformers

        cfg = transformers.BertConfig(
            hidden_size=size.hidden,
            num_attention_heads=size.heads,
            intermediate_size=size.intermediate,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            attn_implementation="eager",
        )
        torch.manual_seed(seed)
        self.layer = transformers.models.bert.modeling_bert.BertLayer(cfg).eval()
        self.eps = float(cfg.layer_norm_eps)
        self.heads = size.heads
        gen = torch.Generator().manual_seed(seed)
        score_scale = math.sqrt(TARGET_SCORE_STD) / (INIT_STD * math.sqrt(size.hidden))
        gelu_scale = TARGET_GELU_STD / (INIT_STD * math.sqrt(size.hidden))
        with torch.no_grad():
            for name, p in self.layer.named_parameters():
                if "LayerNorm" in name:
                    base = 1.0 if name.endswith("weight") else 0.0
                    p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))
                elif name.endswith("bias"):
                    p.copy_(INIT_STD * torch.randn(p.shape, generator=gen))
                else:
                    std = INIT_STD
                    if ".query." in name or ".key." in name:
                        std *= score_scale
                    elif "intermediate." in name:
                        std *= gelu_scale
                    p.copy_(std * torch.randn(p.shape, generator=gen))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        out = self.layer(hidden_states)
        return out[0] if isinstance(out, tuple) else out


def layer_input(size: LayerSize, seed: int) -> torch.Tensor:
    """Hidden states as after an embedding LayerNorm: N(0, 1), batch 1."""
    return torch.randn(1, size.seq, size.hidden, generator=torch.Generator().manual_seed(seed))


def layer_internals(module: EncoderLayer, x: torch.Tensor) -> dict[str, Any]:
    """Ranges inside the plain float64 layer (what the approximations face)."""
    seen: dict[str, torch.Tensor] = {}
    layer = module.layer
    hooks = [
        layer.intermediate.intermediate_act_fn.register_forward_hook(
            lambda m, i, o: seen.__setitem__("gelu", i[0])
        ),
        layer.attention.output.LayerNorm.register_forward_hook(
            lambda m, i, o: seen.__setitem__("ln1", i[0])
        ),
        layer.output.LayerNorm.register_forward_hook(lambda m, i, o: seen.__setitem__("ln2", i[0])),
    ]
    try:
        with torch.no_grad():
            module(x)
            attention = layer.attention.self
            b, s, h = x.shape
            d = h // module.heads

            def split(t: torch.Tensor) -> torch.Tensor:
                return t.view(b, s, module.heads, d).transpose(1, 2)

            q, k = split(attention.query(x)), split(attention.key(x))
            scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    finally:
        for hook in hooks:
            hook.remove()
    variances = torch.cat(
        [seen["ln1"].var(-1, unbiased=False), seen["ln2"].var(-1, unbiased=False)]
    )
    return {
        "gelu_input": {
            "std": float(seen["gelu"].std()),
            "max_abs": float(seen["gelu"].abs().max()),
        },
        "attention_scores": {
            "std": float(scores.std()),
            "max_row_spread": float((scores.amax(-1) - scores.amin(-1)).max()),
        },
        "layer_norm_variance": [float(variances.min()), float(variances.max())],
    }


__all__ = [
    "EncoderLayer",
    "exact",
    "input_stats",
    "layer_input",
    "layer_internals",
    "op_input",
]
