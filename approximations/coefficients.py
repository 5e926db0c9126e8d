"""Plain functions on coefficient arrays: the layer under `Polynomial`.

Protocol kernels (MPC, HE) use these directly: they take a coefficient array and the affine
map of an interval onto [-1, 1] and need nothing else from the class.

Conventions
-----------
A polynomial on the interval [a, b] is stored by its Chebyshev coefficients c_k in the
mapped variable t = (2x - a - b) / (b - a), so that p(x) = sum_k c_k T_k(t). This basis is
well conditioned on [-1, 1] (|T_k| <= 1), unlike the power basis of x on wide intervals.
`power_coefficients` converts to the power basis of x when a kernel wants it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from numpy.polynomial import chebyshev as npcheb
from numpy.polynomial import polynomial as nppoly


def _plain_cpu(t: torch.Tensor) -> bool:
    """An ordinary float64 CPU tensor outside autograd and tracing (not a subclass such as
    torch.export's fake tensors)."""
    return (
        type(t) is torch.Tensor
        and t.dtype == torch.float64
        and t.device.type == "cpu"
        and not (t.requires_grad and torch.is_grad_enabled())
    )


def _clenshaw_numpy(coeffs: list[float], t: np.ndarray) -> np.ndarray:
    """`clenshaw`'s recurrence, operation for operation, on a numpy array."""
    b1 = np.zeros_like(t)
    b2 = np.zeros_like(t)
    two_t = 2.0 * t
    for c in reversed(coeffs[1:]):
        b1, b2 = two_t * b1 - b2 + c, b1
    return t * b1 - b2 + coeffs[0]


def affine_map(interval: tuple[float, float]) -> tuple[float, float]:
    """(scale, offset) with t = scale * x + offset mapping [a, b] onto [-1, 1]."""
    a, b = interval
    scale = 2.0 / (b - a)
    return scale, -(a + b) / (b - a)


def clenshaw(chebyshev: Sequence[float], t: torch.Tensor) -> torch.Tensor:
    """sum_k c_k T_k(t) by Clenshaw's recurrence; differentiable, in t's dtype.

    Cost: d multiplications by t (non-scalar in a secure setting); numerically stable for
    |t| <= 1 and exact polynomial arithmetic beyond it.
    """
    coeffs = [float(c) for c in chebyshev]
    if len(coeffs) == 1:
        return torch.full_like(t, coeffs[0])
    if _plain_cpu(t):  # the same recurrence in numpy: certification calls this 1e3s of times
        return torch.from_numpy(_clenshaw_numpy(coeffs, t.detach().numpy()))
    b1 = torch.zeros_like(t)
    b2 = torch.zeros_like(t)
    two_t = 2.0 * t
    for c in reversed(coeffs[1:]):
        b1, b2 = two_t * b1 - b2 + c, b1
    return t * b1 - b2 + coeffs[0]


def evaluate(
    chebyshev: Sequence[float], interval: tuple[float, float], x: torch.Tensor
) -> torch.Tensor:
    """p(x) for the polynomial with Chebyshev coefficients `chebyshev` on `interval`."""
    scale, offset = affine_map(interval)
    return clenshaw(chebyshev, x * scale + offset)


def power_coefficients(chebyshev: Sequence[float], interval: tuple[float, float]) -> np.ndarray:
    """Power-basis coefficients [p_0, ..., p_d] in x (float64) of sum_k c_k T_k(t(x))."""
    in_t = npcheb.cheb2poly(np.asarray(chebyshev, dtype=np.float64))
    scale, offset = affine_map(interval)
    # Substitute t = scale * x + offset by Horner on polynomial coefficient arrays.
    result = np.zeros(1)
    for c in in_t[::-1]:
        result = nppoly.polyadd(nppoly.polymul(result, [offset, scale]), [c])
    out = np.zeros(len(chebyshev), dtype=np.float64)
    out[: min(len(result), len(out))] = result[: len(out)]
    return out


def chebyshev_from_power(power: Sequence[float], interval: tuple[float, float]) -> np.ndarray:
    """Chebyshev coefficients on `interval` of the polynomial sum_k p_k x^k."""
    scale, offset = affine_map(interval)
    # x = (t - offset) / scale: substitute into the power series, then convert basis.
    inverse = [-offset / scale, 1.0 / scale]
    in_t = np.zeros(1)
    for c in np.asarray(power, dtype=np.float64)[::-1]:
        in_t = nppoly.polyadd(nppoly.polymul(in_t, inverse), [c])
    return npcheb.poly2cheb(in_t)


def trimmed_degree(chebyshev: Sequence[float]) -> int:
    """Index of the last non-zero coefficient (0 for the zero polynomial)."""
    nonzero = np.flatnonzero(np.asarray(chebyshev) != 0.0)
    return int(nonzero[-1]) if nonzero.size else 0


def depth(degree: int) -> int:
    """Multiplicative depth of degree-d evaluation by baby-step giant-step: ceil(log2(d + 1)).

    Counts every product that needs a rescale in CKKS, including products by non-integer
    scalars (the coefficients), which is why a degree-1 polynomial has depth 1. Degree 0
    (a constant) has depth 0.
    """
    return 0 if degree <= 0 else math.ceil(math.log2(degree + 1))


def nonscalar_depth(degree: int) -> int:
    """Depth counting only ciphertext-ciphertext products: ceil(log2(d)) (0 for d <= 1).

    This is the number of sequential secure multiplications (communication rounds of
    multiplication in MPC, where products by public scalars are local).
    """
    return 0 if degree <= 1 else math.ceil(math.log2(degree))


def paterson_stockmeyer_multiplications(degree: int) -> tuple[int, int]:
    """(non-scalar multiplications, baby-step size k) of the baby-step giant-step schedule.

    Schedule: baby steps x^2 .. x^k (k - 1 products); giant steps x^2k, x^4k, ...
    (one squaring each, x^k being the last baby step); the d + 1 coefficients split into
    ceil((d + 1) / k) blocks that are combined pairwise up a binary tree with one product
    per internal node. k ranges over powers of two, keeping the depth at ceil(log2(d + 1));
    the cheapest k is returned.
    This grows like sqrt(2d) + log2(d), against d for Horner's rule.
    """
    if degree <= 1:
        return 0, 1
    best: tuple[int, int] | None = None
    k = 1
    while k <= degree + 1:
        blocks = math.ceil((degree + 1) / k)
        baby = k - 1
        giant = math.ceil(math.log2(blocks)) - 1 if blocks > 1 else 0
        combine = blocks - 1
        cost = baby + giant + combine
        if best is None or cost < best[0]:
            best = (cost, k)
        k *= 2
    assert best is not None
    return best
