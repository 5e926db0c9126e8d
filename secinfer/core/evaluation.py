"""The settings of a private evaluation (losses, reveal, batch) and how per-example losses
add up to the reported means."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from approximations.losses import (
    DEFAULT_OPTIONS,
    LOSS_NAMES,
    LossOptions,
    reference,
)
from secinfer.errors import UserError


@dataclass(frozen=True)
class Evaluation:
    """What is computed and who learns it (both parties must agree)."""

    losses: tuple[str, ...]
    reveal_to: str  # "model-owner" or "data-owner"
    zloss_a: float = DEFAULT_OPTIONS.zloss_a
    zloss_b: float = DEFAULT_OPTIONS.zloss_b
    gce_q: float = DEFAULT_OPTIONS.gce_q
    compsum_tau: float = DEFAULT_OPTIONS.compsum_tau

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "losses": list(self.losses)}

    def arguments(self) -> list[str]:
        """The `party` / `he-party` options that give a party process these settings."""
        return [
            "--loss", ",".join(self.losses), "--reveal-to", self.reveal_to,
            "--zloss-a", repr(self.zloss_a), "--zloss-b", repr(self.zloss_b),
            "--gce-q", repr(self.gce_q), "--compsum-tau", repr(self.compsum_tau),
        ]  # fmt: skip


def aggregate(totals: list[float], evaluation: Evaluation, examples: int) -> dict[str, Any]:
    """What the revealed party writes: the mean of each loss and the accuracy, from the
    opened totals (one per loss, in order, then the hit count, rounded: exact while the
    count's error stays below 1/2)."""
    means = {name: totals[k] / examples for k, name in enumerate(evaluation.losses)}
    return {"examples": examples, "losses": means, "accuracy": round(totals[-1]) / examples}


@dataclass
class Totals:
    """Running sums over examples: per loss, and argmax hits."""

    sums: dict[str, float] = field(default_factory=dict)
    correct: int = 0
    count: int = 0

    def add(
        self, logits: torch.Tensor, labels: torch.Tensor, names: list[str], options: LossOptions
    ) -> None:
        n = len(labels)
        for name in names:
            mean = float(reference(name, options)(logits, labels))
            self.sums[name] = self.sums.get(name, 0.0) + mean * n
        self.correct += int((logits.argmax(-1) == labels).sum())
        self.count += n

    def means(self) -> dict[str, float]:
        return {name: total / self.count for name, total in self.sums.items()}


def check_hyper_parameters(
    zloss_a: float,
    gce_q: float,
    compsum_tau: float = DEFAULT_OPTIONS.compsum_tau,
    *,
    secure: bool = False,
    losses: tuple[str, ...] | list[str] = (),
) -> None:
    """UserError for a hyper-parameter out of its range (--compsum-tau below 1 only when
    `compsum` is among the `losses` of a `secure` backend: its kernels need tau >= 1)."""
    from approximations.errors import ApproximationError
    from approximations.losses import check_compsum_tau

    if zloss_a <= 0 or not 0 < gce_q <= 1:
        raise UserError(f"--zloss-a {zloss_a} / --gce-q {gce_q}: need a > 0 and 0 < q <= 1")
    try:
        check_compsum_tau(compsum_tau, secure=secure and "compsum" in losses)
    except ApproximationError as exc:
        raise UserError(f"--compsum-tau {compsum_tau}: {str(exc).split(': ', 1)[1]}") from None


def parse_losses(text: str) -> list[str]:
    """`--loss ce,square`: known names, in the order given, without repeats."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in LOSS_NAMES]
    if unknown or not names:
        raise UserError(
            f"--loss {text}: unknown loss {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"choose from {', '.join(LOSS_NAMES)}"
        )
    return list(dict.fromkeys(names))


def progress_bar(total: int) -> Any:
    """A tqdm bar over examples on an interactive terminal, else None."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="example", leave=False, file=sys.stderr)
