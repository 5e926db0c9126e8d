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
    target: str | None = None,
    epochs: int = EPOCHS,
    seed: int = 1,
) -> tuple[DigitsTransformer, dict[str, Any]]:
    """(the model, its conversion record): `base` (a digits model file) with SOFT attention
    of `options` (`approximations.conversion.SOFT_OPTIONS`; for `target` "he" the "kernel"
    order unless `options` names one, as `convert` does), fine-tuned `epochs` epochs of
    distillation from `teacher` (`distilled`).

    Both secure backends run the result through their own packing (`secinfer run ... -b
    mpc|he`); under he, the "kernel" order sends fewer bytes than the "linear" one
    (measured on 4 images: 1.8 against 2.4 GB, 194 against 207 refreshes)."""
    conversion = read_metadata(base).get("conversion") or {}
    order = {"order": "kernel"} if target == "he" else {}
    chosen = {**SOFT_OPTIONS, **order, **(options or {})}
    model, _ = convert(load_model(base).eval(), attention="soft", attention_options=chosen)
    record = {**{k: conversion.get(k) for k in KEPT}, "attention": "soft",
              "attention_options": chosen}  # fmt: skip
    return distilled(model, load_model(teacher).eval(), epochs, seed), record


__all__ = ["EPOCHS", "KEPT", "distilled", "soft_digits"]
