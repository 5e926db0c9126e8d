"""Certified maximum error: measured in float64 on a dense grid, then refined locally.

`certify` evaluates |approx(x) - f(x)| (or the relative error |approx(x)/f(x) - 1|) on at
least 100,000 uniformly spaced points, 100,000 Chebyshev-clustered points (errors of
polynomial fits peak near the ends), any extra points supplied (Remez extrema,
breakpoints) with their two float neighbours, then polishes the largest local maxima
with a bounded scalar search. The result is the largest error found; it is what
`max_error` reports everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from approximations.errors import ApproximationError

GRID_POINTS = 100_001
REFINED_PEAKS = 24

TensorFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Certificate:
    """The outcome of `certify`: the worst error and where it occurs."""

    max_error: float
    argmax: float
    points: int


def reference_values(fn: Callable, x: np.ndarray, *, name: str = "fn") -> np.ndarray:
    """f(x) in float64 for a function of a torch tensor (numpy functions are accepted too).

    Raises ApproximationError naming `name` when f is not finite somewhere on x.
    """
    try:
        out = fn(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)))
    except TypeError:
        out = fn(np.asarray(x, dtype=np.float64))
    values = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
    values = np.broadcast_to(np.asarray(values, dtype=np.float64), x.shape)
    bad = ~np.isfinite(values)
    if bad.any():
        where = float(x[np.argmax(bad)])
        raise ApproximationError(
            f"{name} returned {values[np.argmax(bad)]} at x={where:.6g}: it must be finite on "
            f"the interval [{float(x.min()):.6g}, {float(x.max()):.6g}]; choose an interval "
            "inside its domain"
        )
    return values


def check_interval(interval: Sequence[float], *, name: str = "interval") -> tuple[float, float]:
    """Validate a finite interval (a, b) with a < b and return it as floats."""
    try:
        a, b = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ApproximationError(f"{name}={interval!r}: expected two numbers (a, b)") from None
    if not (np.isfinite(a) and np.isfinite(b)):
        raise ApproximationError(f"{name}=({a:g}, {b:g}): both ends must be finite")
    if not a < b:
        raise ApproximationError(f"{name}=({a:g}, {b:g}): need a < b")
    return a, b


def dense_grid(
    interval: tuple[float, float], extra: Sequence[float] = (), log: bool = False
) -> np.ndarray:
    """Sorted unique grid: uniform + Chebyshev-clustered points + `extra` within the interval.

    With log=True (positive intervals spanning decades), the uniform part is spaced
    geometrically instead.
    """
    a, b = interval
    spaced = np.geomspace if log else np.linspace
    uniform = spaced(a, b, GRID_POINTS)
    theta = np.linspace(0.0, np.pi, GRID_POINTS)
    clustered = (a + b) / 2 + (b - a) / 2 * np.cos(theta)
    marks = np.asarray(extra, dtype=np.float64)
    # Both float neighbours of each extra point: at a breakpoint the error's supremum is a
    # one-sided limit that the point itself (evaluated by the next segment) does not show.
    around = np.concatenate([marks, np.nextafter(marks, -np.inf), np.nextafter(marks, np.inf)])
    points = np.concatenate([uniform, clustered, around, [a, b]])
    points = points[(points >= a) & (points <= b)]
    return np.unique(points)


def error_function(
    approx: TensorFn, fn: Callable, *, relative: bool = False
) -> Callable[[np.ndarray], np.ndarray]:
    """x -> |approx(x) - f(x)| (or |approx(x) / f(x) - 1|), both evaluated in float64."""

    def err(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            got = approx(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)))
        got_np = got.detach().cpu().numpy().astype(np.float64)
        want = reference_values(fn, x)
        diff = np.abs(got_np - want)
        if relative:
            diff = diff / np.abs(want)
        return np.where(np.isnan(diff), np.inf, diff)

    return err


def certify(
    approx: TensorFn,
    fn: Callable,
    interval: tuple[float, float],
    *,
    extra_points: Sequence[float] = (),
    relative: bool = False,
    log_grid: bool = False,
) -> Certificate:
    """Largest |approx - f| (or relative error) on `interval`; see the module docstring."""
    err = error_function(approx, fn, relative=relative)
    grid = dense_grid(interval, extra_points, log=log_grid)
    values = err(grid)
    best_i = int(np.argmax(values))
    best = Certificate(float(values[best_i]), float(grid[best_i]), grid.size)
    if not np.isfinite(best.max_error):
        return best
    # Polish the largest local maxima between their grid neighbours.
    interior = np.flatnonzero((values[1:-1] >= values[:-2]) & (values[1:-1] >= values[2:])) + 1
    peaks = interior[np.argsort(values[interior])[::-1][:REFINED_PEAKS]]
    for i in peaks:
        lo, hi = float(grid[i - 1]), float(grid[i + 1])
        res = minimize_scalar(
            lambda s: -float(err(np.array([s]))[0]),
            bounds=(lo, hi),
            method="bounded",
            options={"xatol": 1e-14 * max(1.0, abs(lo))},
        )
        value = -float(res.fun)
        if value > best.max_error:
            best = Certificate(value, float(res.x), best.points)
    return best
