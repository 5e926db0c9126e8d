"""Both computing parties' meter counts turned into table rows: rounds (calls in which a
party waits for the other; the larger count of the two parties), MB sent by one computing
party (the larger of the two; MB = 10^6 bytes), dealer MB (both parties' traffic with the
dealer: triples, seeds and requests), the sent-plus-received figure in CrypTen's own
convention, ratios ours / CrypTen, and the layer's costs summed per op category."""

from __future__ import annotations

from typing import Any

from benchmarks.cases import MB

RATIO_KEYS = ("max_abs_error", "rounds", "mb_sent_per_party", "dealer_mb", "seconds")

OP_CATEGORY = {
    "aten.linear": "matmul",
    "aten.matmul": "matmul",
    "aten.mm": "matmul",
    "aten.bmm": "matmul",
    "aten.addmm": "matmul",
    "aten.softmax": "softmax",
    "aten._softmax": "softmax",
    "aten.layer_norm": "layer_norm",
    "aten.gelu": "gelu",
}


def combine(model_owner: dict[str, int], data_owner: dict[str, int]) -> dict[str, Any]:
    """One row's traffic from both parties' counters (see the module docstring)."""
    return {
        "rounds": max(model_owner["rounds"], data_owner["rounds"]),
        "mb_sent_per_party": max(model_owner["bytes_sent"], data_owner["bytes_sent"]) / MB,
        "mb_sent": {
            "model_owner": model_owner["bytes_sent"] / MB,
            "data_owner": data_owner["bytes_sent"] / MB,
        },
        "dealer_mb": sum(
            t["dealer_bytes_sent"] + t["dealer_bytes_received"] for t in (model_owner, data_owner)
        )
        / MB,
        "dealer_rounds": max(model_owner["dealer_rounds"], data_owner["dealer_rounds"]),
        # FSS keys the model owner forwards to the data owner before they are used
        "offline_mb_sent_per_party": max(
            t.get("offline_bytes_sent", 0) for t in (model_owner, data_owner)
        )
        / MB,
        # CrypTen's own `comm_bytes` counts an all-reduce of n bytes as 2n (sent plus
        # received): this is the figure in that convention
        "mb_sent_plus_received_per_party": max(
            t["bytes_sent"] + t["bytes_received"] for t in (model_owner, data_owner)
        )
        / MB,
    }


def ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float | None]:
    """ours / theirs for each of `RATIO_KEYS` (None where either figure is missing or
    CrypTen's is zero)."""
    return {
        k: (ours[k] / theirs[k] if theirs.get(k) and ours.get(k) is not None else None)
        for k in RATIO_KEYS
    }


def by_category(nodes_mo: list[dict], nodes_do: list[dict]) -> dict[str, dict[str, float]]:
    """Our per-node costs summed per op category (matmul, softmax, layer_norm, gelu, other)."""
    out: dict[str, dict[str, float]] = {}
    for a, b in zip(nodes_mo, nodes_do, strict=True):
        entry = out.setdefault(
            OP_CATEGORY.get(a["op"], "other"),
            {"rounds": 0, "mb_sent_per_party": 0.0, "dealer_mb": 0.0, "seconds": 0.0},
        )
        row = combine(a, b)
        entry["rounds"] += row["rounds"]
        entry["mb_sent_per_party"] += row["mb_sent_per_party"]
        entry["dealer_mb"] += row["dealer_mb"]
        entry["seconds"] += max(a["seconds"], b["seconds"])
    return out


def crypten_categories(stages_mo: dict, stages_do: dict) -> dict[str, dict[str, float]]:
    """The hand-written CrypTen layer's costs per stage (the categories above, and sharing)."""
    out = {}
    for stage in stages_mo:
        a, b = stages_mo[stage], stages_do[stage]
        row = combine(a, b)
        out[stage] = {
            "rounds": row["rounds"],
            "mb_sent_per_party": row["mb_sent_per_party"],
            "dealer_mb": row["dealer_mb"],
            "seconds": max(a["seconds"], b["seconds"]),
        }
    return out


def top_nodes(nodes_mo: list[dict], nodes_do: list[dict], count: int = 6) -> list[dict]:
    """Our `count` graph nodes that send the most bytes per party."""
    rows = []
    for a, b in zip(nodes_mo, nodes_do, strict=True):
        row = combine(a, b)
        rows.append(
            {
                "node": a["node"],
                "op": a["op"],
                "rounds": row["rounds"],
                "mb_sent_per_party": row["mb_sent_per_party"],
                "seconds": max(a["seconds"], b["seconds"]),
            }
        )
    rows.sort(key=lambda r: -r["mb_sent_per_party"])
    return rows[:count]


__all__ = [
    "OP_CATEGORY",
    "RATIO_KEYS",
    "by_category",
    "combine",
    "crypten_categories",
    "ratios",
    "top_nodes",
]
