"""Sorting secret-shared rows with a comparison network, and the exact sparsemax threshold.

Batcher's odd-even merge sort (Knuth, TAOCP vol. 3, 5.3.4, in the form for any n) fixes
its compare-exchange pairs from n alone, so the sequence of operations is public and
reveals nothing about the values. Each layer's pairs are disjoint and run as one batch:

    d = a - b,  r = d [d >= 0],  high = b + r,  low = a - r      one comparison, one product

`ceil(log2 n) (ceil(log2 n) + 1) / 2` layers (10 for n = 10 or 16), each one comparison
(8 rounds) and one product (1 round); 32 pairs for n = 10 (63 for 16). Exact: every output
is one of the inputs (an integer sharing of 0/1 times a fixed-point difference needs no
truncation).

The sparsemax threshold then follows without a division by a secret (Martins and
Astudillo 2016): with the row sorted descending (s_1 >= ... >= s_C) and c_k = sum_{i<=k} s_i,
the support is the k with 1 + k s_k > c_k (these k form a prefix), and t = (c_K - 1) / K
for the largest of them, K. The indicators u_k = [1 + k s_k - c_k >= 0] come from one
stacked comparison; u_k - u_(k+1) is the one-hot of K, so

    t = sum_k (u_k - u_(k+1)) (c_k - 1) / k              public divisions by k only

Total per row of C entries: the network's pairs plus C comparisons, in (layers + 1)
comparison rounds, against FY_STEPS bisection steps of C + 1 comparisons each
(`approximations.losses.bisection_threshold`). `make bench` measures both.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from protocols.mpc.compare import nonnegative, times_public_integers
from protocols.mpc.crypten_setup import import_crypten
from protocols.mpc.polynomial import Secret


@lru_cache(maxsize=64)
def batcher_layers(n: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """The compare-exchange pairs (i, j), i < j, of Batcher's odd-even merge sort of n
    entries, grouped into layers of disjoint pairs; after all layers, position i holds an
    entry no smaller than position j's for every i < j when each pair puts its larger
    entry at i."""
    layers: list[tuple[tuple[int, int], ...]] = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            layer = []
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        layer.append((i + j, i + j + k))
            if layer:
                layers.append(tuple(layer))
            k //= 2
        p *= 2
    return tuple(layers)


def sort_descending(x: Secret) -> Secret:
    """x sorted in decreasing order along its last axis (module docstring)."""
    crypten = import_crypten()
    n = x.size(-1)
    for layer in batcher_layers(n):
        first = [i for i, _ in layer]
        second = [j for _, j in layer]
        untouched = [k for k in range(n) if k not in set(first) | set(second)]
        a, b = x[..., first], x[..., second]
        d = a - b
        r = d * nonnegative(d)
        parts = [b + r, a - r] + ([x[..., untouched]] if untouched else [])
        order = first + second + untouched
        inverse = [0] * n
        for position, k in enumerate(order):
            inverse[k] = position
        x = crypten.cat(parts, dim=-1)[..., inverse]
    return x


def sparsemax_threshold_sorted(o: Secret) -> Secret:
    """The exact sparsemax threshold t per row (module docstring), shape o.shape[:-1]."""
    crypten = import_crypten()
    classes = o.size(-1)
    s = sort_descending(o)
    c = s.cumsum(-1)
    ranks = torch.arange(1, classes + 1)
    u = nonnegative(times_public_integers(s, ranks) - c + 1.0)
    zero = u[..., :1] * 0
    following = crypten.cat([u[..., 1:], zero], dim=-1)
    chosen = u - following
    candidates = (c - 1.0) * (1.0 / ranks.to(torch.float64))
    return (candidates * chosen).sum(-1)


__all__ = ["batcher_layers", "sort_descending", "sparsemax_threshold_sorted"]
