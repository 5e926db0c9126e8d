"""The approximation object a plan choice names, for the methods sized from the node's
calibrated interval (the he target's): one lookup that the `he` kernels, the `approx`
kernels (which predict them) and the conformance bounds all use, so all three hold the
same object, certificate included.

    gelu, tanh, sigmoid, erf, silu  "chebyshev"       approximations.target_fit.fit_function
    gelu                             "piecewise"       approximations.piecewise_gelu
    softmax                          "exp_max"         approximations.exp_softmax (the row
                                                       length is the op's, known at run time;
                                                       the interval reaches MASK_LIMIT lower)
    layer_norm                       "minimax_newton"  approximations.folded_layer_norm
    exp                              "calibrated"      approximations.shifted_exp

Softmax's interval is the calibrated one with its lower end MASK_LIMIT further down:
calibration leaves out the masks' sentinels (torch.finfo.min), which reach a secure
backend's softmax as score - MASK_LIMIT (`secinfer.core.masks`), as the mpc exp's reach
counts them (`core.plan.mpc_softmax_exp`); the row maximum's tournament and the exp must
hold there too, else their polynomials diverge on the masked entries. An unmasked softmax
pays the same levels (the plan does not know which inputs carry masks).

A choice without a calibrated interval is refused (UserError, one line naming the node):
these forms hold only where they were fitted, and CKKS cannot clip an input.
"""

from __future__ import annotations

from typing import Any

from approximations.exp_softmax import ExpSoftmax
from approximations.folded_layer_norm import FoldedLayerNorm
from approximations.piecewise_gelu import PiecewiseGelu
from approximations.shifted_exp import ShiftedExp
from approximations.target_fit import fit_function
from secinfer.core.masks import MASK_LIMIT
from secinfer.core.options import (
    ChebyshevFit,
    ExpCalibrated,
    GeluPiecewise,
    LayerNormMinimaxNewton,
    SoftmaxExpMax,
    options_for,
)
from secinfer.errors import UserError

INTERVAL_METHODS: dict[str, tuple[str, ...]] = {
    "gelu": ("chebyshev", "piecewise"),
    "tanh": ("chebyshev",),
    "sigmoid": ("chebyshev",),
    "erf": ("chebyshev",),
    "silu": ("chebyshev",),
    "softmax": ("exp_max",),
    "layer_norm": ("minimax_newton",),
    "exp": ("calibrated",),
}
"""function -> the methods `form_for` builds."""


def sized_by_interval(choice: Any) -> bool:
    """Whether `form_for` builds this choice's approximation."""
    return choice is not None and choice.method in INTERVAL_METHODS.get(choice.function, ())


def interval_of(choice: Any) -> tuple[float, float]:
    """The choice's calibrated interval, or UserError naming the node."""
    if not choice.interval:
        raise UserError(
            f"{choice.function} method {choice.method} at node {choice.node} needs a "
            "calibrated input interval: run with calibration samples, or give 'interval' "
            "for the node in --config"
        )
    lo, hi = (float(v) for v in choice.interval)
    if choice.function == "layer_norm" and lo <= 0:
        raise UserError(
            f"layer_norm at node {choice.node}: the interval of var + eps [{lo:.3g}, "
            f"{hi:.3g}] must be positive (--config 'interval')"
        )
    if not lo < hi:
        raise UserError(f"{choice.function} at node {choice.node}: empty interval {lo:g}")
    return lo, hi


def form_for(choice: Any, length: int | None = None) -> Any:
    """The approximation of `choice` (module docstring); `length` is the softmax rows'."""
    interval = interval_of(choice)
    function, method = choice.function, choice.method
    if function == "softmax" and method == "exp_max":
        options = options_for(choice, SoftmaxExpMax)
        if length is None:
            raise ValueError("softmax exp_max needs the row length")
        reach = (interval[0] - MASK_LIMIT, interval[1])
        return ExpSoftmax.for_interval(reach, int(length), options.target, options.maximum)
    if function == "layer_norm" and method == "minimax_newton":
        target = options_for(choice, LayerNormMinimaxNewton).target
        return FoldedLayerNorm.for_interval(interval, target)
    if function == "exp" and method == "calibrated":
        return ShiftedExp.for_interval(interval, options_for(choice, ExpCalibrated).target)
    if function == "gelu" and method == "piecewise":
        return PiecewiseGelu.for_interval(interval, options_for(choice, GeluPiecewise).target)
    if method == "chebyshev" and function in INTERVAL_METHODS:
        fit = options_for(choice, ChebyshevFit)
        return fit_function(function, interval, fit.target, fit.max_degree)
    raise ValueError(f"{function} method {method}: not a form sized by its interval")


__all__ = ["INTERVAL_METHODS", "form_for", "interval_of", "sized_by_interval"]
