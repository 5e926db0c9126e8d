"""One comparison for every backend: the case's bound (`bounds`), and a failure message
naming the op, backend, range, the worst element's error and its allowance."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from conformance import bounds
from conformance.cases import BY_NAME, Case, magnitude, op_node
from conformance.findings import KNOWN
from secinfer.core.plan import Plan


def bound_for(
    case: Case,
    backend: str,
    range_: str,
    plan: Plan,
    inputs: tuple[torch.Tensor, ...],
    want: np.ndarray,
) -> bounds.Bound:
    function = bounds.function_of(case.op, case.variant)
    if function is None:
        gain = case.mpc_gain(_magnitude(inputs)) if case.mpc_gain else 0.0
        size = magnitude(case.name, range_)
        return bounds.exact(backend, want, size, case.mpc_truncations, gain)
    bias = None
    if case.op == "aten.layer_norm":
        from conformance.cases import module_of

        bias = module_of(case.name).bias.detach().double().numpy()
    return bounds.nonlinear(function, backend, plan, op_node(case.name), inputs, want, bias)


def _magnitude(inputs: tuple[torch.Tensor, ...]) -> float:
    return max(float(x.double().abs().max()) for x in inputs if x.is_floating_point())


def assert_conforms(
    name: str,
    backend: str,
    range_: str,
    plan: Plan,
    inputs: tuple[torch.Tensor, ...],
    want: np.ndarray,
    got: Any,
) -> float:
    """Assert |got - want| <= the bound elementwise; return the max error."""
    case = BY_NAME[name]
    got = np.asarray(torch.as_tensor(got).double().numpy())
    assert got.shape == want.shape, f"{name} on {backend}: shape {got.shape} != {want.shape}"
    bound = bound_for(case, backend, range_, plan, inputs, want)
    error = np.abs(got - want)
    excess = np.where(np.isfinite(error), error - bound.allowed, np.inf)
    worst = int(np.argmax(excess))
    assert excess.reshape(-1)[worst] <= 0, (
        f"{name} on {backend}, {range_} range: error {error.reshape(-1)[worst]:.3g} at "
        f"want={want.reshape(-1)[worst]:.6g} (got {got.reshape(-1)[worst]:.6g}) beyond the "
        f"allowed {np.broadcast_to(bound.allowed, want.shape).reshape(-1)[worst]:.3g} "
        f"({bound.how}); max error {np.nanmax(error):.3g}"
    )
    return float(np.max(error, initial=0.0))


def params(backend: str, items: list[tuple[Any, ...]]) -> list[Any]:
    """pytest params with the known defects of `findings.KNOWN` as strict xfails."""
    out = []
    for item in items:
        name, range_ = item[0], item[1]
        reason = KNOWN.get((backend, name, range_)) or KNOWN.get((backend, name, "*"))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(*item, marks=marks, id="-".join(map(str, item))))
    return out


def secure_items(backend: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(default, slow) (case, range) pairs of the cases `backend` claims.

    mpc: the outlier range of exact ops is the slow sweep; the nonlinear ops' outliers
    (GELU beyond +-10, scores beyond +-40, LayerNorm variances 1e-3 .. 1e3, positive
    inputs 1e-3 .. 1e3) stay in the default suite. he: the whole outlier range is slow
    (each calibrated interval costs the he kernels a fit of several seconds)."""
    from conformance.cases import ALL, RANGES, claims

    default, slow = [], []
    for case in ALL:
        if not claims(case.op, backend):
            continue
        nonlinear = bounds.function_of(case.op, case.variant) is not None
        for range_ in RANGES:
            heavy = range_ == "outlier" and (backend == "he" or not nonlinear)
            (slow if heavy else default).append((case.name, range_))
    return default, slow
