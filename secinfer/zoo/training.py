"""Training loops for the zoo's small models: mini-batches, AdamW with a one-cycle
schedule, cross-entropy with light label smoothing, and distillation from a teacher's
logits. Used by `examples/train_he_friendly.py` (the bundled digits models) and the SOFT
attention bench (`benchmarks/soft_attention.py`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]
Loss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def batches(x: torch.Tensor, y: torch.Tensor, size: int, gen: torch.Generator) -> list[Batch]:
    """One epoch of shuffled mini-batches (order drawn from `gen`)."""
    perm = torch.randperm(len(x), generator=gen)
    return [(x[perm[i : i + size]], y[perm[i : i + size]]) for i in range(0, len(x), size)]


def fit(
    model: nn.Module,
    data: Batch,
    epochs: int,
    lr: float,
    seed: int,
    loss_fn: Loss,
    batch_size: int = 64,
) -> None:
    """AdamW with a one-cycle schedule; `loss_fn(model, x, y)` returns the batch loss.
    Leaves `model` in eval mode."""
    x, y = data
    steps_per_epoch = math.ceil(len(x) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.1
    )
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for bx, by in batches(x, y, batch_size, gen):
            loss = loss_fn(model, bx, by)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def ce_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with light label smoothing (the plain model's loss)."""
    return F.cross_entropy(model(x), y, label_smoothing=0.05)


def distill_loss(teacher: nn.Module, temperature: float, alpha: float) -> Loss:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)."""

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = teacher(x)
        s_logits = model(x)
        kl = F.kl_div(
            F.log_softmax(s_logits / temperature, dim=-1),
            F.log_softmax(t_logits / temperature, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        return alpha * temperature**2 * kl + (1 - alpha) * F.cross_entropy(s_logits, y)

    return loss


__all__ = ["batches", "ce_loss", "distill_loss", "fit"]
