"""exp on a calibrated interval with additions and products only (the he target's `exp`).

On [lo, hi] with s = max(hi, 0) (a public shift):

    exp(x) = e^s exp(x - s),   x - s in [lo - s, 0]

and exp(z) for z <= 0 by squaring (`ExpBySquaring`, order 2: the base 1 + u + u^2/2 with
u = z / 2^k, squared k times), k the fewest squarings whose error on [lo - s, 0] meets
`target` / e^s (`approximations.exp_softmax.exp_for`). Depth k + 2 plus one level for the
factor e^s when s > 0. Certificate: the absolute error on a dense grid of [lo, hi]
(100,001 points) refined around its largest values, `max_error`.

Used where a model computes exp itself, with inputs bounded above: SOFT attention's
Gaussian kernel (`approximations.soft_attention`: exponents <= 0). An input beyond the
calibrated interval is outside the certificate (below lo the base leaves [0, 1] once
lo - s < -2^(k + 1)); the `approx` backend counts such inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from approximations.certify import check_interval
from approximations.exp_softmax import exp_for, squared_exponential
from approximations.iterative import ExpBySquaring
from approximations.polynomial import Apply, direct

GRID = 100_001
PEAKS = 8


@dataclass(frozen=True, eq=False)
class ShiftedExp:
    """exp on `interval` (module docstring)."""

    interval: tuple[float, float]
    shift: float
    exp: ExpBySquaring
    target: float
    error_kind = "absolute"
    he_compatible = True

    @classmethod
    def for_interval(cls, interval: tuple[float, float], target: float = 1e-4) -> ShiftedExp:
        lo, hi = check_interval(interval)
        shift = max(float(math.ceil(hi)), 0.0)
        exp, _ = exp_for(lo - shift, 0.0, target * math.exp(-shift))
        return cls((lo, hi), shift, exp, target)

    @property
    def iterations(self) -> int:
        """The squarings."""
        return self.exp.squarings

    @property
    def depth(self) -> int:
        return self.exp.squarings + 2 + int(self.shift > 0)

    def __call__(self, x: Any, apply: Apply = direct) -> Any:
        e = squared_exponential(x - self.shift, self.exp, apply)
        return e * math.exp(self.shift) if self.shift > 0 else e

    @cached_property
    def max_error(self) -> float:
        """The largest |error| on a GRID-point grid of the interval, then refined between
        the neighbours of its PEAKS largest grid values on 10,001 points each (the error
        peaks sharply near the top of a wide interval, between grid points)."""
        x = torch.linspace(*self.interval, GRID, dtype=torch.float64)
        error = (self(x) - torch.exp(x)).abs()
        worst = float(error.max())
        step = float(x[1] - x[0])
        for i in error.topk(PEAKS).indices.tolist():
            local = torch.linspace(
                max(float(x[i]) - step, self.interval[0]),
                min(float(x[i]) + step, self.interval[1]),
                10_001,
                dtype=torch.float64,
            )
            worst = max(worst, float((self(local) - torch.exp(local)).abs().max()))
        return worst

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "ShiftedExp",
            "interval": list(self.interval),
            "shift": self.shift,
            "squarings": self.exp.squarings,
            "depth": self.depth,
            "max_error": self.max_error,
        }


__all__ = ["ShiftedExp"]
