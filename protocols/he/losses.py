"""Per-example losses on encrypted logits with an encrypted one-hot label (CKKS).

Logits o (N, C) and the label's one-hot t (N, C) are `HeTensor`s in one layout; every
function returns an (N,) `HeTensor` of the per-example value. Only sums over the data set
are ever decrypted (`secinfer.backends.he.evaluation`). Definitions as
`approximations.losses`; CKKS has only +, - and *, so every comparison is a composite
polynomial (`approximations.composite_sign`) on an interval the model owner calibrates
(`HeLossPlan.calibrated`):

    o_y     = sum_k o_k t_k                                       depth 1
    square  = sum_k (o_k - t_k)^2                                 depth 1
    zloss   = (1/a) softplus(a (b - z_y)), z_y = (o_y - mu) / sigma: mu, sigma over the C
              logits (population), 1/sigma by Newton from a polynomial guess on the
              calibrated variance interval (`InverseSqrt.polynomial_only`); softplus by a
              polynomial on a (b -+ sqrt(C - 1)), which holds every z_y
    lse     = m + log sum_k exp(o_k - m), exact for any m: m is a tournament of
              max(a, b) = (a + b)/2 + (a - b) sign(a - b)/2 over ceil(log2 C) rounds, never
              above the true maximum and at most `max_slack` below it, so the sum lies in
              [1, C e^max_slack] where the log polynomial holds; exp by squaring (order 2)
    ce      = lse - o_y
    gce     = (1 - p_y^q) / q,  p_y^q = exp(q (o_y - lse));   mae = 1 - p_y
    sparsemax, entmax15 through their duals (`approximations.losses`): the threshold by
              FY_STEPS bisection steps from the tournament's maximum (its slack widens
              the interval), each a positive part x (1 + F(x)) / 2 of the (N, C) row on
              `fy_sign` (bound spread + 1 + slack, resolution FY_RESOLUTION) and a step of
              the excess on `excess_sign`; a misjudged comparison within the resolutions
              moves t by about C * FY_RESOLUTION at most, which the duals turn into a
              loss error of second order
    hit     = [no class beats the label]: c = sum_k step(o_k - o_y), where the label's own
              term is step(0) = 1/2 exactly (the sign polynomial is odd), so c is
              1/2 + (number of classes above the label); hit = step(1 - c)

Accuracy is exact (the client rounds the decrypted count) unless two logits of an example
lie within `tie` of each other with one of them the label's; each hit then errs by at most
`count_sign.max_error / 2` plus CKKS noise. Inputs beyond the calibrated bounds (spread of
the logits, variance) are outside every certificate: the sign polynomials then grow
without bound, which the client's plausibility check on refreshed values reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from approximations.composite_sign import CompositeSign
from approximations.iterative import HE_MARGIN, ExpBySquaring, InverseSqrt
from approximations.losses import (
    DEFAULT_OPTIONS,
    LossOptions,
    SharedTerms,
    bisection_threshold,
    secure_per_example,
    softmax_log_polynomial,
    zloss_softplus_polynomial,
)
from approximations.polynomial import Polynomial
from protocols.he.polynomial import evaluate_approximation

SPREAD_MARGIN = 4.0
"""The sign polynomials cover differences of logits up to this many times the largest
seen in calibration (depth grows with the log of the bound only)."""
MAX_RESOLUTION = 0.1
"""The tournament's sign resolution in logit units: each round errs by at most half of it."""
SIGN_ERROR = 1e-3
RSQRT_STEPS = 16
COUNT_ERROR = 1e-7
FY_RESOLUTION = 2e-3
"""Fenchel-Young thresholds: comparisons closer to 0 than this may be misjudged."""
FY_ERROR = 1e-5


@dataclass(frozen=True)
class HeLossPlan:
    """The approximations of one evaluation, fixed by the model owner before any data."""

    classes: int
    spread: float  # covers |o_k - o_j| of every example
    variance: tuple[float, float]  # covers the population variance of every example's logits
    tie: float = 1e-2  # accuracy: label gaps below this may be miscounted
    zloss_a: float = DEFAULT_OPTIONS.zloss_a
    zloss_b: float = DEFAULT_OPTIONS.zloss_b
    gce_q: float = DEFAULT_OPTIONS.gce_q
    compsum_tau: float = DEFAULT_OPTIONS.compsum_tau

    @classmethod
    def calibrated(cls, logits: torch.Tensor, **settings: Any) -> HeLossPlan:
        """Bounds from the model owner's own logits (calibration samples), widened:
        spread by SPREAD_MARGIN, the variance interval by HE_MARGIN each way."""
        o = logits.detach().double().reshape(-1, logits.shape[-1])
        spread = float((o.max(-1).values - o.min(-1).values).max())
        var = o.var(-1, unbiased=False)
        lo, hi = float(var.min()), float(var.max())
        return cls(
            classes=int(o.shape[-1]),
            spread=max(SPREAD_MARGIN * spread, 1.0),
            variance=(max(lo, 1e-6) / HE_MARGIN, max(hi, 1e-6) * HE_MARGIN),
            **settings,
        )

    @property
    def options(self) -> LossOptions:
        """The losses' hyper-parameters this plan was made for."""
        return LossOptions(self.zloss_a, self.zloss_b, self.gce_q, self.compsum_tau)

    # --- the approximations --------------------------------------------------------------
    @cached_property
    def max_sign(self) -> CompositeSign:
        return CompositeSign(self.spread, MAX_RESOLUTION, SIGN_ERROR)

    @cached_property
    def hit_sign(self) -> CompositeSign:
        """Its errors add up over the C classes before the count's step (resolution 0.4):
        kept to C * error / 2 <= 0.025 however many classes."""
        return CompositeSign(self.spread, self.tie, min(SIGN_ERROR, 0.05 / self.classes))

    @cached_property
    def fy_sign(self) -> CompositeSign:
        """Positive parts of z - t for the Fenchel-Young losses: |z - t| <= spread + 1 +
        slack (z = o or o / 2)."""
        return CompositeSign(self.spread + 1.0 + self.max_slack, FY_RESOLUTION, FY_ERROR)

    @cached_property
    def excess_sign(self) -> CompositeSign:
        """Steps of a bisection's excess sum_j (z_j - mid)_+^k - 1, at most C (1 + slack)^2
        (k <= 2, every positive part below 1 + slack)."""
        bound = self.classes * (1.0 + self.max_slack) ** 2
        return CompositeSign(bound, FY_RESOLUTION, FY_ERROR)

    @cached_property
    def count_sign(self) -> CompositeSign:
        return CompositeSign(float(self.classes), 0.4, COUNT_ERROR)

    @property
    def rounds(self) -> int:
        return math.ceil(math.log2(max(self.classes, 2)))

    @property
    def max_slack(self) -> float:
        """How far below the true maximum the tournament may land."""
        return self.rounds * self.max_sign.maximum_error

    @cached_property
    def log(self) -> Polynomial:
        return softmax_log_polynomial(self.classes * math.exp(self.max_slack))

    def exp(self, reach: float) -> ExpBySquaring:
        """exp on [-reach, 0] by order-2 squaring: at least 6 squarings (error below
        5.6e-5), more when the reach needs them (valid for x >= -2^(n + 1))."""
        n = max(6, math.ceil(math.log2(max(reach, 1.0))))
        return ExpBySquaring(squarings=n, interval=(-reach, 0.0), order=2)

    @cached_property
    def rsqrt(self) -> InverseSqrt:
        """1/sigma to 1e-3 relative on the variance interval; wide intervals need up to
        16 Newton steps from a guess kept inside Newton's basin."""
        return InverseSqrt.polynomial_only(self.variance, max_iterations=RSQRT_STEPS)

    @cached_property
    def softplus(self) -> Polynomial:
        return zloss_softplus_polynomial(self.zloss_a, self.zloss_b, self.classes)

    def depth(self, name: str) -> int:
        """Levels one example's value consumes (what the refresh count follows): the
        kernels below run on a `LevelProbe`, so every product, scalar one included, and
        every polynomial's own schedule are counted as the encrypted run does them."""
        probe = LevelProbe((1, self.classes))
        values = per_example(
            probe, probe, [] if name == "accuracy" else [name], self, accuracy=name == "accuracy"
        )
        return values["hit" if name == "accuracy" else name].depth

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": self.classes,
            "spread": self.spread,
            "variance": list(self.variance),
            "tie": self.tie,
            "max_sign": self.max_sign.to_dict(),
            "hit_sign": self.hit_sign.to_dict(),
            "count_sign": self.count_sign.to_dict(),
            "fy_sign": self.fy_sign.to_dict(),
            "excess_sign": self.excess_sign.to_dict(),
            "log_interval": list(self.log.interval),
            "rsqrt": self.rsqrt.to_dict(),
        }


# --- kernels ---------------------------------------------------------------------------------
def label_logit(o: Any, t: Any) -> Any:
    return (o * t).sum(-1)


def square(o: Any, t: Any) -> Any:
    d = o - t
    return (d * d).sum(-1)


def maximum(o: Any, sign: CompositeSign) -> Any:
    """Tournament over the last axis: each round pairs entry i with entry n - ceil(n/2) + i
    (for odd n the middle entry sits in two pairs, which a maximum does not mind)."""
    while o.shape[-1] > 1:
        n = o.shape[-1]
        half = (n + 1) // 2
        o = sign.maximum(
            o.narrow(-1, 0, half), o.narrow(-1, n - half, half), evaluate_approximation
        )
    return o.squeeze(-1)


def log_sum_exp(o: Any, plan: HeLossPlan, m: Any = None) -> Any:
    """m + log sum_k exp(o_k - m), m the tournament's maximum unless given."""
    m = maximum(o, plan.max_sign) if m is None else m
    e = plan.exp(plan.spread + plan.max_slack)(o - m.unsqueeze(-1))
    return m + evaluate_approximation(e.sum(-1), plan.log)


def z_loss(o: Any, t: Any, plan: HeLossPlan, a: float, b: float) -> Any:
    mu = o.mean(-1)
    centred = o - mu.unsqueeze(-1)
    variance = (centred * centred).mean(-1)
    r = plan.rsqrt.iterate(variance, lambda v: evaluate_approximation(v, plan.rsqrt.initial))
    z_y = label_logit(centred, t) * r
    softplus = zloss_softplus_polynomial(a, b, plan.classes)  # plan.softplus for its a, b
    return evaluate_approximation(z_y * -a + a * b, softplus) * (1.0 / a)


def label_probability_power(o_y: Any, lse: Any, q: float, plan: HeLossPlan) -> Any:
    """p_y^q = exp(q (o_y - lse)), the exponent in [-q (spread + log C + slack), 0]."""
    reach = q * (plan.spread + math.log(plan.classes) + plan.max_slack)
    return plan.exp(reach)((o_y - lse) * q)


def hits(o: Any, o_y: Any, plan: HeLossPlan) -> Any:
    above = plan.hit_sign.step(o - o_y.unsqueeze(-1), evaluate_approximation).sum(-1)
    return plan.count_sign.step(1.0 - above, evaluate_approximation)


@dataclass(frozen=True)
class HeLossKernels:
    """The losses' building blocks on `HeTensor`s (or `LevelProbe`s) under one plan
    (`approximations.losses.SecureLossKernels`)."""

    plan: HeLossPlan

    def shared(
        self, o: Any, t: Any, *, needs_log_sum_exp: bool, needs_maximum: bool, accuracy: bool
    ) -> SharedTerms[Any]:
        """o_y, then the tournament's maximum if a loss needs it or log-sum-exp, and
        log-sum-exp if a loss needs it (the hits need nothing more)."""
        o_y = label_logit(o, t)
        m = maximum(o, self.plan.max_sign) if needs_maximum or needs_log_sum_exp else None
        lse = log_sum_exp(o, self.plan, m) if needs_log_sum_exp else None
        return SharedTerms(o_y, lse, m if needs_maximum else None)

    square = staticmethod(square)

    def z_loss(self, o: Any, t: Any, a: float, b: float) -> Any:
        return z_loss(o, t, self.plan, a, b)

    def label_probability_power(self, terms: SharedTerms[Any], q: float) -> Any:
        return label_probability_power(terms.label_logit, terms.log_sum_exp, q, self.plan)

    def hit(self, o: Any, terms: SharedTerms[Any]) -> Any:
        return hits(o, terms.label_logit, self.plan)

    def positive_part(self, x: Any) -> Any:
        """x (1 + F(x)) / 2 on `fy_sign`: within |x| FY_ERROR / 2 of max(x, 0) beyond the
        resolution, between 0 and x inside it."""
        return x * self.plan.fy_sign.step(x, evaluate_approximation)

    def step_of_excess(self, excess: Any, power: int) -> Any:
        return self.plan.excess_sign.step(excess, evaluate_approximation)

    def threshold(self, z: Any, maximum: Any, power: int) -> Any:
        return bisection_threshold(self, z, maximum, power, slack=self.plan.max_slack)


def per_example(
    o: Any, t: Any, names: list[str], plan: HeLossPlan, *, accuracy: bool = True
) -> dict[str, Any]:
    """Each requested loss per example, plus "hit" unless `accuracy` is False, sharing
    o_y and log-sum-exp (`approximations.losses.secure_per_example` with the plan's
    hyper-parameters)."""
    kernels = HeLossKernels(plan)
    return secure_per_example(kernels, o, t, names, plan.options, accuracy=accuracy)


class LevelProbe:
    """Stands in for an `HeTensor` to count levels: a product takes one more than its
    deeper operand, a product by a plain value one more than its operand (none by 1.0),
    a sum the deeper; a mean is a sum times 1/n. Shapes follow torch (a meta tensor)."""

    __array_ufunc__ = None

    def __init__(self, shape: tuple[int, ...] | torch.Size, depth: int = 0) -> None:
        self.meta = torch.empty(tuple(shape), device="meta")
        self.depth = depth

    @property
    def shape(self) -> torch.Size:
        return self.meta.shape

    def dim(self) -> int:
        return self.meta.dim()

    def _like(self, meta: torch.Tensor, depth: int) -> LevelProbe:
        out = LevelProbe((), depth)
        out.meta = meta
        return out

    def _binary(self, other: Any, product: bool) -> LevelProbe:
        if isinstance(other, LevelProbe):
            shape = torch.broadcast_shapes(self.shape, other.shape)
            depth = max(self.depth, other.depth) + int(product)
        else:
            plain = torch.as_tensor(other)
            shape = torch.broadcast_shapes(self.shape, plain.shape)
            unit = plain.numel() == 1 and float(plain) == 1.0
            depth = self.depth + int(product and not unit)
        return self._like(torch.empty(shape, device="meta"), depth)

    def __add__(self, other: Any) -> LevelProbe:
        return self._binary(other, False)

    __radd__ = __add__
    __sub__ = __add__
    __rsub__ = __add__

    def __mul__(self, other: Any) -> LevelProbe:
        return self._binary(other, True)

    __rmul__ = __mul__

    def __truediv__(self, other: float) -> LevelProbe:
        return self._binary(1.0 / other, True)

    def __neg__(self) -> LevelProbe:
        return self

    def sum(self, dim: int, keepdim: bool = False) -> LevelProbe:
        return self._like(self.meta.sum(dim, keepdim=keepdim), self.depth)

    def mean(self, dim: int, keepdim: bool = False) -> LevelProbe:
        return self.sum(dim, keepdim) * (1.0 / self.shape[dim])

    def narrow(self, dim: int, start: int, length: int) -> LevelProbe:
        return self._like(self.meta.narrow(dim, start, length), self.depth)

    def unsqueeze(self, dim: int) -> LevelProbe:
        return self._like(self.meta.unsqueeze(dim), self.depth)

    def squeeze(self, dim: int) -> LevelProbe:
        return self._like(self.meta.squeeze(dim), self.depth)
