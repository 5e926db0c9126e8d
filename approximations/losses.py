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
    compsum  the comp-sum family (Mao, Mohri and Zhong 2023), parameter tau >= 0:
             Phi_tau(u) with u = sum_{k != y} exp(o_k - o_y) = 1 / p_y - 1,
             Phi_tau(u) = ((1 + u)^(1 - tau) - 1) / (1 - tau) = (p_y^(tau - 1) - 1) / (1 - tau),
             Phi_1(u) = log(1 + u): tau = 0 sum-exponential, 1 cross-entropy, 1 < tau < 2
             generalised cross-entropy with q = tau - 1, 2 mean absolute error. Secure
             backends take tau >= 1 (`SECURE_COMPSUM`): below 1, p_y^(tau - 1) grows as
             exp((1 - tau)(lse - o_y)), beyond fixed point and CKKS for any real spread.
    sparsemax  the sparsemax loss (Martins and Astudillo 2016), a Fenchel-Young loss
             (Blondel, Martins and Niculae 2020) with Omega(p) = ||p||^2 / 2:
             -o_y + (1/2) sum_{j in S} (o_j^2 - t^2) + 1/2, t the sparsemax threshold and
             S its support (sum_{j in S} (o_j - t) = 1)
    entmax15 the Tsallis 1.5-entmax Fenchel-Young loss (Peters, Niculae and Martins 2019):
             <o, p> - Omega(p) - o_y with p = entmax15(o) = [(o/2 - t)_+]^2 (sum 1) and
             Omega(p) = (4/3) sum_j (p_j^(3/2) - p_j)
    accuracy fraction of examples whose argmax equals the label (ties: torch's argmax)

The two Fenchel-Young losses run on a backend's values through their duals, which need
only the threshold t and positive parts (Blondel et al., Prop. 3: the loss is
Omega*(o) + Omega(e_y) - o_y, and Omega* is the minimum over t of a convex function whose
stationary point is the threshold):

    sparsemax   Omega*(o) = min_t  1/2 sum_j (o_j - t)_+^2 + t,           Omega(e_y) = 1/2
    entmax15    Omega*(o) = min_t  2/3 sum_j (o_j/2 - t)_+^3 + 2 t + 4/3,  Omega(e_y) = 0

Both functions are stationary at the exact t (their derivatives are 1 - sum (o_j - t)_+
and 2 - 2 sum (o_j/2 - t)_+^2), so a threshold off by delta changes the loss by at most
C delta^2 / 2 (sparsemax: the second derivative is the support's size) or
2 (sqrt(C) + C delta) delta^2 (entmax15: it is 4 sum_j (o_j/2 - t)_+ <= 4 sqrt(|S|) at
t, growing by at most 4 C delta within delta): second order. The threshold lies in
[m - 1, m - 1/C] (sparsemax, m the largest logit) or [m/2 - 1, m/2 - 1/sqrt(C)]
(entmax15), and `bisection_threshold` halves that interval FY_STEPS times on comparisons
of sum_j (z_j - mid)_+^k with 1: with 7 steps and 10 classes, delta <= 3.5e-3 (sparsemax)
or 2.7e-3 (entmax15) and the loss within 6.2e-5 or 4.6e-5 of exact, usually far less
(|S| = 1 for a confident classifier). Under MPC the sparsemax threshold can instead come
exactly from a sort network (`protocols.mpc.sorting`).

The Z-loss here is the spherical-family loss of the seeds, not PaLM's auxiliary z-loss
(alpha log^2 Z), which shares the name. Its cost is independent of C beyond the two sums
(sum o_k, sum o_k^2) and o_y: three statistics, no exponential over the classes.

The losses are declared once, in `LOSSES`: each with its plaintext reference and its
formula over the terms a secure backend computes on its own values (`SecureLossKernels`:
shares under MPC, ciphertexts under HE). `secure_per_example` evaluates them on any backend;
a backend supplies only its kernels, never its own list of losses.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Generic, Protocol, TypeVar

import torch
import torch.nn.functional as F

from approximations.errors import ApproximationError
from approximations.fitting import fit
from approximations.polynomial import Polynomial

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


def comp_sum(logits: torch.Tensor, labels: torch.Tensor, tau: float = 1.5) -> torch.Tensor:
    """The comp-sum loss of parameter `tau` (module docstring), computed from log p_y."""
    _check(logits, labels)
    check_compsum_tau(tau)
    log_p = logits.log_softmax(-1).gather(-1, labels[:, None]).squeeze(-1)
    if tau == 1.0:
        return (-log_p).mean()
    return ((torch.exp((tau - 1.0) * log_p) - 1.0) / (1.0 - tau)).mean()


SECURE_COMPSUM = (1.0, math.inf)
"""The comp-sum parameters a secure backend evaluates (module docstring)."""


def check_compsum_tau(tau: float, secure: bool = False) -> None:
    """ApproximationError unless tau >= 0 (and, for a secure backend, tau >= 1)."""
    if not (math.isfinite(tau) and tau >= 0.0):
        raise ApproximationError(f"compsum tau={tau}: expected a finite tau >= 0")
    if secure and tau < SECURE_COMPSUM[0]:
        raise ApproximationError(
            f"compsum tau={tau}: secure backends take tau >= 1 (below 1 the loss grows as "
            "exp of the logit gap); use plain or approx, or tau >= 1"
        )


def sparsemax_threshold(logits: torch.Tensor) -> torch.Tensor:
    """t per row (N, 1) with sum_j (o_j - t)_+ = 1: the exact sort-based rule (the
    largest k with 1 + k o_(k) > sum_{i <= k} o_(i))."""
    ordered = logits.sort(-1, descending=True).values
    ranks = torch.arange(1, logits.shape[-1] + 1, dtype=logits.dtype)
    partial = ordered.cumsum(-1)
    support = (1 + ranks * ordered > partial).sum(-1, keepdim=True)
    return (partial.gather(-1, support - 1) - 1) / support.to(logits.dtype)


def sparsemax_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    _check(logits, labels)
    t = sparsemax_threshold(logits)
    inside = logits > t
    squares = torch.where(inside, logits**2 - t**2, torch.zeros_like(logits)).sum(-1)
    o_y = logits.gather(-1, labels[:, None]).squeeze(-1)
    return (-o_y + 0.5 * squares + 0.5).mean()


def entmax15(logits: torch.Tensor) -> torch.Tensor:
    """1.5-entmax along the last axis: [(o/2 - t)_+]^2 summing to 1, t by the exact
    sort-based rule of Peters, Niculae and Martins (2019)."""
    x = logits / 2
    ordered = x.sort(-1, descending=True).values
    ranks = torch.arange(1, x.shape[-1] + 1, dtype=x.dtype)
    mean = ordered.cumsum(-1) / ranks
    mean_square = (ordered**2).cumsum(-1) / ranks
    spread = ranks * (mean_square - mean**2)
    candidates = mean - torch.sqrt(((1 - spread) / ranks).clamp_min(0))
    support = (candidates <= ordered).sum(-1, keepdim=True)
    t = candidates.gather(-1, support - 1)
    return (x - t).clamp_min(0) ** 2


def entmax15_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    _check(logits, labels)
    p = entmax15(logits)
    omega = (4.0 / 3.0) * (p**1.5 - p).sum(-1)  # the negative Tsallis entropy
    o_y = logits.gather(-1, labels[:, None]).squeeze(-1)
    return ((logits * p).sum(-1) - omega - o_y).mean()


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    _check(logits, labels)
    return (logits.argmax(-1) == labels).to(logits.dtype).mean()


@dataclass(frozen=True)
class LossOptions:
    """Hyper-parameters, with their defaults (the one source): Z-loss a, b; generalised
    cross-entropy q; the comp-sum family's tau."""

    zloss_a: float = 1.0
    zloss_b: float = 1.0
    gce_q: float = 0.7
    compsum_tau: float = 1.5


DEFAULT_OPTIONS = LossOptions()

# --- secure evaluation: what a backend supplies ----------------------------------------------
Value = TypeVar("Value")


@dataclass(frozen=True)
class SharedTerms(Generic[Value]):
    """The terms several losses share, computed once per batch by a backend.

    `label_logit` o_y; `log_sum_exp` when a requested loss needs it (else None);
    `maximum` the largest logit per example, when the backend's hit count or a
    Fenchel-Young loss uses it."""

    label_logit: Value
    log_sum_exp: Value | None = None
    maximum: Value | None = None


class SecureLossKernels(Protocol[Value]):
    """A backend's building blocks of the losses, on its own values (logits (N, C) and the
    label's one-hot (N, C); each result is (N,)). Every loss of `LOSSES` is a formula over
    these, so a backend implements these eight and no loss by name."""

    def shared(
        self,
        logits: Value,
        onehot: Value,
        *,
        needs_log_sum_exp: bool,
        needs_maximum: bool,
        accuracy: bool,
    ) -> SharedTerms[Value]:
        """o_y, then log-sum-exp if `needs_log_sum_exp`, the maximum if `needs_maximum`,
        and what `hit` needs if `accuracy`."""
        ...

    def square(self, logits: Value, onehot: Value) -> Value:
        """sum_k (o_k - t_k)^2."""
        ...

    def z_loss(self, logits: Value, onehot: Value, a: float, b: float) -> Value:
        """(1/a) softplus(a (b - z_y))."""
        ...

    def label_probability_power(self, terms: SharedTerms[Value], q: float) -> Value:
        """p_y^q = exp(q (o_y - lse))."""
        ...

    def hit(self, logits: Value, terms: SharedTerms[Value]) -> Value:
        """1 where the label's logit is the largest, else 0."""
        ...

    def positive_part(self, x: Value) -> Value:
        """max(x, 0) of a difference between a (halved) logit and a threshold."""
        ...

    def step_of_excess(self, excess: Value, power: int) -> Value:
        """[e >= 0] as 0 or 1 for e = sum_j (z_j - mid)_+^power - 1 of a bisection step
        (e in [-1, C (1 + slack)^power])."""
        ...

    def threshold(self, z: Value, maximum: Value, power: int) -> Value:
        """t per row with sum_j (z_j - t)_+^power = 1, `maximum` the largest z per row
        (power 1: sparsemax on z = o; power 2: 1.5-entmax on z = o / 2)."""
        ...


# --- the losses, declared once -----------------------------------------------------------------
PlainFormula = Callable[[torch.Tensor, torch.Tensor, LossOptions], torch.Tensor]
SecureFormula = Callable[[SecureLossKernels[Any], Any, Any, SharedTerms[Any], LossOptions], Any]


@dataclass(frozen=True)
class Loss:
    """One loss: its plaintext reference (a mean over examples) and its per-example formula
    over a backend's kernels (logits, one-hot, shared terms, options)."""

    name: str
    plain: PlainFormula
    secure: SecureFormula
    uses_log_sum_exp: bool = False
    uses_maximum: bool = False
    kernels: tuple[str, ...] = ()  # the `SecureLossKernels` methods its formula calls


FY_KERNELS = ("positive_part", "step_of_excess", "threshold")

LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (
        Loss(
            "ce",
            lambda x, y, o: cross_entropy(x, y),
            lambda k, x, t, terms, o: terms.log_sum_exp - terms.label_logit,
            uses_log_sum_exp=True,
        ),
        Loss("square", lambda x, y, o: square_loss(x, y), lambda k, x, t, terms, o: k.square(x, t)),
        Loss(
            "zloss",
            lambda x, y, o: z_loss(x, y, o.zloss_a, o.zloss_b),
            lambda k, x, t, terms, o: k.z_loss(x, t, o.zloss_a, o.zloss_b),
        ),
        Loss(
            "gce",
            lambda x, y, o: generalized_cross_entropy(x, y, o.gce_q),
            lambda k, x, t, terms, o: (
                (1.0 - k.label_probability_power(terms, o.gce_q)) * (1.0 / o.gce_q)
            ),
            uses_log_sum_exp=True,
        ),
        Loss(
            "mae",
            lambda x, y, o: mean_absolute_error(x, y),
            lambda k, x, t, terms, o: 1.0 - k.label_probability_power(terms, 1.0),
            uses_log_sum_exp=True,
        ),
        Loss(
            "compsum",
            lambda x, y, o: comp_sum(x, y, o.compsum_tau),
            lambda k, x, t, terms, o: _secure_comp_sum(k, terms, o.compsum_tau),
            uses_log_sum_exp=True,
        ),
        Loss(
            "sparsemax",
            lambda x, y, o: sparsemax_loss(x, y),
            lambda k, x, t, terms, o: _secure_sparsemax(k, x, terms),
            uses_maximum=True,
            kernels=FY_KERNELS,
        ),
        Loss(
            "entmax15",
            lambda x, y, o: entmax15_loss(x, y),
            lambda k, x, t, terms, o: _secure_entmax15(k, x, terms),
            uses_maximum=True,
            kernels=FY_KERNELS,
        ),
    )
}
LOSS_NAMES = tuple(LOSSES)

FENCHEL_YOUNG = ("sparsemax", "entmax15")
FY_STEPS = 7
"""Bisection steps of a Fenchel-Young threshold (module docstring): delta <= 2^-8."""


def _secure_comp_sum(kernels: Any, terms: SharedTerms[Any], tau: float) -> Any:
    """Comp-sum on a backend's terms: lse - o_y at tau = 1, else (1 - p_y^(tau - 1)) /
    (tau - 1) with p_y^q = exp(q (o_y - lse)), the generalised cross-entropy's kernel."""
    check_compsum_tau(tau, secure=True)
    if tau == 1.0:
        return terms.log_sum_exp - terms.label_logit
    return (1.0 - kernels.label_probability_power(terms, tau - 1.0)) * (1.0 / (tau - 1.0))


def bisection_threshold(
    kernels: Any, z: Any, maximum: Any, power: int, steps: int = FY_STEPS, slack: float = 0.0
) -> Any:
    """t per row with sum_j (z_j - t)_+^power = 1 (power 1 or 2), by `steps` halvings of
    [maximum - 1 - slack, maximum - C^(-1/power)] (`slack`: how far below the true
    maximum the backend's `maximum` may lie). The excess sum_j (z_j - mid)_+^power - 1
    decreases in mid; each step keeps the half holding its root: lo += [excess >= 0] w.
    Returns the final interval's midpoint, within w_final / 2 = (1 + slack - C^(-1/power))
    2^-(steps + 1) of t when every comparison is exact. Per step: one positive part of
    the (N, C) row, one comparison of the (N,) excess."""
    classes = z.shape[-1]
    width = 1.0 + slack - classes ** (-1.0 / power)
    low = maximum + (-1.0 - slack)
    for _ in range(steps):
        width /= 2.0
        r = kernels.positive_part(z - (low + width).unsqueeze(-1))
        excess = (r if power == 1 else r * r).sum(-1) - 1.0
        low = low + kernels.step_of_excess(excess, power) * width
    return low + width / 2.0


def _secure_sparsemax(kernels: Any, o: Any, terms: SharedTerms[Any]) -> Any:
    """1/2 sum_j (o_j - t)_+^2 + t - o_y + 1/2 (module docstring)."""
    t = kernels.threshold(o, terms.maximum, 1)
    r = kernels.positive_part(o - t.unsqueeze(-1))
    return (r * r).sum(-1) * 0.5 + t - terms.label_logit + 0.5


def _secure_entmax15(kernels: Any, o: Any, terms: SharedTerms[Any]) -> Any:
    """2/3 sum_j (o_j/2 - t)_+^3 + 2 t + 4/3 - o_y (module docstring)."""
    z = o * 0.5
    t = kernels.threshold(z, terms.maximum * 0.5, 2)
    r = kernels.positive_part(z - t.unsqueeze(-1))
    return (r * r * r).sum(-1) * (2.0 / 3.0) + t * 2.0 - terms.label_logit + 4.0 / 3.0


def _loss(name: str) -> Loss:
    if name not in LOSSES:
        raise ApproximationError(f"unknown loss {name!r}; choose from {', '.join(LOSS_NAMES)}")
    return LOSSES[name]


def reference(name: str, options: LossOptions | None = None) -> Callable[..., torch.Tensor]:
    """The plaintext loss called `name` (one of LOSS_NAMES), with its hyper-parameters."""
    loss, chosen = _loss(name), options or DEFAULT_OPTIONS
    return lambda logits, labels: loss.plain(logits, labels, chosen)


def secure_per_example(
    kernels: SecureLossKernels[Value],
    logits: Value,
    onehot: Value,
    names: list[str],
    options: LossOptions,
    *,
    accuracy: bool = True,
) -> dict[str, Value]:
    """Each requested loss per example on `kernels`' values, plus "hit" (accuracy) unless
    `accuracy` is False. The shared terms are computed first, once; then the losses in the
    order of `names`; then the hits. ApproximationError for an unknown name, or for a loss
    whose kernels `kernels` lacks, before any computation."""
    losses = [_loss(name) for name in names]
    for loss in losses:
        missing = [m for m in loss.kernels if not callable(getattr(kernels, m, None))]
        if missing:
            raise ApproximationError(
                f"loss {loss.name!r} needs the kernel {missing[0]!r}, which "
                f"{type(kernels).__name__} does not provide; choose another loss or backend"
            )
    terms = kernels.shared(
        logits,
        onehot,
        needs_log_sum_exp=any(loss.uses_log_sum_exp for loss in losses),
        needs_maximum=any(loss.uses_maximum for loss in losses),
        accuracy=accuracy,
    )
    out = {loss.name: loss.secure(kernels, logits, onehot, terms, options) for loss in losses}
    if accuracy:
        out["hit"] = kernels.hit(logits, terms)
    return out


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
