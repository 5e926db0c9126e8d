"""LayerNorm on secret shares: the mean is local, one product for the variance, one inverse
square root per row on a calibrated public interval."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from protocols.mpc.inverse import inv_sqrt
from protocols.mpc.polynomial import FRACTION_BITS, Secret

RING_HEADROOM = 2.0**31
"""Products are formed at scale 2^32 in a 64-bit ring: values must stay below 2^31."""


def prescale_bits(variance_interval: tuple[float, float], eps: float, n: int) -> int:
    """a >= 0 for the rescaled centred values c' = 2^a c (see `layer_norm`).

    As large as lets the smallest variance lo + eps reach about 1 (so it is held to
    2^-16 relatively, not absolutely), but not so large that a square c'^2, at most
    n 4^a (hi + eps) when one entry carries a whole row's variance, leaves the ring's
    headroom, nor that 4^a (hi + eps) exceeds what the inverse square root accepts.
    """
    lo, hi = variance_interval[0] + eps, variance_interval[1] + eps
    wanted = max(0, math.ceil(math.log(1.0 / lo, 4))) if lo < 1 else 0
    allowed = math.floor(math.log(RING_HEADROOM / (n * hi), 4))
    return max(0, min(wanted, allowed, 15))


def layer_norm(
    x: Secret,
    normalized_shape: int | Sequence[int],
    weight: Secret | torch.Tensor | None = None,
    bias: Secret | torch.Tensor | None = None,
    eps: float = 1e-5,
    variance_interval: tuple[float, float] = (1e-3, 1e3),
) -> Secret:
    """(x - mean) / sqrt(var + eps) * weight + bias over the trailing `normalized_shape`.

    mean = sum x / n (local). c = x - mean, rescaled c' = 2^a c by a public power of two
    (`prescale_bits`: exact integer product of shares, local) so that the variance
    var' = sum c'^2 / n = 4^a var (one squaring) is held to 2^-16 relative to its size
    rather than absolutely (a variance of 1e-3 is only 65 units of 2^-16). Then
    r = 2^g / sqrt(var' + 4^a eps) by `inv_sqrt` on the interval 4^a (variance_interval +
    eps), with g such that r >= 1, and out = c' r / 2^g (c' / sqrt(var' + 4^a eps) equals
    c / sqrt(var + eps)). weight and bias are the model owner's (MPCTensors) or public
    tensors, or None.

    Valid when every row's variance lies in `variance_interval` (public, calibrated on
    sample inputs); outside it the inverse square root extrapolates. Constraints: n 4^a
    (hi + eps) < 2^31 (checked; rows whose entries reach sqrt(2^31 / 4^a) overflow).

    Error: relative about 1e-5 from inv_sqrt (degree 4, one Newton step) plus the
    variance's rounding (~2^-16 / (4^a var) relative, halved by the square root) plus
    about 2^-16 absolute on the normalised output, times |weight|. Rounds: 1 (variance) +
    14 (inv_sqrt: comparison 8, normalise 1, polynomial 2, Newton 2, scale 1) + 1
    (c' r) + 1 with a secret weight: 17. Bytes per element and party: 8 (square) + 16 (c' r)
    + 16 (secret weight), plus per row 216 per even octave of the interval (9 for
    [1e-3, 1e3]) and about 150 for the rest of inv_sqrt.
    """
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    dims = tuple(range(x.dim() - len(shape), x.dim()))
    if tuple(x.size())[-len(shape) :] != shape:
        raise ValueError(f"normalized_shape={shape}: x has shape {tuple(x.size())}")
    lo, hi = float(variance_interval[0]), float(variance_interval[1])
    if not 0 <= lo < hi:
        raise ValueError(f"variance_interval=({lo}, {hi}): expected 0 <= lo < hi")
    n = math.prod(shape)
    a = prescale_bits((lo, hi), eps, n)
    if n * 4.0**a * (hi + eps) >= RING_HEADROOM:
        raise ValueError(
            f"variance_interval=({lo:g}, {hi:g}) with rows of {n}: squares may exceed 2^31 "
            "in the 64-bit ring (16 fractional bits)"
        )
    total = x
    for d in reversed(dims):
        total = total.sum(d, keepdim=True)
    centred = x * (2**a) - (total * (2**a)).div(n)  # the mean held to 2^-(16 + a)
    squares = centred.square()
    for d in reversed(dims):
        squares = squares.sum(d, keepdim=True)
    variance = squares.div(n)
    interval = (4.0**a * (lo + eps), 4.0**a * (hi + eps))
    g = min(FRACTION_BITS, max(0, math.ceil(math.log2(math.sqrt(interval[1])))))
    r = inv_sqrt(variance + 4.0**a * eps, interval, shift=g)
    out = (centred * r).div(2**g)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


__all__ = ["layer_norm", "prescale_bits"]
