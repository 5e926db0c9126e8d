"""A dry run of the encrypted computation: which rotations it performs, without any crypto.

The Galois keys a client makes must cover every rotation the server's tensor code
(`protocols.he.tensor`) will ask SEAL for. Rather than predicting those steps with a formula
of its own, the server runs that same code once on stand-in ciphertexts: `DryEngine` has
the interface of `engine.Engine` (the same method names, the same level bookkeeping and
the same `LevelError`) but holds no key and computes nothing; its `rotate` records the step
exactly as `Engine.rotate` passes it to SEAL (`rotation.reduce_step`). `DryRefresher`
stands in for the client round trip of a refresh (a stand-in at the top level), so the
dry run follows the real run's refreshes too.

Every decision in `protocols.he.tensor` and `protocols.he.products` that leads to a
rotation (which axes sit in slots, their strides, merges, replications, slot reductions,
and the packing each product picks, `protocols.he.packing`) depends on layouts and shapes
only, never on the encrypted values nor on levels, so the recorded steps are the steps of
the real run with the same layouts. A `DryRefresher` with the run's packing policy
re-lays out as the real refresher does (the target layouts' ciphertexts come back
fresh), so the dry run follows the real run's packings too. `galois.keys_for_steps`
turns them into keys. What is guaranteed: for
every rotation that a real `Engine` running the same tensor code on the same layouts
performs, `Engine.rotate` passes SEAL a step that `DryEngine.rotate` recorded (tested
against real runs in tests/backends/he/test_he_keys.py).

Costs: one Python pass over the ciphertext grid per op (no SEAL call), so far below a real
run; the slot masks (numpy arrays of S values) are still built.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from protocols.he.engine import LevelError
from protocols.he.galois import normalize_step, rotation_key_switches
from protocols.he.layout import Layout
from protocols.he.polynomial import HeCost
from protocols.he.rotation import reduce_step


class DryCiphertext:
    """A stand-in ciphertext: only its level (the SEAL chain index it would have)."""

    __slots__ = ("level",)

    def __init__(self, level: int) -> None:
        self.level = level

    def parms_id(self) -> int:
        """The level stands for SEAL's parms_id (equal exactly when the levels are)."""
        return self.level

    def __repr__(self) -> str:
        return f"DryCiphertext(level={self.level})"


class DryEngine:
    """`Engine`'s interface over `DryCiphertext`s; records rotation steps (module docstring).

    `steps` lists every rotation step requested, reduced as SEAL receives it, in order
    (0 steps, which SEAL performs as a copy, are not recorded). With `keys` (normalized
    steps of Galois keys) `rotate` also refuses, as SEAL would with exactly those keys, a
    step they cannot compose (`galois.rotation_key_switches`), with SEAL's message
    "Galois key not present"; without, every step is allowed.
    """

    def __init__(
        self,
        slots: int,
        top_level: int,
        scale: float = 2.0**40,
        keys: Iterable[int] | None = None,
    ) -> None:
        if slots < 1 or top_level < 0:
            raise ValueError(f"dry engine: slots={slots}, top_level={top_level}")
        self.keys = None if keys is None else {normalize_step(k, slots) for k in keys}
        self.slots = slots
        self.top_level = top_level
        self.scale = scale
        self.cost = HeCost()
        self.key_switches = 0  # not counted: a dry run has no keys to switch
        self.galois_keys = None
        self.steps: list[int] = []

    def fresh(self) -> DryCiphertext:
        """A freshly encrypted stand-in: the top level."""
        return DryCiphertext(self.top_level)

    # --- levels ----------------------------------------------------------------------------
    def level(self, ct: DryCiphertext) -> int:
        return ct.level

    def scale_drift(self) -> float:
        return 0.0

    def mod_switch(self, ct: DryCiphertext, parms_id: object) -> DryCiphertext:
        return DryCiphertext(int(parms_id))  # type: ignore[call-overload]

    def lowest(self, cts: Sequence[DryCiphertext]) -> list[DryCiphertext]:
        low = min(ct.level for ct in cts)
        return [ct if ct.level == low else DryCiphertext(low) for ct in cts]

    def _below(self, cts: Sequence[DryCiphertext]) -> DryCiphertext:
        low = min(ct.level for ct in cts)
        if low < 1:
            raise LevelError("a product needs one level; the ciphertext has none left")
        return DryCiphertext(low - 1)

    # --- no level --------------------------------------------------------------------------
    def add(self, a: DryCiphertext, b: DryCiphertext) -> DryCiphertext:
        self.cost.additions += 1
        return DryCiphertext(min(a.level, b.level))

    def add_many(self, cts: Sequence[DryCiphertext]) -> DryCiphertext:
        if len(cts) == 1:
            return cts[0]
        self.cost.additions += len(cts) - 1
        return DryCiphertext(min(ct.level for ct in cts))

    sub = add

    def negate(self, a: DryCiphertext) -> DryCiphertext:
        return DryCiphertext(a.level)

    def add_plain(
        self, a: DryCiphertext, values: float | np.ndarray, *, cache: bool = True
    ) -> DryCiphertext:
        self.cost.additions += 1
        return DryCiphertext(a.level)

    def rotate(self, a: DryCiphertext, steps: int) -> DryCiphertext:
        """Records the step as `Engine.rotate` hands it to SEAL (`rotation.reduce_step`)."""
        step = reduce_step(steps, self.slots)
        keys = self.keys
        if step and keys is not None and not self._composable(step, keys):
            raise ValueError(f"Galois key not present (step {step}; keys {sorted(keys)})")
        self.cost.rotations += 1
        if step:
            self.steps.append(step)
        return DryCiphertext(a.level)

    def _composable(self, step: int, keys: set[int]) -> bool:
        return rotation_key_switches(step, keys.__contains__, self.slots) is not None

    # --- one level -------------------------------------------------------------------------
    def mul_plain(self, a: DryCiphertext, values: float | np.ndarray) -> DryCiphertext:
        if isinstance(values, float | int) and values == -1.0:
            return self.negate(a)
        return self.dot_plain([a], [values])

    def zero(self, like: DryCiphertext) -> DryCiphertext:
        return self._below([like])

    def dot_plain(
        self, cts: Sequence[DryCiphertext], factors: Sequence[float | np.ndarray]
    ) -> DryCiphertext:
        self.cost.ct_pt_mults += len(cts)
        self.cost.additions += max(0, len(cts) - 1)
        return self._below(cts)

    def mul(self, a: DryCiphertext, b: DryCiphertext) -> DryCiphertext:
        return self.dot([a], [b])

    def square(self, a: DryCiphertext) -> DryCiphertext:
        self.cost.ct_ct_mults += 1
        return self._below([a])

    def dot(self, xs: Sequence[DryCiphertext], ys: Sequence[DryCiphertext]) -> DryCiphertext:
        self.cost.ct_ct_mults += len(xs)
        self.cost.additions += max(0, len(xs) - 1)
        return self._below([*xs, *ys])


class DryRefresher:
    """Stands in for `refresh.MaskingRefresher`: every ciphertext comes back at the top
    level, as the client's fresh encryption would; counts the refreshes and the ciphertexts
    they carry. With a packing `policy` it stands in for `relayout.RelayoutRefresher` too
    (re-layouts: the target's ciphertexts fresh, counted as refreshes and as `relayouts`),
    so that a dry run makes the real run's packing choices; without, it cannot re-lay out
    (as a bare `MaskingRefresher`)."""

    def __init__(self, engine: DryEngine, policy: str | None = None) -> None:
        self.engine = engine
        self.policy = policy
        self.refreshes = 0
        self.ciphertexts = 0
        self.relayouts = 0
        self.choices: list[tuple[str, Any, str, str]] = []
        self.moves: list[tuple[tuple[int, ...], Layout, Layout]] = []
        """Every re-layout: (ids of the ciphertexts moved, source, target), in order."""

    @property
    def can_relayout(self) -> bool:
        return self.policy is not None

    def __call__(self, cts: list[Any], layout: Layout) -> list[Any]:
        self.refreshes += 1
        self.ciphertexts += len(cts)
        return [self.engine.fresh() for _ in cts]

    def relayout(self, parts: Sequence[tuple[list[Any], Layout, Layout]]) -> list[list[Any]]:
        if self.policy is None:
            raise ValueError("this dry refresher stands in for one that cannot re-lay out")
        self.refreshes += 1
        self.ciphertexts += sum(len(cts) for cts, _, _ in parts)
        self.relayouts += any(source != target for _, source, target in parts)
        self.moves += [(tuple(map(id, cts)), source, target) for cts, source, target in parts]
        return [
            [self.engine.fresh() for _ in range(int(np.prod(target.grid_shape)))]
            for _, _, target in parts
        ]

    def note_choice(self, op: str, shape: Any, strategy: str, reason: str) -> None:
        self.choices.append((op, shape, strategy, reason))


def dry_grid(engine: DryEngine, layout: Layout) -> np.ndarray:
    """A grid of fresh stand-ins shaped like `layout`'s ciphertexts (what the client sends)."""
    grid = np.empty(int(np.prod(layout.grid_shape, dtype=np.int64)), dtype=object)
    for i in range(grid.size):
        grid[i] = engine.fresh()
    return grid.reshape(layout.grid_shape)
