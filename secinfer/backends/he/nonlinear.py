"""The `he` kernels of what pretrained models use: LayerNorm as one op, exp-based softmax,
GELU and tanh / sigmoid / erf / silu, on `protocols.he.tensor.HeTensor`.

Each evaluates the approximation its plan choice names (`secinfer.core.forms.form_for`,
sized from the node's calibrated interval and certified there; the `approx` backend runs
the same object in float64), with polynomials by `protocols.he.polynomial` (depth
ceil(log2(d + 1)), one more when the interval map is not folded). Depth is what the forms
state; products that find no level refresh their operand (`HeTensor.ensure_level`).

    gelu, tanh, sigmoid, erf, silu  "chebyshev"       one polynomial, elementwise
    gelu                             "piecewise"       two composite signs, a polynomial
    softmax                          "exp_max"         along a ciphertext axis: the
                                                       tournament's halves are slices of
                                                       the grid (no rotation), the row sum
                                                       additions
    layer_norm                       "minimax_newton"  over ciphertext axes: sums are
                                                       additions, no rotation
    exp                              "calibrated"      elementwise

A reduction axis held in slots (not what the feature-major packing gives, but another
packing may) is first moved into ciphertexts (`HeTensor.replicate`: one mask product,
1 L, and 1 + log2(n) rotations per entry). Older methods (GELU "quad" and "minimax")
stay with `secinfer.backends.he.kernels`, which registers these (`register`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from protocols.he.losses import LevelProbe
from protocols.he.polynomial import evaluate_approximation
from protocols.he.tensor import HeTensor
from secinfer.core.forms import INTERVAL_METHODS, form_for, sized_by_interval
from secinfer.core.registry import Call, register_functions

aten = torch.ops.aten
Kernel = Callable[[Call], Any]


def in_ciphertexts(x: HeTensor, dims: tuple[int, ...]) -> HeTensor:
    """x with every axis of `dims` a ciphertext axis (`HeTensor.replicate` where not)."""
    for dim in dims:
        if x.layout.strides[dim % x.dim()] is not None:
            x = x.replicate(dim % x.dim())
    return x


def elementwise(call: Call) -> Any:
    """GELU, tanh, sigmoid, erf, silu and exp by their form: one polynomial, the piecewise
    GELU, or exp by squaring."""
    form = form_for(call.choice)
    x = call.args[0]
    if hasattr(form, "chebyshev"):  # an approximations.Polynomial
        return evaluate_approximation(x, form)
    return form(x, evaluate_approximation)


def softmax(call: Call) -> Any:
    """aten.softmax(x, dim, dtype) / aten._softmax(x, dim, half_to_float)."""
    x, dim = call.args[0], int(call.args[1]) % call.args[0].dim()
    x = in_ciphertexts(x, (dim,))
    form = form_for(call.choice, x.shape[dim])
    return form(x, dim, evaluate_approximation)


def layer_norm(call: Call) -> Any:
    """aten.layer_norm(x, normalized_shape, weight, bias, eps)."""
    args = list(call.args) + [None] * (5 - len(call.args))
    x, shape, weight, bias = args[0], list(args[1]), args[2], args[3]
    weight = call.kwargs.get("weight", weight)
    bias = call.kwargs.get("bias", bias)
    eps = args[4] if args[4] is not None else call.kwargs.get("eps", 1e-5)
    x = in_ciphertexts(x, tuple(range(x.dim() - len(shape), x.dim())))
    form = form_for(call.choice)
    return form(x, shape, weight, bias, float(eps), evaluate_approximation)


def node_depth(choice: Any, shape: tuple[int, ...], dim: int = -1) -> int:
    """The levels the kernel of `choice` consumes on an input of `shape` (softmax along
    `dim`): the same form run on a `LevelProbe`, so every product, scalar ones and the
    interval maps of unfolded polynomials included, is counted as the encrypted run does it
    (a reduction axis in slots adds the one level of moving it)."""
    probe = LevelProbe(tuple(shape))
    if choice.function == "softmax":
        form = form_for(choice, shape[dim])
        return form(probe, dim % len(shape), evaluate_approximation).depth
    form = form_for(choice)
    if choice.function == "layer_norm":
        return form(probe, [shape[-1]], None, None, 1e-5, evaluate_approximation).depth
    if hasattr(form, "chebyshev"):
        return evaluate_approximation(probe, form).depth
    return form(probe, evaluate_approximation).depth


def planned_levels(graph: Any, plan: Any) -> dict[str, int]:
    """node -> `node_depth` for the plan's choices these kernels run (input shapes from the
    graph; softmax along its `dim` argument)."""
    levels = {}
    for name, choice in plan.choices.items():
        if not sized_by_interval(choice) or not choice.interval:
            continue
        fx_node = graph.fx_nodes[name]
        value = fx_node.args[0].meta.get("val") if fx_node.args else None
        if value is None:
            continue
        shape = tuple(int(n) for n in value.shape)
        dim = int(fx_node.args[1]) if choice.function == "softmax" else -1
        levels[name] = node_depth(choice, shape, dim)
    return levels


KERNELS: dict[str, Kernel] = {
    "gelu": elementwise,
    "tanh": elementwise,
    "sigmoid": elementwise,
    "erf": elementwise,
    "silu": elementwise,
    "softmax": softmax,
    "layer_norm": layer_norm,
    "exp": elementwise,
}


def register(
    dispatch: Callable[[Kernel], Kernel],
    he_functions: dict[str, tuple[str, ...] | None],
    fallback: Kernel,
) -> None:
    """Give every op of KERNELS' functions an he kernel (`dispatch` wraps it as the other
    he kernels: plain arguments run in torch), and add the methods of
    `secinfer.core.forms.INTERVAL_METHODS` to `he_functions` (what `check_he_plan`
    allows). A choice of another method goes to `fallback` (the older kernels)."""

    def route(kernel: Kernel) -> Kernel:
        def run(call: Call) -> Any:
            return kernel(call) if sized_by_interval(call.choice) else fallback(call)

        run.__name__ = getattr(kernel, "__name__", "he_kernel")
        return dispatch(run)

    register_functions("he", KERNELS, wrap=route)
    for function, methods in INTERVAL_METHODS.items():
        known = he_functions.get(function) or ()
        he_functions[function] = tuple(dict.fromkeys((*known, *methods)))


__all__ = ["KERNELS", "in_ciphertexts", "node_depth", "planned_levels", "register"]
