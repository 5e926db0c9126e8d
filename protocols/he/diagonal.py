"""The diagonal (Halevi-Shoup) product with baby-step giant-step, on one ciphertext of rows.

`protocols.he.matmul.diagonal_bsgs` states the method on TenSEAL vectors; this is the same
arithmetic on the run's `Engine` (or a `DryEngine`), so that `protocols.he.products.linear`
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

A wide W (d_in = t d_out, t a power of two: a layer that narrows, as an FFN's second)
needs only d_out diagonals: with D_k[j'] = W[j' mod d_out, (j' + k) mod d_in] for
j' < d_in, k < d_out,

    z[j'] = sum_{k < d_out} D_k[j'] x~[j' + k],    y[j] = sum_{m < t} z[j + m d_out]

(the t windows {j + m d_out .. j + m d_out + d_out - 1} cover every input index once),
the last sum by log2(t) rotations by d_out, 2 d_out, ... and additions. Per ciphertext:
d_out products and about 2 sqrt(d_out) + log2(t) rotations instead of d_in products and
2 sqrt(d_in) rotations; reads stay below j' + k <= d_in + d_out - 2, inside the row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from protocols.he.matmul import bsgs_split

Rotate = Callable[[Any, int], Any]
"""rotate(ciphertext, step): the caller's rotation (it names what rotates on a missing key)."""


def wide_factor(d_in: int, d_out: int) -> int:
    """t = d_in / d_out when W is wide by a power of two (module docstring), else 1."""
    t = d_in // d_out
    return t if d_in > d_out and d_in % d_out == 0 and t & (t - 1) == 0 else 1


def diagonals(weight: np.ndarray, width: int, rows: int, slots: int) -> np.ndarray:
    """The pre-rotated extended diagonals of `weight` (d_out x d_in) for `rows` rows `width`
    slots apart: row k is rot(D_k, -n1 (k // n1)), k < d_in (d_out for a wide W), each of
    S slots (module docstring)."""
    d_out, d_in = weight.shape
    if width < d_in + d_out - 1 or rows * width > slots:
        raise ValueError(f"diagonals: {rows} rows of width {width} for a {weight.shape} weight")
    wide = wide_factor(d_in, d_out) > 1
    count, span = (d_out, d_in) if wide else (d_in, d_out)
    n1, _ = bsgs_split(count)
    j = np.arange(span)
    k = np.arange(count)
    block = weight[j[None, :] % d_out, (j[None, :] + k[:, None]) % d_in]  # count x span
    out = np.zeros((count, slots))
    for b in range(rows):
        out[:, b * width : b * width + span] = block
    for g in range(1, -(-count // n1)):
        out[g * n1 : (g + 1) * n1] = np.roll(out[g * n1 : (g + 1) * n1], n1 * g, axis=1)
    return out


def bsgs_product(
    engine: Any, ct: Any, diags: np.ndarray, rotate: Rotate, fold: Sequence[int] = ()
) -> Any:
    """sum_k D_k * rot(ct, k) for the pre-rotated `diags` (module docstring), then, for a
    wide W, z + rot(z, s) for each step s of `fold`; one level."""
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
    for step in fold:
        acc = engine.add(acc, rotate(acc, step))
    return acc


def product_all(
    engine: Any, cts: Sequence[Any], weight: np.ndarray, width: int, rows: int, rotate: Rotate
) -> list[Any]:
    """`bsgs_product` on every ciphertext (each holding up to `rows` rows)."""
    w = np.asarray(weight, dtype=np.float64)
    diags = diagonals(w, width, rows, engine.slots)
    d_out, d_in = w.shape
    t = wide_factor(d_in, d_out)
    fold = [d_out << s for s in range(t.bit_length() - 1)]
    return [bsgs_product(engine, ct, diags, rotate, fold) for ct in cts]


def estimated_ms(rows: int, d_in: int, d_out: int, slots: int, units: dict[str, float]) -> float:
    """Predicted ms of `product_all` on `rows` rows (pages of floor(S / w) rows, w = d_in +
    d_out - 1), with the cost model's `units` (`matmul.UNIT_MS_8192`): per page the
    rotations (one key switch each) and the products and additions; the diagonals
    encoded once."""
    width = d_in + d_out - 1
    pages = math.ceil(rows / max(1, slots // width))
    t = wide_factor(d_in, d_out)
    count = d_out if t > 1 else d_in
    n1, n2 = bsgs_split(count)
    rotations = (min(n1, count) - 1) + (n2 - 1) + (t.bit_length() - 1)
    per_page = (
        rotations * units["key_switch"]
        + count * units["pt_mult"]
        + (count - 1 + t.bit_length() - 1) * units["add"]
    )
    return pages * per_page + count * units["encode"]
