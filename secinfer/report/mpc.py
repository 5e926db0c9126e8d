"""The report of a secure run: accuracy against plain, and the bill in bytes and rounds.

Adds to the fields of `secinfer.report.common` (never renaming them):
  comm.bytes_sent      {model_owner, data_owner, dealer}: bytes each party sent during the
                       secure run (the dealer's are the triples and seeds it dealt)
  comm.rounds          the larger of the two computing parties' round counts (a round is a
                       wait for the peer's message)
  comm.setup           the same counters for agreeing on the architecture, plan and shapes
  comm.offline         {model_owner, data_owner}: the weights shared and their Beaver masks
                       opened once per model, before the input existed (counters, seconds,
                       weights_opened); bytes_sent and rounds above are the online phase:
                       what each further query costs
  estimates            wall time on a LAN (1 ms round trip, 5 Gbps: PUMA's setting) and a
                       WAN (40 ms, 100 Mbps): compute seconds + rounds x RTT + the busier
                       party's bytes / bandwidth
  layers[i]            per block: bytes_sent {model_owner, data_owner}, rounds, seconds;
                       max_abs_error is null (intermediate values stay secret) and
                       approx_max_abs_error is the same block's error under `approx` with
                       the same plan, the part of the error the approximations explain
  out_of_range         inputs outside the intervals where the mpc kernels are accurate,
                       counted by the plaintext reference run (a secure kernel cannot look)
"""

from __future__ import annotations

from typing import Any

import torch

from secinfer.core.execute import RunResult
from secinfer.core.graph import Graph
from secinfer.core.registry import RangeStats
from secinfer.report.common import block_ends, block_error, report_header

NETWORKS = {"lan": (0.001, 5e9), "wan": (0.040, 100e6)}
"""name -> (round-trip seconds, bits per second)."""


def estimate(seconds: float, rounds: int, wire_bytes: int) -> dict[str, float]:
    """Wall-time estimates: `seconds` measured + rounds x RTT + wire_bytes / bandwidth, on
    each of NETWORKS. `wire_bytes` is what crosses the link one byte after another: under
    MPC the busier party's (both send at once), under HE both directions summed (each
    refresh is a request, then its reply)."""
    return {
        name: seconds + rounds * rtt + wire_bytes * 8 / bandwidth
        for name, (rtt, bandwidth) in NETWORKS.items()
    }


def estimate_line(estimates: dict[str, float], counted: str = "") -> str:
    """The terminal line of `estimate`'s figures (`counted`: what the round trips were)."""
    lan, wan = (NETWORKS[k] for k in ("lan", "wan"))
    return (
        f"estimated wall time: LAN ({lan[0] * 1e3:g} ms, {lan[1] / 1e9:g} Gbps) "
        f"{estimates['lan']:.2f} s, WAN ({wan[0] * 1e3:g} ms, {wan[1] / 1e6:g} Mbps) "
        f"{estimates['wan']:.2f} s" + (f" ({counted})" if counted else "")
    )


def _per_block(record: dict[str, Any]) -> dict[str, dict[str, float]]:
    blocks: dict[str, dict[str, float]] = {}
    for node in record["nodes"]:
        entry = blocks.setdefault(node["block"], {"bytes_sent": 0, "rounds": 0, "seconds": 0.0})
        entry["bytes_sent"] += node.get("bytes_sent", 0)
        entry["rounds"] += node.get("rounds", 0)
        entry["seconds"] += node["seconds"]
    return blocks


def build_secure_report(
    *,
    graph: Graph,
    backend: str,
    model: str,
    output: torch.Tensor,
    seconds: float,
    model_owner: dict[str, Any],
    data_owner: dict[str, Any],
    reference: RunResult,
    approx: RunResult,
    outside: dict[str, RangeStats],
    output_name: str,
) -> dict[str, Any]:
    mo_run, do_run = model_owner["run"], data_owner["run"]
    dealer_bytes = mo_run["dealer_bytes_received"] + do_run["dealer_bytes_received"]
    rounds = max(mo_run["rounds"], do_run["rounds"])
    busiest = max(mo_run["bytes_sent"], do_run["bytes_sent"])
    compute = max(model_owner["seconds"], data_owner["seconds"])
    mo_blocks, do_blocks = _per_block(model_owner), _per_block(data_owner)
    layers = []
    for block, node in block_ends(graph).items():
        approx_err = block_error(approx, reference, node)
        mo, do = mo_blocks.get(block, {}), do_blocks.get(block, {})
        layers.append(
            {
                "name": block,
                "node": node,
                "max_abs_error": None,
                "approx_max_abs_error": approx_err,
                "seconds": do.get("seconds", 0.0),
                "bytes_sent": {
                    "model_owner": int(mo.get("bytes_sent", 0)),
                    "data_owner": int(do.get("bytes_sent", 0)),
                },
                "rounds": int(max(mo.get("rounds", 0), do.get("rounds", 0))),
            }
        )
    report: dict[str, Any] = {
        **report_header(
            backend=backend,
            model=model,
            seconds=seconds,
            output=output,
            reference=reference.outputs[0],
            output_name=output_name,
        ),
        "out_of_range": sum(stats.count for stats in outside.values()),
        "out_of_range_nodes": [
            {
                "node": name,
                "op": graph.node_by_name[name].op,
                "module": graph.node_by_name[name].module,
                "count": stats.count,
                "worst": stats.worst,
                "interval": list(stats.interval or []),
            }
            for name, stats in outside.items()
            if stats.count
        ],
        "comm": {
            "bytes_sent": {
                "model_owner": mo_run["bytes_sent"],
                "data_owner": do_run["bytes_sent"],
                "dealer": dealer_bytes,
            },
            "rounds": rounds,
            "setup": {"model_owner": model_owner["setup"], "data_owner": data_owner["setup"]},
            "offline": {
                "model_owner": model_owner["offline"],
                "data_owner": data_owner["offline"],
            },
            "model_owner": mo_run,
            "data_owner": do_run,
            "fss_keys": fss_keys(model_owner, data_owner),
        },
        "compute_seconds": compute,
        "estimates": estimate(compute, rounds, busiest),
        "layers": layers,
    }
    return report


def fss_keys(model_owner: dict[str, Any], data_owner: dict[str, Any]) -> dict[str, float]:
    """What the FSS comparisons' keys cost: the MB the model owner forwarded to the data
    owner (offline traffic, counted apart from the online bytes; the dealer's own bytes
    are in its total), and the seconds the slower party spent obtaining them."""
    forwarded = sum(
        record.get(part, {}).get("offline_bytes_sent", 0)
        for record in (model_owner,)
        for part in ("run", "keys_ahead")
    )
    seconds = max(r.get("fss_key_seconds", 0.0) for r in (model_owner, data_owner))
    return {"forwarded_mb": forwarded / 1e6, "seconds": seconds}


def comm_summary(report: dict[str, Any]) -> str:
    """Two lines for the terminal: the bill and the network estimates."""
    sent = report["comm"]["bytes_sent"]
    est = report["estimates"]
    lines = [
        f"communication: model owner sent {sent['model_owner'] / 1e6:.2f} MB, data owner "
        f"{sent['data_owner'] / 1e6:.2f} MB, dealer {sent['dealer'] / 1e6:.2f} MB; "
        f"{report['comm']['rounds']} rounds (online; once per model before it: "
        f"{_offline_line(report['comm']['offline'])})",
        estimate_line(est),
    ]
    keys = report["comm"].get("fss_keys", {})
    if keys.get("forwarded_mb"):
        lines.insert(
            1,
            f"FSS keys: {keys['forwarded_mb']:.2f} MB forwarded by the model owner (offline, "
            f"not in the online MB above), {keys['seconds']:.2f} s obtaining them",
        )
    total = sum(sum(layer["bytes_sent"].values()) for layer in report["layers"])
    costly = sorted(report["layers"], key=lambda la: -sum(la["bytes_sent"].values()))[:3]
    if total > 0:
        parts = [
            f"{la['name']} {sum(la['bytes_sent'].values()) / total:.0%} ({la['rounds']} rounds)"
            for la in costly
        ]
        lines.append("most bytes: " + ", ".join(parts))
    return "\n".join(lines)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _offline_line(offline: dict[str, Any]) -> str:
    mo, do = offline["model_owner"], offline["data_owner"]
    return (
        f"{mo['weights_opened']} weights opened, {mo['bytes_sent'] / 1e6:.2f} + "
        f"{do['bytes_sent'] / 1e6:.2f} MB, {_count(max(mo['rounds'], do['rounds']), 'round')}"
    )


__all__ = [
    "NETWORKS",
    "build_secure_report",
    "comm_summary",
    "estimate",
    "estimate_line",
    "fss_keys",
]
