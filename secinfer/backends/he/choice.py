"""Which CKKS parameters an HE run uses, and why.

The server decides before it listens (`choose_parameters`), on the model's example input
shapes, and refuses what no 128-bit parameter set can serve (`UserError`, one line, before
any key exists):

1. The bound B on the values a refresh masks (`value_bound`): the largest |value| of any
   tensor the server holds encrypted, over the model owner's calibration samples (a plain
   run that follows which values derive from the client's encrypted inputs), widened by
   the plan's margin (1.25) and rounded up to a power of two.
2. The candidates: every ring degree N of `params.PLANNED_DEGREES` from 8192 up whose
   slots hold the input layouts, with chains [60, 40 x d, 60] that the 128-bit bound allows;
   for each, the cheapest refresh that hides |x| <= B to 2^-hiding_bits
   (`refresh.plan_refresh`: slot masks when they suffice, else coefficient masks with
   `reserve` levels kept), leaving `usable` = d - reserve levels for products (at least
   2: an encrypted product of two encrypted operands needs one level on each side after
   the other's). Without refresh a chain must hold the model's whole depth (estimate).
3. Each candidate's run is predicted by a dry run of the server's own tensor code
   (`protocols.he.dry`, as `inputs.rotation_plan` does for the keys) with `usable` levels:
   products, rotations, additions, refreshes and the ciphertexts they carry, Galois keys;
   these are priced by `params.op_ms` (unit costs scaled to N and the mean number of primes
   an operation sees, reserve + 1 + (usable + 1) / 2), refreshed ciphertexts by the mode's
   per-ciphertext work, and the wire by the stated network (`report.mpc.NETWORKS`: round
   trips x RTT + bytes / bandwidth; bytes = refreshes both ways, the encrypted inputs, the
   public context). The cheapest on the chosen network (LAN by default) wins; the report
   lists every candidate priced with its predicted seconds on both networks. Not every
   chain is priced: per ring the usable levels of USABLE_STEPS and the deepest, from the
   shallowest, stopping when the prediction keeps rising (STOP_AFTER_RISES, STOP_FACTOR).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from protocols.he.params import (
    PLANNED_DEGREES,
    CkksParams,
    candidate_chains,
    ciphertext_bytes,
    key_bytes,
    op_ms,
)
from protocols.he.refresh import (
    COEFFICIENT,
    DEFAULT_HIDING_BITS,
    SLOT,
    HidingError,
    RefreshPlan,
    chain_primes,
    default_mask_bits,
    plan_refresh,
)
from secinfer.core.graph import Graph
from secinfer.core.plan import MARGIN, Plan
from secinfer.errors import UserError

USABLE_STEPS = (2, 3, 4, 5, 6, 8, 12, 17)
"""Levels for products per context tried at each ring degree (with the deepest chain): the
dry runs are the planning's cost, and the predicted cost changes slowly between these."""
MIN_USABLE = 2
STOP_AFTER_RISES = 2
STOP_FACTOR = 3.0
"""A ring's deeper chains are not priced once two in a row predicted more than the ring's
best so far, or one predicted more than STOP_FACTOR x the best of all: the dry runs are the
planning's cost, and past the point where the per-operation price (growing with the
primes) outweighs the refreshes saved, the prediction only rises."""
PROTOCOL_ROUND_TRIPS = 3  # as `report.he.PROTOCOL_ROUND_TRIPS` (report sits above backends)
SENTINEL = 1e30  # masks' stand-ins for -inf, not values (`core.calibrate.SENTINEL`)


@dataclass(frozen=True)
class ValueBound:
    """B = `bound`, a power of two >= MARGIN x `observed`, the largest |value| of an
    encrypted tensor (`node`) over `samples` calibration samples."""

    bound: float
    observed: float
    node: str
    samples: int

    def explain(self) -> str:
        return (
            f"B = 2^{math.log2(self.bound):g}: the largest |value| of an encrypted tensor over "
            f"the {self.samples} calibration samples is {self.observed:.3g} (at {self.node}), "
            f"widened by {MARGIN} and rounded up to a power of two"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "bound": self.bound,
            "observed": self.observed,
            "node": self.node,
            "samples": self.samples,
        }


def value_bound(
    graph: Graph, specs: list[dict[str, Any]], samples: list[tuple[torch.Tensor, ...]]
) -> ValueBound:
    """`ValueBound` from a plain run of every sample (module docstring, step 1). A value is
    encrypted when it derives from a user input the client encrypts (`specs` mode other
    than public); model weights and public inputs alone give plain values."""
    from secinfer.core.execute import Executor

    encrypted = {s["name"] for s in specs if s["mode"] != "public"}
    worst, where = 0.0, "no encrypted tensor"

    def observe(name: str, call: Any, value: Any) -> None:
        nonlocal worst, where
        inputs = graph.fx_nodes[name].all_input_nodes
        if not any(n.name in encrypted for n in inputs):
            return
        encrypted.add(name)
        for tensor in value if isinstance(value, list | tuple) else (value,):
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                finite = tensor[torch.isfinite(tensor) & (tensor.abs() < SENTINEL)]
                if finite.numel() and float(finite.abs().max()) > worst:
                    worst, where = float(finite.abs().max()), name

    executor = Executor(graph, "plain")
    for inputs in samples:
        executor.run(inputs, hook=observe)
    bound = 2.0 ** math.ceil(math.log2(max(worst * MARGIN, 1.0)))
    return ValueBound(bound, worst, where, len(samples))


@dataclass
class Candidate:
    """One parameter set's predicted run (module docstring, step 3)."""

    params: CkksParams
    refresh: RefreshPlan | None
    usable: int
    counts: dict[str, int] = field(default_factory=dict)
    refreshes: int = 0
    refreshed: int = 0
    keys: int = 0
    input_ciphertexts: int = 0
    predicted: dict[str, float] = field(default_factory=dict)

    @property
    def reserve(self) -> int:
        return self.refresh.reserve if self.refresh else 0

    def price(self) -> None:
        """Fill `predicted` (module docstring, step 3)."""
        from secinfer.report.mpc import NETWORKS

        n, top = self.params.poly_modulus_degree, self.params.depth + 1
        mean = self.reserve + 1 + (self.usable + 1) / 2
        c = self.counts
        compute = (
            c.get("ct_pt_mults", 0) * op_ms("pt_mult", n, mean)
            + c.get("ct_ct_mults", 0) * (op_ms("ct_mult", n, mean) + op_ms("key_switch", n, mean))
            + c.get("rotations", 0) * op_ms("key_switch", n, mean)
            + c.get("additions", 0) * op_ms("add", n, mean)
        ) / 1e3
        mode = self.refresh.mode if self.refresh else SLOT
        room = self.refresh.room_level + 1 if self.refresh else 1
        refresh = self.refreshed * op_ms(f"refresh_{mode}", n, top) / 1e3
        wire = self.refreshed * (
            ciphertext_bytes(n, room) + ciphertext_bytes(n, top, seeded=mode == SLOT)
        )
        wire += self.input_ciphertexts * ciphertext_bytes(n, top, seeded=True)
        wire += (self.keys + 1) * key_bytes(n, top + 1)
        trips = self.refreshes + PROTOCOL_ROUND_TRIPS
        self.predicted = {
            "compute_seconds": compute,
            "refresh_seconds": refresh,
            "bytes": wire,
            "round_trips": trips,
        }
        for name, (rtt, bandwidth) in NETWORKS.items():
            self.predicted[name] = compute + refresh + trips * rtt + wire * 8 / bandwidth

    def row(self) -> dict[str, Any]:
        return {
            "poly_modulus_degree": self.params.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.params.coeff_mod_bit_sizes),
            "usable_levels": self.usable,
            "reserved_levels": self.reserve,
            "refresh_mode": self.refresh.mode if self.refresh else None,
            "refreshes": self.refreshes,
            "refreshed_ciphertexts": self.refreshed,
            "galois_keys": self.keys,
            **{k: round(v, 4) if isinstance(v, float) else v for k, v in self.predicted.items()},
        }

    def label(self) -> str:
        return f"N={self.params.poly_modulus_degree} {self.params.coeff_mod_bit_sizes}"


@dataclass(frozen=True)
class ParameterChoice:
    """The parameters a run uses and why (`reason`); `refresh` None when refresh is off."""

    params: CkksParams
    refresh: RefreshPlan | None
    bound: ValueBound
    hiding_asked: float
    network: str
    candidates: list[dict[str, Any]]
    reason: str

    @property
    def reserve(self) -> int:
        return self.refresh.reserve if self.refresh else 0

    @property
    def mask_bits(self) -> int:
        """The bottom level's slot-mask bits (the client's plausibility bound, and the
        private evaluation's reveal mask), whatever the refresh's mode."""
        first = self.params.coeff_mod_bit_sizes[0]
        return default_mask_bits(first, self.params.scale_bits)

    def hiding(self) -> dict[str, Any]:
        """The report's `hiding` entry."""
        if self.refresh is None:
            return {
                "hiding_bits": None,
                "asked_bits": self.hiding_asked,
                "mode": None,
                "explained": "refresh is off: the client decrypts no intermediate value",
                "value_bound": self.bound.to_dict(),
            }
        return {
            "hiding_bits": self.refresh.hiding_bits,
            "asked_bits": self.hiding_asked,
            "mode": self.refresh.mode,
            "mask_bits": self.refresh.mask_bits,
            "room_level": self.refresh.room_level,
            "reserved_levels": self.refresh.reserve,
            "per": "slot" if self.refresh.mode == SLOT else "coefficient",
            "explained": f"{self.refresh.explain()}; {self.bound.explain()}",
            "value_bound": self.bound.to_dict(),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.params.to_dict(),
            "refresh": self.refresh.to_dict() if self.refresh else None,
            "network": self.network,
            "candidates": self.candidates,
            "reason": self.reason,
        }


NOMINAL_BOUND = 64.0
"""B of a session given bare parameters (no calibration): the bound the slot mask's
documented 12 bits assume (`protocols.he.refresh`)."""


def default_choice(params: CkksParams, allow_refresh: bool = True) -> ParameterChoice:
    """`params` with a slot-mode refresh (the bottom level's mask, no level reserved) and
    the nominal bound B = 64 (stated as not calibrated): what an in-process session given
    bare parameters runs."""
    bound = ValueBound(NOMINAL_BOUND, 0.0, "nominal (not calibrated)", 0)
    first = params.coeff_mod_bit_sizes[0]
    refresh = (
        RefreshPlan(SLOT, default_mask_bits(first, params.scale_bits), 0, params.scale_bits,
                    NOMINAL_BOUND)
        if allow_refresh
        else None
    )  # fmt: skip
    asked = refresh.hiding_bits if refresh else DEFAULT_HIDING_BITS
    return ParameterChoice(params, refresh, bound, asked, "lan", [], "")


def example_specs(
    graph: Graph, inputs: tuple[torch.Tensor, ...], public_embedding: bool
) -> list[dict[str, Any]]:
    """The input specs (`inputs.input_specs`) with the shapes of `inputs` (the model's
    example), as the client would announce them."""
    from secinfer.backends.he.inputs import input_specs

    specs = input_specs(graph, public_embedding)
    if len(inputs) != len(specs):
        raise UserError(f"the model takes {len(specs)} inputs; its example has {len(inputs)}")
    for spec, value in zip(specs, inputs, strict=True):
        spec["shape"] = [int(n) for n in value.shape]
    return specs


def _embedding_dim(graph: Graph, specs: list[dict[str, Any]]) -> int | None:
    from secinfer.backends.he.inputs import embedding_table

    for spec in specs:
        if spec["mode"] == "embedded":
            table = embedding_table(graph, spec["name"])
            if table is not None:
                return int(table.shape[1])
    return None


def _laid_out(graph: Graph, specs: list[dict[str, Any]], slots: int) -> list[dict[str, Any]]:
    from secinfer.backends.he.inputs import layouts_for

    laid = copy.deepcopy(specs)
    layouts_for(graph, laid, _embedding_dim(graph, specs), slots)
    return laid


def check_width(graph: Graph, specs: list[dict[str, Any]]) -> None:
    """UserError when an input needs more slots than the largest 128-bit ring has."""
    largest = PLANNED_DEGREES[-1]
    try:
        _laid_out(graph, specs, largest // 2)
    except UserError as exc:
        raise UserError(f"{exc} (N={largest}, the largest ring at 128-bit security)") from None


def check_depth(graph: Graph, plan: Plan) -> int:
    """Without refresh the whole model must fit one context: UserError naming the depth
    when even the deepest 128-bit chain is too shallow; else the estimated depth."""
    from protocols.he.params import max_depth
    from secinfer.backends.he.inputs import estimated_depth

    needed = estimated_depth(graph, plan)
    largest = PLANNED_DEGREES[-1]
    deepest = max_depth(largest)
    if needed > deepest:
        raise UserError(
            f"--no-refresh: the model needs about {needed} levels of multiplicative depth "
            f"(estimate) and the deepest 128-bit context (N={largest}) offers {deepest}; "
            "allow refresh (client round trips) or use a shallower model"
        )
    return needed


def hiding_warning(hiding_bits: float) -> str | None:
    """The notice for a hiding below the default 40 bits (None at or above it)."""
    if hiding_bits >= DEFAULT_HIDING_BITS:
        return None
    return (
        f"warning: --hiding-bits {hiding_bits:g}: every value a refresh shows the client is "
        f"hidden only to statistical distance 2^-{hiding_bits:g} (default "
        f"{DEFAULT_HIDING_BITS}), summed over every masked value of the run"
    )


def check_serviceable(
    graph: Graph, plan: Plan, *, refresh: bool = True, public_embedding: bool = False
) -> None:
    """Before any party starts: UserError when the model's example inputs are too wide for
    every 128-bit ring (`check_width`) or, without refresh, its depth too great for every
    128-bit chain (`check_depth`). The graph's example inputs are its placeholders' shapes
    (a model exported with a dynamic size is checked at its example size)."""
    inputs = []
    for node in graph.program.graph.nodes:
        if node.op == "placeholder" and node.name in graph.user_inputs:
            value = node.meta.get("val")
            shape = [int(n) if str(n).isdigit() else 1 for n in getattr(value, "shape", [])]
            inputs.append(torch.zeros(shape))
    if len(inputs) == len(graph.user_inputs):
        check_width(graph, example_specs(graph, tuple(inputs), public_embedding))
    if not refresh:
        check_depth(graph, plan)


def _dry_run(
    graph: Graph,
    plan: Plan,
    specs: list[dict[str, Any]],
    candidate: Candidate,
    evaluation: Any,
    packing: str,
) -> None:
    from protocols.he.dry import DryEngine
    from protocols.he.layout import Layout
    from protocols.he.relayout import runnable_policy
    from secinfer.backends.he.inputs import rotation_plan

    params = candidate.params
    engine = DryEngine(params.slots, candidate.usable, params.scale)
    policy = runnable_policy(candidate.refresh, packing)
    rotations = rotation_plan(graph, plan, specs, params, evaluation, engine=engine, policy=policy)
    candidate.counts = {k: int(v) for k, v in engine.cost.to_dict().items()}
    candidate.refreshes = rotations.refreshes
    candidate.refreshed = rotations.refreshed_ciphertexts
    candidate.keys = len(rotations.keys)
    candidate.input_ciphertexts = sum(
        math.prod(Layout.from_dict(s["layout"]).grid_shape) for s in specs if "layout" in s
    )
    candidate.price()


def _depths(params_at_n: list[CkksParams], reserve_of: Any) -> list[CkksParams]:
    """The chains of one ring worth a dry run: those whose usable levels are in
    USABLE_STEPS, and the deepest."""
    chosen = []
    for i, params in enumerate(params_at_n):
        usable = params.depth - reserve_of(params)
        if usable >= MIN_USABLE and (usable in USABLE_STEPS or i == len(params_at_n) - 1):
            chosen.append(params)
    return chosen


def choose_parameters(
    graph: Graph,
    plan: Plan,
    specs: list[dict[str, Any]],
    bound: ValueBound,
    *,
    hiding_bits: float = DEFAULT_HIDING_BITS,
    allow_refresh: bool = True,
    network: str = "lan",
    evaluation: Any = None,
    packing: str = "auto",
) -> ParameterChoice:
    """The cheapest parameter set on `network` (module docstring); UserError when none can
    serve the model (too wide for every ring, too deep without refresh, or the hiding out
    of every chain's reach). Each candidate's dry run packs as its refresh allows
    (`relayout.runnable_policy`: `packing` with refreshes, else feature-major)."""
    from secinfer.report.mpc import NETWORKS

    if network not in NETWORKS:
        raise UserError(f"network {network!r}: expected one of {sorted(NETWORKS)}")
    check_width(graph, specs)
    needed = 0 if allow_refresh else check_depth(graph, plan)
    chains = [p for p in candidate_chains(MIN_USABLE) if p.poly_modulus_degree >= 8192]
    refreshes: dict[tuple[int, tuple[int, ...]], RefreshPlan | None] = {}
    skipped: list[str] = []
    for params in chains:
        key = (params.poly_modulus_degree, tuple(params.coeff_mod_bit_sizes))
        if not allow_refresh:
            refreshes[key] = None
            continue
        primes = chain_primes(params.poly_modulus_degree, params.coeff_mod_bit_sizes)[:-1]
        try:
            refreshes[key] = plan_refresh(primes, params.scale_bits, bound.bound, hiding_bits)
        except HidingError:
            continue

    def reserve_of(params: CkksParams) -> int:
        found = refreshes.get((params.poly_modulus_degree, tuple(params.coeff_mod_bit_sizes)))
        return found.reserve if found else 0

    candidates: list[Candidate] = []
    for n in sorted({p.poly_modulus_degree for p in chains}):
        at_n = [
            p
            for p in chains
            if p.poly_modulus_degree == n
            and (p.poly_modulus_degree, tuple(p.coeff_mod_bit_sizes)) in refreshes
            and p.depth >= needed
        ]
        if not at_n:
            skipped.append(f"N={n}: no chain holds the hiding (or the depth) asked")
            continue
        try:
            laid = _laid_out(graph, specs, n // 2)
        except UserError as exc:
            skipped.append(f"N={n}: {exc}")
            continue
        picks = _depths(at_n, reserve_of) if allow_refresh else [at_n[0], at_n[-1]]
        if not picks:
            skipped.append(
                f"N={n}: the refresh keeps {reserve_of(at_n[-1])} of its "
                f"{at_n[-1].depth} levels, fewer than {MIN_USABLE} are left for products"
            )
        rising, best_here = 0, math.inf
        for params in dict.fromkeys(picks):
            key = (params.poly_modulus_degree, tuple(params.coeff_mod_bit_sizes))
            candidate = Candidate(params, refreshes[key], params.depth - reserve_of(params))
            _dry_run(graph, plan, laid, candidate, evaluation, packing)
            candidates.append(candidate)
            cost = candidate.predicted[network]
            rising = rising + 1 if cost > best_here else 0
            best_here = min(best_here, cost)
            best_all = min(c.predicted[network] for c in candidates)
            if rising >= STOP_AFTER_RISES or cost > STOP_FACTOR * best_all:
                break  # deeper chains of this ring only cost more (module docstring)
    if not candidates:
        why = "; ".join(skipped) or "no candidate"
        raise UserError(f"no 128-bit CKKS parameter set serves this model: {why}")
    candidates.sort(key=lambda c: c.predicted[network])
    best = candidates[0]
    return ParameterChoice(
        best.params,
        best.refresh,
        bound,
        hiding_bits,
        network,
        [c.row() for c in candidates],
        _reason(best, candidates, skipped, network, needed),
    )


def _reason(
    best: Candidate,
    candidates: list[Candidate],
    skipped: list[str],
    network: str,
    needed: int,
) -> str:
    """One paragraph: the winner, its predicted cost and its runner-up, what was excluded."""
    cost = best.predicted
    parts = [
        f"{best.label()}: {best.usable} levels for products per context"
        + (f" ({best.reserve} kept for the refresh)" if best.reserve else "")
        + f", predicted {cost[network]:.1f} s on {network.upper()} ({cost['compute_seconds']:.1f}"
        f" s of products and rotations, {cost['refresh_seconds']:.1f} s of refresh work, "
        f"{best.refreshes} refreshes, {cost['bytes'] / 1e6:.0f} MB)"
    ]
    if not best.refresh:
        parts.append(f"refresh is off: the chain holds the model's {needed} levels (estimate)")
    n = best.params.poly_modulus_degree
    others = [c for c in candidates[1:] if c.params.poly_modulus_degree != n]
    runner = others[0] if others else (candidates[1] if len(candidates) > 1 else None)
    if runner is not None:
        parts.append(
            f"next: {runner.label()} at {runner.predicted[network]:.1f} s "
            f"({runner.refreshes} refreshes); {len(candidates)} candidates priced by dry runs"
        )
    parts += skipped
    return "; ".join(parts)


__all__ = [
    "COEFFICIENT",
    "Candidate",
    "ParameterChoice",
    "ValueBound",
    "check_depth",
    "check_serviceable",
    "check_width",
    "choose_parameters",
    "default_choice",
    "example_specs",
    "hiding_warning",
    "value_bound",
]
