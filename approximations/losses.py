"""Plaintext reference losses on logits with integer labels: the figures secure evaluation
must reproduce (`secinfer eval`, issue 7).

Conventions: `logits` (N, C), `labels` (N,) int64 in [0, C); every loss is a mean over the
N examples; p = softmax(logits) over the classes.

    ce       cross-entropy           -log p_y                         (= F.cross_entropy)
    square   square loss             sum_k (o_k - onehot(y)_k)^2      (= F.mse_loss(o, onehot,
                                                                         reduction="sum") / N)
    zloss    Z-loss (de Brebisson and Vincent 2016)
             z = (o - mu) / sigma with mu, sigma the mean and the population standard
             deviation of the C logits; (1/a) log(1 + exp(a (b - z_y))), a > 0
    gce      generalised cross-entropy (Mao, Mohri, Zhong 2023)  (1 - p_y^q) / q, 0 < q <= 1
    mae      mean absolute error      1 - p_y  (gce at q = 1)
    accuracy fraction of examples whose argmax equals the label (ties: torch's argmax)

The Z-loss here is the spherical-family loss of the seeds, not PaLM's auxiliary z-loss
(alpha log^2 Z), which shares the name. Its cost is independent of C beyond the two sums
(sum o_k, sum o_k^2) and o_y: three statistics, no exponential over the classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from approximations.errors import ApproximationError
from approximations.fitting import fit
from approximations.polynomial import Polynomial

LOSS_NAMES = ("ce", "square", "zloss", "gce", "mae")
LOG_DEGREE = 10
SOFTPLUS_DEGREE = 12


def _check(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ApproximationError(f"logits of shape {tuple(logits.shape)}: expected (N, C)")
    if labels.shape != logits.shape[:1]:
        raise ApproximationError(
            f"labels of shape {tuple(labels.shape)} for logits {tuple(logits.shape)}: "
            "expected one label per row"
        )
    if labels.dtype.is_floating_point:
        raise ApproximationError("labels: expected integer class indices")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
        raise ApproximationError(
            f"labels outside [0, {logits.shape[1]}): min {int(labels.min())}, "
            f"max {int(labels.max())}"
        )


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    _check(logits, labels)
    return F.cross_entropy(logits, labels)


def square_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    _check(logits, labels)
    onehot = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return ((logits - onehot) ** 2).sum(-1).mean()


def z_loss(
    logits: torch.Tensor, labels: torch.Tensor, a: float = 1.0, b: float = 1.0
) -> torch.Tensor:
    _check(logits, labels)
    if not a > 0:
        raise ApproximationError(f"zloss a={a}: expected a > 0")
    mu = logits.mean(-1, keepdim=True)
    sigma = logits.var(-1, unbiased=False, keepdim=True).sqrt()
    z_y = ((logits - mu) / sigma).gather(-1, labels[:, None]).squeeze(-1)
    return (F.softplus(a * (b - z_y)) / a).mean()


def generalized_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, q: float = 0.7
) -> torch.Tensor:
    _check(logits, labels)
    if not 0 < q <= 1:
        raise ApproximationError(f"gce q={q}: expected 0 < q <= 1")
    p_y = logits.softmax(-1).gather(-1, labels[:, None]).squeeze(-1)
    return ((1 - p_y**q) / q).mean()


def mean_absolute_error(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    _check(logits, labels)
    p_y = logits.softmax(-1).gather(-1, labels[:, None]).squeeze(-1)
    return (1 - p_y).mean()


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    _check(logits, labels)
    return (logits.argmax(-1) == labels).to(logits.dtype).mean()


@dataclass(frozen=True)
class LossOptions:
    """Hyper-parameters: Z-loss a, b; generalised cross-entropy q."""

    zloss_a: float = 1.0
    zloss_b: float = 1.0
    gce_q: float = 0.7


def reference(name: str, options: LossOptions | None = None) -> Callable[..., torch.Tensor]:
    """The plaintext loss called `name` (one of LOSS_NAMES), with its hyper-parameters."""
    o = options or LossOptions()
    table: dict[str, Callable[..., torch.Tensor]] = {
        "ce": cross_entropy,
        "square": square_loss,
        "zloss": lambda x, y: z_loss(x, y, o.zloss_a, o.zloss_b),
        "gce": lambda x, y: generalized_cross_entropy(x, y, o.gce_q),
        "mae": mean_absolute_error,
    }
    if name not in table:
        raise ApproximationError(f"unknown loss {name!r}; choose from {', '.join(LOSS_NAMES)}")
    return table[name]


# --- the polynomials secure evaluation uses (MPC and HE alike) ------------------------------
@lru_cache(maxsize=16)
def softmax_log_polynomial(upper: float) -> Polynomial:
    """log s on [1, upper], where a softmax row sum taken after subtracting (at least
    nearly) the row maximum lies: its largest term is 1 (upper = C with an exact maximum).
    Degree LOG_DEGREE, Remez, certified."""
    return fit(torch.log, (1.0, float(max(upper, 2.0))), LOG_DEGREE, "remez", name="log")


@lru_cache(maxsize=16)
def zloss_softplus_polynomial(a: float, b: float, classes: int) -> Polynomial:
    """softplus on a (b -+ sqrt(C - 1)): every value a (b - z_y) can take, since a
    standardised coordinate of C numbers (population sigma) has |z| <= sqrt(C - 1).
    Degree SOFTPLUS_DEGREE, Remez, certified."""
    reach = math.sqrt(max(classes - 1, 1))
    lo, hi = sorted((a * (b - reach), a * (b + reach)))
    return fit(F.softplus, (lo, hi), SOFTPLUS_DEGREE, "remez", name="softplus")
