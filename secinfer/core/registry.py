"""The one registry of ops: for each ATen op, its category and its kernel per backend.

Categories say what an op costs in a secure backend:
  shape      free everywhere but HE, where it changes the packing (view, permute, ...)
  create     constants built from public shapes (arange, full, ...)
  select     comparisons and selection (where, masked_fill, embedding, max, ...)
  linear     products with a weight or another activation (linear, matmul, conv, ...)
  arith      additions, products, means (add, mul, mean, pow with an integer exponent)
  nonlinear  functions the plan approximates (gelu, softmax, layer_norm, exp, ...)
  public     functions of public values only (the rotary angles' cos and sin of positions):
             no secure backend computes them on a secret

Backends register kernels here (`register`); the executor only looks them up. A kernel
takes a `Call` (the op, its evaluated arguments, the plan's choice for the node, and a
place to record inputs outside the approximation's interval) and returns the value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

BACKENDS = ("plain", "approx", "mpc", "he")


@dataclass
class RangeStats:
    """Inputs seen outside an approximation's interval at run time."""

    count: int = 0
    worst: float | None = None  # the input farthest outside
    interval: tuple[float, float] | None = None

    def record(self, values: Any, interval: tuple[float, float]) -> None:
        import torch

        lo, hi = interval
        flat = values.detach().reshape(-1)
        outside = (flat < lo) | (flat > hi)
        n = int(outside.sum())
        if not n:
            return
        self.count += n
        self.interval = interval
        bad = flat[outside].double()
        distance = torch.maximum(lo - bad, bad - hi)
        value = float(bad[int(distance.argmax())])
        if self.worst is None or _distance(value, interval) > _distance(self.worst, interval):
            self.worst = value


def _distance(value: float, interval: tuple[float, float]) -> float:
    return max(interval[0] - value, value - interval[1], 0.0)


@dataclass
class Call:
    """One op application as a kernel sees it."""

    target: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    choice: Any = None  # the plan's `Choice` for nonlinear nodes, else None
    stats: RangeStats = field(default_factory=RangeStats)

    def run_exact(self) -> Any:
        return self.target(*self.args, **self.kwargs)


Kernel = Callable[[Call], Any]


@dataclass
class OpSpec:
    """What the registry knows about one op."""

    name: str
    category: str
    function: str | None = None  # the approximated function of a nonlinear op
    kernels: dict[str, Kernel] = field(default_factory=dict)

    @property
    def backends(self) -> list[str]:
        return [b for b in BACKENDS if b in self.kernels]


REGISTRY: dict[str, OpSpec] = {}

_CATEGORIES: dict[str, tuple[str, ...]] = {
    "shape": (
        "aten.view",
        "aten.reshape",
        "aten._unsafe_view",
        "aten.permute",
        "aten.transpose",
        "aten.t",
        "aten.unsqueeze",
        "aten.squeeze",
        "aten.expand",
        "aten.slice",
        "aten.select",
        "aten.clone",
        "aten.contiguous",
        "aten.alias",
        "aten.detach",
        "aten._to_copy",
        "aten.to",
        "aten._assert_tensor_metadata",
        "aten.sym_size",
        "aten.cat",
        "aten.stack",
        "aten.split",
        "aten.split_with_sizes",
        "aten.chunk",
        "aten.unbind",
        "aten.narrow",
        "aten.flatten",
        "aten.unflatten",
        "aten.dropout",
        "aten.lift_fresh_copy",
        "aten.repeat",
        "getitem",
        "sym.mul",
        "sym.add",
        "sym.sub",
        "sym.floordiv",
        "sym.truediv",
    ),
    "create": (
        "aten.arange",
        "aten.full",
        "aten.zeros",
        "aten.ones",
        "aten.scalar_tensor",
        "aten.new_ones",
        "aten.new_zeros",
        "aten.zeros_like",
        "aten.ones_like",
        "aten.full_like",
        "aten.empty",
        "aten.empty_like",
        "aten.fill",
    ),
    "select": (
        "aten.ge",
        "aten.gt",
        "aten.le",
        "aten.lt",
        "aten.eq",
        "aten.ne",
        "aten.bitwise_and",
        "aten.bitwise_or",
        "aten.bitwise_not",
        "aten.logical_and",
        "aten.logical_or",
        "aten.logical_not",
        "aten.where",
        "aten.masked_fill",
        "aten.index",
        "aten.gather",
        "aten.embedding",
        "aten.index_select",
        "aten.amax",
        "aten.max",
        "aten.argmax",
        "aten.relu",
        "aten.clamp",
        "aten.clamp_min",
        "aten.clamp_max",
        "aten.minimum",
        "aten.maximum",
        "aten.abs",
    ),
    "linear": (
        "aten.linear",
        "aten.matmul",
        "aten.mm",
        "aten.bmm",
        "aten.addmm",
        "aten.baddbmm",
        "aten.convolution",
        "aten.conv2d",
    ),
    "arith": (
        "aten.add",
        "aten.sub",
        "aten.rsub",
        "aten.mul",
        "aten.neg",
        "aten.mean",
        "aten.sum",
        "aten.square",
        "aten.pow",
        "aten.div",
        "aten.cumsum",
    ),
    "public": (
        "aten.cos",
        "aten.sin",
    ),
}

# nonlinear ops and the function each approximates
NONLINEAR: dict[str, str] = {
    "aten.gelu": "gelu",
    "aten.softmax": "softmax",
    "aten._softmax": "softmax",
    "aten.log_softmax": "log_softmax",
    "aten._log_softmax": "log_softmax",
    "aten.layer_norm": "layer_norm",
    "aten.tanh": "tanh",
    "aten.sigmoid": "sigmoid",
    "aten.erf": "erf",
    "aten.silu": "silu",
    "aten.exp": "exp",
    "aten.log": "log",
    "aten.rsqrt": "rsqrt",
    "aten.sqrt": "sqrt",
    "aten.reciprocal": "reciprocal",
}


PUBLIC_INPUTS: dict[str, Callable[[Any], set[str]]] = {}
"""Per backend, a function naming the user inputs of a graph that the backend sends in the
clear (the he backend's attention masks and token types): `secinfer inspect` counts ops on
them as plain computations, not as ops on secret values."""


def _populate() -> None:
    for category, names in _CATEGORIES.items():
        for name in names:
            REGISTRY[name] = OpSpec(name, category)
    for name, function in NONLINEAR.items():
        REGISTRY[name] = OpSpec(name, "nonlinear", function)


_populate()


def register(backend: str, op: str, kernel: Kernel) -> None:
    """Give `op` a kernel on `backend` (the op must already be in the registry)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; backends are {', '.join(BACKENDS)}")
    REGISTRY[op].kernels[backend] = kernel


def register_all(backend: str, kernel: Kernel, *, categories: tuple[str, ...]) -> None:
    """Give every op of `categories` the same kernel on `backend` (unless it has one)."""
    for spec in REGISTRY.values():
        if spec.category in categories:
            spec.kernels.setdefault(backend, kernel)


def register_functions(
    backend: str, kernels: dict[str, Kernel], *, wrap: Callable[[Kernel], Kernel] | None = None
) -> None:
    """Give every nonlinear op whose function (`NONLINEAR`) is a key of `kernels` that kernel
    on `backend`, optionally wrapped (`wrap`); the op names and their aliases (`aten.softmax`
    and `aten._softmax`, ...) are listed here only. A function no op approximates is refused."""
    unknown = set(kernels) - set(NONLINEAR.values())
    if unknown:
        raise ValueError(f"no nonlinear op approximates {', '.join(sorted(unknown))}")
    for op, function in NONLINEAR.items():
        if function in kernels:
            kernel = kernels[function]
            register(backend, op, wrap(kernel) if wrap is not None else kernel)


def lookup(op: str) -> OpSpec | None:
    return REGISTRY.get(op)


def supported_backends(op: str) -> list[str]:
    spec = REGISTRY.get(op)
    return spec.backends if spec else []
