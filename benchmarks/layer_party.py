"""The encoder-layer party program (runs inside each party process): ours, the product's
executor on the mpc backend, and CrypTen's hand-written layer on the same shares, each
metered (rounds, bytes, dealer traffic) and timed; outputs opened to the data owner."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.crypten_baselines import crypten_bert_layer
from benchmarks.party_helpers import (
    open_output,
    peak_rss_mb,
    share,
    warm_up_kernels,
    warm_up_protocol,
)
from protocols.mpc.runtime import Role


def _ours_layer(
    role: Role, graph: Any, plan: Any, x: np.ndarray, meter: Any, offline: Any
) -> dict[str, Any]:
    """The product path, one query: its FSS keys dealt ahead when the session has seen
    its shapes (`party.keys_ahead`, as the product's parties do), then the executor on the
    mpc backend with the prepared Seeder, online."""
    from protocols.mpc.fss_compare import key_seconds
    from secinfer import backends
    from secinfer.backends.mpc.party import input_shapes, keys_ahead
    from secinfer.core.execute import Executor

    backends.load("mpc")  # in a party process: the mpc kernels register on import
    inputs = (torch.from_numpy(x) if role is Role.DATA_OWNER else torch.zeros(x.shape),)
    shapes = input_shapes(inputs)
    keys, ahead_seconds = keys_ahead(offline, shapes, meter)
    executor = Executor(graph, "mpc", plan, seeder=offline.seeder, meter=meter.snapshot)
    before, keys_before = meter.snapshot(), key_seconds()
    began = time.perf_counter()
    with offline.keys.during(shapes):
        result = executor.run(inputs)
    seconds = time.perf_counter() - began
    cost = meter.snapshot() - before
    y = open_output(result.outputs[0])
    nodes = [
        {"node": r.name, "op": r.op, "seconds": r.seconds, **r.cost.to_dict()}
        for r in result.records
        if r.cost is not None
    ]
    return {
        "seconds": seconds,
        "key_seconds": key_seconds() - keys_before,  # keys dealt during the query
        "keys_ahead": {
            **keys.to_dict(),
            "seconds": ahead_seconds,
            "held_bytes": offline.keys.held_bytes,  # this party's keys, held until used
        },
        "traffic": cost.to_dict(),
        "nodes": nodes,
        "y": y,
    }


def _crypten_layer(
    role: Role, x: np.ndarray, weights: dict[str, np.ndarray], heads: int, eps: float, meter: Any
) -> dict[str, Any]:
    """CrypTen's built-ins by hand, on the model owner's weights and the data owner's x."""
    stages: dict[str, dict[str, float]] = {}
    last = [meter.snapshot(), time.perf_counter()]

    def mark(stage: str) -> None:
        now, clock = meter.snapshot(), time.perf_counter()
        entry = stages.setdefault(stage, {"seconds": 0.0})
        entry["seconds"] += clock - last[1]
        for k, v in (now - last[0]).to_dict().items():
            entry[k] = entry.get(k, 0) + v
        last[:] = [now, clock]

    before = meter.snapshot()
    began = time.perf_counter()
    shared = {name: share(value, Role.MODEL_OWNER, role) for name, value in weights.items()}
    secret_x = share(x, Role.DATA_OWNER, role)
    mark("sharing")
    y = crypten_bert_layer(secret_x, shared, heads, eps, mark)
    seconds = time.perf_counter() - began
    cost = meter.snapshot() - before
    revealed = open_output(y)
    return {
        "seconds": seconds,
        "traffic": cost.to_dict(),
        "stages": stages,
        "y": revealed,
    }


def layer_party(
    role: Role,
    full_archive: str,
    public_architecture: str,
    plan: dict[str, Any],
    crypten_comparisons_plan: dict[str, Any],
    x: np.ndarray,
    weights: dict[str, np.ndarray],
    heads: int,
    eps: float,
    repeats: int = 2,
) -> dict[str, Any]:
    """Ours (the product's executor, with the default plan and with CrypTen's comparisons)
    and CrypTen's hand-written layer on the same inputs, `repeats` times each in the order
    A B C C B A A B C ... (none always goes first). Ours runs its offline phase (the
    weights, `Seeder.prepare`) once before: every repeat is a query on the same model,
    in one session per plan (its first query gets its FSS keys as it asks, the later ones
    before their input). CrypTen's layer shares and opens its weights in every run."""
    from protocols.mpc.fss_compare import KeySchedule
    from protocols.mpc.meter import Meter
    from secinfer.backends.mpc.party import offline_phase
    from secinfer.core.architecture import rebuild
    from secinfer.core.plan import Plan

    warm_up_kernels()
    # Both run the graph of the public architecture (as the product's parties do); the
    # model owner puts its own weights back by their state_dict keys, the data owner keeps
    # the zeros it was given.
    graph = rebuild(json.loads(Path(public_architecture).read_text())).graph
    if role is Role.MODEL_OWNER:
        program = torch.export.load(full_archive)  # this benchmark's own file
        state = {**program.state_dict, **program.constants}
        for node in graph.nodes:
            if node.name in graph.owned and node.target_name in state:
                graph.owned[node.name] = state[node.target_name].detach()
    plans = {
        "ours": Plan.from_dict(plan),
        "ours_crypten_comparisons": Plan.from_dict(crypten_comparisons_plan),
    }
    meter = Meter().install()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in (*plans, "crypten")}
    try:
        warm_up_protocol()
        offline = offline_phase(graph, role, meter)  # the product's, once per model
        sessions = {name: replace(offline, keys=KeySchedule()) for name in plans}
        for i in range(repeats):
            order = (*plans, "crypten")
            for which in order if i % 2 == 0 else order[::-1]:
                if which in plans:
                    run = _ours_layer(role, graph, plans[which], x, meter, sessions[which])
                    runs[which].append(run)
                else:
                    runs["crypten"].append(_crypten_layer(role, x, weights, heads, eps, meter))
    finally:
        meter.remove()
    ours_offline = {
        "seconds": offline.seconds,
        "traffic": offline.traffic.to_dict(),
        "weights_opened": offline.weights_opened,
    }
    return {**runs, "ours_offline": ours_offline, "peak_rss_mb": peak_rss_mb()}


__all__ = ["layer_party"]
