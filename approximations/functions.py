"""Function forms: `gelu`, `softmax` (and `power_softmax`), `layer_norm`.

Each takes torch tensors of any dtype, keeps autograd and stays `torch.export`-able. The
approximations they use come from `approximations.library` (the catalog), so the numbers
quoted there are the numbers these functions achieve.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch

from approximations.errors import ApproximationError
from approximations.iterative import ExpBySquaring, InverseSqrt

GELU_METHODS = ("exact", "tanh", "sigmoid", "puma", "puma_refit", "bolt", "minimax", "quad")
SOFTMAX_METHODS = ("exact", "exp_limit", "power", "2quad")
POWER_NORMALIZERS = ("sum", "mean")
RSQRT_METHODS = ("exact", "newton", "poly")
RECIPROCAL_CHOICES = ("exact", "goldschmidt", "newton")


# --- GELU ---------------------------------------------------------------------------------
def check_gelu_method(method: str) -> None:
    if method not in GELU_METHODS:
        raise ApproximationError(f"method={method!r}: GELU methods are {', '.join(GELU_METHODS)}")


def gelu(x: torch.Tensor, method: str = "puma_refit") -> torch.Tensor:
    """GELU(x) = x Phi(x) or an approximation of it.

    exact    x/2 (1 + erf(x / sqrt 2))
    tanh     x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))   (torch's approximate="tanh")
    sigmoid  x sigmoid(1.702 x)                               (CrypTen-style)
    puma     PUMA's piecewise polynomial (degrees 3 and 6) with its published
             coefficients: error 0.0199 (just below x = 3), 0 beyond the ends
    puma_refit  the same segments and degrees, coefficients refit by Remez: error 0.0075
    bolt     0 below -2.7, x above 2.7, a degree-4 minimax polynomial between
    minimax  one degree-20 minimax polynomial on [-8, 8] (diverges outside it)
    quad     MPCFormer's 0.125 x^2 + 0.25 x + 0.5 (a replacement that needs distillation)
    The errors of each are in `approximations.library`.
    """
    check_gelu_method(method)
    from approximations.library import catalog

    return catalog[f"gelu.{method}"].approximation(x)


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


def power_softmax(
    x: torch.Tensor,
    dim: int = -1,
    p: int = 4,
    normalizer: str = "sum",
    eps: float = 1e-6,
    scale: bool = True,
    mask: torch.Tensor | None = None,
    delta: float = 1e-6,
    reciprocal: str = "exact",
) -> torch.Tensor:
    """Power-softmax (Zimerman et al., arXiv 2410.09457): w_i = x_i^p / normaliser.

    scale=True first divides x by c = max_i |x_i| + delta (treated as a constant), the
    paper's stable training form; with eps = 0 this leaves the weights unchanged.
    normalizer="sum":  w_i = x_i^p / (sum_j x_j^p + eps).
    normalizer="mean": w_i = x_i^p / (L (mean_j x_j^p + eps)), the inference form: the
    reciprocal's input mean + eps stays in a bounded range whatever L is (L = number of
    kept positions, public). `mask` is multiplicative: 1 keeps a position, 0 drops it.
    """
    check_power_softmax_args(p, normalizer, eps)
    keep = _keep(mask, x)
    if scale:
        c = (x.detach().abs() * keep).amax(dim=dim, keepdim=True) + delta
        x = x / c
    powered = x**p * keep
    total = powered.sum(dim=dim, keepdim=True)
    if normalizer == "sum":
        return powered * _reciprocal(total + eps, reciprocal)
    count = keep.sum(dim=dim, keepdim=True).clamp_min(1.0)
    return powered * _reciprocal(total / count + eps, reciprocal) / count


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
        approx = InverseSqrt.polynomial_only(interval)
    _ = approx.initial
    return approx


def prepare_gelu(method: str) -> None:
    """Build (fit) the approximation behind `gelu(x, method)` now, outside any trace."""
    check_gelu_method(method)
    from approximations.library import catalog

    _ = catalog[f"gelu.{method}"].approximation


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
    inv = torch.rsqrt(var + eps) if approx is None else approx(var + eps)
    out = centred * inv
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out
