"""The `he` backend's kernels: ops on `protocols.he.tensor.HeTensor` (CKKS, server side).

An op whose arguments hold no encrypted tensor runs exactly in torch (float64): those are
the model owner's own computations on public shapes and its weights. An op on encrypted
tensors maps to HeTensor arithmetic:

  shape      view, permute, transpose, select, unsqueeze, ... : layout bookkeeping
  arith      add, sub, mul, neg, mean, sum, square, integer pow, division by a plain value
  linear     linear / matmul / mm / bmm / addmm with a plain weight: feature-major products;
             matmul of two encrypted tensors (attention): replicated rows, ct-ct products
  create     full_like / ones_like / zeros_like of an encrypted tensor: a plain tensor
  select     embedding with an encrypted one-hot input: a linear layer over the vocabulary
  structural where/masked_fill on public masks, index/gather/cat/split/... with public
             indices, a convolution of the client's image sent as patches, sentinels of
             public operands (`structural`, which registers them)
  nonlinear  polynomial GELU ("quad", "minimax"), reciprocal and division by an encrypted
             tensor ("polynomial": Goldschmidt without normalisation on the calibrated
             interval widened 16x, `approximations.iterative.he_reciprocal`), inverse
             square root (Newton on the calibrated interval); LayerNorm as one op,
             exp-based softmax, GELU / tanh / sigmoid / erf / silu sized by their
             calibrated intervals: `secinfer.backends.he.nonlinear`

Comparisons, max, log_softmax, exp and log have no CKKS kernel: `UnsupportedHeOp` names
the op and the conversion that removes it. Ops without an encrypted form (comparisons,
bitwise and logical ops on masks, max, ...) still run on plain values, and are marked
`plain_only`, which `secinfer inspect` reports.
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache
from typing import Any

import torch

from approximations.iterative import InverseSqrt, he_reciprocal
from protocols.he.layout import LayoutError
from protocols.he.polynomial import evaluate_approximation as evaluate_polynomial
from protocols.he.products import linear, matmul
from protocols.he.tensor import DepthExhausted, HeTensor, power, standardize
from secinfer.backends.he.inputs import public_inputs
from secinfer.backends.he.patches import PatchImage
from secinfer.backends.he.refusals import UnsupportedHeOp
from secinfer.backends.he.structural import check_structure, structural_kernels
from secinfer.core.registry import PUBLIC_INPUTS, REGISTRY, Call, register
from secinfer.errors import UserError

aten = torch.ops.aten
FLOAT = torch.float64
CONVERT_HINT = (
    "convert the model first: approximations.convert(model, target='he', samples=...) "
    "(see the README's HE walk-through)"
)


def _encrypted(value: Any) -> bool:
    if isinstance(value, HeTensor | PatchImage):
        return True
    if isinstance(value, list | tuple):
        return any(_encrypted(v) for v in value)
    return False


def _plain(call: Call) -> Any:
    """The op in torch on plain values (float dtypes promoted to float64)."""
    if call.target is aten._assert_tensor_metadata.default:
        return None
    kwargs = {
        k: (FLOAT if isinstance(v, torch.dtype) and v.is_floating_point else v)
        for k, v in call.kwargs.items()
    }
    return call.target(*call.args, **kwargs)


def _unsupported(call: Call, why: str = "") -> Any:
    name = str(call.target).replace(".default", "")
    raise UnsupportedHeOp(f"{name} has no he kernel on encrypted values{why}; {CONVERT_HINT}")


def _tensors(call: Call) -> list[HeTensor]:
    """The encrypted tensors among a call's arguments (one level of lists)."""
    out: list[HeTensor] = []
    for value in [*call.args, *call.kwargs.values()]:
        items = value if isinstance(value, list | tuple) else [value]
        out += [v for v in items if isinstance(v, HeTensor)]
    return out


def dispatch(kernel: Any) -> Any:
    """A kernel that runs `kernel` on encrypted arguments and torch otherwise."""

    def run(call: Call) -> Any:
        if not _encrypted(call.args) and not _encrypted(list(call.kwargs.values())):
            return _plain(call)
        try:
            try:
                return kernel(call)
            except LayoutError:
                # no form for the operands' packings: re-lay them out to the standard
                # feature-major layout (one round trip) and try once more
                if not standardize(_tensors(call)):
                    raise
                return kernel(call)
        except DepthExhausted as exc:
            raise UserError(str(exc)) from None
        except LayoutError as exc:
            name = str(call.target).replace(".default", "")
            raise UnsupportedHeOp(f"{name}: {exc} (no packing for it yet)") from None

    run.__name__ = getattr(kernel, "__name__", "he_kernel")
    return run


# --- shape ----------------------------------------------------------------------------------
def _shape(call: Call) -> Any:
    t = call.target
    x, args = call.args[0], call.args[1:]
    if t in (aten.view.default, aten.reshape.default, aten._unsafe_view.default):
        return x.reshape([int(n) for n in args[0]])
    if t is aten.permute.default:
        return x.permute(args[0])
    if t is aten.transpose.int:
        return x.transpose(args[0], args[1])
    if t is aten.t.default:
        return x.transpose(0, 1)
    if t is aten.unsqueeze.default:
        return x.unsqueeze(args[0])
    if t in (aten.squeeze.dim, aten.squeeze.default):
        return x.squeeze(args[0] if args else None)
    if t is aten.squeeze.dims:  # what core ATen decomposition makes of squeeze(dim)
        for d in sorted((d % x.dim() for d in args[0]), reverse=True):
            x = x.squeeze(d)
        return x
    if t is aten.select.int:
        return x.select(args[0], args[1])
    if t is aten.slice.Tensor:
        dim, start, end = ([*list(args), 0, None, None])[:3]
        step = args[3] if len(args) > 3 else 1
        return x.slice(dim, start or 0, end if end is not None else x.shape[dim], step)
    if t is aten.expand.default:
        return x.expand(args[0])
    if t is aten.sym_size.int:
        return x.shape[args[0]]
    if t in (
        aten.clone.default,
        aten.contiguous.default,
        aten.alias.default,
        aten.detach.default,
        aten._to_copy.default,
        aten.lift_fresh_copy.default,
    ):
        return x
    if t in (aten.dropout.default,):
        return x
    if t is aten._assert_tensor_metadata.default:
        return None
    return _unsupported(call, " (this reshaping would move slots)")


# --- create ----------------------------------------------------------------------------------
def _create(call: Call) -> Any:
    """full_like and friends of an encrypted tensor: a plain tensor of its (public) shape."""
    x = call.args[0]
    shape = tuple(x.shape)
    t = call.target
    if t in (aten.zeros_like.default,):
        return torch.zeros(shape, dtype=FLOAT)
    if t in (aten.ones_like.default,):
        return torch.ones(shape, dtype=FLOAT)
    if t in (aten.full_like.default,):
        return torch.full(shape, float(call.args[1]), dtype=FLOAT)
    return _unsupported(call)


# --- arithmetic ------------------------------------------------------------------------------
def _arith(call: Call) -> Any:
    t, args = call.target, call.args
    alpha = call.kwargs.get("alpha", 1)
    if t in (aten.add.Tensor, aten.add.Scalar):
        a, b = args[0], args[1]
        return a + (b if alpha == 1 else b * alpha)
    if t in (aten.sub.Tensor, aten.sub.Scalar):
        a, b = args[0], args[1]
        return a - (b if alpha == 1 else b * alpha)
    if t in (aten.rsub.Scalar, aten.rsub.Tensor):
        return args[1] - args[0] * alpha
    if t in (aten.mul.Tensor, aten.mul.Scalar):
        return args[0] * args[1]
    if t is aten.neg.default:
        return -args[0]
    if t is aten.square.default:
        return args[0].square()
    if t in (aten.mean.dim, aten.mean.default):
        dims = args[1] if len(args) > 1 else None
        keep = args[2] if len(args) > 2 else call.kwargs.get("keepdim", False)
        return args[0].mean(dims, keepdim=keep)
    if t in (aten.sum.dim_IntList, aten.sum.default):
        dims = args[1] if len(args) > 1 else None
        keep = args[2] if len(args) > 2 else call.kwargs.get("keepdim", False)
        return args[0].sum(dims, keepdim=keep)
    return _unsupported(call)


def _div(call: Call) -> Any:
    x, y = call.args[0], call.args[1]
    if not isinstance(y, HeTensor):
        return x / y
    return x * _reciprocal(call, y)


def _pow(call: Call) -> Any:
    x, exponent = call.args[0], call.args[1]
    if isinstance(exponent, HeTensor):
        return _unsupported(call, " (encrypted exponent)")
    e = float(exponent)
    if e.is_integer() and e >= 1:
        return power(x, int(e))
    if e == -1:
        return _reciprocal(call, x)
    if e == -0.5:
        return _rsqrt(call, x)
    if e == 0.5:
        return x * _rsqrt(call, x)
    return _unsupported(call, f" (exponent {e})")


# --- linear ----------------------------------------------------------------------------------
def _linear(call: Call) -> Any:
    t, args = call.target, call.args
    if t is aten.linear.default:
        x, w = args[0], args[1]
        b = args[2] if len(args) > 2 else None
        if isinstance(w, HeTensor):
            return _unsupported(call, " (encrypted weight)")
        return linear(x, w, b)
    if t is aten.addmm.default:
        bias, x, w = args[0], args[1], args[2]
        return matmul(x, w) + bias
    if t in (aten.matmul.default, aten.mm.default, aten.bmm.default):
        a, b = args[0], args[1]
        if not isinstance(a, HeTensor):
            return _unsupported(call, " (plain left operand)")
        return matmul(a, b)
    return _unsupported(call)


def _embedding(call: Call) -> Any:
    """embedding(weight, ids): the client encrypted one_hot(ids) (B, L, V), so the lookup
    is one_hot @ weight, a linear layer over the vocabulary (V D products)."""
    weight, ids = call.args[0], call.args[1]
    if getattr(ids, "embedded", False):
        return ids  # public table: the client sent the embedded vectors
    if isinstance(weight, HeTensor) or ids.shape[-1] != weight.shape[0]:
        return _unsupported(call, " (expects an encrypted one-hot input of the vocabulary size)")
    return linear(ids, weight.T)


# --- nonlinear -------------------------------------------------------------------------------
def _interval(call: Call, function: str) -> tuple[float, float]:
    choice = call.choice
    if choice is None or not choice.interval:
        raise UserError(
            f"{function} on encrypted values needs a calibrated input interval (run with "
            "calibration samples, or give 'interval' for the node in --config)"
        )
    lo, hi = (float(v) for v in choice.interval)
    if lo <= 0:
        raise UserError(
            f"{function} at {choice.node}: calibrated interval [{lo:.3g}, {hi:.3g}] reaches 0 "
            "or below; CKKS needs a positive interval (--config 'interval')"
        )
    return lo, hi


@lru_cache(maxsize=64)
def rsqrt_for(interval: tuple[float, float]) -> InverseSqrt:
    return InverseSqrt.polynomial_only(interval)


def _reciprocal(call: Call, x: HeTensor) -> HeTensor:
    """1 / x = s / (s x): Goldschmidt (`he_reciprocal`) on s x, s the power of two nearest
    1 / sqrt(lo hi) for its widened interval [lo, hi], so that s x and 1 / (s x) both lie
    within sqrt(hi / lo) of 1. The guess's Chebyshev coefficients, in the same variable t
    as the unscaled ones, are divided by s. Unscaled, a small interval's coefficients and
    the baby-step giant-step partial sums grow as 1 / lo: [4e-5, 0.4] (a small model's
    power-softmax normaliser) reached 4.3e5, beyond the 2^19 a 60-bit last prime holds at
    a 2^40 scale. Depth: the guess's, the iterations', and 1 for the final product by s
    (s x is computed beside the guess)."""
    approximation = he_reciprocal(*_interval(call, "reciprocal"))
    lo, hi = approximation.interval
    s = 2.0 ** round(-0.5 * math.log2(lo * hi))
    if s == 1.0:
        return approximation.iterate(x, lambda b: evaluate_polynomial(b, approximation.initial))
    initial = approximation.initial
    guess = dataclasses.replace(initial, chebyshev=tuple(c / s for c in initial.chebyshev))
    scaled = approximation.iterate(x * s, lambda _: evaluate_polynomial(x, guess))
    return scaled * s


def _rsqrt(call: Call, x: HeTensor) -> HeTensor:
    approximation = rsqrt_for(_interval(call, "rsqrt"))
    return approximation.iterate(x, lambda b: evaluate_polynomial(b, approximation.initial))


def _gelu(call: Call) -> Any:
    method = call.choice.method if call.choice else "exact"
    if method not in ("quad", "minimax"):
        return _unsupported(call, f" for method {method!r} (use 'quad' or 'minimax')")
    from secinfer.core.kernels.approx import gelu_approximation

    interval = tuple(call.choice.interval) if call.choice.interval else None
    poly, _ = gelu_approximation(method, interval)
    return evaluate_polynomial(call.args[0], poly)


def _nonlinear(call: Call) -> Any:
    t = call.target
    if t is aten.reciprocal.default:
        return _reciprocal(call, call.args[0])
    if t is aten.rsqrt.default:
        return _rsqrt(call, call.args[0])
    if t is aten.sqrt.default:
        return call.args[0] * _rsqrt(call, call.args[0])
    if t is aten.gelu.default:
        return _gelu(call)
    return _unsupported(call)


# --- registration ----------------------------------------------------------------------------
HE_FUNCTIONS = {
    "reciprocal": ("polynomial",),
    "rsqrt": None,
    "sqrt": None,
    "gelu": ("quad", "minimax"),
}
"""Nonlinear functions with a CKKS kernel, and the plan methods allowed (None: any)."""

_BY_CATEGORY = {
    "shape": _shape,
    "create": _create,
    "arith": _arith,
    "linear": _linear,
    "nonlinear": _nonlinear,
}


def _register() -> None:
    """Every op gets an `he` kernel, since the model owner's own plain computations (masks,
    counts) may use any op; an op with no encrypted form is marked `plain_only` (it runs on
    plain values and refuses ciphertexts), which `secinfer inspect` reports as missing."""
    for spec in REGISTRY.values():
        encrypted = spec.category in _BY_CATEGORY and (
            spec.category != "nonlinear" or (spec.function or "") in HE_FUNCTIONS
        )
        kernel = dispatch(_BY_CATEGORY[spec.category] if encrypted else _unsupported)
        kernel.plain_only = not encrypted  # type: ignore[attr-defined]
        spec.kernels.setdefault("he", kernel)
    REGISTRY["aten.div"].kernels["he"] = dispatch(_div)
    REGISTRY["aten.pow"].kernels["he"] = dispatch(_pow)
    register("he", "aten.embedding", dispatch(_embedding))
    for op, kernel in structural_kernels(_arith, _shape).items():
        REGISTRY[op].kernels["he"] = dispatch(kernel)
    PUBLIC_INPUTS["he"] = public_inputs


_register()

from secinfer.backends.he import nonlinear as _interval_kernels  # noqa: E402 (after _register)

_interval_kernels.register(dispatch, HE_FUNCTIONS, fallback=_nonlinear)


def check_he_plan(graph: Any, plan: Any) -> None:
    """UnsupportedHeOp, before any work, for the first nonlinear node CKKS cannot run (and
    a convolution of a computed activation, `structural.check_structure`)."""
    check_structure(graph)
    for node in graph.calls:
        spec = REGISTRY.get(node.op)
        if spec is None or spec.category != "nonlinear":
            continue
        where = f" at {node.module}" if node.module else ""
        methods = HE_FUNCTIONS.get(spec.function or "", False)
        choice = plan.choices.get(node.name)
        if methods is False or (methods and choice is not None and choice.method not in methods):
            how = f" with method {choice.method!r}" if choice is not None and methods else ""
            raise UnsupportedHeOp(
                f"{node.op} (node {node.name}){where} has no he kernel{how}; {CONVERT_HINT}"
            )
