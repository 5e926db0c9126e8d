"""Nonlinear graph ops on the `mpc` backend: the plan's choice mapped to `protocols.mpc`.

  gelu        "auto" (default): with FSS comparisons (the default) "tail", relu(x) -
              p(min(|x|, 4)), 2.4e-4 on every input, about 40 bytes per element; with
              CrypTen's, x/2 + q(x^2) on the calibrated interval, no comparison, when
              that reaches 5e-3; else "sign_exp": relu(x) - (|x|/2) exp(-u(|x|)), one
              comparison, 7.8e-4 on |x| <= 34. Also PUMA's piecewise polynomials
              ("puma_refit", "puma"), "bolt", and "quad" for models trained with it
  softmax     max subtraction, exp by repeated squaring with a cut-off, one reciprocal
              per row ("exp_limit"); x^p normalised ("power") for power-softmax models
  layer_norm  mean, variance, range-normalised inverse square root on the calibrated
              variance interval
  tanh, sigmoid, erf, silu
              the catalog's minimax polynomial inside its interval, the limits outside
              (two comparisons)
  exp         exp(x - c) e^c with c the calibrated maximum, by repeated squaring
  rsqrt, sqrt, reciprocal, division by a secret
              range-normalised inverse square root / reciprocal on the calibrated interval

Comparisons (GELU's, the softmax's maximum and cut-off, the octave comparisons of
LayerNorm, rsqrt and reciprocal) come from the dealer's FSS keys when the choice's
`comparisons` is "fss" (the default, `options.MPC_COMPARISONS`), with key widths from the
calibrated interval (`fss_bits`), else from CrypTen's bit decomposition.

Options (squarings, cut-offs, powers) come from the plan's choice, read through
`secinfer.core.options.options_for` (the one place that holds their defaults; the
`protocols.mpc` functions' own keyword defaults are never relied on). Intervals come from
the plan (calibrated by the model owner); a secure kernel cannot see
its inputs, so values outside the interval are not counted here: the launcher's `approx`
run of the same plan counts them. The range-normalised kernels are widened by
MPC_WIDEN (a factor of 2 costs one more threshold of the one stacked comparison).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import torch

import approximations
from approximations.piecewise import Piecewise, Segment
from approximations.polynomial import Polynomial
from secinfer.backends.mpc.kernels.precision import at_precision
from secinfer.backends.mpc.kernels.values import is_secret
from secinfer.core.masks import MASK_LIMIT
from secinfer.core.options import (
    ExpSquaring,
    SoftmaxExpLimit,
    SoftmaxPower,
    SoftmaxTwoQuad,
    comparisons_of,
    options_for,
)
from secinfer.core.registry import Call, register, register_functions

MPC_WIDEN = 16.0
"""Calibrated positive intervals are stretched to [lo / MPC_WIDEN, hi * MPC_WIDEN]."""
LAYER_NORM_WIDEN = 2.0**8
"""LayerNorm variances (one per row: few elements, so extra octaves cost little) get
[lo / 2^8, hi * 2^8] (activations 16 times off the calibrated scale still fit), within the
fixed-point range [2^-16, 2^30]."""
DEFAULT_POSITIVE = (1e-4, 1e4)
"""Interval of an uncalibrated positive input (variance, denominator)."""
GELU_METHODS = ("auto", "sign_exp", "tail", "puma", "puma_refit", "bolt", "quad")
FSS_MARGIN = 16.0
"""FSS comparisons are exact while the compared differences stay within the key's width:
it covers FSS_MARGIN times the calibrated reach (4 bits, about 100 bytes of keys per
element); beyond, a comparison is wrong. Without a calibrated interval: the whole ring."""


def _positive_interval(choice: Any, widen: float = MPC_WIDEN) -> tuple[float, float]:
    if choice is None or not choice.interval:
        return DEFAULT_POSITIVE
    lo, hi = choice.interval
    if lo <= 0:
        raise NotImplementedError(
            f"{choice.function} at {choice.node}: calibrated interval [{lo:.3g}, {hi:.3g}] "
            "reaches zero or below; the mpc kernel needs a positive input"
        )
    return (max(lo / widen, 2.0**-16), min(hi * widen, 2.0**30))


def kernel_interval(choice: Any) -> tuple[float, float] | None:
    """Where this node's mpc kernel is accurate (None: on every input), for counting the
    inputs outside it in a plaintext run."""
    if choice is None:
        return None
    if choice.interval and choice.interval[0] <= 0 and choice.function not in ("exp", "gelu"):
        return None  # a positive-domain kernel is not used here (an integer power, say)
    if choice.function == "layer_norm":
        return _positive_interval(choice, LAYER_NORM_WIDEN)
    if choice.function in ("rsqrt", "sqrt", "reciprocal"):
        return _positive_interval(choice)
    if choice.function == "gelu" and choice.method in ("auto", "sign_exp", "tail"):
        form = gelu_form(choice)
        if comparisons_of(choice) == "fss" and choice.interval:
            bound = FSS_MARGIN * _reach(choice)  # the keys' width (`fss_bits`)
            if hasattr(form, "bound"):
                bound = min(bound, form.bound)
        elif hasattr(form, "clip"):
            return None  # the tail form holds on every input
        else:
            bound = form.bound if hasattr(form, "bound") else math.sqrt(form.interval[1])
        return (-bound, bound)
    if choice.function == "exp" and choice.interval:
        return (-math.inf, max(0.0, math.ceil(choice.interval[1])))
    return None


def fss_bits(choice: Any, x: Any, reach: float, extra: float = 0.0) -> int | None:
    """The FSS key width for this node's comparisons, or None when the plan says CrypTen
    (`comparisons_of`): compared differences up to FSS_MARGIN `reach` + `extra` (the
    calibrated reach; the whole ring without calibration) at x's fixed-point scale."""
    from protocols.mpc.fss_compare import RING_BITS, width

    if comparisons_of(choice) != "fss":
        return None
    if not choice.interval:
        return RING_BITS
    return width(FSS_MARGIN * reach + extra, int(x.encoder._precision_bits))


def _reach(choice: Any) -> float:
    lo, hi = choice.interval or (0.0, 0.0)
    return max(abs(float(lo)), abs(float(hi)))


def gelu_form(choice: Any) -> Any:
    """The even polynomial, SignExpGELU or TailGELU behind an "auto", "sign_exp" or
    "tail" choice ("auto" with FSS comparisons: the tail form)."""
    from approximations.even_gelu import secure_gelu_form

    interval = tuple(choice.interval) if choice.interval else None
    return secure_gelu_form(choice.method, interval, comparisons_of(choice) == "fss")


def gelu(call: Call) -> Any:
    from protocols.mpc.piecewise import gelu as secure_gelu

    method = call.choice.method
    if method in ("auto", "sign_exp", "tail"):
        from approximations.sign_exp_gelu import SignExpGELU
        from approximations.tail_gelu import TailGELU
        from protocols.mpc.gelu import even_gelu, sign_exp_gelu, tail_gelu

        x, form = call.args[0], gelu_form(call.choice)
        if isinstance(form, TailGELU):
            return tail_gelu(x, form, fss_bits(call.choice, x, _reach(call.choice), form.clip))
        if isinstance(form, SignExpGELU):
            return sign_exp_gelu(x, form, fss_bits(call.choice, x, _reach(call.choice)))
        return even_gelu(x, form)
    if method not in GELU_METHODS:
        raise NotImplementedError(
            f"gelu method {method!r} has no mpc kernel; choose one of {', '.join(GELU_METHODS)}"
        )
    return secure_gelu(call.args[0], method)


def softmax_exp_settings(choice: Any) -> tuple[int, float | None, int]:
    """(squarings, cutoff, order) for softmax's exp by squaring on shares: the plan's
    (`secinfer.core.plan.mpc_softmax_exp`, which an mpc plan has already applied), from the
    choice's options (`secinfer.core.options.SoftmaxExpLimit`: the only defaults)."""
    from secinfer.core.plan import mpc_softmax_exp

    return mpc_softmax_exp(options_for(choice, SoftmaxExpLimit), choice.interval)


def softmax(call: Call) -> Any:
    from protocols.mpc import softmax as secure

    x, dim = call.args[0], call.args[1]
    if call.choice.method == "exp_limit":
        squarings, cutoff, order = softmax_exp_settings(call.choice)
        # the tournament's differences a - b and the cut-off's x - max + cutoff
        lo, hi = call.choice.interval or (0.0, 0.0)
        reach = max(float(hi) - float(lo), float(hi) + MASK_LIMIT)
        width = fss_bits(call.choice, x, reach, cutoff or 0.0)
        return secure.softmax(
            x, dim, squarings=squarings, cutoff=cutoff, order=order, fss_bits=width
        )
    if call.choice.method == "power":
        options = options_for(call.choice, SoftmaxPower)
        return secure.power_softmax(
            x, dim, p=options.p, normalizer=options.normalizer, eps=options.eps
        )
    if call.choice.method == "2quad":
        quad = options_for(call.choice, SoftmaxTwoQuad)
        interval = tuple(call.choice.interval) if call.choice.interval else None
        return secure.two_quad_softmax(x, dim, quad.c, interval=interval)  # type: ignore[arg-type]
    raise NotImplementedError(f"softmax method {call.choice.method!r} has no mpc kernel")


def layer_norm(call: Call) -> Any:
    from protocols.mpc.layer_norm import layer_norm as secure

    x, shape = call.args[0], call.args[1]
    weight = call.args[2] if len(call.args) > 2 else call.kwargs.get("weight")
    bias = call.args[3] if len(call.args) > 3 else call.kwargs.get("bias")
    eps = call.args[4] if len(call.args) > 4 else call.kwargs.get("eps", 1e-5)
    interval = _positive_interval(call.choice, LAYER_NORM_WIDEN)
    n = math.prod([shape] if isinstance(shape, int) else shape)
    # the octave comparison is on S = n (variance + eps), up to n (hi + eps)
    width = fss_bits(call.choice, x, n * (interval[1] + eps))
    return secure(x, shape, weight, bias, eps, variance_interval=interval, fss_bits=width)


@lru_cache(maxsize=8)
def saturated_piecewise(function: str) -> Piecewise:
    """The catalog's minimax polynomial on its interval, the function's limits outside."""
    entry = approximations.catalog[f"{function}.minimax"]
    lo, hi = entry.interval
    whole = (-1.0, 1.0)
    below = Polynomial.constant(-1.0 if function in ("tanh", "erf") else 0.0, whole)
    above = Polynomial.identity(whole) if function == "silu" else Polynomial.constant(1.0, whole)
    segments = (
        Segment(-math.inf, lo, below),
        Segment(lo, hi, entry.approximation),
        Segment(hi, math.inf, above),
    )
    return Piecewise(segments, (lo, hi), entry.max_error, reference=function)


def saturated(call: Call) -> Any:
    from protocols.mpc.piecewise import evaluate_piecewise

    return evaluate_piecewise(call.args[0], saturated_piecewise(call.choice.function))


def exp(call: Call) -> Any:
    from protocols.mpc.exp import exp_by_squaring

    x = call.args[0]
    interval = call.choice.interval
    shift = max(0.0, math.ceil(interval[1])) if interval else 0.0
    options = options_for(call.choice, ExpSquaring)
    squarings, cutoff = options.squarings, options.cutoff
    return exp_by_squaring(x - shift, squarings=squarings, cutoff=cutoff) * math.exp(shift)


def _inv_sqrt(call: Call, x: Any) -> Any:
    from protocols.mpc.inverse import inv_sqrt

    interval = _positive_interval(call.choice)
    return inv_sqrt(x, interval, fss_bits=fss_bits(call.choice, x, interval[1]))


def _reciprocal(call: Call, x: Any) -> Any:
    from protocols.mpc.inverse import reciprocal

    interval = _positive_interval(call.choice)
    return reciprocal(x, interval, fss_bits=fss_bits(call.choice, x, interval[1]))


def rsqrt(call: Call) -> Any:
    return _inv_sqrt(call, call.args[0])


def sqrt(call: Call) -> Any:
    x = call.args[0]
    return x * _inv_sqrt(call, x)


def reciprocal(call: Call) -> Any:
    return _reciprocal(call, call.args[0])


def div(call: Call) -> Any:
    """x / y: local for a public y, else x times the secure reciprocal of y (y > 0)."""
    x, y = call.args[0], call.args[1]
    if not is_secret(y):
        if not is_secret(x):
            return call.run_exact()
        if isinstance(y, torch.Tensor) and y.numel() > 1:
            return x * (1.0 / y.double()).float()
        return x.div(float(y))
    return _reciprocal(call, y) * x if not is_secret(x) else x * _reciprocal(call, y)


def pow_(call: Call) -> Any:
    """Integer powers by square-and-multiply; -1, 0.5 and -0.5 by the inverse kernels."""
    from secinfer.backends.mpc.kernels.shares import integer_power

    x, exponent = call.args[0], call.args[1]
    if not is_secret(x):
        return call.run_exact()
    if isinstance(exponent, int | float) and float(exponent).is_integer() and exponent >= 0:
        return integer_power(x, int(exponent))
    if exponent == -1:
        return _reciprocal(call, x)
    if exponent == -0.5:
        return _inv_sqrt(call, x)
    if exponent == 0.5:
        return x * _inv_sqrt(call, x)
    raise NotImplementedError(f"aten.pow with exponent {exponent} has no mpc kernel")


register_functions(
    "mpc",
    {
        "gelu": gelu,
        "softmax": softmax,
        "layer_norm": layer_norm,
        "tanh": saturated,
        "sigmoid": saturated,
        "erf": saturated,
        "silu": saturated,
        "exp": exp,
        "rsqrt": rsqrt,
        "sqrt": sqrt,
        "reciprocal": reciprocal,
    },
    wrap=at_precision,
)
register("mpc", "aten.div", at_precision(div))
register("mpc", "aten.pow", at_precision(pow_))
