"""Digits models with SOFT attention (`approximations.soft_attention`): a bundled digits
model with its attention rebuilt by `approximations.convert(model, attention="soft")`,
fine-tuned by distillation from the softmax model (`secinfer.zoo.training`), with the
conversion record that `secinfer.zoo.digits.save_model` stores so that the file rebuilds
the same architecture (its other conversions, GELU and LayerNorm, kept)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from approximations.conversion import SOFT_OPTIONS, convert
from secinfer.zoo.digits import DigitsTransformer, load_model, load_split, read_metadata
from secinfer.zoo.training import distill_loss, fit

EPOCHS, LR, TEMPERATURE, ALPHA = 30, 3e-3, 2.0, 0.5
KEPT = ("gelu", "layernorm", "layernorm_interval")
"""The base model's conversions that a SOFT model keeps (its softmax goes with the
attention)."""


def distilled(
    model: nn.Module, teacher: nn.Module, epochs: int = EPOCHS, seed: int = 1
) -> nn.Module:
    """`model` fine-tuned in place by `epochs` epochs of distillation from `teacher` on the
    digits training split (AdamW one-cycle to LR; deterministic for a seed); returned."""
    train_x, train_y, _, _ = load_split(0)
    fit(model, (train_x, train_y), epochs, LR, seed, distill_loss(teacher, TEMPERATURE, ALPHA))
    return model


def soft_digits(
    base: Path,
    teacher: Path,
    *,
    options: dict[str, Any] | None = None,
    epochs: int = EPOCHS,
    seed: int = 1,
) -> tuple[DigitsTransformer, dict[str, Any]]:
    """(the model, its conversion record): `base` (a digits model file) with SOFT attention
    of `options` (`approximations.conversion.SOFT_OPTIONS`), fine-tuned `epochs` epochs of
    distillation from `teacher` (`distilled`).

    Under he the model does not run yet: the server refuses it ("aten.matmul: axis 1 sits
    in slots with strides 16 and 32"). In process, the attention module alone ran within
    9e-4 of plaintext once its landmarks were pooled from strided tokens, each squared
    distance was one product of augmented vectors [q, |q|^2, 1] . [-2l, 1, |l|^2], and the
    "kernel" order formed S~; the whole model under the server's packing needs more."""
    conversion = read_metadata(base).get("conversion") or {}
    chosen = {**SOFT_OPTIONS, **(options or {})}
    model, _ = convert(load_model(base).eval(), attention="soft", attention_options=chosen)
    record = {**{k: conversion.get(k) for k in KEPT}, "attention": "soft",
              "attention_options": chosen}  # fmt: skip
    return distilled(model, load_model(teacher).eval(), epochs, seed), record


__all__ = ["EPOCHS", "distilled", "soft_digits"]
