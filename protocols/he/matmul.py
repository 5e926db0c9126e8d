"""Encrypted activations times a PLAINTEXT weight matrix on CKKS (TenSEAL / SEAL).

Y = X W with X (rows x d_in) encrypted, W (d_in x d_out) a plain float matrix, S = N/2
slots per ciphertext. Three strategies, each with a cost model (`*_cost`, a `MatmulPlan`)
and an evaluation function that counts what it actually does into an optional `HeCost`:

a. `builtin_rows`: TenSEAL's `vec.mm(W)` on one `CKKSVector` per row (size d_in, replicated
   by TenSEAL over the slots). Its C++ loop (`diagonal_ct_vector_matmul`): for each of the
   d_in (generalised) diagonals i, one plain product then one rotation of the product by i,
   added into an accumulator. Per row: d_in ct-pt products, d_in - 1 rotations (step i is
   composed from the +-2^i keys: NAF(i) key switches, 1279 in all at d_in = 384),
   d_in additions, depth 1; it runs on TenSEAL's thread pool (both cores here).
   Ciphertexts: rows in, rows out (size d_out each). The counts cannot be observed inside
   TenSEAL; `builtin_rows` records this loop structure (dense W: no zero diagonal skipped).

b. `diagonal_bsgs`: Halevi-Shoup diagonals with baby-step giant-step, on SEAL ciphertexts.
   Extended diagonals for a rectangular W: D_k[j] = W[(j + k) mod d_in, j] (k < d_in,
   j < d_out), and the input replicated with period d_in, x~[t] = x[t mod d_in], gives

       y[j] = sum_{k < d_in} D_k[j] x~[j + k] = sum_k (D_k * rot(x~, k))[j]

   (as k runs over 0 .. d_in - 1, (j + k) mod d_in runs over every input index once).
   Output slot j reads x~ up to j + d_in - 1, so one row needs a segment of
   stride = d_in + d_out - 1 slots (x replicated over it), and r = floor(S / stride) rows
   share one ciphertext, row b in slots [b stride, (b + 1) stride); D_k is laid out the same
   way for every row of the block, so one plain product serves all r rows. This is the
   layout `pack_rows` encrypts (client side); the result holds y_b[j] in slot b stride + j
   (`unpack_rows`). At S = 4096, d_in = d_out = 384: stride 767, r = 5 rows per ciphertext
   (not 10: a stride of max(d_in, d_out) would let rotations read the next row's slots).
   BSGS with n1 a power of two, n2 = ceil(d_in / n1), k = n1 g + i:

       y = sum_g rot( sum_i rot(D_{n1 g + i}, -n1 g) * rot(x~, i), n1 g )
         = inner_0 + rot(inner_1 + rot(inner_2 + ..., n1), n1)          (Horner form)

   baby steps rot(x~, i) = rot(rot(x~, i - 1), 1); the plain diagonals are pre-rotated by
   -n1 g in numpy. Every rotation is by 1 or by n1 (one key switch each, both keys exist).
   Per block (ciphertext): rotations (min(n1, d_in) - 1) + (n2 - 1), about 2 sqrt(d_in)
   (d_in = 128: 7 + 15 = 22; 384: 15 + 23 = 38), d_in ct-pt products, d_in - 1 additions,
   n2 rescales (products are summed at scale Delta^2 and rescaled once per giant step),
   depth 1. Ciphertexts: ceil(rows / r) in and out. n1 is the power of two minimising the
   rotations (ties: the smaller n1, more rotations on the already rescaled, cheaper giant
   side). A wide W (d_in >> d_out) could use d_out diagonals plus log2(d_in / d_out)
   rotate-and-sum steps instead; not implemented. The output is NOT in the input layout
   (no replication, stride kept): a following rotation-based layer needs the client to
   re-pack it (or masking products and rotations, not implemented).

c. `feature_major`: one ciphertext per input feature k holding the column X[:, k]
   (rows <= S; `pack_features`), then Y[:, j] = sum_k W[k, j] X[:, k]: d_in d_out
   ct-pt products by a scalar plaintext, summed at scale Delta^2 and rescaled once per
   output column, (d_in - 1) d_out additions, NO rotation (no Galois keys needed), depth 1.
   Ciphertexts: d_in in, d_out out. Each product costs the same as a full-vector product
   (plus encoding the scalar), so the time is independent of rows up to S and linear in
   d_in d_out. By the cost model it is far slower than (b) at the MiniLM shapes (384 x 384:
   147456 products, about 30 times (b)'s predicted time at 32 rows); at 384 x 384 it wins
   only above about 1240 rows, and for a small d_in d_out such as a classifier head (384 x
   2: 768 products, all rows at once).

`choose` ranks the three by predicted time (`estimated_ms`, the cost model's unit costs
`UNIT_MS_8192`); `make bench` (`benchmarks/he_matmul.py`) measures the three side by side
and prints each prediction next to its measured seconds. The
three take and give different layouts (a vector per row; packed row blocks; a vector per
feature): converting between them is not priced here; inside a model run
`protocols.he.packing` prices the re-layout round trips (`protocols.he.relayout`) with the
products, and `protocols.he.diagonal` runs the diagonal method on the run's engine.

Levels: every strategy consumes exactly one level (one rescale after the plain products),
so the input needs at least one level left; inputs at different levels are mod-switched
down (on copies) to the lowest one. The plain operands are encoded at the global scale Delta,
so the output scale is Delta^2 / q (q the dropped prime), as for TenSEAL's own products.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import tenseal as ts
from tenseal import sealapi

from protocols.he.polynomial import HeCost
from protocols.he.rotation import key_switches, rotate_ciphertext, vector_from_ciphertexts

STRATEGIES = ("builtin_rows", "diagonal_bsgs", "feature_major")

#: The cost model's unit costs in ms at N = 8192, chain [60, 40, 40, 60], one thread: what
#: `choose` ranks by, so their ratios matter, not their absolute values (those depend on the
#: machine and its load; `make bench` measures the strategies themselves). `key_switch` one
#: SEAL rotation by a +-2^i step; `encode` one full plaintext vector; `pt_mult` SEAL
#: multiply_plain; `scalar_mult` the feature-major inner step: encode a scalar,
#: multiply_plain, add, Python loop; `add` a ciphertext addition; `wrap` building a
#: `CKKSVector` from a SEAL ciphertext. TenSEAL's built-in `mm` runs on its thread pool, so
#: with idle cores it takes less than its single-thread estimate.
UNIT_MS_8192: dict[str, float] = {
    "key_switch": 2.1,
    "encode": 0.43,
    "pt_mult": 0.16,
    "scalar_mult": 0.26,
    "add": 0.04,
    "wrap": 2.2,
}


@dataclass(frozen=True)
class MatmulPlan:
    """Predicted cost of one encrypted-times-plain matrix product (rows x d_in)(d_in x d_out).

    `cost`: logical operation counts (`HeCost.rotations` = rotation calls);
    `key_switches`: the key switches those rotations cost with the +-2^i Galois keys;
    `ciphertexts_in` / `ciphertexts_out`: ciphertexts read and produced; `rescales`: rescale
    operations (not in HeCost); `encodings`: plaintext vectors encoded (scalars not counted);
    `details`: strategy parameters (block size, n1, n2, ...).
    """

    strategy: str
    rows: int
    d_in: int
    d_out: int
    slots: int
    cost: HeCost
    key_switches: int
    ciphertexts_in: int
    ciphertexts_out: int
    rescales: int
    encodings: int
    details: dict[str, int] = field(default_factory=dict)

    def estimated_ms(self, units: dict[str, float] | None = None) -> float:
        """Predicted single-thread time in ms: sum of counts times `units` (`UNIT_MS_8192`).

        key_switches * key_switch + encodings * encode + products * (pt_mult, or scalar_mult
        for feature_major) + additions * add + wrapped outputs * wrap (not for builtin_rows,
        whose outputs are TenSEAL vectors already).
        """
        u = UNIT_MS_8192 if units is None else units
        feature = self.strategy == "feature_major"
        wrapped = 0 if self.strategy == "builtin_rows" else self.ciphertexts_out
        return (
            self.key_switches * u["key_switch"]
            + self.encodings * u["encode"]
            + self.cost.ct_pt_mults * (u["scalar_mult"] if feature else u["pt_mult"])
            + self.cost.additions * (0.0 if feature else u["add"])
            + wrapped * u["wrap"]
        )


def _check_shape(rows: int, d_in: int, d_out: int, slots: int) -> None:
    for name, value in (("rows", rows), ("d_in", d_in), ("d_out", d_out), ("slots", slots)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r}: expected a positive integer")


def _weight(weight: np.ndarray) -> np.ndarray:
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != 2 or 0 in w.shape or not np.all(np.isfinite(w)):
        raise ValueError(f"weight: expected a finite 2-D matrix (d_in x d_out), got {w.shape}")
    return w


# --- SEAL-level helpers -------------------------------------------------------------------
def _seal(context: ts.Context) -> tuple[sealapi.Evaluator, sealapi.CKKSEncoder, int]:
    data = context.seal_context().data
    encoder = sealapi.CKKSEncoder(data)
    return sealapi.Evaluator(data), encoder, encoder.slot_count()


def _chain_index(context: ts.Context, ciphertext: sealapi.Ciphertext) -> int:
    return context.seal_context().data.get_context_data(ciphertext.parms_id()).chain_index()


def _aligned(
    vectors: Sequence[ts.CKKSVector], evaluator: sealapi.Evaluator
) -> tuple[ts.Context, list[sealapi.Ciphertext]]:
    """The single ciphertext of each vector (copies), all at the lowest level, >= 1 left."""
    if not vectors:
        raise ValueError("expected at least one encrypted vector")
    context = vectors[0].context()
    ciphertexts = []
    for vec in vectors:
        chunks = vec.ciphertext()
        if len(chunks) != 1:
            raise ValueError(f"a vector of size {vec.size()} spans {len(chunks)} ciphertexts")
        ciphertexts.append(chunks[0])
    lowest = min(ciphertexts, key=lambda ct: _chain_index(context, ct))
    if _chain_index(context, lowest) < 1:
        raise ValueError("the input has no level left for a plain product (needs >= 1)")
    for ct in ciphertexts:
        if ct.parms_id() != lowest.parms_id():
            evaluator.mod_switch_to_inplace(ct, lowest.parms_id())
    return context, ciphertexts


# --- a. TenSEAL's built-in vector-matrix product -----------------------------------------
def builtin_rows_cost(rows: int, d_in: int, d_out: int, slots: int) -> MatmulPlan:
    """Cost of `builtin_rows` (module docstring a): per row d_in products, d_in - 1 rotations."""
    _check_shape(rows, d_in, d_out, slots)
    if d_in > slots or d_out > slots:
        raise ValueError(f"builtin_rows: d_in={d_in}, d_out={d_out} must fit {slots} slots")
    per_row = HeCost(ct_pt_mults=d_in, additions=d_in, rotations=d_in - 1, depth=1)
    total = HeCost(**{k: v * rows for k, v in per_row.to_dict().items()})
    total.depth = 1
    switches = rows * sum(key_switches(i) for i in range(1, d_in))
    return MatmulPlan(
        "builtin_rows", rows, d_in, d_out, slots, total, switches, rows, rows, rows, rows * d_in
    )


def builtin_rows(
    vectors: Sequence[ts.CKKSVector], weight: np.ndarray, cost: HeCost | None = None
) -> list[ts.CKKSVector]:
    """[x_r.mm(W) for each row]: TenSEAL's own diagonal product, the baseline.

    Each vector has size d_in (TenSEAL replicates it); each result has size d_out. `cost`
    receives the counts of TenSEAL's loop (`builtin_rows_cost`, which it cannot observe).
    """
    w = _weight(weight)
    out = [vec.mm(w.tolist()) for vec in vectors]
    if cost is not None and out:
        slots = _seal(vectors[0].context())[2]
        plan = builtin_rows_cost(len(vectors), w.shape[0], w.shape[1], slots)
        cost.accumulate(HeCost(**{**plan.cost.to_dict(), "depth": 0}))
        cost.depth += 1
    return out


# --- b. diagonal method with baby-step giant-step ----------------------------------------
def bsgs_split(d_in: int) -> tuple[int, int]:
    """(n1, n2): n1 a power of two, n2 = ceil(d_in / n1), minimising (n1 - 1) + (n2 - 1).

    Ties go to the smaller n1. 128 -> (8, 16), 384 -> (16, 24), 16 -> (4, 4).
    """
    if d_in < 1:
        raise ValueError(f"d_in={d_in}: expected >= 1")
    best: tuple[int, int, int] | None = None
    n1 = 1
    while n1 <= 2 * d_in:
        n2 = math.ceil(d_in / n1)
        rotations = (min(n1, d_in) - 1) + (n2 - 1)
        if best is None or rotations < best[0]:
            best = (rotations, n1, n2)
        n1 *= 2
    assert best is not None
    return best[1], best[2]


def diagonal_layout(d_in: int, d_out: int, slots: int) -> tuple[int, int]:
    """(stride, rows_per_ciphertext) of the packed-row layout: stride = d_in + d_out - 1.

    Raises ValueError when one row's segment does not fit the slots.
    """
    stride = d_in + d_out - 1
    if stride > slots:
        raise ValueError(
            f"diagonal_bsgs: a row needs d_in + d_out - 1 = {stride} slots, more than {slots}"
        )
    return stride, slots // stride


def diagonal_bsgs_cost(rows: int, d_in: int, d_out: int, slots: int) -> MatmulPlan:
    """Cost of `diagonal_bsgs` (module docstring b), for a W with no all-zero diagonal.

    blocks = ceil(rows / r); per block: rotations (min(n1, d_in) - 1) + (n2 - 1), each one
    key switch when n1 is a power of two; d_in ct-pt products; d_in - 1 additions; n2
    rescales; depth 1.
    """
    _check_shape(rows, d_in, d_out, slots)
    stride, per_block = diagonal_layout(d_in, d_out, slots)
    n1, n2 = bsgs_split(d_in)
    blocks = math.ceil(rows / per_block)
    baby, giant = min(n1, d_in) - 1, n2 - 1
    cost = HeCost(
        ct_pt_mults=blocks * d_in,
        additions=blocks * (d_in - 1),
        rotations=blocks * (baby + giant),
        depth=1,
    )
    switches = blocks * (baby * key_switches(1) + giant * key_switches(n1))
    details = {"stride": stride, "rows_per_ciphertext": per_block, "n1": n1, "n2": n2}
    return MatmulPlan(
        "diagonal_bsgs", rows, d_in, d_out, slots, cost, switches, blocks, blocks,
        blocks * n2, d_in, details,
    )  # fmt: skip


def pack_rows(context: ts.Context, x: np.ndarray, d_out: int) -> list[ts.CKKSVector]:
    """Client side: encrypt X (rows x d_in) in the layout of `diagonal_bsgs` for a W with
    d_out columns: ceil(rows / r) full-slot vectors, row b of a block in slots
    [b stride, (b + 1) stride) holding x[t mod d_in]; unused slots 0."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    rows, d_in = x.shape
    slots = _seal(context)[2]
    stride, per_block = diagonal_layout(d_in, d_out, slots)
    period = x[:, np.arange(stride) % d_in]  # rows x stride
    vectors = []
    for start in range(0, rows, per_block):
        block = np.zeros(slots)
        chunk = period[start : start + per_block]
        block[: chunk.size] = chunk.ravel()
        vectors.append(ts.ckks_vector(context, block.tolist()))
    return vectors


def unpack_rows(values: Sequence[Sequence[float]], rows: int, d_in: int, d_out: int) -> np.ndarray:
    """Client side: Y (rows x d_out) from the decrypted full-slot outputs of `diagonal_bsgs`."""
    slots = len(values[0])
    stride, per_block = diagonal_layout(d_in, d_out, slots)
    out = np.empty((rows, d_out))
    for r in range(rows):
        block, b = divmod(r, per_block)
        out[r] = np.asarray(values[block])[b * stride : b * stride + d_out]
    return out


def _diagonals(w: np.ndarray, slots: int, per_block: int) -> np.ndarray:
    """Full-slot extended diagonals D_k (d_in x slots) laid out for `per_block` rows."""
    d_in, d_out = w.shape
    stride = d_in + d_out - 1
    j = np.arange(d_out)
    diag = w[(j[None, :] + np.arange(d_in)[:, None]) % d_in, j[None, :]]  # d_in x d_out
    out = np.zeros((d_in, slots))
    for b in range(per_block):
        out[:, b * stride : b * stride + d_out] = diag
    return out


def diagonal_bsgs(
    packed: Sequence[ts.CKKSVector], weight: np.ndarray, cost: HeCost | None = None
) -> list[ts.CKKSVector]:
    """X W by the BSGS diagonal method on inputs from `pack_rows` (one ciphertext per block).

    Returns one full-slot vector per block (decode with `unpack_rows`). Counts into `cost`
    the rotations, products and additions it performs (module docstring b) and depth 1.
    Products with an all-zero diagonal are skipped (and not counted), and so are the giant
    rotations above the highest giant step with a non-zero diagonal; the cost model assumes
    a W without zero diagonals, for which the counts equal it exactly.
    """
    w = _weight(weight)
    d_in, d_out = w.shape
    evaluator, encoder, slots = _seal(packed[0].context())
    context, inputs = _aligned(packed, evaluator)
    _, per_block = diagonal_layout(d_in, d_out, slots)
    n1, n2 = bsgs_split(d_in)
    scale = float(context.global_scale)
    parms_id = inputs[0].parms_id()
    diags = _diagonals(w, slots, per_block)

    # Pre-rotated, encoded diagonals: rot(D_{n1 g + i}, -n1 g) = np.roll(D, n1 g); shared.
    plains: dict[int, sealapi.Plaintext] = {}
    for k in range(d_in):
        if np.any(diags[k]):
            plain = sealapi.Plaintext()
            encoder.encode(np.roll(diags[k], n1 * (k // n1)).tolist(), parms_id, scale, plain)
            plains[k] = plain

    outputs = []
    term = sealapi.Ciphertext()
    for ct in inputs:
        baby = [ct]
        for _ in range(1, min(n1, d_in)):
            baby.append(rotate_ciphertext(baby[-1], 1, context, evaluator))
        if cost is not None:
            cost.rotations += len(baby) - 1
        acc: sealapi.Ciphertext | None = None
        for g in reversed(range(n2)):
            inner: sealapi.Ciphertext | None = None
            for i in range(min(n1, d_in - n1 * g)):
                plain = plains.get(n1 * g + i)
                if plain is None:
                    continue
                inner = _multiply_add(evaluator, inner, baby[i], plain, term, cost)
            if acc is not None:  # Horner: acc <- inner_g + rot(acc, n1)
                acc = rotate_ciphertext(acc, n1, context, evaluator)
                if cost is not None:
                    cost.rotations += 1
            if inner is not None:
                evaluator.rescale_to_next_inplace(inner)
                if acc is None:
                    acc = inner
                else:
                    evaluator.add_inplace(acc, inner)
                    if cost is not None:
                        cost.additions += 1
        if acc is None:
            raise ValueError("diagonal_bsgs: W is all zeros (the product is a transparent zero)")
        outputs.append(vector_from_ciphertexts(context, [acc], [slots]))
    if cost is not None:
        cost.depth += 1
    return outputs


# --- c. feature-major: scalar products, no rotations --------------------------------------
def feature_major_cost(rows: int, d_in: int, d_out: int, slots: int) -> MatmulPlan:
    """Cost of `feature_major` (module docstring c) for a W without zero entries.

    d_in d_out scalar products, (d_in - 1) d_out additions, 0 rotations, d_out rescales,
    depth 1; d_in ciphertexts in, d_out out; requires rows <= slots.
    """
    _check_shape(rows, d_in, d_out, slots)
    if rows > slots:
        raise ValueError(f"feature_major: rows={rows} exceeds {slots} slots")
    cost = HeCost(ct_pt_mults=d_in * d_out, additions=(d_in - 1) * d_out, depth=1)
    return MatmulPlan("feature_major", rows, d_in, d_out, slots, cost, 0, d_in, d_out, d_out, 0)


def pack_features(context: ts.Context, x: np.ndarray) -> list[ts.CKKSVector]:
    """Client side: one vector per input feature k holding X[:, k] (rows <= S)."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    return [ts.ckks_vector(context, x[:, k].tolist()) for k in range(x.shape[1])]


def feature_major(
    columns: Sequence[ts.CKKSVector], weight: np.ndarray, cost: HeCost | None = None
) -> list[ts.CKKSVector]:
    """Y[:, j] = sum_k W[k, j] X[:, k] for inputs from `pack_features`: d_out vectors.

    Products by zero weights are skipped (and not counted). Counts products, additions and
    depth 1 into `cost`; no rotation.
    """
    w = _weight(weight)
    d_in, d_out = w.shape
    if len(columns) != d_in:
        raise ValueError(f"feature_major: {len(columns)} input columns for a W with {d_in} rows")
    evaluator, encoder, _ = _seal(columns[0].context())
    context, inputs = _aligned(columns, evaluator)
    size = columns[0].size()
    scale = float(context.global_scale)
    parms_id = inputs[0].parms_id()
    outputs = []
    plain, term = sealapi.Plaintext(), sealapi.Ciphertext()
    for j in range(d_out):
        acc: sealapi.Ciphertext | None = None
        for k in np.flatnonzero(w[:, j]):
            encoder.encode(float(w[k, j]), parms_id, scale, plain)
            acc = _multiply_add(evaluator, acc, inputs[k], plain, term, cost)
        if acc is None:
            raise ValueError(f"feature_major: column {j} of W is all zeros")
        evaluator.rescale_to_next_inplace(acc)
        outputs.append(vector_from_ciphertexts(context, [acc], [size]))
    if cost is not None:
        cost.depth += 1
    return outputs


# --- choice -------------------------------------------------------------------------------
def plans(rows: int, d_in: int, d_out: int, slots: int) -> list[MatmulPlan]:
    """The cost models of every strategy applicable to the shape (those that fit)."""
    out = []
    for model in (builtin_rows_cost, diagonal_bsgs_cost, feature_major_cost):
        try:
            out.append(model(rows, d_in, d_out, slots))
        except ValueError:
            continue
    return out


def choose(
    rows: int, d_in: int, d_out: int, slots: int, units: dict[str, float] | None = None
) -> tuple[str, str]:
    """(strategy, reason): the strategy with the smallest predicted time (`estimated_ms`).

    The reason names the predicted times and the dominant counts of the winner and runner-up.
    """
    _check_shape(rows, d_in, d_out, slots)
    ranked = sorted(plans(rows, d_in, d_out, slots), key=lambda p: p.estimated_ms(units))
    if not ranked:
        raise ValueError(f"no strategy fits ({rows} x {d_in})({d_in} x {d_out}) in {slots} slots")

    def describe(p: MatmulPlan) -> str:
        return (
            f"{p.strategy} ~{p.estimated_ms(units) / 1e3:.2f} s ({p.key_switches} key "
            f"switches, {p.cost.ct_pt_mults} products, {p.ciphertexts_out} ciphertexts out)"
        )

    reason = "cheapest predicted: " + describe(ranked[0])
    if len(ranked) > 1:
        reason += "; next: " + describe(ranked[1])
    return ranked[0].strategy, reason


def _multiply_add(
    evaluator: sealapi.Evaluator,
    acc: sealapi.Ciphertext | None,
    ciphertext: sealapi.Ciphertext,
    plain: sealapi.Plaintext,
    scratch: sealapi.Ciphertext,
    cost: HeCost | None,
) -> sealapi.Ciphertext:
    """acc + ciphertext * plain (acc None: the product alone); one ct-pt product and, when
    acc exists, one addition, counted into `cost`."""
    if cost is not None:
        cost.ct_pt_mults += 1
    if acc is None:
        acc = sealapi.Ciphertext()
        evaluator.multiply_plain(ciphertext, plain, acc)
        return acc
    evaluator.multiply_plain(ciphertext, plain, scratch)
    evaluator.add_inplace(acc, scratch)
    if cost is not None:
        cost.additions += 1
    return acc
