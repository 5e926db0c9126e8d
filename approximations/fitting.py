"""`fit`: polynomial approximation of a function on an interval, with certified error.

Methods
-------
remez      Minimax (best uniform) approximation by the Remez exchange algorithm. The error of
           the result equioscillates: degree + 2 alternating extrema of equal size.
chebyshev  Interpolation at the degree + 1 Chebyshev points of the first kind: near-minimax
           (within a factor of about 2 + (2/pi) log(d + 1)), no iteration.
lstsq      Least squares on a dense uniform grid: smallest mean error, larger max error.

With relative=True, the error measured (and, for Remez, minimised) is |p/f - 1|; f must
not vanish on the interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from numpy.polynomial import chebyshev as npcheb
from scipy.optimize import minimize_scalar

from approximations import coefficients as coef
from approximations.certify import certify, check_interval, reference_values
from approximations.errors import ApproximationError
from approximations.polynomial import Polynomial

METHODS = ("remez", "chebyshev", "lstsq")
REMEZ_MAX_ITERATIONS = 60
REMEZ_TOLERANCE = 1e-6  # stop when (max - min) / max of the extrema's |error| is below this
SEARCH_POINTS_PER_DEGREE = 400
REFERENCE_WARP = 0.01  # asymmetric nudge t + w (1 - t^2) of the initial reference


def fit(
    fn: Callable[[torch.Tensor], torch.Tensor],
    interval: tuple[float, float],
    degree: int,
    method: str = "remez",
    *,
    relative: bool = False,
    name: str | None = None,
) -> Polynomial:
    """A degree-`degree` polynomial approximating `fn` on `interval`, error certified.

    `fn` takes a float64 torch tensor and returns one of the same shape (numpy functions
    are accepted as well). The returned Polynomial's `max_error` is measured on at least
    100,000 grid points plus the Remez extrema (see `approximations.certify`).
    """
    interval = check_interval(interval)
    if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)):
        raise ApproximationError(f"degree={degree!r}: expected a non-negative integer")
    degree = int(degree)
    if degree < 0:
        raise ApproximationError(f"degree={degree}: must be >= 0")
    if method not in METHODS:
        raise ApproximationError(f"method={method!r}: choose one of {', '.join(METHODS)}")
    if not callable(fn):
        raise ApproximationError(f"fn={fn!r}: expected a callable on torch tensors")
    label = name or getattr(fn, "__name__", None) or repr(fn)
    mapped = _mapped_function(fn, interval, label)
    # Fail early, naming fn, if it is not finite on the interval.
    probe = mapped(np.linspace(-1.0, 1.0, 2001))
    if relative and np.any(probe == 0.0):
        raise ApproximationError(f"fn={label}: relative=True needs f != 0 on {interval}")

    extrema: tuple[float, ...] = ()
    if method == "chebyshev":
        cheb = (
            npcheb.chebinterpolate(mapped, degree)
            if degree > 0
            else np.array([mapped(np.zeros(1))[0]])
        )
    elif method == "lstsq":
        cheb = _least_squares(mapped, degree, relative)
    else:
        cheb, t_extrema = _remez(mapped, degree, relative)
        scale, offset = coef.affine_map(interval)
        extrema = tuple(float(v) for v in (t_extrema - offset) / scale)

    poly = Polynomial(tuple(cheb), interval, reference=label, method=method, extrema=extrema)
    cert = certify(poly, fn, interval, extra_points=extrema, relative=relative)
    return Polynomial(
        poly.chebyshev,
        interval,
        max_error=cert.max_error,
        error_kind="relative" if relative else "absolute",
        reference=label,
        method=method,
        extrema=extrema,
    )


def _mapped_function(
    fn: Callable, interval: tuple[float, float], label: str
) -> Callable[[np.ndarray], np.ndarray]:
    """g(t) = f(x(t)) with x(t) = (a + b)/2 + t (b - a)/2, in float64 numpy."""
    a, b = interval

    def g(t: np.ndarray) -> np.ndarray:
        x = np.clip((a + b) / 2 + np.asarray(t, dtype=np.float64) * (b - a) / 2, a, b)
        return reference_values(fn, x, name=f"fn={label}")

    return g


def _least_squares(
    g: Callable[[np.ndarray], np.ndarray], degree: int, relative: bool
) -> np.ndarray:
    t = np.linspace(-1.0, 1.0, max(10_000, 50 * (degree + 1)))
    y = g(t)
    weights = 1.0 / np.abs(y) if relative else None
    return npcheb.chebfit(t, y, degree, w=weights)


def _remez(
    g: Callable[[np.ndarray], np.ndarray], degree: int, relative: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Minimax Chebyshev coefficients of g on [-1, 1] and the points where the error
    equioscillates (empty if no Remez iterate beat the Chebyshev interpolant).

    Exchange algorithm: solve sum_k c_k T_k(t_i) + (-1)^i E w_i^-1 = g(t_i) on n + 2
    reference points (w = 1, or 1/|g| for relative error), locate the extrema of the error
    on a dense grid (one per maximal run of constant sign, polished by a bounded search),
    keep the n + 2 consecutive alternating ones containing the global maximum, repeat until
    the extrema's |error| agree to REMEZ_TOLERANCE.
    """
    n = degree
    search = _search_grid(n)
    g_search = g(search)
    # Keep the best iterate seen (smallest max error on the search grid), starting from the
    # Chebyshev interpolant: near machine precision the error is rounding noise, the
    # exchange can wander, and the result must never be worse than interpolation.
    best = npcheb.chebinterpolate(g, n) if n > 0 else np.array([float(g(np.zeros(1))[0])])
    best_error = float(np.max(np.abs(_error(best, search, g_search, relative))))
    best_extrema = np.zeros(0)
    # Chebyshev extreme points, warped slightly off symmetry: for odd or even functions a
    # symmetric reference can be interpolated exactly (levelled error 0, too few sign runs).
    ref = np.cos(np.pi * np.arange(n + 2)[::-1] / (n + 1))
    ref = ref + REFERENCE_WARP * (1.0 - ref**2)
    for _ in range(REMEZ_MAX_ITERATIONS):
        cheb = _solve_reference(g, ref, n, relative)
        err = _error(cheb, search, g_search, relative)
        new_ref, values = _exchange(cheb, g, search, err, n, relative)
        if new_ref is None:
            break
        biggest = float(np.max(np.abs(values)))
        if biggest < best_error:
            best, best_error, best_extrema = cheb, biggest, new_ref
        if biggest <= 1e-15 or (biggest - np.min(np.abs(values))) <= REMEZ_TOLERANCE * biggest:
            break
        ref = new_ref
    return best, best_extrema


def _search_grid(n: int) -> np.ndarray:
    m = max(4_000, SEARCH_POINTS_PER_DEGREE * (n + 2))
    uniform = np.linspace(-1.0, 1.0, m)
    clustered = np.cos(np.linspace(np.pi, 0.0, m))
    return np.unique(np.concatenate([uniform, clustered]))


def _solve_reference(g: Callable, ref: np.ndarray, n: int, relative: bool) -> np.ndarray:
    y = g(ref)
    signs = (-1.0) ** np.arange(n + 2)
    level = signs * (np.abs(y) if relative else 1.0)
    matrix = np.column_stack([npcheb.chebvander(ref, n), level])
    solution = np.linalg.solve(matrix, y)
    return solution[: n + 1]


def _error(cheb: np.ndarray, t: np.ndarray, y: np.ndarray, relative: bool) -> np.ndarray:
    e = npcheb.chebval(t, cheb) - y
    return e / np.abs(y) if relative else e


def _exchange(
    cheb: np.ndarray,
    g: Callable,
    t: np.ndarray,
    err: np.ndarray,
    n: int,
    relative: bool,
) -> tuple[np.ndarray | None, np.ndarray]:
    """New reference: one extremum per sign run, n + 2 consecutive around the global max."""
    sign = np.sign(err)
    # Treat exact zeros as belonging to the previous run.
    for i in range(1, sign.size):
        if sign[i] == 0:
            sign[i] = sign[i - 1]
    boundaries = np.flatnonzero(np.diff(sign) != 0) + 1
    runs = np.split(np.arange(t.size), boundaries)
    points, values = [], []
    for run in runs:
        i = int(run[np.argmax(np.abs(err[run]))])
        x, v = _polish(cheb, g, t, i, relative)
        points.append(x)
        values.append(v)
    points_a, values_a = np.asarray(points), np.asarray(values)
    if points_a.size < n + 2:
        return None, values_a
    if points_a.size > n + 2:
        start = _best_window(np.abs(values_a), n + 2)
        points_a = points_a[start : start + n + 2]
        values_a = values_a[start : start + n + 2]
    return points_a, values_a


def _best_window(magnitudes: np.ndarray, size: int) -> int:
    """Start of the window of `size` consecutive extrema that holds the global maximum and,
    among those, has the largest minimum."""
    top = int(np.argmax(magnitudes))
    best_start, best_min = 0, -math.inf
    for start in range(max(0, top - size + 1), min(top, magnitudes.size - size) + 1):
        smallest = float(np.min(magnitudes[start : start + size]))
        if smallest > best_min:
            best_start, best_min = start, smallest
    return best_start


def _polish(
    cheb: np.ndarray, g: Callable, t: np.ndarray, i: int, relative: bool
) -> tuple[float, float]:
    """Refine the grid extremum t[i] of the error by a bounded search between neighbours."""
    lo, hi = t[max(i - 1, 0)], t[min(i + 1, t.size - 1)]

    def signed(s: float) -> float:
        y = g(np.array([s]))
        return float(_error(cheb, np.array([s]), y, relative)[0])

    at_grid = signed(float(t[i]))
    if hi <= lo:
        return float(t[i]), at_grid
    direction = 1.0 if at_grid >= 0 else -1.0
    res = minimize_scalar(
        lambda s: -direction * signed(s),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-15},
    )
    value = signed(float(res.x))
    if abs(value) >= abs(at_grid):
        return float(res.x), value
    return float(t[i]), at_grid
