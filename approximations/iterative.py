"""Iterative approximations as objects: exp by repeated squaring, reciprocal, inverse
square root and logarithm, each with its valid input range and certified error there.

Normalisation
-------------
With `normalise=True` an input x > 0 is written x = m * 2^e with m in a fixed octave
([0.5, 1) for 1/x and log, [0.25, 1) with e even for 1/sqrt(x)); the method works on m and
the result is rescaled by a power of two. Secure kernels find e by a bit decomposition
(MPC); CKKS cannot, so normalised methods are MPC-only (`he_compatible` is False).
Without normalisation the input is used as is and the initial guess is a relative-minimax
polynomial on the whole stated interval, which is HE-friendly but needs more iterations
on wide intervals.

Depth counts CKKS levels (scalar products included): a Newton step for 1/x or 1/sqrt(x)
costs 2, a Goldschmidt step 1 (its two products are independent), a squaring 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import torch

from approximations.certify import Certificate, certify, check_interval
from approximations.errors import ApproximationError
from approximations.fitting import fit
from approximations.polynomial import Polynomial

RECIPROCAL_METHODS = ("newton", "goldschmidt")


def _exact_exp(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(x)


def _exact_reciprocal(x: torch.Tensor) -> torch.Tensor:
    return 1.0 / x


def _exact_rsqrt(x: torch.Tensor) -> torch.Tensor:
    return torch.rsqrt(x)


def _exact_log(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x)


def _octave(x: torch.Tensor, even: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, e) with x = m * 2^e, m in [0.5, 1) (or [0.25, 1) with e even when `even`).

    The exponent is computed without gradient; m = x * 2^-e keeps x's gradient.
    """
    e = torch.floor(torch.log2(x.detach())) + 1.0
    if even:
        e = 2.0 * torch.ceil(e / 2.0)
    return x * torch.exp2(-e), e


def _check_positive_interval(interval: tuple[float, float], name: str) -> tuple[float, float]:
    lo, hi = check_interval(interval, name=name)
    if lo <= 0:
        raise ApproximationError(f"{name}=({lo:g}, {hi:g}): the input range must be positive")
    return lo, hi


def _check_count(value: int, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ApproximationError(f"{name}={value!r}: expected an integer >= {minimum}")
    return value


class _Certified:
    """Shared behaviour: certified error on `interval` against `exact` (cached)."""

    interval: tuple[float, float]
    error_kind: str = "absolute"
    reference: str = ""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def exact(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def _log_grid(self) -> bool:
        lo, hi = self.interval
        return lo > 0 and hi / lo > 100

    @cached_property
    def certificate(self) -> Certificate:
        return certify(
            self,
            self.exact,
            self.interval,
            relative=self.error_kind == "relative",
            log_grid=self._log_grid,
        )

    @property
    def max_error(self) -> float:
        """Certified max error on `interval` (relative when error_kind == "relative")."""
        return self.certificate.max_error


@dataclass(frozen=True, eq=False)
class ExpBySquaring(_Certified):
    """exp(x) ~ b(x / 2^n)^(2^n) for x <= 0, n = `squarings`.

    order 1: b(u) = 1 + u. Error about x^2 e^x / 2^(n+1), at most 2 e^-2 / 2^n (near
    x = -2). Valid for x >= -2^n.
    order 2: b(u) = 1 + u + u^2/2 (one more product). Error about |x|^3 e^x / (6 4^n),
    at most 27 e^-3 / (6 4^n) (1.4e-5 for n = 7). Valid for x >= -2^(n+1) (b <= 1 there).
    With `cutoff` = T, inputs below -T return 0 (PUMA), which adds at most e^-T and makes
    every x <= 0 valid. Depth n + order (the scalar 1/2^n, the base, n squarings); MPC
    rounds: n + order - 1 multiplications (plus one comparison with a cutoff).
    """

    squarings: int = 8
    interval: tuple[float, float] = (-14.0, 0.0)
    cutoff: float | None = None
    reference: str = "exp"
    error_kind: str = "absolute"
    order: int = 1

    def __post_init__(self) -> None:
        _check_count(self.squarings, "squarings")
        if self.order not in (1, 2):
            raise ApproximationError(f"order={self.order!r}: expected 1 or 2")
        object.__setattr__(self, "interval", check_interval(self.interval))
        if self.cutoff is not None and not self.cutoff > 0:
            raise ApproximationError(
                f"cutoff={self.cutoff!r}: must be positive (inputs below -cutoff give 0)"
            )

    he_compatible = True

    @property
    def iterations(self) -> int:
        return self.squarings

    @property
    def depth(self) -> int:
        return self.squarings + self.order

    @property
    def valid_range(self) -> tuple[float, float]:
        reach = 2.0 ** (self.squarings + self.order - 1)
        if self.cutoff is not None and self.cutoff <= reach:
            return (-math.inf, 0.0)
        return (-reach, 0.0)

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        return _exact_exp(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        u = x / 2.0**self.squarings
        y = 1.0 + u if self.order == 1 else 1.0 + u + 0.5 * u * u
        for _ in range(self.squarings):
            y = y * y
        if self.cutoff is not None:
            y = torch.where(x < -self.cutoff, torch.zeros_like(y), y)
        return y

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "ExpBySquaring",
            "squarings": self.squarings,
            "interval": list(self.interval),
            "cutoff": self.cutoff,
            "order": self.order,
        }


def _shallowest(
    interval: tuple[float, float],
    exact: Callable[[torch.Tensor], torch.Tensor],
    target: float,
    max_degree: int,
    max_iterations: int,
    start: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]],
    step: Callable[[tuple[torch.Tensor, ...], torch.Tensor], tuple[torch.Tensor, ...]],
    error: Callable[[tuple[torch.Tensor, ...], torch.Tensor], float],
    extra_depth: Callable[[int], int],
) -> tuple[int, int]:
    """(initial degree, iterations) of the shallowest configuration whose error on a
    4,001-point geometric grid of `interval` is at most `target`; if none is, the most
    accurate one tried. Depth = the guess's depth + extra_depth(iterations)."""
    lo, hi = interval
    x = torch.logspace(math.log10(lo), math.log10(hi), 4001, dtype=torch.float64)
    best: tuple[tuple[int, float], int, int] | None = None
    for degree in range(1, max_degree + 1):
        guess = fit(exact, (lo, hi), degree, "remez", relative=True)
        state = start(guess(x), x)
        for steps in range(max_iterations + 1):
            if steps:
                state = step(state, x)
            err = error(state, x)
            if not math.isfinite(err):
                break
            depth = guess.depth + extra_depth(steps)
            score = (depth, err) if err <= target else (10**6, err)
            if best is None or score < best[0]:
                best = (score, degree, steps)
    assert best is not None
    return best[1], best[2]


def _basin_scale(guess: torch.Tensor, x: torch.Tensor) -> float:
    """The factor (<= 1) that keeps y0 sqrt(x) below 0.95 sqrt(3) on the grid: Newton's
    map t -> t (3 - t^2) / 2 for rsqrt sends (0, sqrt(3)) into (0, 1] and converges there."""
    worst = float((guess * x.sqrt()).max())
    return min(1.0, 0.95 * math.sqrt(3.0) / worst)


@dataclass(frozen=True, eq=False)
class _NewtonFamily(_Certified):
    """Common fields of reciprocal and inverse square root."""

    interval: tuple[float, float] = (1e-4, 1e4)
    iterations: int = 3
    normalise: bool = True
    initial_degree: int = 1
    error_kind: str = "relative"

    octave: tuple[float, float] = (0.5, 1.0)

    def _validate(self) -> None:
        object.__setattr__(self, "interval", _check_positive_interval(self.interval, "interval"))
        _check_count(self.iterations, "iterations")
        _check_count(self.initial_degree, "initial_degree")

    @property
    def he_compatible(self) -> bool:
        return not self.normalise

    @property
    def valid_range(self) -> tuple[float, float]:
        return self.interval

    def _initial_interval(self) -> tuple[float, float]:
        return self.octave if self.normalise else self.interval

    @cached_property
    def initial(self) -> Polynomial:
        """Relative-minimax polynomial initial guess on the octave (or the whole interval)."""
        return fit(
            self.exact,
            self._initial_interval(),
            self.initial_degree,
            "remez",
            relative=True,
            name=f"{self.reference} initial guess",
        )


@dataclass(frozen=True, eq=False)
class Reciprocal(_NewtonFamily):
    """1/x on a positive interval: initial polynomial guess, then Newton or Goldschmidt.

    Newton: y <- y (2 - x y). Goldschmidt: e = 1 - x y0; repeat y <- y (1 + e), e <- e^2.
    Both square the relative error each step: after k steps it is e0^(2^k), with e0 the
    initial guess's relative error ((1 - r)^2 / (1 + 6r + r^2) for the linear guess on
    [r, 1]; 1/17 on the normalised octave [0.5, 1)). Depth: initial + 2k (Newton) or
    initial + k + 1 (Goldschmidt).
    """

    method: str = "goldschmidt"
    reference: str = "reciprocal"

    def __post_init__(self) -> None:
        self._validate()
        if self.method not in RECIPROCAL_METHODS:
            raise ApproximationError(
                f"method={self.method!r}: choose one of {', '.join(RECIPROCAL_METHODS)}"
            )

    @property
    def depth(self) -> int:
        per_step = 2 if self.method == "newton" else 1
        extra = 1 if self.method == "goldschmidt" else 0
        return self.initial.depth + per_step * self.iterations + extra

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        return _exact_reciprocal(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalise:
            m, e = _octave(x)
            return self._iterate(m) * torch.exp2(-e)
        return self._iterate(x)

    def _iterate(self, b: torch.Tensor) -> torch.Tensor:
        return self.iterate(b, self.initial)

    def iterate(self, b: Any, initial: Callable[[Any], Any]) -> Any:
        """The iterations from y0 = initial(b): only +, - and * on b, so an encrypted
        tensor works too (the HE backend passes its own evaluation of `self.initial`)."""
        y = initial(b)
        if self.method == "newton":
            for _ in range(self.iterations):
                y = y * (2.0 - b * y)
            return y
        err = 1.0 - b * y
        for _ in range(self.iterations):
            y = y * (1.0 + err)
            err = err * err
        return y

    @classmethod
    def polynomial_only(
        cls,
        interval: tuple[float, float],
        target: float = 1e-4,
        max_degree: int = 7,
        max_iterations: int = 12,
    ) -> Reciprocal:
        """The shallowest HE-friendly Goldschmidt configuration (no normalisation) on
        `interval` whose relative error is at most `target`; if none is, the most accurate
        one tried. Scored on a 4,001-point geometric grid, as `InverseSqrt.polynomial_only`.
        Depth: initial degree's ceil(log2(d + 1)) + iterations + 1."""
        lo, hi = _check_positive_interval(interval, "interval")

        def start(y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return (y, 1.0 - x * y)

        def step(state: tuple[torch.Tensor, ...], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            y, err = state
            return (y * (1.0 + err), err * err)

        def error(state: tuple[torch.Tensor, ...], x: torch.Tensor) -> float:
            return float((x * state[0] - 1.0).abs().max())

        degree, steps = _shallowest(
            (lo, hi), _exact_reciprocal, target, max_degree, max_iterations,
            start, step, error, extra_depth=lambda steps: steps + 1,
        )  # fmt: skip
        return cls(interval=(lo, hi), iterations=steps, initial_degree=degree, normalise=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "Reciprocal",
            "method": self.method,
            "iterations": self.iterations,
            "interval": list(self.interval),
            "normalise": self.normalise,
            "initial_degree": self.initial_degree,
        }


@dataclass(frozen=True, eq=False)
class InverseSqrt(_NewtonFamily):
    """1/sqrt(x) on a positive interval: initial polynomial guess, then Newton steps
    y <- y (3 - x y^2) / 2 (relative error e -> about 1.5 e^2 per step).

    Normalised (SPU-style): x = m 4^k with m in [0.25, 1), polynomial on that octave, scale
    by 2^-k; with iterations=0 this is the polynomial alone. Depth: initial + 2 per step.
    """

    octave: tuple[float, float] = (0.25, 1.0)
    initial_degree: int = 2
    iterations: int = 2
    reference: str = "rsqrt"
    guess_scale: float = 1.0
    """The guess's coefficients times this (<= 1): on wide intervals a relative-minimax
    guess overshoots sqrt(3) / sqrt(x), beyond which Newton diverges; scaled down it stays
    inside the basin (0, sqrt(3)) and Newton converges from everywhere."""

    def __post_init__(self) -> None:
        self._validate()
        if not 0 < self.guess_scale <= 1:
            raise ApproximationError(f"guess_scale={self.guess_scale}: need 0 < scale <= 1")

    @cached_property
    def initial(self) -> Polynomial:
        """The relative-minimax guess, times `guess_scale` (no extra depth)."""
        guess = super().initial
        if self.guess_scale == 1.0:
            return guess
        scaled = tuple(c * self.guess_scale for c in guess.chebyshev)
        return Polynomial(scaled, guess.interval, reference=guess.reference, method="scaled")

    @property
    def depth(self) -> int:
        return self.initial.depth + 2 * self.iterations

    @classmethod
    def polynomial_only(
        cls,
        interval: tuple[float, float],
        target: float = 1e-3,
        max_degree: int = 9,
        max_iterations: int = 8,
    ) -> InverseSqrt:
        """The shallowest HE-friendly (no normalisation) configuration on `interval` whose
        relative error is at most `target`; if none is, the most accurate one tried.

        Searches initial degrees 1..max_degree and Newton steps 0..max_iterations, scoring
        each on a 4,001-point geometric grid (the returned object's error is then certified
        as usual). Wide intervals need deep configurations: Newton converges only while the
        guess stays below sqrt(3) times the answer. When no configuration meets the target
        (beyond a ratio of about 1e3, the relative-minimax guess overshoots that), the
        search runs again with each guess scaled into the basin (`guess_scale`).
        """
        lo, hi = _check_positive_interval(interval, "interval")

        def start(y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return (y,)

        def step(state: tuple[torch.Tensor, ...], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            (y,) = state
            return (1.5 * y - (0.5 * x * y) * (y * y),)

        def error(state: tuple[torch.Tensor, ...], x: torch.Tensor) -> float:
            want = torch.rsqrt(x)
            return float(((state[0] - want) / want).abs().max())

        search = (target, max_degree, max_iterations)
        degree, steps = _shallowest(
            (lo, hi), _exact_rsqrt, *search, start, step, error, lambda steps: 2 * steps
        )
        found = cls(interval=(lo, hi), iterations=steps, initial_degree=degree, normalise=False)
        if found.max_error <= target:
            return found

        def inside_basin(y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return (y * _basin_scale(y, x),)

        degree, steps = _shallowest(
            (lo, hi), _exact_rsqrt, *search, inside_basin, step, error, lambda steps: 2 * steps
        )
        x = torch.logspace(math.log10(lo), math.log10(hi), 4001, dtype=torch.float64)
        guess = fit(_exact_rsqrt, (lo, hi), degree, "remez", relative=True)
        return cls(
            interval=(lo, hi),
            iterations=steps,
            initial_degree=degree,
            normalise=False,
            guess_scale=_basin_scale(guess(x), x),
        )

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        return _exact_rsqrt(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalise:
            m, e = _octave(x, even=True)
            return self._iterate(m) * torch.exp2(-e / 2.0)
        return self._iterate(x)

    def _iterate(self, m: torch.Tensor) -> torch.Tensor:
        return self.iterate(m, self.initial)

    def iterate(self, m: Any, initial: Callable[[Any], Any]) -> Any:
        """Newton steps from y0 = initial(m), with +, - and * only (encrypted tensors too)."""
        y = initial(m)
        half_m = 0.5 * m
        for _ in range(self.iterations):
            y = 1.5 * y - (half_m * y) * (y * y)
        return y

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "InverseSqrt",
            "iterations": self.iterations,
            "guess_scale": self.guess_scale,
            "interval": list(self.interval),
            "normalise": self.normalise,
            "initial_degree": self.initial_degree,
        }


@dataclass(frozen=True, eq=False)
class Log(_Certified):
    """log(x) = p(m) + e ln 2 with x = m 2^e, m in [0.5, 1), p a minimax polynomial.

    The error is p's error on [0.5, 1] (absolute), the same on every octave. MPC-only
    (normalisation); depth of p.
    """

    interval: tuple[float, float] = (1e-4, 1e4)
    degree: int = 8
    reference: str = "log"
    error_kind: str = "absolute"

    def __post_init__(self) -> None:
        object.__setattr__(self, "interval", _check_positive_interval(self.interval, "interval"))
        _check_count(self.degree, "degree")

    he_compatible = False

    @cached_property
    def mantissa_polynomial(self) -> Polynomial:
        return fit(_exact_log, (0.5, 1.0), self.degree, "remez", name="log on [0.5, 1]")

    @property
    def depth(self) -> int:
        return self.mantissa_polynomial.depth

    @property
    def valid_range(self) -> tuple[float, float]:
        return self.interval

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        return _exact_log(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m, e = _octave(x)
        return self.mantissa_polynomial(m) + e * math.log(2.0)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "Log", "degree": self.degree, "interval": list(self.interval)}


Iterative = ExpBySquaring | Reciprocal | InverseSqrt | Log
ExactFn = Callable[[torch.Tensor], torch.Tensor]


HE_MARGIN = 16.0
"""How far beyond its calibrated interval an HE reciprocal must still converge. Goldschmidt
diverges where x y0 leaves (0, 2), and a secure kernel cannot clip its input: the digits
test images push the power-softmax denominators 13x above the range seen on the training
images. The interval is widened by this factor on both sides (depth 18 instead of 11 for
the digits model's [0.125, 59.5])."""


@lru_cache(maxsize=64)
def he_reciprocal(lo: float, hi: float, margin: float = HE_MARGIN) -> Reciprocal:
    """The HE reciprocal for a calibrated interval [lo, hi]: no normalisation, a relative
    minimax guess and Goldschmidt steps on [lo / margin, hi * margin] (relative error 1e-4
    there, `Reciprocal.polynomial_only`)."""
    return Reciprocal.polynomial_only((lo / margin, hi * margin), max_iterations=30)
