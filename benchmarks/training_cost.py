"""Plaintext training cost of the HE/MPC-friendly modules vs the torch functions they
replace: the median time of forward + backward (of the output's mean square) over 7 runs
after a warm-up, and ours / torch. Absolute times on a 2-core machine are noise; the ratio
is the figure to read."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import approximations


def median_seconds(fn: Callable[[], None], repeats: int = 7) -> float:
    """Median wall time of `fn` over `repeats` calls, after one warm-up call."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_cost_section() -> list[dict]:
    """GELU, softmax and LayerNorm at small-transformer shapes: torch vs ours."""
    torch.manual_seed(0)
    hidden = torch.randn(32, 64, 256, requires_grad=True)
    scores = torch.randn(32, 4, 64, 64, requires_grad=True)
    ln = torch.nn.LayerNorm(256)
    poly_ln = approximations.PolyLayerNorm.from_layer_norm(ln, rsqrt="newton")
    pairs = [
        (
            "GELU",
            lambda: F.gelu(hidden),
            lambda: approximations.gelu(hidden, "puma_refit"),
            "PolyGELU puma_refit",
        ),
        (
            "softmax",
            lambda: torch.softmax(scores, -1),
            lambda: approximations.power_softmax(scores, p=4),
            "PowerSoftmax p=4",
        ),
        ("LayerNorm", lambda: ln(hidden), lambda: poly_ln(hidden), "PolyLayerNorm rsqrt=newton"),
    ]
    rows = []
    for name, exact, ours, label in pairs:

        def step(f: Callable[[], torch.Tensor]) -> Callable[[], None]:
            return lambda: f().square().mean().backward()

        t_exact = median_seconds(step(exact))
        t_ours = median_seconds(step(ours))
        rows.append(
            {
                "op": name,
                "ours": label,
                "torch_seconds": t_exact,
                "ours_seconds": t_ours,
                "ratio_ours_over_torch": t_ours / t_exact,
            }
        )
    return rows


__all__ = ["median_seconds", "training_cost_section"]
