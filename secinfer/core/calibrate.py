"""Calibration: run `plain` on sample inputs and record each nonlinear node's input range.

The quantity recorded is the one the approximation sees: the input of GELU, tanh, exp...;
var + eps for layer_norm (the inverse square root's input); the denominator of a division
by a tensor; the base of a fractional power. The plan widens these ranges into intervals.
"""

from __future__ import annotations

from typing import Any

import torch

from secinfer.core.execute import Executor
from secinfer.core.graph import Graph
from secinfer.core.plan import CONDITIONAL
from secinfer.core.registry import Call, lookup

Range = tuple[float, float]
SENTINEL = 1e30
"""Values this large are masks' stand-ins for -inf (torch.finfo.min), not activations."""


def approximated_input(op: str, call: Call) -> torch.Tensor | None:
    """The tensor whose range the approximation of this call depends on (None if none)."""
    spec = lookup(op)
    function = spec.function if spec else None
    if function == "layer_norm":
        x, shape = call.args[0], call.args[1]
        eps = call.args[4] if len(call.args) > 4 else call.kwargs.get("eps", 1e-5)
        dims = tuple(range(-len(shape), 0))
        return x.detach().double().var(dim=dims, unbiased=False) + eps
    if op == "aten.div":
        y = call.args[1]
        return y if isinstance(y, torch.Tensor) and y.numel() > 1 else None
    if function is not None or op in CONDITIONAL:
        x = call.args[0]
        return x if isinstance(x, torch.Tensor) and x.is_floating_point() else None
    return None


def calibrate(graph: Graph, samples: list[tuple[torch.Tensor, ...]]) -> dict[str, Range]:
    """node name -> (min, max) of its approximated input over all `samples`."""
    executor = Executor(graph, "plain")
    ranges: dict[str, Range] = {}

    def observe(name: str, call: Call, _value: Any) -> None:
        tensor = approximated_input(graph.node_by_name[name].op, call)
        if tensor is None or tensor.numel() == 0:
            return
        values = tensor.detach()
        finite = values[torch.isfinite(values) & (values.abs() < SENTINEL)]
        if finite.numel() == 0:
            return
        lo, hi = float(finite.min()), float(finite.max())
        if name in ranges:
            lo, hi = min(lo, ranges[name][0]), max(hi, ranges[name][1])
        ranges[name] = (lo, hi)

    for inputs in samples:
        executor.run(inputs, hook=observe)
    return ranges
