"""The report of an HE run: accuracy against plain, and the bill in levels, operations, bytes.

Fields shared with `secinfer.report.common` (backend, model, seconds, output_shape, max_abs_error,
cosine, argmax_agreement, out_of_range) keep their meaning; `he` adds:
  he.params            ring degree, modulus chain, scale; params_explained (security bound,
                       precision) and params_reason (why: the winner's predicted cost, the
                       runner-up, what was excluded)
  he.params_choice     the candidates the server priced (`backends.he.choice`): per ring
                       degree and chain the levels for products and kept for the refresh,
                       refreshes, refreshed ciphertexts, Galois keys, predicted seconds
                       (compute, refresh work, LAN and WAN) and bytes; the network chosen for
  he.hiding            hiding_bits: -log2 of the statistical distance of what a refresh shows
                       the client, per slot or per coefficient (`per`), for values up to the
                       stated bound B (value_bound: from the calibration samples); asked_bits;
                       the refresh mode, its mask and room level, the levels it reserves;
                       run_hiding_bits: hiding_bits - log2(values masked in this run), the
                       distance summed over the whole run. None when refresh is off.
  he.flood             flood_bits (0: off) and the slot error bound flooding may add
  he.depth             levels a fresh ciphertext has for products (depth_per_context), the
                       levels reserved for the refresh, refreshes (client round trips) and
                       levels_used = depth_per_context x (refreshes + 1), an upper bound on
                       the levels the run consumed
  he.counts            ct-ct and ct-pt products, additions, rotations, key switches
  he.bytes             server -> client and client -> server (framed), and the public
                       context the client sent (part of client -> server)
  he.packing           the packing policy asked for and the one run ("auto": the cost
                       model per layer; "feature_major": the baseline; with `why` when
                       they differ), re-layout round trips and the ciphertexts they moved,
                       how many products each strategy computed
  he.latency           seconds per group (matmul, attention, softmax, GELU, LayerNorm,
                       refresh, other); refresh round trips are taken out of the node times
  estimates            wall time on a LAN and a WAN (`secure_report.NETWORKS`): the local
                       run's seconds + round trips x RTT + the bytes of both directions /
                       bandwidth; round trips = refreshes + PROTOCOL_ROUND_TRIPS
  layers[i]            per block: max_abs_error null (intermediate values stay encrypted) and
                       approx_max_abs_error, the same block's error under `approx`; the
                       server's seconds on the block (refresh round trips taken out, as in
                       he.latency) and refresh_seconds, refreshes, and operations {ct_ct_mults,
                       ct_pt_mults, rotations, key_switches, additions}
"""

from __future__ import annotations

from typing import Any

import torch

from secinfer.core.execute import RunResult
from secinfer.core.graph import Graph
from secinfer.report.common import block_ends, block_error, report_header
from secinfer.report.mpc import estimate, estimate_line

LATENCY_ORDER = ("matmul", "attention", "softmax", "GELU", "LayerNorm", "refresh", "other")
LAYER_OPERATIONS = ("ct_ct_mults", "ct_pt_mults", "rotations", "key_switches", "additions")
PROTOCOL_ROUND_TRIPS = 3
"""A query's exchanges that wait for the other side, besides refreshes: hello -> shapes,
layouts -> keys and input (one client turn), output -> received."""


def he_estimates(
    seconds: float, round_trips: int, server: dict[str, Any], client: dict[str, Any]
) -> dict[str, float]:
    """`secure_report.estimate` for an HE session: both directions' bytes, in turn."""
    return estimate(seconds, round_trips, server["bytes_sent"] + client["bytes_sent"])


def latency_group(record: Any) -> str:
    """matmul, attention, softmax, GELU, LayerNorm or other, from the node's op and module."""
    module = (record.module or "").lower()
    if "softmax" in module:
        return "softmax"
    if "norm" in module or ".ln" in module or module.startswith("ln"):
        return "LayerNorm"
    if "act" in module.split(".")[-1] or "gelu" in module:
        return "GELU"
    if record.op in ("aten.matmul", "aten.bmm"):
        return "attention"
    if record.op in ("aten.linear", "aten.mm", "aten.addmm", "aten.embedding"):
        return "matmul"
    return "other"


def latency_table(records: list[Any]) -> dict[str, dict[str, float]]:
    """Seconds per group, refresh round trips apart (their time is taken out of the nodes')."""
    table: dict[str, dict[str, float]] = {}
    refresh = {"seconds": 0.0, "nodes": 0, "refreshes": 0}
    for record in records:
        spent = float(record.cost.get("refresh_seconds", 0.0)) if record.cost else 0.0
        row = table.setdefault(latency_group(record), {"seconds": 0.0, "nodes": 0})
        row["seconds"] += record.seconds - spent
        row["nodes"] += 1
        refresh["seconds"] += spent
        refresh["refreshes"] += int(record.cost.get("refreshes", 0)) if record.cost else 0
        refresh["nodes"] += 1 if spent else 0
    table["refresh"] = refresh
    return table


def _no_cost() -> dict[str, Any]:
    return {
        "seconds": 0.0,
        "refresh_seconds": 0.0,
        "refreshes": 0,
        "operations": dict.fromkeys(LAYER_OPERATIONS, 0),
    }


def layer_costs(graph: Graph, nodes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per block, from the server's per-node records (`name`, `seconds`, `cost`): seconds
    without refresh round trips, refresh_seconds, refreshes and the operation counts."""
    blocks: dict[str, dict[str, Any]] = {}
    for record in nodes:
        node = graph.node_by_name.get(record.get("name", ""))
        if node is None:
            continue
        cost = record.get("cost") or {}
        entry = blocks.setdefault(node.block, _no_cost())
        spent = float(cost.get("refresh_seconds", 0.0))
        entry["seconds"] += float(record.get("seconds", 0.0)) - spent
        entry["refresh_seconds"] += spent
        entry["refreshes"] += int(cost.get("refreshes", 0))
        for key in LAYER_OPERATIONS:
            entry["operations"][key] += int(cost.get(key, 0))
    return blocks


def build_he_report(
    *,
    graph: Graph,
    model: str,
    output: torch.Tensor,
    seconds: float,
    server: dict[str, Any],
    client: dict[str, Any],
    reference: RunResult,
    approx: RunResult,
    output_name: str,
) -> dict[str, Any]:
    costs = layer_costs(graph, server.get("nodes", []))
    layers = [
        {
            "name": block,
            "node": node,
            "max_abs_error": None,
            "approx_max_abs_error": block_error(approx, reference, node),
            **costs.get(block, _no_cost()),
        }
        for block, node in block_ends(graph).items()
    ]
    report: dict[str, Any] = {
        **report_header(
            backend="he",
            model=model,
            seconds=seconds,
            output=output,
            reference=reference.outputs[0],
            output_name=output_name,
        ),
        "out_of_range": 0,
        "out_of_range_nodes": [],
        "he": {
            "params": server["params"],
            "params_explained": server["params_explained"],
            "params_reason": server.get("params_reason", ""),
            "params_choice": server.get("params_choice"),
            "hiding": server.get("hiding"),
            "flood": server.get("flood") or {"flood_bits": 0},
            "depth": {
                "depth_per_context": server["depth_per_context"],
                "reserved_levels": server.get("reserved_levels", 0),
                "refreshes": server["refreshes"],
                "refreshed_ciphertexts": server["refreshed_ciphertexts"],
                "levels_used": server["levels_used"],
            },
            "counts": server["counts"],
            "bytes": {
                "server_to_client": server["bytes_sent"],
                "client_to_server": client["bytes_sent"],
                "public_context": client["public_context_bytes"],
            },
            "latency": server["latency"],
            "packing": server.get("packing", {}),
            "server_seconds": server["seconds"],
            "client_seconds": client["seconds"],
        },
        "layers": layers,
    }
    trips = server["refreshes"] + PROTOCOL_ROUND_TRIPS
    report["estimates"] = he_estimates(seconds, trips, server, client)
    report["he"]["round_trips"] = trips
    return report


def he_summary(report: dict[str, Any]) -> str:
    """Lines for the terminal: levels and refreshes, bytes, operations, latency per group."""
    he = report["he"]
    depth, counts, sent = he["depth"], he["counts"], he["bytes"]
    params = he["params"]
    lines = [
        f"CKKS N={params['poly_modulus_degree']}, chain {params['coeff_mod_bit_sizes']}, "
        f"scale 2^{params['scale_bits']}: {depth['depth_per_context']} levels per ciphertext"
        + (
            f" (+{depth['reserved_levels']} kept for the refresh), "
            if depth.get("reserved_levels")
            else ", "
        )
        + f"{depth['refreshes']} refreshes ({depth['refreshed_ciphertexts']} ciphertexts), "
        f"at most {depth['levels_used']} levels used",
        f"why: {he['params_reason']}",
        hiding_line(he.get("hiding"), he.get("flood")),
        f"bytes: server -> client {sent['server_to_client'] / 1e6:.1f} MB, client -> server "
        f"{sent['client_to_server'] / 1e6:.1f} MB "
        f"(public context {sent['public_context'] / 1e6:.1f} MB)",
        f"operations: {counts['ct_ct_mults']} ct-ct and {counts['ct_pt_mults']} ct-pt products, "
        f"{counts['rotations']} rotations ({counts['key_switches']} key switches)",
        estimate_line(report["estimates"], f"{he['round_trips']} round trips"),
    ]
    packing = he.get("packing") or {}
    if packing:
        chosen = ", ".join(f"{n} {k}" for k, n in sorted(packing.get("products", {}).items()))
        lines.append(
            f"packing {packing['policy']}: {chosen or _no_choice(packing)}; "
            f"{packing['relayouts']} re-layout round trips (in the refreshes)"
            + (f" (asked {packing['asked']}: {packing['why']})" if packing.get("why") else "")
        )
    lines.append(latency_markdown(he["latency"]))
    return "\n".join(lines)


def _no_choice(packing: dict[str, Any]) -> str:
    """What the packing line says when no product recorded a choice."""
    if packing.get("policy") == "feature_major" and packing.get("why"):
        return "every product feature-major"
    return "no product"


def hiding_line(hiding: dict[str, Any] | None, flood: dict[str, Any] | None) -> str:
    """The terminal line on what refreshes show the client, and the output's flooding."""
    if not hiding:
        return "hiding: not recorded"
    if hiding.get("hiding_bits") is None:
        line = f"hiding: {hiding['explained']}"
    else:
        bound = hiding["value_bound"]["bound"]
        line = (
            f"hiding: {hiding['hiding_bits']:.1f} bits per {hiding['per']} "
            f"(asked {hiding['asked_bits']:g}) for |x| <= {bound:g}, {hiding['mode']} masks"
        )
        if "run_hiding_bits" in hiding:
            line += f"; {hiding['run_hiding_bits']:.1f} bits over the run's masked values"
    if flood and flood.get("flood_bits"):
        line += (
            f"; output flooded with +-2^{flood['flood_bits']} (adds at most "
            f"{flood['slot_error_bound']:.2g} per value)"
        )
    return line


def latency_markdown(latency: dict[str, dict[str, float]]) -> str:
    total = sum(row["seconds"] for row in latency.values()) or 1.0
    rows = ["| operation | seconds | share |", "|---|---|---|"]
    for group in LATENCY_ORDER:
        if group in latency:
            s = latency[group]["seconds"]
            rows.append(f"| {group} | {s:.2f} | {s / total:.0%} |")
    return "\n".join(rows)


__all__ = ["build_he_report", "he_summary", "hiding_line", "latency_markdown"]
