"""The op section: every variant of GELU, softmax and LayerNorm (`variants.VARIANTS`) on
the same secret input, in one run of the three parties; per variant the max abs error
against float64 torch, rounds, MB sent per party, dealer MB, the slower party's seconds,
and ratios to CrypTen's baseline for the op."""

from __future__ import annotations

import time
from typing import Any

import torch

from benchmarks.cases import (
    EPS,
    OP_CASES,
    PEER_TIMEOUT,
    PRECISION_BITS,
    QUICK_SHAPES,
    OpCase,
)
from benchmarks.crypten_baselines import crypten_decode_errors
from benchmarks.inputs import exact, input_stats, op_input
from benchmarks.party_helpers import open_output, peak_rss_mb, share, warm_up_kernels
from benchmarks.traffic import combine, ratios
from benchmarks.variants import VARIANTS, describe_choice, plan_choice
from protocols.mpc.runtime import Role


def ops_party(role: Role, cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Every variant of every op case on the data owner's input; traffic per variant."""
    from protocols.mpc.meter import Meter

    warm_up_kernels()
    meter = Meter().install()
    results = []
    try:
        for case in cases:
            x = share(case["x"], Role.DATA_OWNER, role)
            small = case["x"].reshape(-1, case["x"].shape[-1])[:2]
            warm = share(small, Role.DATA_OWNER, role)
            for key in case["variants"]:
                fn = VARIANTS[key][1]
                fn(warm, case["params"]).get_plain_text()  # unmetered warm-up, tiny
                before = meter.snapshot()
                began = time.perf_counter()
                y = fn(x, case["params"])
                seconds = time.perf_counter() - began
                cost = meter.snapshot() - before
                results.append(
                    {
                        "op": case["op"],
                        "variant": key,
                        "seconds": seconds,
                        "traffic": cost.to_dict(),
                        "y": open_output(y),
                    }
                )
                del y
    finally:
        meter.remove()
    return {"results": results, "peak_rss_mb": peak_rss_mb()}


def _party_cases(
    quick: bool, seed: int, selection: tuple[OpCase, ...]
) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor], dict[str, str]]:
    """What the parties get per case (input, variants, the plan's choice calibrated on
    another sample), the measured inputs, and the label of the plan's choice per op."""
    cases, inputs, labels = [], {}, {}
    for i, case in enumerate(selection):
        shape = QUICK_SHAPES[case.op] if quick else case.shape
        x = op_input(case.op, shape, seed + i)
        inputs[case.op] = x
        choice = plan_choice(case.op, op_input(case.op, shape, seed + 100 + i))
        params = {"eps": EPS, "choice": choice}
        if case.op == "softmax":
            from secinfer.backends.mpc.kernels.nonlinear import softmax_exp_settings
            from secinfer.core.plan import Choice

            params["product_exp"] = list(softmax_exp_settings(Choice(**choice)))
        labels[case.op] = describe_choice(choice)
        cases.append(
            {"op": case.op, "x": x.numpy(), "variants": list(case.variants), "params": params}
        )
    return cases, inputs, labels


def op_section(
    quick: bool = False, seed: int = 0, selection: tuple[OpCase, ...] = OP_CASES
) -> dict[str, Any]:
    """Every case of `selection` (default: all) in one run of the three parties."""
    from protocols.mpc.local import run_local

    cases, inputs, labels = _party_cases(quick, seed, selection)
    began = time.perf_counter()
    parties = run_local(
        ops_party,
        cases,
        timeout=1200,
        peer_timeout=PEER_TIMEOUT,
        precision_bits=PRECISION_BITS,
    )
    wall = time.perf_counter() - began
    mo, do = parties[Role.MODEL_OWNER].value, parties[Role.DATA_OWNER].value
    rows = []
    for a, b in zip(mo["results"], do["results"], strict=True):
        x = inputs[a["op"]]
        got = torch.from_numpy(b["y"]["values"])
        error = (got - exact(a["op"], x)).abs().max().item()
        rows.append(
            {
                "op": a["op"],
                "shape": list(x.shape),
                "variant": a["variant"],
                "implementation": VARIANTS[a["variant"]][0]
                + (f" ({labels[a['op']]})" if a["variant"].endswith(".product") else ""),
                "ours": not a["variant"].split(".")[1].startswith("crypten"),
                "max_abs_error": error,
                "crypten_decode_errors": crypten_decode_errors(got, b["y"]["scale"]),
                "seconds": max(a["seconds"], b["seconds"]),
                **combine(a["traffic"], b["traffic"]),
            }
        )
    baselines = {c.op: c.baseline for c in selection}
    by_key = {(r["op"], r["variant"]): r for r in rows}
    for r in rows:
        base = by_key[(r["op"], baselines[r["op"]])]
        r["baseline"] = base["implementation"]
        r["is_baseline"] = r is base
        r["ratio_ours_over_crypten"] = ratios(r, base) if r["ours"] else None
    return {
        "rows": rows,
        "inputs": input_stats(inputs),
        "wall_seconds": wall,
        "peak_rss_mb": {"model_owner": mo["peak_rss_mb"], "data_owner": do["peak_rss_mb"]},
    }


__all__ = ["op_section", "ops_party"]
