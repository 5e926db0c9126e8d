"""Attention's two ciphertext-ciphertext products by the diagonal method, without
replicating a token axis into ciphertexts.

Layouts (`token_layout`), for q, k, v of shape (*batch, L, d): token i of a batch entry at
slot base + i, the batch entries T = next_power_of_two(2 L) slots apart (batch axes in
slots while they fit, innermost first; the rest in ciphertexts), d (the head dimension)
in ciphertexts. k and v carry replicas of span 2 L: token j also at base + j + L, so that
a rotation by k < L brings token (i + k) mod L to slot base + i. Rotations never leave a
block: every read is at base + i + k with i, k < L, i.e. below base + 2 L <= base + T.

Scores S = q k^T (`scores`; logical (*batch, L, L)). The diagonal D_k[i] = S[i, (i + k) mod L]
is held in ciphertext k at row i's slot (`scores_layout`: the key axis in ciphertexts,
skewed by the query axis, `Layout.skew`). With n1 n2 >= L (`split`), k = n1 g + r:

    D_k = rot( sum_c rot(Q_c, -n1 g) * rot(K~_c, r), n1 g )

(at slot s = base + i the inner sum reads Q_c[s] and K~_c[s + k]). Per batch ciphertext:
d (n1 - 1) baby rotations of K~, d (n2 - 1) giant rotations of Q, one rotation per
diagonal with g > 0 (L - n1), L d ct-ct products, L relinearisations and rescales, 1 level.
Softmax works on this layout as is: a sum over keys is the sum of the L ciphertexts, a
per-row factor (the reciprocal of that sum) multiplies each of them.

Weights times values O = W v (`weighted_values`; W in `scores_layout`, v with replicas):

    O_c = sum_k W_k * rot(V~_c, k)
        = sum_g rot( sum_r rot(W_{n1 g + r}, -n1 g) * rot(V~_c, r), n1 g )

evaluated as Horner over g (acc <- inner_g + rot(acc, n1)). Per batch ciphertext:
L - n1 rotations of the weights (shared by every c), d (n1 - 1) baby rotations of V~,
d (n2 - 1) Horner rotations, L d products, d n2 relinearisations, 1 level. O comes out in
q's layout (tokens in slots, d in ciphertexts).

Against replicating the token axis (`products.matmul`'s other path: per ciphertext of b and
token j a mask product and log2(L') + 1 rotations), the rotations drop from about
d L (log2 L + 1) to about 2 d sqrt(L) + L per product; the products stay L d.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from protocols.he.layout import Layout, next_power_of_two
from protocols.he.matmul import UNIT_MS_8192
from protocols.he.packing import CT_MULT_MS

Rotate = Callable[[Any, int], Any]


def split(length: int, width: int) -> tuple[int, int]:
    """(n1, n2), n1 a power of two, n2 = ceil(L / n1), minimising the rotations of one
    product: width (n1 - 1) + width (n2 - 1) + (L - n1)."""
    best: tuple[int, int, int] | None = None
    n1 = 1
    while n1 <= 2 * length:
        n2 = math.ceil(length / n1)
        cost = width * (min(n1, length) - 1) + width * (n2 - 1) + max(0, length - n1)
        if best is None or cost < best[0]:
            best = (cost, n1, n2)
        n1 *= 2
    assert best is not None
    return best[1], best[2]


def token_layout(shape: tuple[int, ...], slots: int, *, replicate: bool) -> Layout | None:
    """The layout of q (replicate False) or k, v (True) of `shape` (*batch, L, d), module
    docstring; None when one block of T = next_power_of_two(2 L) slots does not fit."""
    *batch, length, _ = shape
    block = next_power_of_two(2 * length)
    if block > slots:
        return None
    strides: list[int | None] = [None] * len(shape)
    strides[-2] = 1
    stride = block
    for a in reversed(range(len(batch))):
        if stride * next_power_of_two(batch[a]) > slots:
            break
        strides[a] = stride
        stride *= next_power_of_two(batch[a])
    replicas = (len(shape) - 2, 2 * length) if replicate else None
    return Layout(tuple(shape), tuple(strides), 0, (), replicas)


def scores_layout(queries: Layout) -> Layout:
    """The diagonal layout of q k^T for q in `queries` (*batch, L, d): the query axis in
    q's slots, the key axis in ciphertexts skewed by it (module docstring)."""
    nd = len(queries.shape)
    length = queries.shape[-2]
    shape = (*queries.shape[:-1], length)
    return Layout(shape, queries.strides, queries.offset, (), None, (nd - 1, nd - 2))


def rotations(length: int, width: int, form: str) -> int:
    """Rotations of one product per batch ciphertext (module docstring), form "scores" or
    "values"."""
    n1, n2 = split(length, width)
    baby, giant = width * (min(n1, length) - 1), width * (n2 - 1)
    return baby + giant + max(0, length - n1)


def product_ms(length: int, width: int, form: str, cells: int) -> float:
    """Predicted ms of one product over `cells` batch ciphertexts (the unit costs of
    `matmul.UNIT_MS_8192`; a ct-ct product `packing.CT_MULT_MS`, a relinearisation one key
    switch)."""
    u = UNIT_MS_8192
    _, n2 = split(length, width)
    relins = length if form == "scores" else width * n2
    per_cell = (
        rotations(length, width, form) * u["key_switch"]
        + length * width * (CT_MULT_MS + u["add"])
        + relins * u["key_switch"]
    )
    return per_cell * cells


def scores(
    engine: Any, queries: Sequence[Any], keys: Sequence[Any], length: int, rotate: Rotate
) -> list[Any]:
    """The L diagonals D_0 .. D_{L-1} of one batch ciphertext (module docstring) from the d
    ciphertexts of q and of k~."""
    width = len(queries)
    n1, n2 = split(length, width)
    baby = [list(keys)]
    for _ in range(1, min(n1, length)):
        baby.append([rotate(ct, 1) for ct in baby[-1]])
    out = []
    shifted = list(queries)
    for g in range(n2):
        if g:  # rot(Q_c, -n1 g) = rot(rot(Q_c, -n1 (g - 1)), -n1): one key switch each
            shifted = [rotate(ct, -n1) for ct in shifted]
        for r in range(min(n1, length - n1 * g)):
            inner = engine.dot(shifted, baby[r])
            out.append(inner if g == 0 else rotate(inner, n1 * g))
    return out


def weighted_values(
    engine: Any, weights: Sequence[Any], values: Sequence[Any], rotate: Rotate
) -> list[Any]:
    """O_c for every c (module docstring) from the L diagonals of W and the d ciphertexts
    of v~ of one batch ciphertext."""
    length, width = len(weights), len(values)
    n1, n2 = split(length, width)
    shifted = [w if k < n1 else rotate(w, -n1 * (k // n1)) for k, w in enumerate(weights)]
    out = []
    for ct in values:
        baby = [ct]
        for _ in range(1, min(n1, length)):
            baby.append(rotate(baby[-1], 1))
        acc = None
        for g in reversed(range(n2)):
            ks = range(g * n1, min((g + 1) * n1, length))
            inner = engine.dot([shifted[k] for k in ks], [baby[k - g * n1] for k in ks])
            acc = inner if acc is None else engine.add(inner, rotate(acc, n1))
        out.append(acc)
    return out
