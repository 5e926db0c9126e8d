"""The columns every row of the HE matmul table shares (`he_matmul`, `he_iron`)."""

from __future__ import annotations

from typing import Any

from protocols.he.polynomial import HeCost


def cost_columns(seconds: float, plan: Any, cost: HeCost, counts_match: bool) -> dict[str, Any]:
    """Measured server seconds, the cost model's prediction (`plan`: a `MatmulPlan` or an
    `IronPlan`), the operations counted during the run (`cost`), and whether the counts the
    strategy can observe agree with its model (`counts_match`, decided by the caller)."""
    return {
        "skipped": None,
        "seconds": seconds,
        "predicted_seconds": plan.estimated_ms() / 1e3,
        "rotations": cost.rotations,
        "key_switches": plan.key_switches,
        "ct_pt_mults": cost.ct_pt_mults,
        "additions": cost.additions,
        "depth": cost.depth,
        "counts_match_model": counts_match,
    }
