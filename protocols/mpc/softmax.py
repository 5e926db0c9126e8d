"""Softmax and power-softmax on secret shares: one reciprocal per row, no division per entry."""

from __future__ import annotations

import math

import torch

from approximations.functions import check_power_softmax_args
from protocols.mpc.compare import maximum, times_public_integers
from protocols.mpc.exp import exp_by_squaring
from protocols.mpc.inverse import reciprocal
from protocols.mpc.polynomial import Secret, power

MASK_FLOOR = -1.0e4
"""Additive mask values are clamped to this (the ring holds +-2^47, but torch.finfo.min
does not fit); positions at the floor are dropped exactly (their weight is 0)."""

RECIPROCAL_FLOOR = 2.0**-12
"""Default low end of the power-softmax reciprocal's interval when eps is smaller."""


def _shift_for(hi: float) -> int:
    """g with 2^g / hi >= 1: the reciprocal then keeps its 16 fractional bits."""
    return max(0, math.ceil(math.log2(hi)))


def softmax(
    x: Secret,
    dim: int = -1,
    *,
    squarings: int = 8,
    cutoff: float | None = 14.0,
    mask: torch.Tensor | None = None,
    order: int = 1,
) -> Secret:
    """softmax(x) along `dim`: PUMA's form with exp by squaring and one reciprocal per row.

    z = x + mask - max(x + mask) <= 0 (the tournament `maximum`), e = exp_by_squaring(z)
    (0 below -cutoff), s = sum e in [1, n] (the maximum contributes exactly 1; n = row
    length, public), w = e * (2^g / s) / 2^g with the reciprocal on [1, n] and g =
    ceil(log2 n) so that 2^g/s keeps its precision. `mask` is a PUBLIC additive tensor
    broadcastable to x (0 keeps, very negative drops, e.g. torch.finfo.min): it is clamped
    to MASK_FLOOR = -1e4 and added, and positions at the floor are multiplied by an exact
    public 0 after the exp. Every row needs at least one kept position.

    Error (max abs per weight): exp's approximation error <= 2 e^-2/2^n (1.06e-3 for
    n = 8), plus its fixed-point error, up to about 2^n 2^-16 relative (measured below
    4e-3 for n = 8), plus the reciprocal's 1e-4 relative: a few 1e-3 in all. Scores may
    spread by any amount with a cutoff; without one (cutoff=None, cheaper: no comparison
    per entry) every kept z must be >= -2^n.

    Rounds: ceil(log2 n) (8 + 1) for the max, n squarings, 8 + 1 for the cutoff, 13 for
    the reciprocal, 1 final product: 94 for n = 128 with the defaults. Bytes per entry and
    party: about 232 (max) + 8 n + 232 (cutoff) + 16, plus the per-row reciprocal.
    """
    n = x.size(dim)
    keep = None
    if mask is not None:
        additive = torch.as_tensor(mask, dtype=torch.float64).clamp(min=MASK_FLOOR)
        x = x + additive
        keep = (additive > MASK_FLOOR).to(torch.long)
    z = x - maximum(x, dim, keepdim=True)
    e = exp_by_squaring(z, squarings, cutoff, order=order)
    if keep is not None:
        e = times_public_integers(e, keep)
    g = _shift_for(n)
    inverse = reciprocal(e.sum(dim, keepdim=True), (1.0, float(max(n, 2))), shift=g)
    return (e * inverse).div(2**g)


def power_softmax(
    x: Secret,
    dim: int = -1,
    p: int = 4,
    normalizer: str = "sum",
    eps: float = 1e-6,
    *,
    scale: float | None = None,
    mask: torch.Tensor | None = None,
    interval: tuple[float, float] | None = None,
) -> Secret:
    """Power-softmax (Zimerman et al. 2024) as in `approximations.power_softmax`.

    With u = x / scale (a PUBLIC bound on |x|, or x itself when scale is None) and the
    multiplicative PUBLIC 0/1 `mask` (1 keeps, 0 drops; broadcastable to x):
      normalizer "sum":  w_i = u_i^p / (sum_j u_j^p + eps)
      normalizer "mean": w_i = u_i^p / (L (mean_j u_j^p + eps)), L = kept positions (public)
    This equals `approximations.power_softmax(x / scale, ..., scale=False)`. The plaintext
    training form scale=True divides by the secret row max |x| + delta instead; for eps = 0
    the weights do not depend on the scale, for eps > 0 they differ by eps's relative
    weight only. A secret row max would cost a tournament of comparisons: use a public
    bound (calibrated), which also keeps u^p inside the fixed-point range (|u| <= 1).

    The reciprocal's input lies in `interval`, by default [max(eps, 2^-12), n] for "sum"
    and [max(eps, 2^-12), 1 + eps] for "mean" (valid when |u| <= 1); below its low end it
    extrapolates and loses accuracy, so keep eps >= 1e-3 (the paper's inference setting).

    Error: p |du|/|u| from u's rounding, plus the reciprocal's 1e-4 relative, plus about
    2^-16 absolute. Rounds: ceil(log2 p) + 13 (reciprocal) + 1. Bytes per entry and party:
    about 8-16 per product of the power, plus 16.
    """
    check_power_softmax_args(p, normalizer, eps)
    if scale is not None:
        if not scale > 0:
            raise ValueError(f"scale={scale!r}: must be a positive public bound on |x|")
        x = x * (1.0 / scale)
    powered = power(x, p)
    n = x.size(dim)
    if mask is not None:
        keep = torch.as_tensor(mask).to(torch.long)
        powered = times_public_integers(powered, keep)
        count = keep.expand(x.size()).sum(dim=dim, keepdim=True).clamp_min(1)
    else:
        count = torch.tensor(n, dtype=torch.long)
    total = powered.sum(dim, keepdim=True)
    low = max(float(eps), RECIPROCAL_FLOOR)
    if normalizer == "sum":
        lo, hi = interval or (low, float(n) + eps)
        den = total + eps
    else:
        lo, hi = interval or (low, 1.0 + eps)
        den = total.div(count) + eps
    g = _shift_for(hi)
    weights = (powered * reciprocal(den, (lo, hi), shift=g)).div(2**g)
    return weights if normalizer == "sum" else weights.div(count)


__all__ = ["MASK_FLOOR", "power_softmax", "softmax"]
