"""The `approx` backend: plaintext float64 with the approximations the plan chose.

Linear, shape and selection ops run exactly (in float64: floating dtypes requested by the
graph are promoted). Nonlinear ops use `approximations`, configured by the node's `Choice`
(method, interval, and options read through `secinfer.core.options.options_for`, which
holds every default); inputs outside the approximation's interval are counted in
the node's RangeStats. Division by a tensor and fractional powers are nonlinear too and
go through the reciprocal / inverse square root approximations. The he target's forms
sized by the calibrated interval (`secinfer.core.forms`) are the very objects the he
kernels evaluate on ciphertexts, so approx under the he plan predicts he.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F

import approximations
from approximations.even_gelu import even_gelu, secure_gelu_form
from approximations.functions import rsqrt_approximation
from approximations.iterative import he_reciprocal
from approximations.sign_exp_gelu import SignExpGELU
from approximations.tail_gelu import TailGELU
from secinfer.core.forms import form_for, sized_by_interval
from secinfer.core.masks import MASK_LIMIT, SENTINEL
from secinfer.core.options import ExpSquaring, SoftmaxExpLimit, comparisons_of, options_for
from secinfer.core.registry import Call, register, register_all, register_functions

aten = torch.ops.aten
FLOAT = torch.float64
UNBOUNDED = (-math.inf, math.inf)

# function -> method -> (catalog entry used inside the interval, value below, value above)
SATURATED: dict[str, tuple[str, Any, Any]] = {
    "tanh": ("tanh.minimax", lambda x: -torch.ones_like(x), torch.ones_like),
    "sigmoid": ("sigmoid.minimax", torch.zeros_like, torch.ones_like),
    "erf": ("erf.minimax", lambda x: -torch.ones_like(x), torch.ones_like),
    "silu": ("silu.minimax", torch.zeros_like, lambda x: x),
}
EXACT = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "erf": torch.erf, "silu": F.silu}


def _promote(value: Any) -> Any:
    if isinstance(value, torch.dtype) and value.is_floating_point:
        return FLOAT
    return value


def generic(call: Call) -> Any:
    """Exact op; floating dtypes the graph asks for become float64."""
    if call.target is aten._assert_tensor_metadata.default:
        return None  # it would assert float32 on our float64 values
    kwargs = {k: _promote(v) for k, v in call.kwargs.items()}
    return call.target(*call.args, **kwargs)


# --- GELU -----------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def gelu_approximation(
    method: str, interval: tuple[float, float] | None, fss: bool = False
) -> tuple[Any, tuple]:
    """(callable, interval where it holds). A single polynomial ("minimax") is refit on
    the calibrated interval when one is given, so that calibration widens it. `fss`: the
    mpc kernel's comparisons come from FSS keys (the plan's `comparisons`), which decides
    what "auto" is (`approximations.even_gelu.secure_gelu_form`)."""
    if method in ("auto", "sign_exp", "tail"):
        form = secure_gelu_form(method, interval, fss)
        if isinstance(form, TailGELU):
            return form, UNBOUNDED
        if isinstance(form, SignExpGELU):
            return form, (-form.bound, form.bound)
        bound = math.sqrt(form.interval[1])
        return (lambda x: even_gelu(x, form)), (-bound, bound)
    if method == "minimax" and interval is not None:
        poly = approximations.fit(
            F.gelu, interval, approximations.catalog["gelu.minimax"].degree, "remez", name="gelu"
        )
        return poly, poly.interval
    if method in ("minimax", "quad"):
        entry = approximations.catalog[f"gelu.{method}"]
        return entry.approximation, entry.interval
    return (lambda x: approximations.gelu(x, method)), UNBOUNDED


def gelu(call: Call) -> torch.Tensor:
    x = call.args[0]
    if sized_by_interval(call.choice):
        return _elementwise_form(call, x)
    fss = comparisons_of(call.choice) == "fss"
    fn, interval = gelu_approximation(call.choice.method, _interval(call.choice), fss)
    if interval != UNBOUNDED:
        call.stats.record(x, interval)
    return fn(x)


def _elementwise_form(call: Call, x: torch.Tensor) -> torch.Tensor:
    """The he target's single polynomial or piecewise form (`secinfer.core.forms`), the
    very object the he kernel evaluates; inputs outside its interval are counted."""
    form = form_for(call.choice)
    call.stats.record(x, form.interval)
    return form(x)


# --- softmax --------------------------------------------------------------------------------
def softmax(call: Call) -> torch.Tensor:
    x, dim, method = call.args[0], call.args[1], call.choice.method
    if method == "exact":
        return approximations.softmax(x, dim, method=method)
    if sized_by_interval(call.choice):
        return _softmax_exp_max(call, x, dim)
    options = options_for(call.choice)
    if isinstance(options, SoftmaxExpLimit) and options.cutoff is None:
        return _softmax_uncut(call, x, dim, options)
    return approximations.softmax(x, dim, method=method, **options.arguments())


def _softmax_uncut(call: Call, x: torch.Tensor, dim: int, options: SoftmaxExpLimit) -> torch.Tensor:
    """exp_limit without a cut-off, as an mpc plan has it when its squarings cover the
    calibrated spread plus masked positions (`secinfer.core.plan.mpc_softmax_exp`): sentinels
    (masks' finfo.min) become -MASK_LIMIT as on the mpc backend, the exp by squaring runs on
    every z = x - max (inputs below its valid range are counted), one reciprocal per row."""
    x = torch.where(x.abs() >= SENTINEL, torch.sign(x) * MASK_LIMIT, x)
    squarings, order = options.squarings, options.order
    reach = 2.0 ** (squarings + order - 1)
    exp = approximations.ExpBySquaring(
        squarings=squarings, interval=(-reach, 0.0), cutoff=None, order=order
    )
    z = x - x.amax(dim=dim, keepdim=True)
    call.stats.record(z, exp.valid_range)
    weights = exp(z)
    total = weights.sum(dim=dim, keepdim=True)
    name = options.reciprocal
    if name == "exact":
        return weights / total
    return weights * approximations.catalog[f"reciprocal.{name}"].approximation(total)


def _softmax_exp_max(call: Call, x: torch.Tensor, dim: int) -> torch.Tensor:
    """The he form (`approximations.exp_softmax.ExpSoftmax`) in float64: a row-maximum
    stand-in, exp by squaring, one reciprocal. Sentinels (masks' finfo.min) become
    -MASK_LIMIT, as on the secure backends, inside the form's interval (`form_for` reaches
    MASK_LIMIT below the calibrated one)."""
    x = torch.where(x.abs() >= SENTINEL, torch.sign(x) * MASK_LIMIT, x)
    form = form_for(call.choice, x.shape[dim])
    call.stats.record(x, form.interval)
    return form(x, dim)


def log_softmax(call: Call) -> torch.Tensor:
    """log softmax(x) = z - log(sum exp z), z = x - max: exp and log approximated."""
    x, dim = call.args[0], call.args[1]
    if call.choice.method == "exact":
        return torch.log_softmax(x, dim)
    z = x - x.amax(dim=dim, keepdim=True).detach()
    options = options_for(call.choice, ExpSquaring)
    exp = approximations.ExpBySquaring(squarings=options.squarings, cutoff=options.cutoff)
    total = exp(z).sum(dim=dim, keepdim=True)
    call.stats.record(total, approximations.catalog["log.normalised"].interval)
    return z - approximations.catalog["log.normalised"].approximation(total)


# --- LayerNorm ------------------------------------------------------------------------------
def layer_norm(call: Call) -> torch.Tensor:
    x, shape = call.args[0], call.args[1]
    weight = call.args[2] if len(call.args) > 2 else call.kwargs.get("weight")
    bias = call.args[3] if len(call.args) > 3 else call.kwargs.get("bias")
    eps = call.args[4] if len(call.args) > 4 else call.kwargs.get("eps", 1e-5)
    method, interval = call.choice.method, _interval(call.choice)
    dims = tuple(range(-len(shape), 0))
    if sized_by_interval(call.choice):
        form = form_for(call.choice)
        call.stats.record(x.var(dim=dims, unbiased=False) + eps, form.interval)
        return form(x, shape, weight, bias, eps)
    if method != "exact":
        var = x.var(dim=dims, unbiased=False) + eps
        approx = rsqrt_approximation(method, interval if method == "poly" else None)
        call.stats.record(var, approx.interval)
    return approximations.layer_norm(x, shape, weight, bias, eps, rsqrt=method, interval=interval)


# --- elementwise functions ------------------------------------------------------------------
def saturated(call: Call) -> torch.Tensor:
    """tanh, sigmoid, erf, silu: a minimax polynomial inside its interval, the function's
    limits outside (one comparison on each side); "chebyshev" (he): one polynomial on the
    calibrated interval."""
    function = call.choice.function
    x = call.args[0]
    if call.choice.method == "exact":
        return EXACT[function](x)
    if sized_by_interval(call.choice):
        return _elementwise_form(call, x)
    entry_name, below, above = SATURATED[function]
    entry = approximations.catalog[entry_name]
    lo, hi = entry.interval
    inside = entry.approximation(x)
    return torch.where(x < lo, below(x), torch.where(x > hi, above(x), inside))


def exp(call: Call) -> torch.Tensor:
    """exp(x) = exp(x - c) e^c with c the calibrated maximum (public), so that the
    repeated-squaring form sees inputs <= 0; inputs above c are counted. The he target's
    "calibrated" form is the he kernel's own object (`secinfer.core.forms`)."""
    x = call.args[0]
    if call.choice.method == "exact":
        return torch.exp(x)
    if sized_by_interval(call.choice):
        return _elementwise_form(call, x)
    interval = _interval(call.choice)
    shift = max(0.0, math.ceil(interval[1])) if interval else 0.0
    call.stats.record(x, (-math.inf, shift))
    options = options_for(call.choice, ExpSquaring)
    fn = approximations.ExpBySquaring(squarings=options.squarings, cutoff=options.cutoff)
    return fn(x - shift) * math.exp(shift)


def log(call: Call) -> torch.Tensor:
    x = call.args[0]
    if call.choice.method == "exact":
        return torch.log(x)
    entry = approximations.catalog["log.normalised"]
    call.stats.record(x, entry.interval)
    return entry.approximation(x)


def _rsqrt_values(call: Call, x: torch.Tensor) -> torch.Tensor:
    """1 / sqrt(x): normalised Newton (the mpc form; "newton", and a reciprocal method
    other than "polynomial" for x^-0.5), or a polynomial guess and Newton steps on the
    calibrated interval without normalisation (the he form, `kernels.he.rsqrt_for`: "poly",
    and "polynomial" for x^-0.5)."""
    method = call.choice.method if call.choice is not None else "newton"
    if method == "exact":
        return torch.rsqrt(x)
    if method in ("poly", "polynomial"):
        interval = _interval(call.choice)
        if interval is not None and interval[0] > 0:
            approximation = rsqrt_approximation("poly", interval)
        else:
            approximation = approximations.catalog["rsqrt.poly_he"].approximation
        call.stats.record(x, approximation.interval)
        return approximation(x)
    entry = approximations.catalog["rsqrt.newton"]
    call.stats.record(x, entry.interval)
    return entry.approximation(x)


def rsqrt(call: Call) -> torch.Tensor:
    return _rsqrt_values(call, call.args[0])


def sqrt(call: Call) -> torch.Tensor:
    x = call.args[0]
    return x * _rsqrt_values(call, x)


def _reciprocal_values(call: Call, x: torch.Tensor, method: str) -> torch.Tensor:
    """sign(x) / |x| with the normalised reciprocal; |x| outside its interval is counted."""
    if method == "exact":
        return 1.0 / x
    if method == "polynomial":  # the HE form, on the node's calibrated interval
        lo, hi = _interval(call.choice) or (1e-4, 1e4)
        approximation = he_reciprocal(lo, hi)
        call.stats.record(x, approximation.interval)
        return approximation(x)
    entry = approximations.catalog[f"reciprocal.{method}"]
    magnitude = x.abs()
    call.stats.record(magnitude, entry.interval)
    return torch.sign(x) * entry.approximation(magnitude)


def reciprocal(call: Call) -> torch.Tensor:
    return _reciprocal_values(call, call.args[0], call.choice.method)


def div(call: Call) -> Any:
    """x / y: exact for a number or a model-owned constant, else x * approx(1 / y)."""
    x, y = call.args[0], call.args[1]
    if not isinstance(y, torch.Tensor) or y.numel() == 1 or call.choice is None:
        return generic(call)
    return x * _reciprocal_values(call, y, call.choice.method)


def pow_(call: Call) -> Any:
    """Integer powers are products; 0.5, -0.5 and -1 go through sqrt, rsqrt, reciprocal."""
    x, exponent = call.args[0], call.args[1]
    if not isinstance(exponent, (int, float)) or (float(exponent).is_integer() and exponent >= 0):
        return generic(call)
    if exponent == -0.5:
        return _rsqrt_values(call, x)
    if exponent == 0.5:
        return x * _rsqrt_values(call, x)
    if exponent == -1:
        return _reciprocal_values(call, x, call.choice.method if call.choice else "goldschmidt")
    raise NotImplementedError(f"aten.pow with exponent {exponent} has no approximation")


def _interval(choice: Any) -> tuple[float, float] | None:
    return tuple(choice.interval) if choice is not None and choice.interval else None


register_all(
    "approx", generic, categories=("shape", "create", "select", "linear", "arith", "public")
)
register_functions(
    "approx",
    {
        "gelu": gelu,
        "softmax": softmax,
        "log_softmax": log_softmax,
        "layer_norm": layer_norm,
        "tanh": saturated,
        "sigmoid": saturated,
        "erf": saturated,
        "silu": saturated,
        "exp": exp,
        "log": log,
        "rsqrt": rsqrt,
        "sqrt": sqrt,
        "reciprocal": reciprocal,
    },
)
register("approx", "aten.div", div)
register("approx", "aten.pow", pow_)
