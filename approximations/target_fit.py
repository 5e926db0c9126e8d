"""One polynomial on a calibrated interval, of the lowest degree that meets an error target.

`fit_to_target(fn, interval, target)` interpolates fn at Chebyshev points (`fit(...,
"chebyshev")`: near-minimax, no iteration, stable at degree 255) and searches the degree
by depth first: the first d = 2^k - 1 whose error reaches the target fixes the depth
ceil(log2(d + 1)) (CKKS levels, one more when the evaluation cannot fold the interval map,
`protocols.he.polynomial`), then the lowest degree of that depth that still reaches it
(fewer products). The search measures the error on a 20,001-point grid; the result's
`max_error` is certified as every fit's (`approximations.certify`: 200,000 points and
polished peaks) and is what the plan states.

Smooth functions converge geometrically in the degree: GELU (entire) on [-21, 21] needs
about degree 80 for 1e-4; tanh, whose poles at +-i pi/2 slow the convergence down to
about (1 + pi / (2 B))^-d on [-B, B], about 110 on [-17, 17]. Beyond the interval the
polynomial grows like T_d: inputs outside it are not covered.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from numpy.polynomial import chebyshev as npcheb

from approximations.certify import check_interval, reference_values
from approximations.errors import ApproximationError
from approximations.fitting import fit
from approximations.polynomial import Polynomial

MAX_DEGREE = 255
SEARCH_POINTS = 20_001

FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "erf": torch.erf,
    "silu": F.silu,
}
"""The functions `fit_function` fits by name."""
PARITY: dict[str, tuple[int, tuple[int, ...]]] = {
    "gelu": (0, (1,)),  # x/2 + an even function
    "silu": (0, (1,)),
    "tanh": (1, ()),  # odd
    "erf": (1, ()),
    "sigmoid": (1, (0,)),  # 1/2 + an odd function
}
"""function -> (the parity p of its Chebyshev terms on a symmetric interval, the indices
kept besides those k = p mod 2): `fit_function` fits on [-B, B] and keeps only these
(exactly zero otherwise), which halves the products of the evaluation."""


def _terms(degree: int, parity: tuple[int, tuple[int, ...]] | None) -> np.ndarray:
    """Which Chebyshev terms a fit keeps (all, or those of `PARITY`)."""
    keep = np.ones(degree + 1, dtype=bool)
    if parity is not None:
        p, extra = parity
        keep = np.arange(degree + 1) % 2 == p
        keep[[k for k in extra if k <= degree]] = True
    return keep


def _interpolant(
    values: Callable[[np.ndarray], np.ndarray],
    degree: int,
    parity: tuple[int, tuple[int, ...]] | None,
) -> np.ndarray:
    cheb = npcheb.chebinterpolate(values, degree) if degree > 0 else values(np.zeros(1))[:1]
    return np.where(_terms(degree, parity), cheb, 0.0)


def _search_error(
    values: Callable[[np.ndarray], np.ndarray],
    degree: int,
    t: np.ndarray,
    want: np.ndarray,
    parity: tuple[int, tuple[int, ...]] | None,
) -> float:
    cheb = _interpolant(values, degree, parity)
    return float(np.abs(npcheb.chebval(t, cheb) - want).max())


def fit_to_target(
    fn: Callable[[torch.Tensor], torch.Tensor],
    interval: tuple[float, float],
    target: float,
    max_degree: int = MAX_DEGREE,
    name: str | None = None,
    parity: tuple[int, tuple[int, ...]] | None = None,
) -> Polynomial:
    """The Chebyshev interpolant of `fn` on `interval` of the lowest depth, then lowest
    degree, whose error meets `target` (module docstring); the max_degree one if none
    does. `parity` (see PARITY; for a symmetric interval only) keeps only those terms.
    Its `max_error` is certified."""
    lo, hi = check_interval(interval)
    if not target > 0:
        raise ApproximationError(f"target={target!r}: must be positive")
    if not 1 <= max_degree <= 1023:
        raise ApproximationError(f"max_degree={max_degree!r}: expected 1 .. 1023")
    label = name or getattr(fn, "__name__", "fn")

    def values(t: np.ndarray) -> np.ndarray:
        x = (lo + hi) / 2 + np.asarray(t, dtype=np.float64) * (hi - lo) / 2
        return reference_values(fn, np.clip(x, lo, hi), name=label)

    t = np.linspace(-1.0, 1.0, SEARCH_POINTS)
    want = values(t)
    degree = None
    for k in range(1, math.ceil(math.log2(max_degree + 1)) + 1):
        top = min(2**k - 1, max_degree)
        if _search_error(values, top, t, want, parity) <= target:
            low = 2 ** (k - 1)  # the least degree of depth k (degree 1 for k = 1)
            while low < top:  # the error falls with the degree, to round-off
                middle = (low + top) // 2
                if _search_error(values, middle, t, want, parity) <= target:
                    top = middle
                else:
                    low = middle + 1
            degree = top
            break
    degree = degree if degree is not None else max_degree
    if parity is None:
        return fit(fn, (lo, hi), degree, "chebyshev", name=label)
    poly = Polynomial(tuple(_interpolant(values, degree, parity)), (lo, hi), method="chebyshev")
    return poly.certified(fn, reference=label)


@lru_cache(maxsize=128)
def fit_function(
    function: str, interval: tuple[float, float], target: float, max_degree: int = MAX_DEGREE
) -> Polynomial:
    """`fit_to_target` for one of FUNCTIONS by name on the symmetric [-B, B] covering
    `interval` (B = max(|lo|, |hi|)), only the terms of its PARITY kept (cached: the plan's
    kernels on every backend ask for the same fit)."""
    if function not in FUNCTIONS:
        raise ApproximationError(f"function={function!r}: one of {', '.join(FUNCTIONS)}")
    bound = max(abs(float(v)) for v in interval)
    return fit_to_target(
        FUNCTIONS[function], (-bound, bound), float(target), max_degree, function, PARITY[function]
    )


__all__ = ["FUNCTIONS", "MAX_DEGREE", "fit_function", "fit_to_target"]
