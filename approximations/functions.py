"""Function forms: `gelu`, `softmax` (and `power_softmax`), `layer_norm`.

Each takes torch tensors of any dtype, keeps autograd and stays `torch.export`-able. The
approximations they use come from `approximations.library` (the catalog), so the numbers
quoted there are the numbers these functions achieve.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from numpy.polynomial import chebyshev as npcheb

from approximations import lowdepth
from approximations.errors import ApproximationError
from approximations.even_gelu import even_part
from approximations.fitting import fit
from approximations.iterative import ExpBySquaring, InverseSqrt
from approximations.polynomial import Polynomial

GELU_METHODS = ("exact", "tanh", "sigmoid", "puma", "puma_refit", "bolt", "minimax", "quad")
SOFTMAX_METHODS = ("exact", "exp_limit", "power", "2quad")
POWER_NORMALIZERS = ("sum", "mean")
RSQRT_METHODS = ("exact", "newton", "poly")
RECIPROCAL_CHOICES = ("exact", "goldschmidt", "newton")


# --- GELU ---------------------------------------------------------------------------------
def check_gelu_method(method: str) -> None:
    if method not in GELU_METHODS:
        raise ApproximationError(f"method={method!r}: GELU methods are {', '.join(GELU_METHODS)}")


def gelu(
    x: torch.Tensor, method: str = "puma_refit", interval: tuple[float, float] | None = None
) -> torch.Tensor:
    """GELU(x) = x Phi(x) or an approximation of it.

    exact    x/2 (1 + erf(x / sqrt 2))
    tanh     x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))   (torch's approximate="tanh")
    sigmoid  x sigmoid(1.702 x)                               (CrypTen-style)
    puma     PUMA's piecewise polynomial (degrees 3 and 6) with its published
             coefficients: error 0.0199 (just below x = 3), 0 beyond the ends
    puma_refit  the same segments and degrees, coefficients refit by Remez: error 0.0075
    bolt     0 below -2.7, x above 2.7, a degree-4 minimax polynomial between
    minimax  one degree-20 minimax polynomial on [-8, 8] (diverges outside it); with
             `interval` = (-B, B) one minimax polynomial fitted there instead
             (`gelu_minimax_on`: degree and certified error chosen by B)
    quad     MPCFormer's 0.125 x^2 + 0.25 x + 0.5 (a replacement that needs distillation)
    The errors of each are in `approximations.library`.
    """
    check_gelu_method(method)
    if interval is not None:
        return even_gelu_form(x, gelu_minimax_on(gelu_bound(method, interval)))
    from approximations.library import catalog

    approximation = catalog[f"gelu.{method}"].approximation
    if method == "minimax":  # one polynomial: evaluated in log depth, not by Clenshaw
        return lowdepth.evaluate(approximation, x)
    return approximation(x)


# --- softmax ------------------------------------------------------------------------------
def check_power_softmax_args(p: int, normalizer: str, eps: float) -> None:
    if isinstance(p, bool) or not isinstance(p, int) or p <= 0 or p % 2:
        raise ApproximationError(
            f"p={p!r}: power-softmax needs a positive even integer (4 to 8 work well)"
        )
    if normalizer not in POWER_NORMALIZERS:
        raise ApproximationError(f"normalizer={normalizer!r}: choose 'sum' or 'mean'")
    if not eps >= 0:
        raise ApproximationError(f"eps={eps!r}: must be >= 0")


def _reciprocal(value: torch.Tensor, reciprocal: str) -> torch.Tensor:
    if reciprocal == "exact":
        return 1.0 / value
    if reciprocal not in RECIPROCAL_CHOICES:
        raise ApproximationError(
            f"reciprocal={reciprocal!r}: choose one of {', '.join(RECIPROCAL_CHOICES)}"
        )
    from approximations.library import catalog

    return catalog[f"reciprocal.{reciprocal}"].approximation(value)


def _keep(mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(x) if mask is None else mask.to(x.dtype).expand_as(x)


def check_power_softmax_scale(scale: bool | float) -> None:
    if isinstance(scale, bool):
        return
    if not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        raise ApproximationError(
            f"scale={scale!r}: expected True (divide by the row's max |x|), False, or a "
            "positive constant"
        )


def _power_terms(
    x: torch.Tensor,
    dim: int,
    p: int,
    normalizer: str,
    eps: float,
    scale: bool | float,
    mask: torch.Tensor | None,
    delta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | int | None]:
    """(powered, the reciprocal's input, count L or None for "sum") of `power_softmax`.
    Without a mask nothing is multiplied by ones and L is the row length (a product less
    on the way under HE)."""
    check_power_softmax_args(p, normalizer, eps)
    check_power_softmax_scale(scale)
    keep = None if mask is None else _keep(mask, x)
    if scale is True:
        magnitude = x.detach().abs() if keep is None else x.detach().abs() * keep
        x = x / (magnitude.amax(dim=dim, keepdim=True) + delta)
    elif scale is not False:
        x = x / float(scale)
    powered = x**p if keep is None else x**p * keep
    total = powered.sum(dim=dim, keepdim=True)
    if normalizer == "sum":
        return powered, total + eps, None
    count = x.shape[dim] if keep is None else keep.sum(dim=dim, keepdim=True).clamp_min(1.0)
    return powered, total / count + eps, count


def power_softmax(
    x: torch.Tensor,
    dim: int = -1,
    p: int = 4,
    normalizer: str = "sum",
    eps: float = 1e-6,
    scale: bool | float = True,
    mask: torch.Tensor | None = None,
    delta: float = 1e-6,
    reciprocal: str = "exact",
) -> torch.Tensor:
    """Power-softmax (Zimerman et al., arXiv 2410.09457): w_i = x_i^p / normaliser.

    scale=True first divides x by c = max_i |x_i| + delta (treated as a constant), the
    paper's stable training form; with eps = 0 this leaves the weights unchanged. It needs
    a row maximum (comparisons): under HE give a positive constant c instead (calibrated:
    `approximations.convert(..., samples=...)`), which keeps |x / c|^p <= 1 for |x| <= c.
    normalizer="sum":  w_i = x_i^p / (sum_j x_j^p + eps).
    normalizer="mean": w_i = x_i^p / (L (mean_j x_j^p + eps)), the inference form: the
    reciprocal's input mean + eps stays in a bounded range whatever L is (L = number of
    kept positions, public); with a constant c it lies in [eps, 1 + eps] for |x| <= c.
    `mask` is multiplicative: 1 keeps a position, 0 drops it.
    """
    powered, denominator, count = _power_terms(x, dim, p, normalizer, eps, scale, mask, delta)
    if count is not None:  # beside the reciprocal, not after it: no extra depth
        powered = powered / count
    return powered * _reciprocal(denominator, reciprocal)


def power_softmax_normaliser(
    x: torch.Tensor,
    dim: int = -1,
    p: int = 4,
    normalizer: str = "sum",
    eps: float = 1e-6,
    scale: bool | float = True,
    mask: torch.Tensor | None = None,
    delta: float = 1e-6,
) -> torch.Tensor:
    """The reciprocal's input in `power_softmax` (same arguments): sum_j x_j^p + eps, or
    mean_j x_j^p + eps, of the scaled x, one value per row (keepdim)."""
    return _power_terms(x, dim, p, normalizer, eps, scale, mask, delta)[1]


def softmax(
    x: torch.Tensor,
    dim: int = -1,
    method: str = "exact",
    *,
    mask: torch.Tensor | None = None,
    squarings: int = 8,
    cutoff: float = 14.0,
    reciprocal: str = "exact",
    p: int = 4,
    normalizer: str = "sum",
    eps: float = 1e-6,
    scale: bool = True,
    c: float = 5.0,
    order: int = 1,
) -> torch.Tensor:
    """Softmax along `dim` or an MPC/HE-friendly variant.

    exact      exp(x_i) / sum_j exp(x_j)
    exp_limit  PUMA: z = x - max(x); exp(z) ~ (1 + z/2^n)^(2^n) with n = `squarings`, set
               to 0 where z < -cutoff; one reciprocal of the row sum (>= 1, since the max
               contributes exactly 1), then a product. Error per weight about
               2 e^-2 / 2^n plus the reciprocal's. `order` 2 takes the base
               1 + u + u^2/2 (`ExpBySquaring`): with one squaring fewer, the same cost
               and about 20 times less error.
    power      power-softmax, see `power_softmax` (p, normalizer, eps, scale)
    2quad      MPCFormer: (x_i + c)^2 / sum_j (x_j + c)^2 (needs distillation)
    `mask` is multiplicative (1 keep, 0 drop), broadcastable to x. `reciprocal` picks the
    row-sum reciprocal: "exact" or a catalog method ("goldschmidt", "newton").
    """
    if method not in SOFTMAX_METHODS:
        raise ApproximationError(
            f"method={method!r}: softmax methods are {', '.join(SOFTMAX_METHODS)}"
        )
    keep = _keep(mask, x)
    if method == "exact":
        if mask is None:
            return torch.softmax(x, dim=dim)
        return torch.softmax(x.masked_fill(keep == 0, float("-inf")), dim=dim) * keep
    if method == "power":
        return power_softmax(x, dim, p, normalizer, eps, scale, mask, reciprocal=reciprocal)
    if method == "2quad":
        powered = (x + c) ** 2 * keep
        return powered * _reciprocal(powered.sum(dim=dim, keepdim=True), reciprocal)
    exp = _exp_by_squaring(squarings, cutoff, order)
    shifted = x - x.masked_fill(keep == 0, float("-inf")).amax(dim=dim, keepdim=True).detach()
    shifted = shifted.masked_fill(keep == 0, -cutoff - 1.0)
    weights = exp(shifted) * keep
    return weights * _reciprocal(weights.sum(dim=dim, keepdim=True), reciprocal)


def exp_pairs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """exp(x) as the pair (m, n) with exp(x) = m 2^n: n = round(x / ln 2), an integer, and
    m = exp(x - n ln 2) in [2^-1/2, 2^1/2] (Dukhan and Ablavatski's representation: no
    overflow for any finite x, and m's range is fixed whatever x is)."""
    n = torch.round(x / math.log(2.0))
    return torch.exp(x - n * math.log(2.0)), n


def two_pass_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax in two passes over x (Dukhan and Ablavatski 2020), the plaintext reference.

    Pass 1 reads each x_i once as its pair (m_i, n_i) (`exp_pairs`) and accumulates the
    row sum as a pair too, (M, N) with N = max_i n_i and M = sum_i m_i 2^(n_i - N): the
    maximum is over the integer exponents, taken on the fly, so no pass over x finds
    max x first. Pass 2 writes w_i = (m_i / M) 2^(n_i - N). Exact in real arithmetic (it is
    softmax); in float64 within a few ulps, and finite for inputs where exp overflows.
    Under MPC the exponents' maximum is still a comparison tournament, over small
    integers instead of fixed-point scores: the pair changes what is compared, not
    whether (issue 17, part 1, measures what that is worth)."""
    m, n = exp_pairs(x)
    top = n.amax(dim=dim, keepdim=True)
    scaled = m * torch.exp2(n - top)
    return scaled / scaled.sum(dim=dim, keepdim=True)


@lru_cache(maxsize=32)
def _exp_by_squaring(squarings: int, cutoff: float, order: int = 1) -> ExpBySquaring:
    return ExpBySquaring(squarings=squarings, interval=(-cutoff, 0.0), cutoff=cutoff, order=order)


# --- LayerNorm ----------------------------------------------------------------------------
def check_rsqrt_method(rsqrt: str, interval: tuple[float, float] | None) -> None:
    if rsqrt not in RSQRT_METHODS:
        raise ApproximationError(f"rsqrt={rsqrt!r}: choose one of {', '.join(RSQRT_METHODS)}")
    if rsqrt == "poly" and interval is None:
        raise ApproximationError(
            "rsqrt='poly' needs interval=(lo, hi): the calibrated range of var + eps "
            "(a polynomial is accurate only there)"
        )
    if interval is not None:
        rsqrt_approximation(rsqrt, tuple(interval))  # validates the interval


@lru_cache(maxsize=64)
def rsqrt_approximation(rsqrt: str, interval: tuple[float, float] | None) -> InverseSqrt | None:
    """The InverseSqrt object behind a `layer_norm` rsqrt choice (None for "exact").

    newton  normalised: degree-2 guess on [0.25, 1) + 2 Newton steps (MPC)
    poly    polynomial-only on `interval` (HE): the shallowest relative-minimax guess +
            Newton steps reaching 1e-3 relative error (`InverseSqrt.polynomial_only`)
    The initial polynomial is fitted here, eagerly: fitting evaluates torch functions, which
    must not happen for the first time inside a torch.export trace.
    """
    if rsqrt == "exact":
        return None
    if rsqrt == "newton":
        approx = InverseSqrt(
            interval=interval or (1e-5, 1e5), iterations=2, initial_degree=2, normalise=True
        )
    elif interval is None:
        raise ApproximationError("rsqrt='poly' needs interval=(lo, hi)")
    else:
        approx = _poly_rsqrt(interval)
    _ = approx.initial
    return approx


def _poly_rsqrt(interval: tuple[float, float]) -> InverseSqrt:
    """`InverseSqrt.polynomial_only(interval)`; for an interval whose ends lie on the grid
    2^(k/4) (calibration's), the configuration found on 4^j times it, lo in [1, 4).

    1/sqrt is homogeneous: 2^j rsqrt(4^j v) = rsqrt(v), the relative-minimax guess of a
    given degree scales the same way, and Newton's steps commute with the scaling, so the
    shallowest configuration (degree, steps, guess scale) on [lo, hi] is the one on
    [4^j lo, 4^j hi]. Searching once per shape lets LayerNorms whose calibrated intervals
    differ by powers of four share the search (about 5 s); each still fits its own guess.
    """
    lo, hi = float(interval[0]), float(interval[1])
    shift = -math.floor(math.log(lo, 4)) if lo > 0 else 0
    if not (_on_quarter_octaves(lo) and _on_quarter_octaves(hi)) or shift == 0:
        return InverseSqrt.polynomial_only((lo, hi))
    shape = rsqrt_approximation("poly", (lo * 4.0**shift, hi * 4.0**shift))
    assert shape is not None
    return InverseSqrt(
        interval=(lo, hi),
        iterations=shape.iterations,
        initial_degree=shape.initial_degree,
        normalise=False,
        guess_scale=shape.guess_scale,
    )


def _on_quarter_octaves(value: float) -> bool:
    """value = 2^(k/4) for an integer k (to rounding)."""
    if not value > 0:
        return False
    k = 4 * math.log2(value)
    return abs(k - round(k)) < 1e-9


def prepare_gelu(method: str, interval: tuple[float, float] | None = None) -> None:
    """Build (fit) the approximation behind `gelu(x, method, interval)` now, outside any
    trace."""
    check_gelu_method(method)
    if interval is not None:
        gelu_minimax_on(gelu_bound(method, interval))
        return
    from approximations.library import catalog

    _ = catalog[f"gelu.{method}"].approximation


GELU_RELATIVE_TARGET = 1e-3
"""`gelu_minimax_on(B)` aims at a max error of 1e-3 B: GELU's values on [-B, B] reach B, and
an absolute error that grows with the input scale keeps the degree affordable."""
GELU_MAX_DEGREE = 32
"""Highest degree of q in `gelu_minimax_on` (64 in x)."""
GELU_TAIL_TERMS = 256
GELU_TAIL_FACTOR = 0.7
"""The degree-k minimax error of q, estimated as 0.7 times the sum of q's Chebyshev
coefficients beyond k (measured ratio 0.55 to 0.70 for B = 8 to 32): the estimate picks k,
one Remez fit then certifies it (one degree more if it misses)."""


def gelu_bound(method: str, interval: tuple[float, float]) -> float:
    """B = max(|lo|, |hi|) of a GELU `interval` (the fit covers the symmetric [-B, B]);
    only "minimax" takes an interval."""
    if method != "minimax":
        raise ApproximationError(
            f"interval={interval!r}: only GELU method 'minimax' is fitted on an interval "
            f"({method!r} has a fixed form)"
        )
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ApproximationError(f"interval={interval!r}: expected (lo, hi)") from None
    bound = max(abs(lo), abs(hi))
    if not (math.isfinite(bound) and bound > 0 and lo < hi):
        raise ApproximationError(f"interval={interval!r}: expected finite lo < hi")
    return bound


@lru_cache(maxsize=64)
def gelu_minimax_on(bound: float) -> Polynomial:
    """q with GELU(x) ~ x/2 + q(x^2) on [-B, B] (B = `bound`), error certified.

    GELU(x) - x/2 is even, so its best uniform approximation of degree 2k is q(x^2) with q
    the degree-k minimax of E(sqrt s) on s in [0, B^2] (`even_gelu.even_part`): the same
    error as a degree-2k minimax in x at half the sequential products (a secure
    evaluation computes x^2 once, then q). k is the lowest degree estimated to reach
    GELU_RELATIVE_TARGET B (GELU_TAIL_FACTOR), at most GELU_MAX_DEGREE; Remez fits q and
    `max_error` certifies it (absolute error of GELU on [-B, B]). Measured trade-off,
    certified error by bound B and degree 2k in x (the target 1e-3 B picks 2k = 10 at
    B = 4, 18 at B = 8, 32 at B = 16, 54 at B = 32):

        B     2k = 16   24       32       40       48
        8     1.1e-2    6.3e-4   1.9e-5
        12    5.0e-2    1.1e-2   1.7e-3
        17    1.1e-1    4.3e-2   1.5e-2
        24    1.9e-1    9.9e-2   5.0e-2   2.4e-2   1.1e-2
        32    2.7e-1    1.6e-1   9.9e-2   6.0e-2   3.5e-2

    A polynomial diverges outside its interval (T_k grows like cosh(k arccosh t)), so B
    must come from calibration with a margin (`approximations.calibration`).
    """
    target = GELU_RELATIVE_TARGET * bound
    domain = (0.0, bound * bound)

    def mapped(t: np.ndarray) -> np.ndarray:
        s = (np.asarray(t, dtype=np.float64) + 1.0) * (bound * bound) / 2
        return even_part(torch.from_numpy(s)).numpy()

    tails = np.cumsum(np.abs(npcheb.chebinterpolate(mapped, GELU_TAIL_TERMS))[::-1])[::-1]
    degree = next(
        (k for k in range(1, GELU_MAX_DEGREE) if GELU_TAIL_FACTOR * tails[k + 1] <= target),
        GELU_MAX_DEGREE,
    )
    while True:
        poly = fit(even_part, domain, degree, "remez", name="gelu_even_part")
        if degree >= GELU_MAX_DEGREE or (poly.max_error or 0.0) <= target:
            return poly
        degree += 1


def even_gelu_form(x: torch.Tensor, q: Polynomial) -> torch.Tensor:
    """x/2 + q(x^2), in x's dtype, differentiable; q in logarithmic depth
    (`approximations.lowdepth`: depth about 3 + log2(deg q) counted from x)."""
    return 0.5 * x + lowdepth.evaluate(q, x * x)


def layer_norm(
    x: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    rsqrt: str = "exact",
    interval: tuple[float, float] | None = None,
) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the trailing `normalized_shape`
    dimensions, with 1/sqrt computed by `rsqrt` (see `rsqrt_approximation`)."""
    check_rsqrt_method(rsqrt, interval)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    dims = tuple(range(-len(shape), 0))
    mean = x.mean(dim=dims, keepdim=True)
    centred = x - mean
    var = (centred * centred).mean(dim=dims, keepdim=True)
    approx = rsqrt_approximation(rsqrt, tuple(interval) if interval is not None else None)
    if approx is None:
        inv = torch.rsqrt(var + eps)
    elif rsqrt == "poly":  # the guess in log depth (`lowdepth`), then Newton's steps
        inv = approx.iterate(var + eps, lambda v: lowdepth.evaluate(approx.initial, v))
    else:
        inv = approx(var + eps)
    out = centred * inv
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out
