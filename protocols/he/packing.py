"""Which packing a linear layer uses inside a run: the cost model's choice, with the re-layout
round trips each option needs priced in.

For x (..., n, d_in) times a plain W (d_in x d_out), `protocols.he.products.linear` has two
strategies (`protocols.he.matmul` gives their operation counts and unit costs):

- feature-major (`matmul.feature_major_cost`): x's features in ciphertexts, rows in slots;
  d_in d_out scalar products per grid cell of x without its feature axis (G cells), no
  rotation. Needs x in a feature-major layout (`Layout.standard`, or any simple layout
  whose last axis is a ciphertext axis); otherwise one round trip first (a re-layout to
  `Layout.standard`).
- diagonal (`protocols.he.diagonal`, its `estimated_ms`): rows w = d_in + d_out - 1 slots
  apart, r = floor(S / w) per ciphertext, x replicated with period d_in inside its row
  (`Layout.row_blocks(..., replicate=True)`); per ciphertext about 2 sqrt(d_in) rotations
  and d_in plain products (d_out products and 2 sqrt(d_out) + log2(d_in / d_out) rotations
  for a W that narrows by a power of two). Only the client can write the replicas, so unless
  x is already in that layout, one re-layout round trip first (x's
  ciphertexts out, prod(leading) ceil(n / r) back). Its output has rows w slots apart,
  features at stride 1 (no replicas), not feature-major: an op that cannot use it re-lays it
  out later.

Price (ms): the strategy's predicted time with the unit costs of `matmul.UNIT_MS_8192`
(`MatmulPlan.estimated_ms` for feature-major, without `wrap`: the run keeps SEAL
ciphertexts; `diagonal.estimated_ms`), times the number of independent blocks, plus for each
round trip `ROUND_TRIP_MS`: `trip` once, `sent` per ciphertext the server masks and sends
(masking, mod switch, serialization, the client's decryption), `received` per ciphertext the
client encrypts and sends back (encryption, serialization, the server's load and unmasking);
LAN transfer included, measured against a rotation on this machine (their ratios to
`key_switch` are what matters).

Levels do not enter the choice: an input with no level left pays a round trip whichever
option runs (a refresh, or a re-layout that refreshes), and the levels of a run depend on
the values of its public inputs (a mask of ones costs no product), which the dry run that
plans the keys (`protocols.he.dry`) does not know. So the choice depends on layouts and
shapes only, and the dry run makes the real run's choices.
Not priced: what the choice does to later ops (the diagonal output is 1 / (d_out / r)
times fewer ciphertexts for the elementwise ops and refreshes that follow, a gain; an op
that has no form for it pays a re-layout round trip, a loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from protocols.he.diagonal import estimated_ms as diagonal_estimated_ms
from protocols.he.layout import Layout, LayoutError
from protocols.he.matmul import UNIT_MS_8192, feature_major_cost

ROUND_TRIP_MS: dict[str, float] = {"trip": 1.0, "sent": 2.2, "received": 4.8}
"""A re-layout or refresh round trip at N = 8192 (module docstring)."""

UNITS = {**UNIT_MS_8192, "wrap": 0.0}
"""The cost model's units for products inside a run (SEAL ciphertexts, no `CKKSVector`)."""


def round_trip_ms(sent: int, received: int) -> float:
    """One round trip: `sent` ciphertexts to the client, `received` back."""
    return (
        ROUND_TRIP_MS["trip"] + sent * ROUND_TRIP_MS["sent"] + received * ROUND_TRIP_MS["received"]
    )


def diagonal_width(d_in: int, d_out: int) -> int:
    """Slots per row of the diagonal method: d_in + d_out - 1."""
    return d_in + d_out - 1


def diagonal_input(shape: tuple[int, ...], d_out: int, slots: int) -> Layout:
    """The layout the diagonal method reads x in: `Layout.row_blocks` with replicas."""
    return Layout.row_blocks(shape, diagonal_width(shape[-1], d_out), slots, replicate=True)


def feature_major_ready(layout: Layout) -> bool:
    """x's layout serves feature-major products as is: simple, last axis in ciphertexts."""
    return layout.simple and layout.strides[-1] is None


@dataclass(frozen=True)
class LinearOption:
    """One way to compute a linear layer: `strategy`, predicted `compute_ms`, the target
    layout of the round trip it needs first (None: none), that trip's `trip_ms`."""

    strategy: str
    compute_ms: float
    relayout: Layout | None
    trip_ms: float

    @property
    def ms(self) -> float:
        return self.compute_ms + self.trip_ms

    def describe(self) -> str:
        trip = f" + {self.trip_ms / 1e3:.2f} s round trip" if self.trip_ms else ""
        return f"{self.strategy} ~{self.compute_ms / 1e3:.2f} s{trip}"


def linear_options(
    layout: Layout, d_out: int, slots: int, can_relayout: bool
) -> list[LinearOption]:
    """The options for x in `layout` times a d_in x d_out W (module docstring); without
    `can_relayout`, only those needing no re-layout."""
    shape = layout.shape
    d_in = shape[-1]
    cells = math.prod(layout.grid_shape)
    options: list[LinearOption] = []
    # feature-major
    fm_layout = layout if feature_major_ready(layout) else Layout.standard(shape, slots)
    groups = math.prod(fm_layout.grid_shape) // d_in
    rows = max(1, math.prod(shape[:-1]) // max(groups, 1))
    fm = feature_major_cost(min(rows, slots), d_in, d_out, slots).estimated_ms(UNITS) * groups
    if fm_layout is layout:
        options.append(LinearOption("feature_major", fm, None, 0.0))
    elif can_relayout:
        trip = round_trip_ms(cells, math.prod(fm_layout.grid_shape))
        options.append(LinearOption("feature_major", fm, fm_layout, trip))
    # diagonal (a feature axis of one entry has no slot form to replicate: feature-major)
    if d_in > 1 and diagonal_width(d_in, d_out) <= slots:
        target = diagonal_input(shape, d_out, slots)
        n = shape[-2] if len(shape) >= 2 else 1
        lead = math.prod(shape[:-2])
        diag = diagonal_estimated_ms(n, d_in, d_out, slots, UNITS) * lead
        if layout == target:
            options.append(LinearOption("diagonal_bsgs", diag, None, 0.0))
        elif can_relayout:
            trip = round_trip_ms(cells, math.prod(target.grid_shape))
            options.append(LinearOption("diagonal_bsgs", diag, target, trip))
    return options


CT_MULT_MS = 0.6
"""One ciphertext-ciphertext product before relinearisation at N = 8192 (the SEAL tensor
product of two 2-part ciphertexts, about four plain products)."""


def attention_ms(a: Layout, b: Layout) -> float | None:
    """Predicted ms of `products.matmul(a, b)` (both encrypted) in these layouts, or None when
    they do not fit its form: a (..., i, c) with i in slots (stride t) and c in ciphertexts,
    b's slot axis among its last two at stride t, replicated into ciphertexts (per
    ciphertext of b and entry j < n: one mask product, log2(n') + (j > 0) rotations,
    log2(n') additions), then one ct-ct dot product over c per output ciphertext (c
    products, one relinearisation: a key switch). A single row (i of size 1) with b's last
    two axes in ciphertexts: products and additions only. The form also needs b's other
    axis of the two in ciphertexts, batch axes at the same strides (or both in
    ciphertexts), one offset, and a's rows within the replicated span."""
    if not (a.simple and b.simple) or len(a.shape) < 2 or len(b.shape) < 2:
        return None
    u = UNIT_MS_8192
    c = a.shape[-1]
    rows = math.prod(a.grid_shape) // max(c, 1)
    t_i = a.strides[-2]
    if a.strides[-1] is not None:
        return None
    if t_i is None:
        if a.shape[-2] != 1 or b.strides[-2:] != (None, None):
            return None
        if any(x != y for x, y in zip(a.strides[:-2], b.strides[:-2], strict=False)):
            return None
        outputs = rows * b.shape[-1]
        return outputs * c * (CT_MULT_MS + u["add"]) + outputs * u["key_switch"]
    batch_a, batch_b = a.strides[:-2], b.strides[:-2]
    if b.strides[-2:] == (None, None):  # each entry of b spread over a's rows
        if batch_a != batch_b or a.offset != b.offset:
            return None
        steps = math.ceil(math.log2(a.shape[-2])) if a.shape[-2] > 1 else 0
        outputs = rows * b.shape[-1]
        spread_ms = math.prod(b.grid_shape) * steps * (u["key_switch"] + u["add"])
        return spread_ms + outputs * (c * (CT_MULT_MS + u["add"]) + u["key_switch"])
    spread = [d for d in (-2, -1) if b.strides[d] == t_i]
    if (
        len(spread) != 1
        or b.strides[-1 - (spread[0] == -1)] is not None
        or len(batch_a) != len(batch_b)
        or any(x != y for x, y in zip(batch_a, batch_b, strict=True))
        or a.offset != b.offset
        or a.shape[-2] > 1 << math.ceil(math.log2(b.shape[spread[0]]))
    ):
        return None
    n = b.shape[spread[0]]
    levels = math.ceil(math.log2(max(n, 1))) if n > 1 else 0
    b_cts = math.prod(b.grid_shape)
    replicate = b_cts * (
        n * (u["pt_mult"] + u["encode"] + levels * u["add"])
        + (n - 1 + n * levels) * u["key_switch"]
    )
    outputs = rows * b.shape[-1]
    return replicate + outputs * (c * (CT_MULT_MS + u["add"]) + u["key_switch"])


def choose_linear(
    layout: Layout, d_out: int, slots: int, *, policy: str, can_relayout: bool
) -> tuple[LinearOption, str]:
    """(option, reason): the cheapest option (`policy` "auto"), or feature-major (policy
    "feature_major"). The reason names the predicted costs of the chosen option and the
    runner-up."""
    options = linear_options(layout, d_out, slots, can_relayout)
    if policy == "feature_major":
        options = [o for o in options if o.strategy == "feature_major"] or options
    if not options:
        raise LayoutError(
            f"linear: the feature axis of a {layout.shape} tensor is in slots; expected "
            "feature-major packing (moving it needs a re-layout round trip: allow refresh)"
        )
    ranked = sorted(options, key=lambda o: o.ms)
    reason = f"{policy}: {ranked[0].describe()}"
    if len(ranked) > 1:
        reason += f"; next {ranked[1].describe()}"
    return ranked[0], reason
