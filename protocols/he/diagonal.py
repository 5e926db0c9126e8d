"""The diagonal (Halevi-Shoup) product with baby-step giant-step, on one ciphertext of rows.

`protocols.he.matmul.diagonal_bsgs` states the method on TenSEAL vectors; this is the same
arithmetic on the run's `Engine` (or a `DryEngine`), so that `protocols.he.tensor.linear`
can use it inside a model run and a dry run records its rotations.

Input: one ciphertext holding r rows, row b in slots [b w, b w + w) with w = d_in + d_out - 1,
x replicated with period d_in there (x~[b w + t] = x_b[t mod d_in], t < w;
`Layout.row_blocks(..., replicate=True)`). With W given as torch's (d_out x d_in) weight
and the extended diagonals D_k[b w + j] = W[j, (j + k) mod d_in] (k < d_in, j < d_out, the
same for every row b < r, zero elsewhere):

    y_b[j] = sum_{k < d_in} W[j, (j + k) mod d_in] x_b[(j + k) mod d_in]
           = sum_k (D_k * rot(x~, k))[b w + j]

(as k runs over 0 .. d_in - 1, (j + k) mod d_in runs over every input index once; slot
b w + j + k < (b + 1) w stays inside the row). Baby-step giant-step, n1 a power of two,
n2 = ceil(d_in / n1), k = n1 g + i:

    y = sum_g rot( sum_i rot(D_{n1 g + i}, -n1 g) * rot(x~, i), n1 g )
      = inner_0 + rot(inner_1 + rot(inner_2 + ..., n1), n1)             (Horner)

baby steps rot(x~, i) = rot(rot(x~, i - 1), 1); the diagonals are pre-rotated in numpy
(np.roll by n1 g: slot b w + j + n1 g < r w <= S, so nothing wraps). Every inner sum is
one `dot_plain` (products summed at scale Delta q, one rescale). Output: y_b[j] at slot
b w + j, j < d_out; the other slots of the row hold junk.

Cost per ciphertext: (min(n1, d_in) - 1) rotations by 1 and (n2 - 1) by n1 (one key switch
each with keys {1, n1}), d_in ct-pt products (all-zero diagonals skipped), n2 rescales,
one level; the diagonals (d_in vectors of S slots) are encoded once per level and shared
by every ciphertext of the layer (`Engine.encode`'s cache).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from protocols.he.matmul import bsgs_split

Rotate = Callable[[Any, int], Any]
"""rotate(ciphertext, step): the caller's rotation (it names what rotates on a missing key)."""


def diagonals(weight: np.ndarray, width: int, rows: int, slots: int) -> np.ndarray:
    """The pre-rotated extended diagonals (d_in x S) of `weight` (d_out x d_in) for `rows`
    rows `width` slots apart: row k is rot(D_k, -n1 (k // n1)) (module docstring)."""
    d_out, d_in = weight.shape
    if width < d_in + d_out - 1 or rows * width > slots:
        raise ValueError(f"diagonals: {rows} rows of width {width} for a {weight.shape} weight")
    n1, _ = bsgs_split(d_in)
    j = np.arange(d_out)
    k = np.arange(d_in)
    block = weight[j[None, :], (j[None, :] + k[:, None]) % d_in]  # d_in x d_out
    out = np.zeros((d_in, slots))
    for b in range(rows):
        out[:, b * width : b * width + d_out] = block
    for g in range(1, -(-d_in // n1)):
        out[g * n1 : (g + 1) * n1] = np.roll(out[g * n1 : (g + 1) * n1], n1 * g, axis=1)
    return out


def bsgs_product(engine: Any, ct: Any, diags: np.ndarray, rotate: Rotate) -> Any:
    """sum_k D_k * rot(ct, k) for the pre-rotated `diags` (module docstring), one level."""
    d_in = diags.shape[0]
    n1, n2 = bsgs_split(d_in)
    baby = [ct]
    for _ in range(1, min(n1, d_in)):
        baby.append(rotate(baby[-1], 1))
    acc = None
    for g in reversed(range(n2)):
        ks = range(g * n1, min((g + 1) * n1, d_in))
        inner = engine.dot_plain([baby[k - g * n1] for k in ks], [diags[k] for k in ks])
        acc = inner if acc is None else engine.add(inner, rotate(acc, n1))
    return acc


def product_all(
    engine: Any, cts: Sequence[Any], weight: np.ndarray, width: int, rows: int, rotate: Rotate
) -> list[Any]:
    """`bsgs_product` on every ciphertext (each holding up to `rows` rows)."""
    diags = diagonals(np.asarray(weight, dtype=np.float64), width, rows, engine.slots)
    return [bsgs_product(engine, ct, diags, rotate) for ct in cts]
