"""`Piecewise`: polynomials on consecutive segments, such as PUMA's GeLU.

Segment i covers [lower_i, upper_i) (the last one includes its upper end); ends may be
infinite. Evaluation selects each segment's polynomial by comparisons against the
breakpoints, which is what secure kernels do with secure comparisons (MPC). CKKS has no
comparison, so a Piecewise is not evaluable under HE without a sign approximation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from approximations.certify import certify, check_interval
from approximations.errors import ApproximationError
from approximations.polynomial import Polynomial


@dataclass(frozen=True, eq=False)
class Segment:
    """The polynomial used for lower <= x < upper."""

    lower: float
    upper: float
    polynomial: Polynomial

    def to_dict(self) -> dict[str, Any]:
        return {"lower": self.lower, "upper": self.upper, "polynomial": self.polynomial.to_dict()}


@dataclass(frozen=True, eq=False)
class Piecewise:
    """A piecewise polynomial with its certified max error on `interval`.

    Build one with `Piecewise.build(segments, fn, interval)`, which checks that the segments
    are contiguous and certifies the error against `fn`.
    """

    segments: tuple[Segment, ...]
    interval: tuple[float, float]
    max_error: float | None = None
    error_kind: str = "absolute"
    reference: str | None = None
    method: str = "piecewise"

    def __post_init__(self) -> None:
        if not self.segments:
            raise ApproximationError("segments=(): a Piecewise needs at least one segment")
        for left, right in zip(self.segments, self.segments[1:], strict=False):
            if left.upper != right.lower:
                raise ApproximationError(
                    f"segments: [{left.lower}, {left.upper}) is followed by "
                    f"[{right.lower}, {right.upper}); segments must be sorted and contiguous"
                )
        for seg in self.segments:
            if not seg.lower < seg.upper:
                raise ApproximationError(f"segments: [{seg.lower}, {seg.upper}) is empty")
        object.__setattr__(self, "interval", check_interval(self.interval))

    @classmethod
    def build(
        cls,
        segments: Sequence[tuple[tuple[float, float], Polynomial]],
        fn: Callable[[torch.Tensor], torch.Tensor],
        interval: tuple[float, float],
        *,
        name: str | None = None,
        method: str = "piecewise",
    ) -> Piecewise:
        """Segments given as ((lower, upper), polynomial); error certified against fn."""
        segs = tuple(Segment(float(lo), float(hi), p) for (lo, hi), p in segments)
        draft = cls(segs, interval, reference=name, method=method)
        cert = certify(draft, fn, draft.interval, extra_points=draft.breakpoints)
        return cls(segs, draft.interval, cert.max_error, "absolute", name, method)

    @property
    def breakpoints(self) -> tuple[float, ...]:
        """The finite boundaries between segments (the comparisons a kernel must make)."""
        return tuple(s.upper for s in self.segments[:-1])

    @property
    def degree(self) -> int:
        return max(s.polynomial.degree for s in self.segments)

    @property
    def depth(self) -> int:
        """Depth of the deepest segment polynomial plus one for the selecting product."""
        return max(s.polynomial.depth for s in self.segments) + (1 if len(self.segments) > 1 else 0)

    @property
    def comparisons(self) -> int:
        return len(self.breakpoints)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise value; gradients flow through the selected segment's polynomial."""
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x, dtype=torch.float64)
        out = self.segments[-1].polynomial(x)
        for seg in reversed(self.segments[:-1]):
            out = torch.where(x < seg.upper, seg.polynomial(x), out)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "Piecewise",
            "segments": [s.to_dict() for s in self.segments],
            "interval": list(self.interval),
            "max_error": self.max_error,
            "error_kind": self.error_kind,
            "reference": self.reference,
            "method": self.method,
            "degree": self.degree,
            "depth": self.depth,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Piecewise:
        if data.get("type") != "Piecewise":
            raise ApproximationError(f"type={data.get('type')!r}: not a Piecewise record")
        segs = tuple(
            Segment(float(s["lower"]), float(s["upper"]), Polynomial.from_dict(s["polynomial"]))
            for s in data["segments"]
        )
        return cls(
            segs,
            tuple(data["interval"]),
            data.get("max_error"),
            data.get("error_kind", "absolute"),
            data.get("reference"),
            data.get("method", "piecewise"),
        )

    def to_json(self) -> str:
        # json writes infinite bounds as Infinity / -Infinity, which json.loads reads back.
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Piecewise:
        return cls.from_dict(json.loads(text))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Piecewise):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.breakpoints, self.interval))

    def __repr__(self) -> str:
        parts = ", ".join(
            f"[{_fmt(s.lower)}, {_fmt(s.upper)}): degree {s.polynomial.degree}"
            for s in self.segments
        )
        return f"Piecewise({parts}; max_error={self.max_error!r} on {self.interval})"


def _fmt(v: float) -> str:
    return ("-inf" if v < 0 else "inf") if math.isinf(v) else f"{v:g}"
