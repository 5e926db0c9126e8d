"""LayerNorm as one op with +, - and * only, its scalars folded so that it costs the inverse
square root's depth plus 3 levels (the guess's interval map one more under CKKS when it
cannot be folded: variances 1e-3 .. 1e3 take 23 levels encrypted, 220 .. 560 take 7).

Over the D trailing entries of a row (x_1 .. x_D), with s = sum_i x_i:

    c   = x / sqrt(D) - s / D^1.5        = (x - mean) / sqrt(D)          level 1
    v   = sum_i c_i^2 + eps               = var + eps                     level 2
    r   = 1/sqrt(v)                       (`MinimaxNewtonInverseSqrt` on the calibrated
                                           interval of var + eps)         level 2 + depth(r)
    y   = (c (sqrt(D) w)) r + b           = (x - mean) w / sqrt(var + eps) + b

against mean (1), x - mean, square (2), mean (3), r, (x - mean) r, times w for the direct
form: two levels saved, and every intermediate stays at the scale of the data (the
variance itself, not D times it), which matters when a refresh decrypts it.

Error: the inverse square root's certified relative error rho, so |y' - y| <= rho |y - b|
for every row whose var + eps lies in the interval (`MinimaxNewtonInverseSqrt`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from approximations.minimax_newton import MinimaxNewtonInverseSqrt
from approximations.polynomial import Apply, direct


@dataclass(frozen=True, eq=False)
class FoldedLayerNorm:
    """LayerNorm with 1/sqrt(var + eps) by `rsqrt` (module docstring)."""

    rsqrt: MinimaxNewtonInverseSqrt

    @classmethod
    def for_interval(cls, interval: tuple[float, float], target: float = 1e-4) -> FoldedLayerNorm:
        """For rows whose var + eps lies in `interval` (positive)."""
        return cls(MinimaxNewtonInverseSqrt.for_interval(interval, target))

    @property
    def interval(self) -> tuple[float, float]:
        return self.rsqrt.interval

    @property
    def max_error(self) -> float:
        """Relative to |y - b| (module docstring)."""
        return self.rsqrt.max_error

    @property
    def depth(self) -> int:
        return self.rsqrt.depth + 3

    def statistics(self, x: Any, count: int, eps: float, dims: Sequence[int]) -> tuple[Any, Any]:
        """(c, var + eps) of the module docstring."""
        total = x.sum(list(dims), keepdim=True)
        c = x * (1.0 / math.sqrt(count)) - total * (1.0 / count**1.5)
        return c, (c * c).sum(list(dims), keepdim=True) + eps

    def __call__(
        self,
        x: Any,
        normalized_shape: int | Sequence[int],
        weight: Any = None,
        bias: Any = None,
        eps: float = 1e-5,
        apply: Apply = direct,
    ) -> Any:
        shape = (
            (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        )
        dims = tuple(range(-len(shape), 0))
        count = math.prod(int(n) for n in shape)
        c, v = self.statistics(x, count, float(eps), dims)
        r = self.rsqrt.iterate(v, apply)
        scale = math.sqrt(count) if weight is None else weight * math.sqrt(count)
        y = (c * scale) * r
        return y if bias is None else y + bias

    def to_dict(self) -> dict[str, Any]:
        return {"type": "FoldedLayerNorm", "rsqrt": self.rsqrt.to_dict(), "depth": self.depth}


__all__ = ["FoldedLayerNorm"]
