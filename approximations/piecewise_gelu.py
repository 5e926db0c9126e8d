"""GELU as three segments chosen by composite signs: 0 below -a, p(x) on [-a, a], x above a.

With relu~(d) = d/2 + (d/2) F(d), F the composite sign (`approximations.composite_sign`)
on [-(B + a), B + a] for inputs in [-B, B]:

    c = x - relu~(x - a) + relu~(-x - a)       (x clamped to about [-a, a])
    GELU(x) ~ p(c) + relu~(x - a)

where p is GELU's Chebyshev interpolant on [-(a + r), a + r] (r the sign's resolution).
Why the segments need no sharp sign: where F is off (|x -+ a| below the resolution, or
F's error away from it) the clamp c moves by some delta and relu~ by the opposite delta,
so the result moves by delta (1 - p'(c)), and GELU' is within 1e-3 of 1 near a >= 3.5
and of 0 near -a. A coarse, shallow sign therefore serves: resolution about 1, errors
about 1/(B + a).

Certificate: the whole form is a fixed function of x, certified on `interval` as the
catalog's approximations are (`approximations.certify`); `max_error` is that. Depth:
depth(F) + 1 (relu~) + depth(p). Two composite signs per element (on x - a and -x - a),
the same schedule. Against one polynomial on the whole interval (`target_fit`), which
reaches the same error in fewer levels for every bound up to 40 at least (GELU is entire),
this form's depth grows only with log(B): it is the choice for very wide ranges.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import torch.nn.functional as F

from approximations.certify import Certificate, certify, check_interval
from approximations.composite_sign import CompositeSign
from approximations.errors import ApproximationError
from approximations.polynomial import Apply, Polynomial, direct
from approximations.target_fit import fit_to_target

EDGES = (4.5,)
RESOLUTIONS = (1.0, 2.0, 0.5)


@dataclass(frozen=True, eq=False)
class PiecewiseGelu:
    """GELU on `interval` by sign-selected segments (module docstring)."""

    interval: tuple[float, float]
    edge: float
    sign: CompositeSign
    inner: Polynomial
    reference: str = "gelu"
    error_kind: str = "absolute"
    he_compatible = True

    @classmethod
    def for_interval(cls, interval: tuple[float, float], target: float = 1e-4) -> PiecewiseGelu:
        """The shallowest (edge, resolution) among EDGES x RESOLUTIONS whose certified
        error meets `target` (the most accurate if none does)."""
        lo, hi = check_interval(interval)
        if not 0 < target < 1:
            raise ApproximationError(f"target={target!r}: need 0 < target < 1")
        return _for_interval(float(lo), float(hi), float(target))

    @property
    def bound(self) -> float:
        return max(abs(self.interval[0]), abs(self.interval[1]))

    @property
    def depth(self) -> int:
        return self.sign.depth + 1 + self.inner.depth

    @cached_property
    def certificate(self) -> Certificate:
        return certify(self, F.gelu, self.interval, extra_points=(-self.edge, self.edge))

    @property
    def max_error(self) -> float:
        return self.certificate.max_error

    def relu(self, d: Any, apply: Apply = direct) -> Any:
        """d/2 + (d/2) F(d): relu within the sign's error (depth(F) + 1)."""
        half = d * 0.5
        return half + half * self.sign(d, apply)

    def __call__(self, x: Any, apply: Apply = direct) -> Any:
        upper = self.relu(x - self.edge, apply)
        lower = self.relu(-x - self.edge, apply)
        return apply(x - upper + lower, self.inner) + upper

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "PiecewiseGelu",
            "interval": list(self.interval),
            "edge": self.edge,
            "sign": self.sign.to_dict(),
            "inner_degree": self.inner.degree,
            "depth": self.depth,
            "max_error": self.max_error,
        }


@lru_cache(maxsize=32)
def _inner(span: float, target: float) -> Polynomial:
    return fit_to_target(F.gelu, (-span, span), target, name="gelu inner")


@lru_cache(maxsize=32)
def _for_interval(lo: float, hi: float, target: float) -> PiecewiseGelu:
    """Candidates in order of depth (then of their resolution, finer first); the first
    whose certificate meets `target` wins."""
    bound = max(abs(lo), abs(hi))
    forms = []
    for edge in EDGES:
        reach = bound + edge
        for resolution in RESOLUTIONS:
            if resolution >= reach:
                continue
            sign = CompositeSign(reach, resolution, min(0.5, resolution / reach))
            inner = _inner(edge + resolution, target / 4)
            forms.append(PiecewiseGelu((lo, hi), edge, sign, inner))
    forms.sort(key=lambda f: (f.depth, f.sign.resolution))
    for form in forms:
        if form.max_error <= target:
            return form
    return min(forms, key=lambda f: f.max_error)


__all__ = ["PiecewiseGelu"]
