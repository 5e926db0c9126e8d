"""Softmax and power-softmax on secret shares: one reciprocal per row, no division per entry."""

from __future__ import annotations

import math

import torch

from approximations.functions import check_power_softmax_args
from approximations.library import catalog
from protocols.mpc.compare import (
    linear_combination,
    maximum,
    stacked_indicators,
    times_public_integers,
)
from protocols.mpc.exp import exp_by_squaring
from protocols.mpc.inverse import reciprocal
from protocols.mpc.polynomial import Secret, evaluate_polynomial, power

MASK_FLOOR = -1.0e4
"""Additive mask values are clamped to this (the ring holds +-2^47, but torch.finfo.min
does not fit); positions at the floor are dropped exactly (their weight is 0)."""

RECIPROCAL_FLOOR = 2.0**-12
"""Default low end of the power-softmax reciprocal's interval when eps is smaller."""


def softmax(
    x: Secret,
    dim: int = -1,
    *,
    squarings: int = 8,
    cutoff: float | None = 14.0,
    mask: torch.Tensor | None = None,
    order: int = 1,
    fss_bits: int | None = None,
) -> Secret:
    """softmax(x) along `dim`: PUMA's form with exp by squaring and one reciprocal per row.

    z = x + mask - max(x + mask) <= 0 (the tournament `maximum`, exact), e =
    exp_by_squaring(z, squarings, cutoff, order) (exactly 0 below -cutoff), s = sum e in
    [1, n] (the maximum contributes exactly 1; n = row length, public), w = e r with r the
    `reciprocal` of s on [1, n]. With order 1 this is `approximations.softmax(x, dim,
    "exp_limit", squarings=n, cutoff=T)`, the plaintext form the `approx` backend runs.
    `mask` is a PUBLIC additive tensor broadcastable to x (0 keeps, very negative drops,
    e.g. torch.finfo.min): it is clamped to MASK_FLOOR = -1e4 and added, and positions at
    the floor are multiplied by an exact public 0 after the exp. Every row needs at least
    one kept position.

    Error (max abs per weight): the exp's approximation error is a relative underestimate
    of about z^2/2^(n+1) (order 1), which biases each row sum low: up to 0.0098 on rows of
    128 N(0, 4) scores for n = 8 (7e-4 with squarings=7, order=2, at the same cost); then
    fixed point, up to about 2^n 2^-16 relative on each exp (<= 5e-3 against the plaintext
    form, measured), and the reciprocal's 1e-4 relative. Scores may spread by any amount
    with a cutoff; without one (cutoff=None: no comparison per entry, 40 % fewer bytes)
    every kept z must be >= -2^n.

    Rounds: ceil(log2 n) (8 + 1) for the max, n squarings (+1 for order 2), 8 + 1 for the
    cutoff, 13 for the reciprocal, 1 final product: 94 for n = 128 with the defaults.
    Bytes per entry and party: about 230 (max) + 8 per squaring + 232 (cutoff) + 8, plus
    the per-row reciprocal (216 per power of two in [1, n]): 545 for n = 128.

    With `fss_bits` (every score difference, masked ones included, within 2^(fss_bits - 1)
    in the ring: 32 covers |x| <= 1e4 at 16 fractional bits) the maximum's comparisons and
    the cutoff's come from the dealer's FSS keys (`compare.maximum`, `exp_by_squaring`).
    """
    n = x.size(dim)
    keep = None
    if mask is not None:
        additive = torch.as_tensor(mask, dtype=torch.float64).clamp(min=MASK_FLOOR)
        x = x + additive
        keep = (additive > MASK_FLOOR).to(torch.long)
    z = x - maximum(x, dim, keepdim=True, fss_bits=fss_bits)
    e = exp_by_squaring(z, squarings, cutoff, order=order, fss_bits=fss_bits)
    if keep is not None:
        e = times_public_integers(e, keep)
    return e * reciprocal(e.sum(dim, keepdim=True), (1.0, float(max(n, 2))))


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
      normalizer "mean": w_i = u_i^p / (L (mean_j u_j^p + eps)) = u_i^p / (sum_j u_j^p +
                         L eps), L = kept positions of the row (public); computed in the
                         second form, so nothing is divided by L and rounded.
    This equals `approximations.power_softmax(x / scale, ..., scale=False)`. The plaintext
    training form scale=True divides by the secret row max |x| + delta instead; for eps = 0
    the weights do not depend on the scale, for eps > 0 they differ through eps's relative
    size only. A secret row max would cost a tournament of comparisons: use a public
    bound (calibrated), which also keeps u^p within the fixed-point range (|u| <= 1).

    The denominator d lies in `interval` (in terms of the mean + eps for "mean"), by
    default [max(eps, 2^-12), n + eps] for "sum" and [max(eps, 2^-12), 1 + eps] for "mean"
    (valid when |u| <= 1); below its low end the reciprocal extrapolates.

    Error: u^p is held to 2^-16 absolutely and divided by d, so the weights' error is
    about 2^-16 / d (up to 1.5e-2 with eps = 1e-3 in rows whose sum u^p is below eps: a
    tight public scale keeps d large), plus w times d's own rounding over d (the n kept
    entries' roundings add up: about 0.7 sqrt(n) units of 2^-16 standard deviation),
    plus the reciprocal's 1e-4 relative. Rounds:
    ceil(log2 p) + 13 (reciprocal) + 1: 16 for p = 4. Bytes per entry and party: 8 per
    squaring of the power (16 per other product), 8 for the final product, plus the
    per-row reciprocal.
    """
    check_power_softmax_args(p, normalizer, eps)
    if scale is not None:
        if not scale > 0:
            raise ValueError(f"scale={scale!r}: must be a positive public bound on |x|")
        x = x * (1.0 / scale)
    powered = power(x, p)
    n = x.size(dim)
    if mask is not None:
        keep = torch.as_tensor(mask).to(torch.long).expand(tuple(x.size()))
        powered = times_public_integers(powered, keep)
        count = keep.sum(dim=dim, keepdim=True).clamp_min(1)
        fewest = int(count.min())
    else:
        count, fewest = torch.tensor(n), n
    total = powered.sum(dim, keepdim=True)
    lo, hi = interval or (max(float(eps), RECIPROCAL_FLOOR), 1.0 + eps)
    if normalizer == "sum":
        if interval is None:
            hi = float(n) + eps
        return powered * reciprocal(total + eps, (lo, hi))
    # total + L eps = L (mean + eps): no division by L, whose rounding would cost precision
    return powered * reciprocal(total + count.to(torch.float64) * eps, (lo * fewest, hi * n))


__all__ = ["MASK_FLOOR", "power_softmax", "softmax"]


ROW_SUM_FLOOR = 1.0
"""2Quad's row sum is taken to be at least this when the calibrated scores reach -c (the
sum is 0 only when every score of a row sits at -c; below 1 every score is within
1 / sqrt(n) of it): the reciprocal's interval starts here, so that 2^10 / sum keeps ten
more bits than 1 / sum would (`two_quad_softmax`)."""


def two_quad_softmax(
    x: Secret,
    dim: int = -1,
    c: float = 5.0,
    *,
    interval: tuple[float, float] | None = None,
) -> Secret:
    """MPCFormer's 2Quad (Li et al. 2023): w_i = (x_i + c)^2 / sum_j (x_j + c)^2, as
    `approximations.softmax(x, dim, "2quad", c=c)`. Not an approximation of softmax (a
    model needs distillation to use it): no max, no exp, no comparison per entry.

    `interval` is the calibrated [lo, hi] of x: the row sum s then lies in [n d^2, n m^2],
    d the distance from -c to [lo, hi] and m = max(|lo + c|, |hi + c|); where -c lies
    inside, the low end is ROW_SUM_FLOOR (below it the reciprocal extrapolates). Without
    `interval`, [ROW_SUM_FLOOR, 2^20]. 1 / s is far below one (1e-4 for a row of 128
    scores near 5): as 16-bit fixed point it would keep a few bits, so the kernel takes
    r = 2^k / s (the reciprocal's `shift`, k = log2(low end) + 10, within its headroom)
    and w = ((x + c)^2 r) 2^-k, the last a public scaling.

    Error against the plaintext 2Quad: about 2^-16 on each weight (the final scaling's
    rounding) plus w times r's relative error (1e-4, and 2^-16 / r: 1e-3 where s reaches
    n m^2). Rounds: 1 (square) + the reciprocal's 13 + 1 (product) + 1 (scaling): 16.
    Bytes per entry and party: 8 (square) + 16 (product) + 8 (scaling), plus per row the
    reciprocal's 216 per octave of its interval.
    """
    n = x.size(dim)
    shifted = x + c
    powered = shifted * shifted
    total = powered.sum(dim, keepdim=True)
    if interval is None:
        lo, hi = ROW_SUM_FLOOR, 2.0**20
    else:
        a, b = float(interval[0]) + c, float(interval[1]) + c
        nearest = 0.0 if a <= 0.0 <= b else min(abs(a), abs(b))
        farthest = max(abs(a), abs(b))
        lo = max(ROW_SUM_FLOOR, n * nearest**2)
        hi = max(n * farthest**2, 2.0 * lo)
    shift = math.floor(math.log2(lo)) + 10
    return (powered * reciprocal(total, (lo, hi), shift=shift)) * 2.0**-shift


TWO_PASS_UNDERFLOW = 16
"""Exponent gaps below -this give a weight of 0: 2^-17 is below the 2^-16 grid."""
MANTISSA = "exp2.two_pass_mantissa"
"""2^f on [0, 2] (the catalog's entry: degree 5, 1.1e-5 absolute, 2.8e-6 relative)."""


def floor_locally(x: Secret) -> Secret:
    """An integer n with n in {floor(x) - 1, floor(x)}, as a sharing at x's scale, with no
    communication: each party clears the fractional bits of its own share. The shares'
    remainders r_0 + r_1 equal (x 2^b mod 2^b) plus 0 or 2^b (a carry), so their sum minus
    both remainders is 2^b (floor(x) - carry), exactly, ring wrap-around included (nothing
    is divided, unlike SecureML's local truncation)."""
    out = x.clone()
    unit = 2 ** int(x.encoder._precision_bits)
    out.share = out.share - torch.remainder(out.share, unit)
    return out


def two_pass_softmax(x: Secret, dim: int = -1) -> Secret:
    """Softmax by Dukhan and Ablavatski's pairs (`approximations.functions.two_pass_softmax`):
    exp(x_i) = m_i 2^(n_i), the row sum as (M, N) with N the largest exponent.

        t = x log2(e),  n = `floor_locally`(t)            local (n may be floor(t) - 1)
        m = 2^(t - n) in [1, 4)                            a degree-5 polynomial: 3 rounds
        N = max_i n_i                                      the tournament: ceil(log2 n) (8 + 1)
        2^(n_i - N) = sum_k [n_i - N >= -k] w_k            ONE stacked comparison against
                      (k = 0 .. 16, w_k = 2^-k - 2^-(k+1), w_16 = 2^-16; exact on the grid)
        w_i = m_i 2^(n_i - N) / sum_j m_j 2^(n_j - N)      the reciprocal on [1, 4 n]

    What the pair changes under MPC: the exponent needs no squarings (2^d of an integer
    d <= 0 is a sum of indicator weights), but the row maximum is still a tournament, now
    over the integer exponents (the same comparisons: CrypTen compares 64-bit ring
    elements whatever they hold), and 2^d costs 17 comparisons per entry in one round, where
    exp by squaring costs squarings and at most one comparison. A public bound in place of
    N would drop the tournament, but a row whose maximum lies far below the bound then
    underflows the 2^-16 grid. Error: the mantissa's 2.8e-6 relative, fixed point, and
    weights below 2^-16 of the row's largest are dropped (exp's cut-off at -11.1)."""
    n_entries = x.size(dim)
    t = x * (1.0 / math.log(2.0))
    n = floor_locally(t)
    mantissa = catalog[MANTISSA].approximation
    m = evaluate_polynomial(t - n, mantissa.coefficients, mantissa.interval)
    gap = n - maximum(n, dim, keepdim=True)
    ks = range(TWO_PASS_UNDERFLOW + 1)
    weights = [2.0**-k - (2.0 ** -(k + 1) if k < TWO_PASS_UNDERFLOW else 0.0) for k in ks]
    below = stacked_indicators(gap, [-k - 0.5 for k in ks])
    scaled = m * linear_combination(below, weights, 0.0, like=x)
    return scaled * reciprocal(scaled.sum(dim, keepdim=True), (1.0, 4.0 * n_entries))
