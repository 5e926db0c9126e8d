"""`Polynomial`: an immutable approximation p(x) on an interval, with its certified error.

Modelled on numpy.polynomial: the value holds Chebyshev coefficients in the variable
t = (2x - a - b) / (b - a) mapped from its interval [a, b], exposes the power basis in x
as `coefficients`, evaluates on torch tensors of any dtype with autograd, and its repr and
JSON both round-trip. The polynomial is defined everywhere; `interval` is where
`max_error` holds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from approximations import coefficients as coef
from approximations.certify import check_interval
from approximations.errors import ApproximationError


@dataclass(frozen=True, eq=False)
class Polynomial:
    """p(x) = sum_k chebyshev[k] * T_k((2x - a - b) / (b - a)) on interval = (a, b).

    Attributes
    ----------
    chebyshev: Chebyshev coefficients on the mapped variable (the stable, canonical form).
    interval: (a, b), where `max_error` is certified.
    max_error: certified max |p - f| on the interval (relative error when
        `error_kind == "relative"`), or None when the polynomial was given, not fitted.
    reference: name of the approximated function (informational).
    method: how it was obtained ("remez", "chebyshev", "lstsq", "given").
    extrema: for Remez fits, the final reference points where the error equioscillates.
    """

    chebyshev: tuple[float, ...]
    interval: tuple[float, float]
    max_error: float | None = None
    error_kind: str = "absolute"
    reference: str | None = None
    method: str = "given"
    extrema: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        cheb = tuple(float(c) for c in np.asarray(self.chebyshev, dtype=np.float64).ravel())
        if not cheb:
            raise ApproximationError("chebyshev=(): a polynomial needs at least one coefficient")
        if not all(math.isfinite(c) for c in cheb):
            raise ApproximationError(f"chebyshev={cheb!r}: coefficients must be finite")
        object.__setattr__(self, "chebyshev", cheb)
        object.__setattr__(self, "interval", check_interval(self.interval))
        object.__setattr__(self, "extrema", tuple(float(e) for e in self.extrema))
        if self.error_kind not in ("absolute", "relative"):
            raise ApproximationError(
                f"error_kind={self.error_kind!r}: use 'absolute' or 'relative'"
            )

    # --- construction -------------------------------------------------------------------
    @classmethod
    def from_coefficients(
        cls,
        power: Sequence[float],
        interval: tuple[float, float],
        **info: Any,
    ) -> Polynomial:
        """The polynomial sum_k power[k] x^k, certified (later) on `interval`."""
        interval = check_interval(interval)
        return cls(tuple(coef.chebyshev_from_power(power, interval)), interval, **info)

    @classmethod
    def constant(cls, value: float, interval: tuple[float, float] = (-1.0, 1.0)) -> Polynomial:
        """p(x) = value."""
        return cls((float(value),), interval)

    @classmethod
    def identity(cls, interval: tuple[float, float] = (-1.0, 1.0)) -> Polynomial:
        """p(x) = x."""
        return cls.from_coefficients([0.0, 1.0], interval)

    # --- attributes ---------------------------------------------------------------------
    @property
    def degree(self) -> int:
        """Degree after dropping zero high-order coefficients."""
        return coef.trimmed_degree(self.chebyshev)

    @property
    def coefficients(self) -> np.ndarray:
        """Power-basis coefficients [p_0, ..., p_d] in x, float64 (a fresh copy)."""
        return coef.power_coefficients(self.chebyshev[: self.degree + 1], self.interval)

    @property
    def depth(self) -> int:
        """Multiplicative depth ceil(log2(d + 1)) of baby-step giant-step evaluation (CKKS
        levels, scalar products included); see `coefficients.depth`."""
        return coef.depth(self.degree)

    @property
    def nonscalar_depth(self) -> int:
        """Sequential ciphertext products (MPC multiplication rounds): ceil(log2(d))."""
        return coef.nonscalar_depth(self.degree)

    @property
    def nonscalar_multiplications(self) -> int:
        """Ciphertext-ciphertext products of the baby-step giant-step schedule."""
        return coef.paterson_stockmeyer_multiplications(self.degree)[0]

    def certified(
        self, fn: Any, *, relative: bool = False, reference: str | None = None
    ) -> Polynomial:
        """A copy whose `max_error` is certified against `fn` on `self.interval`."""
        from approximations.certify import certify

        cert = certify(self, fn, self.interval, extra_points=self.extrema, relative=relative)
        return Polynomial(
            self.chebyshev,
            self.interval,
            max_error=cert.max_error,
            error_kind="relative" if relative else "absolute",
            reference=reference or self.reference,
            method=self.method,
            extrema=self.extrema,
        )

    # --- evaluation ---------------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """p(x) elementwise, in x's dtype, differentiable (Clenshaw in the Chebyshev basis)."""
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x, dtype=torch.float64)
        if self.degree <= 1:  # constants and lines: skip the interval map
            p0, *p1 = self.coefficients
            return torch.full_like(x, float(p0)) if not p1 else x * float(p1[0]) + float(p0)
        return coef.evaluate(self.chebyshev[: self.degree + 1], self.interval, x)

    def equioscillation(self, fn: Any) -> np.ndarray:
        """Signed errors p(e) - f(e) at the Remez extrema (empty for other methods)."""
        from approximations.certify import reference_values

        if not self.extrema:
            return np.zeros(0)
        pts = np.asarray(self.extrema)
        got = self(torch.from_numpy(pts)).numpy()
        want = reference_values(fn, pts)
        diff = got - want
        return diff / np.abs(want) if self.error_kind == "relative" else diff

    # --- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; `Polynomial.from_dict` inverts it exactly."""
        return {
            "type": "Polynomial",
            "chebyshev": list(self.chebyshev),
            "interval": list(self.interval),
            "max_error": self.max_error,
            "error_kind": self.error_kind,
            "reference": self.reference,
            "method": self.method,
            "extrema": list(self.extrema),
            "coefficients": self.coefficients.tolist(),
            "degree": self.degree,
            "depth": self.depth,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Polynomial:
        """Inverse of `to_dict` (derived fields such as `coefficients` are ignored)."""
        if data.get("type") != "Polynomial":
            raise ApproximationError(f"type={data.get('type')!r}: not a Polynomial record")
        return cls(
            chebyshev=tuple(data["chebyshev"]),
            interval=tuple(data["interval"]),
            max_error=data.get("max_error"),
            error_kind=data.get("error_kind", "absolute"),
            reference=data.get("reference"),
            method=data.get("method", "given"),
            extrema=tuple(data.get("extrema", ())),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Polynomial:
        return cls.from_dict(json.loads(text))

    def __repr__(self) -> str:
        return (
            f"Polynomial(chebyshev={self.chebyshev!r}, interval={self.interval!r}, "
            f"max_error={self.max_error!r}, error_kind={self.error_kind!r}, "
            f"reference={self.reference!r}, method={self.method!r}, extrema={self.extrema!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Polynomial):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.chebyshev, self.interval))


Apply = Callable[[Any, Polynomial], Any]
"""How a composite form (exp-softmax, piecewise GELU, minimax-Newton rsqrt, folded
LayerNorm) evaluates each of its polynomials on an operand: `direct` in torch; the HE
kernels pass one that evaluates on ciphertexts."""


def direct(x: Any, poly: Polynomial) -> Any:
    """`poly(x)`: the plaintext `Apply`."""
    return poly(x)
