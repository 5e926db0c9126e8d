"""Re-layout at a refresh: the client re-encrypts masked tensors in the packing the next op
wants, several tensors in one round trip.

A refresh already has the client decrypt and re-encrypt; nothing makes it re-encrypt in
the same slots. For each part k (a tensor's ciphertexts, their layout L_k, a target
layout T_k of the same logical shape), in SLOT mode (`refresh.MaskingRefresher`):

    server:  c + r, fresh masks r (`MaskingRefresher.mask`: uniform, mod-switched to the
             last level); sends {"kind": "relayout", "parts": [{"count", "layout",
             "target"}, ...]} and the masked ciphertexts of every part, in order
    client:  decrypts; reads each part's entries from L_k (first copies,
             `Placement.gather`): x + R with R the mask at the entry's source slot; checks
             them as a refresh does; writes them where T_k puts them (replicas included,
             zero elsewhere: `Placement.vector`), encrypts fresh at the top level, sends
             every part's ciphertexts back in order
    server:  R laid out by T_k, subtracted: Enc(x + R) - R = Enc(x + e), in T_k, clean

Masking: the client sees exactly what a refresh of the same ciphertexts shows it (each
entry masked by the independent uniform mask of its source slot; a replica repeats the
same masked value), so the statistical distance per slot is the refresh's
(`refresh.hiding_bits`). The layouts are public (they follow from the public shapes and
the public choice of packing).

In COEFFICIENT mode (the refresh that reaches 40 bits, `refresh.CoefficientRefresher`) the
client sees integer polynomials w = m + u, not slot values, and moves them through the
canonical embedding (`protocols.he.embedding`, in double-double precision):

    server:  per source ciphertext, junk slots zeroed, at the room level, + u (the
             coefficient refresh's first half); sends as above
    client:  w = Dec(c) (exact integers, checked as a refresh does); the map
             L = encode o (gather from L_k, write by T_k) o decode, linear over the reals,
             applied to w and rounded: round(L(w)); encrypted exactly at the top level
    server:  round(L(u)) computed alike, subtracted: Enc(L(m) + e), |e| <= 1 + the
             double-double error (`embedding`: below 16 per coefficient for |u| <= 2^96,
             2^-36 of a value at scale 2^40)

The client's view is the coefficient refresh's (w and nothing else), so the hiding is its
`hiding_bits`; the move costs each side two double-double FFTs per ciphertext.

Costs: one round trip for all parts; the ciphertexts of every L_k sent at the last level,
those of every T_k received fresh (seeded), the client's decryptions and encryptions.
The target ciphertexts are at the top level, so a re-layout also restores every level:
where a refresh was due anyway, a re-layout is free but for the size difference of the
two packings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from protocols.he import coefficients, embedding
from protocols.he.doubledouble import DD, ComplexDD
from protocols.he.engine import Ciphertext
from protocols.he.layout import Layout
from protocols.he.messages import MessageError
from protocols.he.refresh import (
    ClientRefresh,
    CoefficientRefresher,
    MaskingRefresher,
    RefreshPlan,
    negated,
)

Part = tuple[list[Ciphertext], Layout, Layout]
"""One tensor to re-layout: its ciphertexts (grid order), its layout, the target layout."""

RelayoutTransport = Callable[[list[Ciphertext], list[dict[str, Any]], int], list[Ciphertext]]
"""Sends the masked ciphertexts and the parts' descriptions (`describe`); returns the
client's fresh ciphertexts of every target, in order (the count expected is given)."""

POLICIES = ("auto", "feature_major")
"""Packing policies: `auto` picks per op by the cost model (`protocols.he.packing`);
`feature_major` keeps the feature-major path of every linear layer and attention product,
and re-lays out only what cannot run otherwise (the comparison baseline)."""


def runnable_policy(refresh: RefreshPlan | None, packing: str) -> str | None:
    """The packing policy a run can keep under the refresh plan `refresh` (None: refresh
    off): `packing` whenever there is a refresh (slot or coefficient mode: module
    docstring); None (every product feature-major, no re-layout) without one: no client
    round trip to re-lay out in."""
    return None if refresh is None else packing


def describe(parts: Sequence[tuple[int, Layout, Layout]]) -> list[dict[str, Any]]:
    """The JSON of the parts: count of ciphertexts sent, source layout, target layout."""
    return [
        {"count": count, "layout": source.to_dict(), "target": target.to_dict()}
        for count, source, target in parts
    ]


def read_parts(message: dict[str, Any], slots: int) -> list[tuple[int, Layout, Layout]]:
    """The client's check of a "relayout" message: per part a count equal to the source
    layout's ciphertexts, a target of the same shape that fits the slots. Raises
    `MessageError` (one line) otherwise."""
    raw = message.get("parts")
    if not isinstance(raw, list) or not raw:
        raise MessageError("relayout: expected a non-empty list of parts")
    out = []
    for part in raw:
        if not isinstance(part, dict) or set(part) != {"count", "layout", "target"}:
            raise MessageError("relayout: a part needs exactly count, layout, target")
        try:
            source, target = Layout.from_dict(part["layout"]), Layout.from_dict(part["target"])
        except ValueError as exc:
            raise MessageError(f"relayout: {exc}") from None
        count = part["count"]
        if count != int(np.prod(source.grid_shape)) or source.shape != target.shape:
            raise MessageError("relayout: a part's count or shapes do not match its layouts")
        if max(source.span(), target.span()) > slots:
            raise MessageError(f"relayout: a layout needs more than the {slots} slots")
        out.append((count, source, target))
    return out


def client_relayout(
    parts: Sequence[tuple[int, Layout, Layout]],
    masked: Sequence[Any],
    decrypt: Callable[[Any], np.ndarray],
    encrypt: Callable[[np.ndarray], Any],
    check: Callable[[np.ndarray], np.ndarray],
) -> list[Any]:
    """The client's side (module docstring): decrypt, gather each part from its layout,
    `check` the masked entries, write them in the target, encrypt. Returns the fresh
    ciphertexts of every target in order."""
    fresh: list[Any] = []
    at = 0
    for count, source, target in parts:
        vectors = [decrypt(ct) for ct in masked[at : at + count]]
        at += count
        values = check(source.placement().gather(vectors))
        placement = target.placement()
        slots = len(vectors[0])
        fresh += [encrypt(placement.vector(values, g, slots)) for g in range(len(placement.groups))]
    return fresh


def move(coeffs: DD, source: Layout, target: Layout) -> DD:
    """The polynomials of `target`'s ciphertexts (rows; not rounded) holding the slot
    values of the polynomials `coeffs` (one row per ciphertext of `source`): decode, gather
    each entry from its source slot (first copies), write it at its target slots
    (replicas included, zero elsewhere), encode. Linear in `coeffs` (module docstring)."""
    slots = embedding.decode(coeffs)
    half = coeffs.hi.shape[-1] // 2
    gather, place = source.placement(), target.placement()
    parts = []
    for part in slots.parts():
        entries = gather.gather(part)
        parts.append(np.stack([place.vector(entries, g, half) for g in range(len(place.groups))]))
    return embedding.encode(ComplexDD.from_parts(parts))


def _stacked(values: Sequence[coefficients.Integers]) -> DD:
    rows = [embedding.from_integers(v) for v in values]
    return DD(np.stack([r.hi for r in rows]), np.stack([r.lo for r in rows]))


def _rows(values: DD) -> list[DD]:
    return [DD(hi, lo) for hi, lo in zip(values.hi, values.lo, strict=True)]


def client_relayout_coefficients(
    parts: Sequence[tuple[int, Layout, Layout]], masked: Sequence[Any], refresh: ClientRefresh
) -> list[Any]:
    """The client's side in coefficient mode (module docstring): each part's integers
    w = m + u read and checked (`ClientRefresh.masked_integers`), moved (`move`),
    rounded and encrypted at the top level. Returns every target's ciphertexts in order."""
    fresh: list[Any] = []
    at = 0
    for count, source, target in parts:
        received = masked[at : at + count]
        at += count
        integers = [refresh.masked_integers(ct) for ct in received]
        scale = received[0].scale
        if source == target:  # a refresh: w itself, as `ClientRefresh` answers one
            rows = [values.residues(refresh.top_primes) for values in integers]
        else:
            moved = move(_stacked(integers), source, target)
            rows = [embedding.residues(row, refresh.top_primes) for row in _rows(moved)]
        fresh += [refresh.encrypt_integers(row, scale) for row in rows]
    return fresh


class RelayoutRefresher:
    """A `MaskingRefresher` (refreshes in place) that also re-lays out (`relayout`), with
    the run's packing `policy` (`POLICIES`): what `HeTensor.refresher` holds in a run."""

    def __init__(
        self,
        refresher: MaskingRefresher | CoefficientRefresher,
        transport: RelayoutTransport,
        policy: str = "auto",
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"packing policy {policy!r}: expected one of {POLICIES}")
        self.refresher = refresher
        self.transport = transport
        self.policy = policy
        self.relayouts = 0
        self.relayout_ciphertexts = [0, 0]  # sent, received
        self.choices: list[dict[str, Any]] = []

    can_relayout = True

    def note_choice(self, op: str, shape: Any, strategy: str, reason: str) -> None:
        """Record a packing decision (what `choices_summary` reports)."""
        self.choices.append({"op": op, "shape": list(shape), "strategy": strategy,
                             "reason": reason})  # fmt: skip

    def choices_summary(self) -> dict[str, int]:
        """How many products each strategy computed ("linear feature_major": 2, ...)."""
        counts: dict[str, int] = {}
        for choice in self.choices:
            key = f"{choice['op']} {choice['strategy']}"
            counts[key] = counts.get(key, 0) + 1
        return counts

    @property
    def stats(self) -> Any:
        return self.refresher.stats

    @property
    def engine(self) -> Any:
        return self.refresher.engine

    def __call__(self, cts: list[Ciphertext], layout: Layout) -> list[Ciphertext]:
        return self.refresher(cts, layout)

    def relayout(self, parts: Sequence[Part]) -> list[list[Ciphertext]]:
        """Every part's ciphertexts in its target layout, fresh, in one round trip (module
        docstring); counted as one refresh of all the ciphertexts sent."""
        began = time.perf_counter()
        expected = sum(int(np.prod(target.grid_shape)) for _, _, target in parts)
        shapes = [(len(cts), source, target) for cts, source, target in parts]
        if isinstance(self.refresher, CoefficientRefresher):
            out, sent = self._coefficients(parts, shapes, expected)
        else:
            out, sent = self._slots(parts, shapes, expected)
        self.refresher.record(sent, time.perf_counter() - began)
        if any(source != target for _, source, target in parts):  # else: refreshes batched
            self.relayouts += 1
            self.relayout_ciphertexts[0] += sent
            self.relayout_ciphertexts[1] += expected
        return out

    def _exchange(self, masked: list[Ciphertext], shapes: list[Any], expected: int) -> list[Any]:
        fresh = self.transport(masked, describe(shapes), expected)
        if len(fresh) != expected:
            raise ValueError(f"relayout: expected {expected} ciphertexts back, got {len(fresh)}")
        return fresh

    def _slots(
        self, parts: Sequence[Part], shapes: list[Any], expected: int
    ) -> tuple[list[list[Ciphertext]], int]:
        refresher = self.refresher
        assert isinstance(refresher, MaskingRefresher)
        masked: list[Ciphertext] = []
        masks: list[list[np.ndarray]] = []
        for cts, _, _ in parts:
            sent, drawn = refresher.mask(list(cts))
            masked += sent
            masks.append(drawn)
        fresh = self._exchange(masked, shapes, expected)
        slots = refresher.engine.slots
        out, at = [], 0
        for (_, source, target), drawn in zip(parts, masks, strict=True):
            entries = source.placement().gather(drawn)
            placement = target.placement()
            count = len(placement.groups)
            laid = [placement.vector(entries, g, slots) for g in range(count)]
            out.append(refresher.unmask(fresh[at : at + count], laid))
            at += count
        return out, len(masked)

    def _coefficients(
        self, parts: Sequence[Part], shapes: list[Any], expected: int
    ) -> tuple[list[list[Ciphertext]], int]:
        refresher = self.refresher
        assert isinstance(refresher, CoefficientRefresher)
        masked: list[Ciphertext] = []
        draws: list[list[tuple[np.ndarray, np.ndarray]]] = []
        for cts, source, _ in parts:
            sent, drawn = refresher.mask(list(cts), source)
            masked += sent
            draws.append(drawn)
        fresh = self._exchange(masked, shapes, expected)
        out, at = [], 0
        for (_, source, target), drawn in zip(parts, draws, strict=True):
            if source == target:  # a refresh: take u off
                removals = [negated(top, refresher.top_primes) for _, top in drawn]
            else:
                room = refresher.room_primes
                masks = [coefficients.Integers.from_residues(low, room) for low, _ in drawn]
                moved = move(_stacked(masks), source, target)
                removals = [embedding.residues(-row, refresher.top_primes) for row in _rows(moved)]
            count = len(removals)
            out.append(refresher.unmask(fresh[at : at + count], removals))
            at += count
        return out, len(masked)
