"""What the MPC section measures: the op cases, the encoder-layer sizes, and the setting
every measurement shares (fixed-point precision, peer timeout, the MB unit)."""

from __future__ import annotations

from dataclasses import dataclass

MB = 1e6
EPS = 1e-12  # BertConfig's layer_norm_eps; the op benchmark's LayerNorm uses the same
PRECISION_BITS = 16
PEER_TIMEOUT = 300.0  # seconds a party may wait for another (the dealer idles during set-up)


@dataclass(frozen=True)
class OpCase:
    op: str
    shape: tuple[int, ...]
    variants: tuple[str, ...]  # keys of `variants.VARIANTS`
    baseline: str  # the CrypTen variant the ratios refer to


@dataclass(frozen=True)
class LayerSize:
    name: str
    hidden: int
    heads: int
    intermediate: int
    seq: int


OP_CASES = (
    OpCase(
        "GELU",
        (128, 1536),
        (
            "gelu.product",
            "gelu.comparisons_crypten",
            "gelu.puma_refit",
            "gelu.bolt",
            "gelu.crypten_sigmoid",
            "gelu.crypten_erf",
        ),
        "gelu.crypten_sigmoid",
    ),
    OpCase(
        "softmax",
        (12, 128, 128),
        (
            "softmax.product",
            "softmax.comparisons_crypten",
            "softmax.order1",
            "softmax.2quad",
            "softmax.two_pass",
            "softmax.crypten",
        ),
        "softmax.crypten",
    ),
    OpCase(
        "LayerNorm", (128, 384), ("layer_norm.product", "layer_norm.crypten"), "layer_norm.crypten"
    ),
)
QUICK_SHAPES = {"GELU": (16, 96), "softmax": (2, 16, 16), "LayerNorm": (16, 64)}

LAYER_SIZES = (
    LayerSize("MiniLM", 384, 12, 1536, 128),
    LayerSize("BERT-base", 768, 12, 3072, 128),
)
TINY_LAYER = LayerSize("tiny", 64, 4, 128, 16)

__all__ = [
    "EPS",
    "LAYER_SIZES",
    "MB",
    "OP_CASES",
    "PEER_TIMEOUT",
    "PRECISION_BITS",
    "QUICK_SHAPES",
    "TINY_LAYER",
    "LayerSize",
    "OpCase",
]
