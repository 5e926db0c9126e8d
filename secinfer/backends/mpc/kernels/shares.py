"""The `mpc` backend: graph ops on CrypTen secret shares (kernels in `protocols.mpc`).

Values are either secret (a CrypTen `CrypTensor`, arithmetic shares held by the model
owner and the data owner) or public (a torch tensor or a number both parties know: shapes,
constants built from shapes, the plan). An op whose arguments are all public runs as
plain torch on both parties and costs nothing. Otherwise:

  shape ops     rearrange both parties' shares locally (no communication)
  arith/linear  local for additions and products with public values; a product or
                matmul of two secrets is one Beaver multiplication (one round, both
                operands opened once under masks); products are truncated locally
  select        where/masked_fill with a public condition are local; comparisons,
                max, relu and clamps of secrets use CrypTen's secure comparison
  nonlinear     `secinfer.backends.mpc.kernels.nonlinear` on `protocols.mpc`: GELU without or
                with one comparison, softmax with exp by squaring and one reciprocal per
                row, LayerNorm with a range-normalised inverse square root, each on the
                interval the plan calibrated

Values, secrets and sentinels: `secinfer.backends.mpc.kernels.values`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from secinfer.backends.mpc.kernels.values import (
    MASK_LIMIT,
    OneHot,
    _any_secret,
    _clamped,
    _crypten,
    _public,
    is_secret,
    one_hot_shape,
    plain_containers,
    share_public,
)
from secinfer.backends.mpc.kernels.weights import secret_product, transposed_weight
from secinfer.core.graph import op_name
from secinfer.core.registry import REGISTRY, Call, register


# --- shape ops -------------------------------------------------------------------------------
def _slice(x: Any, dim: int = 0, start: Any = None, end: Any = None, step: int = 1) -> Any:
    index = [slice(None)] * x.dim()
    index[dim] = slice(start, end, step)
    return x[tuple(index)]


def _select(x: Any, dim: int, i: int) -> Any:
    index: list[Any] = [slice(None)] * x.dim()
    index[dim] = i
    return x[tuple(index)]


def _squeeze(x: Any, dims: Any = None) -> Any:
    if dims is None:
        return x.squeeze()
    for d in sorted([dims] if isinstance(dims, int) else list(dims), reverse=True):
        x = x.squeeze(d % x.dim())
    return x


def _unflatten(x: Any, dim: int, sizes: list[int]) -> Any:
    shape = list(x.size())
    dim %= len(shape)
    return x.view(shape[:dim] + list(sizes) + shape[dim + 1 :])


def _to_copy(x: Any, *args: Any, dtype: Any = None, **kwargs: Any) -> Any:
    """Casts leave shares alone. Secret values cast to an integer or bool dtype are the data
    owner's integer inputs (attention masks, 0/1), already integral."""
    return x


def _join(join: str) -> Callable[..., Any]:
    def kernel(values: list[Any], dim: int = 0) -> Any:
        secret = next(v for v in values if is_secret(v))
        shared = [share_public(v, secret) for v in values]
        return getattr(_crypten(), join)(shared, dim=dim)

    return kernel


SHAPE: dict[str, Callable[..., Any]] = {
    "aten.view": lambda x, shape: x.reshape(list(shape)),  # shares may be non-contiguous
    "aten._unsafe_view": lambda x, shape: x.reshape(list(shape)),
    "aten.reshape": lambda x, shape: x.reshape(list(shape)),
    "aten.permute": lambda x, dims: x.permute(*dims),
    "aten.transpose": lambda x, a, b: x.transpose(a, b),
    "aten.t": lambda x: x.transpose(0, 1),
    "aten.unsqueeze": lambda x, d: x.unsqueeze(d),
    "aten.squeeze": _squeeze,
    "aten.expand": lambda x, size, implicit=False: x.expand(*size),
    "aten.slice": _slice,
    "aten.select": _select,
    "aten.narrow": lambda x, dim, start, length: x.narrow(dim, start, length),
    "aten.clone": lambda x, **kw: x.clone(),
    "aten.contiguous": lambda x, **kw: x,
    "aten.alias": lambda x: x,
    "aten.detach": lambda x: x,
    "aten.lift_fresh_copy": lambda x: x,
    "aten.dropout": lambda x, p=0.0, train=False: x,
    "aten._to_copy": _to_copy,
    "aten.to": _to_copy,
    "aten.flatten": lambda x, start=0, end=-1: x.flatten(start, end),
    "aten.unflatten": _unflatten,
    "aten.repeat": lambda x, sizes: x.repeat(*sizes),
    "aten.split": lambda x, size, dim=0: list(x.split(size, dim)),
    "aten.split_with_sizes": lambda x, sizes, dim=0: list(x.split(list(sizes), dim)),
    "aten.chunk": lambda x, chunks, dim=0: list(x.chunk(chunks, dim)),
    "aten.unbind": lambda x, dim=0: list(x.unbind(dim)),
    "aten.cat": _join("cat"),
    "aten.stack": _join("stack"),
    "getitem": lambda values, index: values[index],
    "aten.sym_size": lambda x, dim: int(x.size(dim)),
}


# --- arithmetic and linear ------------------------------------------------------------------
def _add(a: Any, b: Any, alpha: float = 1) -> Any:
    a, b = _public(a), _public(b)
    if alpha != 1:
        b = b * alpha
    if is_secret(a):
        return a + _clamped(b)
    return b + _clamped(a)


def _sub(a: Any, b: Any, alpha: float = 1) -> Any:
    a, b = _public(a), _public(b)
    if alpha != 1:
        b = b * alpha
    if is_secret(a):
        return a - _clamped(b)
    return -b + _clamped(a)


def _mul(a: Any, b: Any) -> Any:
    a, b = _public(a), _public(b)
    return a * b if is_secret(a) else b * a


def integer_power(x: Any, exponent: int) -> Any:
    """x^k by square-and-multiply: about 2 log2 k multiplications (CrypTen's own pow is wrong
    for odd exponents of 5 and above)."""
    result, base, k = None, x, exponent
    while k:
        if k & 1:
            result = base if result is None else result * base
        k >>= 1
        if k:
            base = base * base
    return result if result is not None else share_public(torch.ones(x.size()))


def _reduce(method: str) -> Callable[..., Any]:
    def kernel(x: Any, dims: Any = None, keepdim: bool = False, *, dtype: Any = None) -> Any:
        if dims is None or (isinstance(dims, list | tuple) and not dims):
            return getattr(x, method)()
        dims = [dims] if isinstance(dims, int) else list(dims)
        for d in sorted((d % x.dim() for d in dims), reverse=True):
            x = getattr(x, method)(d, keepdim=keepdim)
        return x

    return kernel


def matmul(a: Any, b: Any) -> Any:
    """a @ b with either operand secret (one Beaver matmul when both are)."""
    if is_secret(a) and is_secret(b):
        return secret_product(a, b)
    if is_secret(a):
        return a.matmul(b)
    return b.transpose(-1, -2).matmul(a.transpose(-1, -2)).transpose(-1, -2)


def _linear(x: Any, weight: Any, bias: Any = None) -> Any:
    weight_t = transposed_weight(weight) if is_secret(weight) else weight.transpose(0, 1)
    out = matmul(x, weight_t)
    return out if bias is None else _add(out, bias)


def _addmm(bias: Any, a: Any, b: Any, *, beta: float = 1, alpha: float = 1) -> Any:
    out = matmul(a, b)
    if alpha != 1:
        out = out * alpha
    return _add(out, bias, beta) if beta else out


def _convolution(
    x: Any,
    weight: Any,
    bias: Any,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    transposed: bool,
    output_padding: list[int],
    groups: int,
) -> Any:
    if transposed or x.dim() != 4 or not is_secret(x):
        raise NotImplementedError("only 2-d, non-transposed convolutions of a secret input")
    out = x.conv2d(weight, stride=stride, padding=padding, dilation=dilation, groups=groups)
    return out if bias is None else _add(out, bias.view(-1, 1, 1))


ARITH: dict[str, Callable[..., Any]] = {
    "aten.add": _add,
    "aten.sub": _sub,
    "aten.rsub": lambda a, b, alpha=1: _sub(b, a, alpha),
    "aten.mul": _mul,
    "aten.neg": lambda x: -x,
    "aten.square": lambda x: x * x,
    "aten.mean": _reduce("mean"),
    "aten.sum": _reduce("sum"),
    "aten.cumsum": lambda x, dim, **kw: x.cumsum(dim),
    "aten.linear": _linear,
    "aten.matmul": matmul,
    "aten.mm": matmul,
    "aten.bmm": matmul,
    "aten.addmm": _addmm,
    "aten.baddbmm": _addmm,
    "aten.convolution": _convolution,
}


# --- selection ------------------------------------------------------------------------------
def _where(condition: Any, a: Any, b: Any) -> Any:
    if is_secret(condition):  # a secret 0/1 bit: b + c (a - b)
        a, b = _clamped(_public(a)), _clamped(_public(b))
        return _add(_mul(condition, _sub(a, b)), b)
    if is_secret(a):
        return a.where(condition, _clamped(b))
    return b.where(~condition, _clamped(a))


def _masked_fill(x: Any, mask: Any, value: Any) -> Any:
    if is_secret(mask):
        return _where(mask, value, x)
    return x.where(~mask, _clamped(float(value)))


def _compare(method: str, swapped: str) -> Callable[..., Any]:
    def kernel(a: Any, b: Any) -> Any:
        return getattr(a, method)(b) if is_secret(a) else getattr(b, swapped)(a)

    return kernel


def _clamp(x: Any, lo: Any = None, hi: Any = None) -> Any:
    """min(max(x, lo), hi) with public bounds: one comparison (relu) per given bound."""
    if lo is not None:
        x = (x - lo).relu() + lo
    if hi is not None:
        x = -((hi - x).relu()) + hi
    return x


def _max_dim(x: Any, dim: int, keepdim: bool = False) -> Any:
    values = x.max(dim=dim, keepdim=keepdim)
    return values[0] if isinstance(values, tuple) else values


def _max(x: Any, dim: int | None = None, keepdim: bool = False) -> Any:
    """aten.max: the largest element (no dim), or, like aten.max.dim, the pair (values,
    indices) that the graph takes apart with getitem. The indices of a secret maximum are
    not computed: None (an op that uses them fails)."""
    if dim is None:
        return x.max()
    return _max_dim(x, dim, keepdim), None


def _index(x: Any, indices: list[Any]) -> Any:
    """Advanced indexing with public index tensors: a local gather of the shares."""
    return x[tuple(slice(None) if i is None else i for i in indices)]


def _embedding(weight: Any, ids: Any, padding_idx: int = -1, *args: Any) -> Any:
    """Rows of the (secret) table: one-hot ids times the table, or a local gather of public
    ids."""
    if isinstance(ids, OneHot):
        return matmul(ids.shares, weight)
    return weight[ids]


SELECT: dict[str, Callable[..., Any]] = {
    "aten.where": _where,
    "aten.index": _index,
    "aten.embedding": _embedding,
    "aten.gather": lambda x, dim, index, sparse_grad=False: x.gather(dim, index),
    "aten.masked_fill": _masked_fill,
    "aten.ge": _compare("ge", "le"),
    "aten.gt": _compare("gt", "lt"),
    "aten.le": _compare("le", "ge"),
    "aten.lt": _compare("lt", "gt"),
    "aten.eq": _compare("eq", "eq"),
    "aten.ne": _compare("ne", "ne"),
    "aten.logical_and": _mul,
    "aten.bitwise_and": _mul,
    "aten.logical_not": lambda x: 1 - x,
    "aten.bitwise_not": lambda x: 1 - x,
    "aten.relu": lambda x: x.relu(),
    "aten.abs": lambda x: x.abs(),
    "aten.clamp": lambda x, lo=None, hi=None: _clamp(x, lo, hi),
    "aten.clamp_min": lambda x, lo: (x - lo).relu() + lo,
    "aten.clamp_max": lambda x, hi: -((hi - x).relu()) + hi,
    "aten.maximum": lambda a, b: _add(_sub(a, b).relu(), b),
    "aten.minimum": lambda a, b: _sub(a, _sub(a, b).relu()),
    "aten.amax": lambda x, dims=(), keepdim=False: _max_dim(x, next(iter(dims)), keepdim),
    "aten.max": _max,
}


def structural(call: Call) -> Any:
    """Shape, arithmetic, linear and selection ops: plain torch when every argument is public."""
    if call.target is torch.ops.aten._assert_tensor_metadata.default:
        return None
    if not (_any_secret(call.args) or _any_secret(call.kwargs)):
        return call.run_exact()
    name = op_name(call.target)
    args, kwargs = plain_containers(call.args), plain_containers(call.kwargs)
    if args and isinstance(args[0], OneHot):
        return one_hot_shape(name, args[0], args[1:])
    kernel = SHAPE.get(name) or ARITH.get(name) or SELECT.get(name)
    if kernel is None:
        raise NotImplementedError(f"{name} on a secret value has no mpc kernel")
    return kernel(*args, **kwargs)


def public_only(call: Call) -> Any:
    """Ops that build public values from shapes (arange, full, full_like, new_zeros, ...):
    a secret argument contributes only its (public) shape."""

    def shape_only(value: Any) -> Any:
        if isinstance(value, OneHot) or is_secret(value):
            return torch.zeros(tuple(value.size()))
        return value

    args = tuple(shape_only(v) for v in call.args)
    kwargs = {k: shape_only(v) for k, v in call.kwargs.items()}
    return call.target(*args, **kwargs)


def public_values(call: Call) -> Any:
    """Functions of public values only (the rotary angles' cos and sin): torch on plain
    tensors; a secret argument is refused (no kernel among SHAPE, ARITH, SELECT). Marked
    `plain_only`, as the he backend marks such kernels: `secinfer inspect` and the
    conformance suite count it as no kernel on secrets."""
    return structural(call)


public_values.plain_only = True  # type: ignore[attr-defined]


for _name in [*SHAPE, *ARITH, *SELECT, "sym.mul", "sym.add", "sym.sub"]:
    if _name in REGISTRY:
        register("mpc", _name, structural)
for _spec in REGISTRY.values():
    if _spec.category == "create":
        register("mpc", _spec.name, public_only)
    elif _spec.category == "public":
        register("mpc", _spec.name, public_values)
for _name in ("aten._assert_tensor_metadata", "aten.sym_size", "sym.floordiv", "sym.truediv"):
    register("mpc", _name, structural)

__all__ = ["MASK_LIMIT", "OneHot", "is_secret", "matmul", "share_public"]
