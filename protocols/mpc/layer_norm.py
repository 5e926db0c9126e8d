"""LayerNorm on secret shares: the mean is local, one product for the variance, one inverse
square root per row on a calibrated public interval."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from protocols.mpc import reuse
from protocols.mpc.inverse import inv_sqrt
from protocols.mpc.polynomial import Secret

RSQRT_SETTINGS = {"step": 4, "degree": 4, "newton": 2}
"""Octaves of ratio 16 (half the comparisons of ratio 4: a comparison costs ~27 products'
bytes and there is one per row), a degree-4 guess and two Newton steps: 1.4e-5 relative."""


def output_shift(interval: tuple[float, float]) -> int:
    """g such that 2^g / sqrt(S) lies in [2^-4, ...) over the interval of S (see below)."""
    return max(0, math.ceil(math.log2(math.sqrt(interval[1]))) - 4)


def layer_norm(
    x: Secret,
    normalized_shape: int | Sequence[int],
    weight: Secret | torch.Tensor | None = None,
    bias: Secret | torch.Tensor | None = None,
    eps: float = 1e-5,
    variance_interval: tuple[float, float] = (1e-3, 1e3),
    fss_bits: int | None = None,
) -> Secret:
    """(x - mean) / sqrt(var + eps) * weight + bias over the trailing `normalized_shape`.

    With n entries per row: c = x - (sum x)/n (local), S = sum c^2 (one squaring; not
    divided by n, which would round a variance of 1e-3 to 65 units of 2^-16), then
    f = 2^g / sqrt(S + n eps) by `inv_sqrt` on the public interval n (variance_interval +
    eps), and out = (c f) (sqrt(n) / 2^g), since c / sqrt(var + eps) = sqrt(n) c /
    sqrt(S + n eps). The shift g (`output_shift`) keeps f >= 1/16 (its relative rounding
    below 2^-12) while c f stays a few units (2^g/sqrt(S) ~ sqrt(n)/2^4 per standard
    deviation): CrypTen's two-party truncation fails with probability about |v| 2^-32 per
    product of value v, so large per-element products are avoided (the squares c^2 are the
    largest, about var each). weight and bias are the model owner's (MPCTensors), public
    tensors, or None.

    Valid when every row's variance lies in `variance_interval` (public, calibrated on
    sample inputs); outside it the inverse square root extrapolates. With `fss_bits`
    (S + n eps - 4^j within 2^(fss_bits - 1)) inv_sqrt's octave comparison comes from the
    dealer's FSS keys: one round and 8 bytes per row instead of 8 rounds and 216 per
    octave.

    Error: relative about 1.4e-5 from inv_sqrt (RSQRT_SETTINGS), 2^-16/|f| from
    f's rounding (<= 1.5e-4 at the top of [1e-3, 1e3]), plus the mean's rounding, one unit
    of 2^-16 shared by the row: 2^-16 / sqrt(var) absolute on the normalised output
    (4.8e-4 at var = 1e-3); all times |weight|. Rounds: 1 (squares) + 16 (inv_sqrt:
    comparison 8, normalise 1, polynomial 2, Newton 2 x 2, scale 1) + 1 (c f) + 1 with a
    secret weight: 19. Bytes per element and party: 8 for c, opened once (with the dealer,
    `protocols.mpc.reuse` keeps its mask for the square and for c f, which then opens
    only f's per-row values; 16 with CrypTen's own products) + 8 (a secret weight), plus
    per row 216 per octave of ratio 16 of n (variance_interval + eps) (5
    for [1e-3, 1e3] and n = 384) and about 200 for the rest of inv_sqrt.
    """
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    dims = tuple(range(x.dim() - len(shape), x.dim()))
    if tuple(x.size())[-len(shape) :] != shape:
        raise ValueError(f"normalized_shape={shape}: x has shape {tuple(x.size())}")
    lo, hi = float(variance_interval[0]), float(variance_interval[1])
    if not 0 <= lo < hi:
        raise ValueError(f"variance_interval=({lo}, {hi}): expected 0 <= lo < hi")
    n = math.prod(shape)
    total = x
    for d in reversed(dims):
        total = total.sum(d, keepdim=True)
    centred = x - total.div(n)
    key = reuse.new_key("layer_norm")
    squares = reuse.square(centred, key=key)
    for d in reversed(dims):
        squares = squares.sum(d, keepdim=True)
    interval = (n * (lo + eps), n * (hi + eps))
    g = output_shift(interval)
    f = inv_sqrt(squares + n * eps, interval, shift=g, fss_bits=fss_bits, **RSQRT_SETTINGS)
    scaled = reuse.product(centred, f, x_key=key, release=(key,))
    out = scaled * (math.sqrt(n) / 2**g)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


__all__ = ["layer_norm", "output_shift"]
