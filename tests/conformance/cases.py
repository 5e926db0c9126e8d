"""One builder per registered op: a tiny module calling the op, and its inputs on two ranges.

`CASES` maps every op of `secinfer.core.registry.REGISTRY` to one or more `Case`s. A case
is a forward function (the module's, `self` holding its parameters and buffers), the
shapes and value domains of its inputs (the data owner's), its parameters (the model
owner's) and buffers (public integer or bool constants). An op with no entry makes the
suite fail (`test_coverage`), so a newly registered op cannot be skipped in silence.

Graphs are made as `secinfer.core.prepare.prepare` makes them (torch.export, then core ATen
decomposition keeping `graph.KEPT_OPS`), but for all cases at once: every case is a
submodule of one module, exported and decomposed ONCE (run_decompositions costs about
0.8 s per program whatever its size: 100 s for a program per case), and each case's
one-op graph is cut out of it (`cut`): its output's backward slice plus the nodes its
submodule recorded. `test_coverage` checks on sample cases that the cut graph has the ops,
and the plan the same choices, as `prepare` on the case's own program (all cases: slow).

Some registered ops never survive core ATen decomposition (aten.reshape becomes
aten.view, aten.t becomes aten.permute, ...): no prepared graph can hold them, but the
registry lists them and the backends claim kernels for them. Such a case is `raw`: its
graph is the exported program before decomposition (`build_graph(decomposed=True)`), and
`test_coverage` checks that decomposition does remove the op (otherwise the case must be
a decomposed one).

Ranges (inputs are rounded to the 2^-16 grid: the mpc backend then shares exactly the
values the reference sees):
  realistic  unit-scale activations: N(0, 1); positive quantities in [0.25, 4]; exp
             arguments in [-4, 1]; softmax scores N(0, 2^2)
  outlier    as trained models have them: a few feature channels 30-60 times the rest;
             GELU and saturating functions' inputs to +-14 (beyond +-10); attention scores
             to +-45 (beyond +-40); LayerNorm rows with variances from 1e-3 to 1e3;
             positive quantities from 1e-3 to 1e3; exp arguments in [-40, 8]
Every case is calibrated on its own range (the plan widens its intervals from there).
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.export import Dim

from secinfer.core.calibrate import calibrate
from secinfer.core.execute import Executor, check_supported
from secinfer.core.graph import Graph, build_graph, decompose
from secinfer.core.plan import Plan, make_plan, plan_target
from secinfer.core.registry import REGISTRY

aten = torch.ops.aten
RANGES = ("realistic", "outlier")
GRID = 2.0**16
"""Inputs and weights lie on the fixed-point grid of 16 fractional bits."""
WEIGHT_GRID = 2.0**8
"""Weights and constants on a coarser grid, so products stay on the 2^-16 grid."""
B, L, D = 2, 4, 8
"""Batch, tokens, features of the representative activations."""
VOCAB = 16


@dataclass(frozen=True)
class Arg:
    """One data-owner input: its value domain (see `draw`), shape and dtype."""

    domain: str
    shape: tuple[int, ...] = (B, L, D)
    dynamic: dict[int, Any] | None = None  # torch.export dynamic dims of this input


@dataclass(frozen=True)
class Case:
    """A one-op program: `forward(self, *inputs)` calls `op` (plus what it needs)."""

    op: str
    forward: Callable[..., Any]
    args: tuple[Arg, ...]
    variant: str = ""
    params: dict[str, tuple[int, ...]] = field(default_factory=dict)
    buffers: dict[str, Callable[[], torch.Tensor]] = field(default_factory=dict)
    raw: bool = False
    mpc_truncations: int = 0
    """Sequential fixed-point truncations of the op's mpc kernel (0: local, exact)."""
    mpc_gain: Callable[[float], float] | None = None
    """For ops that amplify an earlier truncation: extra ulps given M = max |input|."""

    @property
    def name(self) -> str:
        return self.op + (f"[{self.variant}]" if self.variant else "")


def _a(domain: str = "act", shape: tuple[int, ...] = (B, L, D), **kw: Any) -> Arg:
    return Arg(domain, shape, **kw)


X = (_a(),)
XY = (_a(), _a("other"))
POS = (_a("positive"),)


def _long(*values: Any) -> Callable[[], torch.Tensor]:
    return lambda: torch.tensor(values, dtype=torch.long)


def _mask() -> torch.Tensor:
    """A causal-like public bool mask over (L, D)."""
    return torch.triu(torch.ones(L, D, dtype=torch.bool), 1)


def _c(op: str, forward: Callable[..., Any], args: tuple[Arg, ...] = X, **kw: Any) -> Case:
    return Case(op, forward, args, **kw)


def _dyn(name: str, even: bool = False) -> tuple[Arg, ...]:
    """An input whose first dimension is symbolic (its own Dim: a Dim shared between
    inputs would tie them, and one case's size node would serve another's)."""
    dim = 2 * Dim(f"{name}_half", min=2, max=32) if even else Dim(name, min=3, max=64)
    return (_a(shape=(4, 3, D), dynamic={0: dim}),)


_SHAPE: list[Case] = [
    _c("aten.view", lambda s, x: x.view(B, L, 2, D // 2)),
    _c("aten.reshape", lambda s, x: x.reshape(B * L, D), raw=True),
    _c("aten._unsafe_view", lambda s, x: aten._unsafe_view(x, [B * L, D]), raw=True),
    _c("aten.permute", lambda s, x: x.permute(0, 2, 1)),
    _c("aten.transpose", lambda s, x: x.transpose(1, 2), raw=True),
    _c("aten.t", lambda s, x: x.t(), (_a(shape=(L, D)),), raw=True),
    _c("aten.unsqueeze", lambda s, x: x.unsqueeze(1)),
    _c("aten.squeeze", lambda s, x: x.squeeze(1), (_a(shape=(B, 1, D)),)),
    _c("aten.expand", lambda s, x: x.expand(B, L, D), (_a(shape=(B, 1, D)),)),
    _c("aten.slice", lambda s, x: x[:, :, 2:6]),
    _c("aten.select", lambda s, x: x[:, 1]),
    _c("aten.clone", lambda s, x: x.clone()),
    _c("aten.contiguous", lambda s, x: aten.contiguous(x), raw=True),
    _c("aten.alias", lambda s, x: aten.alias(x)),
    _c("aten.detach", lambda s, x: x.detach(), raw=True),
    _c("aten._to_copy", lambda s, x: x.to(torch.float64)),
    _c("aten.to", lambda s, x: x.to(torch.float64), raw=True),
    _c("aten._assert_tensor_metadata", lambda s, x: x.to(torch.float64)),
    _c("aten.cat", lambda s, x, y: torch.cat([x, y], 1), XY),
    _c("aten.stack", lambda s, x, y: torch.stack([x, y], 1), XY, raw=True),
    _c("aten.split", lambda s, x: x.split(4, dim=2)[1], raw=True),
    _c("aten.split_with_sizes", lambda s, x: x.split([3, 5], 2)[1]),
    _c("aten.chunk", lambda s, x: x.chunk(2, 2)[0], raw=True),
    _c("aten.unbind", lambda s, x: x.unbind(1)[2], raw=True),
    _c("aten.narrow", lambda s, x: x.narrow(2, 1, 4), raw=True),
    _c("aten.flatten", lambda s, x: x.flatten(1), raw=True),
    _c("aten.unflatten", lambda s, x: x.unflatten(2, (2, 4)), raw=True),
    _c("aten.dropout", lambda s, x: F.dropout(x, 0.1, training=False), raw=True),
    _c("aten.lift_fresh_copy", lambda s, x: aten.lift_fresh_copy(x), raw=True),
    _c("aten.repeat", lambda s, x: x.repeat(1, 2, 1)),
    _c("getitem", lambda s, x: x.split([3, 5], 2)[0]),
    _c("aten.sym_size", lambda s, x: x * x.shape[0], _dyn("b_size")),
    _c("sym.mul", lambda s, x: x * (x.shape[0] * 3), _dyn("b_mul")),
    _c("sym.add", lambda s, x: x * (x.shape[0] + 1), _dyn("b_add")),
    _c("sym.sub", lambda s, x: x * (x.shape[0] - 1), _dyn("b_sub")),
    _c("sym.floordiv", lambda s, x: x * (x.shape[0] // 2), _dyn("b_div", even=True)),
    _c("sym.truediv", lambda s, x: x * (x.shape[0] / 2), _dyn("b_truediv"), mpc_truncations=1),
]

_CREATE: list[Case] = [
    _c("aten.arange", lambda s, x: x + torch.arange(D)),
    _c("aten.full", lambda s, x: x + torch.full((D,), 0.5)),
    _c("aten.zeros", lambda s, x: x + torch.zeros(D), raw=True),
    _c("aten.ones", lambda s, x: x + torch.ones(D), raw=True),
    _c("aten.scalar_tensor", lambda s, x: x + torch.scalar_tensor(0.5)),
    _c("aten.new_ones", lambda s, x: x + x.new_ones(D), raw=True),
    _c("aten.new_zeros", lambda s, x: x + x.new_zeros(D), raw=True),
    _c("aten.zeros_like", lambda s, x: x + torch.zeros_like(x), raw=True),
    _c("aten.ones_like", lambda s, x: x + torch.ones_like(x), raw=True),
    _c("aten.full_like", lambda s, x: x + torch.full_like(x, 0.5)),
    _c("aten.empty", lambda s, x: torch.empty(D).fill_(0.5) + x),
    _c(
        "aten.empty_like",
        lambda s, x: torch.full_like(aten.empty_like(x), 0.5) + x,
        raw=True,
    ),
    _c("aten.fill", lambda s, x: torch.fill(x, 0.5) + x, raw=True),
]

_SELECT: list[Case] = [
    *(
        _c(f"aten.{name}", (lambda f: lambda s, x, y: f(x, y))(fn), (_a(), _a("tied")))
        for name, fn in {
            "ge": operator.ge,
            "gt": operator.gt,
            "le": operator.le,
            "lt": operator.lt,
            "eq": operator.eq,
            "ne": operator.ne,
        }.items()
    ),
    _c("aten.bitwise_and", lambda s, x, y: (x > 0) & (y > 0), XY),
    _c("aten.bitwise_or", lambda s, x, y: (x > 0) | (y > 0), XY),
    _c("aten.bitwise_not", lambda s, x: ~(x > 0)),
    _c("aten.logical_and", lambda s, x, y: torch.logical_and(x > 0, y > 0), XY),
    _c("aten.logical_or", lambda s, x, y: torch.logical_or(x > 0, y > 0), XY),
    _c("aten.logical_not", lambda s, x: torch.logical_not(x > 0)),
    _c("aten.where", lambda s, x, y: torch.where(s.mask, x, y), XY, buffers={"mask": _mask}),
    _c(
        "aten.masked_fill",
        lambda s, x: x.masked_fill(s.mask, -3.0),
        buffers={"mask": _mask},
        raw=True,
    ),
    _c("aten.index", lambda s, x: x[:, s.idx], buffers={"idx": _long(0, 2)}),
    _c(
        "aten.gather",
        lambda s, x: x.gather(2, s.idx),
        buffers={"idx": lambda: torch.arange(B * L * 3).reshape(B, L, 3) % D},
    ),
    _c(
        "aten.embedding",
        lambda s, ids: F.embedding(ids, s.weight),
        (_a("ids", (B, L)),),
        params={"weight": (VOCAB, D)},
        mpc_truncations=1,
    ),
    _c("aten.index_select", lambda s, x: x.index_select(2, s.idx), buffers={"idx": _long(0, 3)}),
    _c("aten.amax", lambda s, x: x.amax(-1)),
    _c("aten.max", lambda s, x: x.max(-1).values),
    _c("aten.argmax", lambda s, x: x.argmax(-1)),
    _c("aten.relu", lambda s, x: torch.relu(x)),
    _c("aten.clamp", lambda s, x: x.clamp(-0.5, 0.5)),
    _c("aten.clamp_min", lambda s, x: x.clamp_min(-0.5), raw=True),
    _c("aten.clamp_max", lambda s, x: x.clamp_max(0.5), raw=True),
    _c("aten.minimum", lambda s, x, y: torch.minimum(x, y), XY),
    _c("aten.maximum", lambda s, x, y: torch.maximum(x, y), XY),
    _c("aten.abs", lambda s, x: x.abs()),
]

_LINEAR: list[Case] = [
    _c(
        "aten.linear",
        lambda s, x: F.linear(x, s.weight, s.bias),
        params={"weight": (6, D), "bias": (6,)},
        mpc_truncations=1,
    ),
    _c("aten.matmul", lambda s, x, y: x @ y.transpose(-1, -2), XY, mpc_truncations=1),
    _c(
        "aten.matmul",
        lambda s, x: x @ s.weight,
        variant="weight",
        params={"weight": (D, 6)},
        mpc_truncations=1,
    ),
    _c(
        "aten.mm",
        lambda s, x: torch.mm(x, s.weight),
        (_a(shape=(L, D)),),
        params={"weight": (D, 6)},
        mpc_truncations=1,
    ),
    _c("aten.bmm", lambda s, x, y: torch.bmm(x, y.transpose(1, 2)), XY, mpc_truncations=1),
    _c(
        "aten.addmm",
        lambda s, x: torch.addmm(s.bias, x, s.weight),
        (_a(shape=(L, D)),),
        params={"weight": (D, 6), "bias": (6,)},
        mpc_truncations=1,
    ),
    _c(
        "aten.baddbmm",
        lambda s, z, x, y: torch.baddbmm(z, x, y.transpose(1, 2)),
        (_a("other", (B, L, L)), _a(), _a("other")),
        raw=True,
        mpc_truncations=1,
    ),
    _c(
        "aten.convolution",
        lambda s, x: F.conv2d(x, s.weight, s.bias),
        (_a(shape=(1, 2, 6, 6)),),
        params={"weight": (3, 2, 3, 3), "bias": (3,)},
        mpc_truncations=1,
    ),
    _c(
        "aten.conv2d",
        lambda s, x: F.conv2d(x, s.weight, s.bias),
        (_a(shape=(1, 2, 6, 6)),),
        params={"weight": (3, 2, 3, 3), "bias": (3,)},
        raw=True,
        mpc_truncations=1,
    ),
]

_ARITH: list[Case] = [
    _c("aten.add", lambda s, x, y: x + y, XY),
    _c("aten.sub", lambda s, x, y: x - y, XY),
    _c("aten.rsub", lambda s, x: 1.5 - x, raw=True),
    _c("aten.mul", lambda s, x, y: x * y, XY, mpc_truncations=1),
    _c("aten.mul", lambda s, x: x * 0.375, variant="public", mpc_truncations=1),
    _c("aten.neg", lambda s, x: -x),
    _c("aten.mean", lambda s, x: x.mean(-1), mpc_truncations=1),
    _c("aten.sum", lambda s, x: x.sum(-1)),
    _c("aten.square", lambda s, x: x.square(), raw=True, mpc_truncations=1),
    _c("aten.pow", lambda s, x: x**3, mpc_truncations=1, mpc_gain=lambda m: 2 * m),
    _c("aten.pow", lambda s, x: x**-0.5, POS, variant="-0.5"),
    _c("aten.pow", lambda s, x: x**0.5, POS, variant="0.5"),
    _c("aten.pow", lambda s, x: x**-1, POS, variant="-1"),
    _c("aten.div", lambda s, x: x / 4.0, mpc_truncations=1),
    _c("aten.div", lambda s, x, y: x / y, (_a(), _a("positive")), variant="secret"),
    _c("aten.cumsum", lambda s, x: x.cumsum(-1)),
]

_NONLINEAR: list[Case] = [
    _c("aten.gelu", lambda s, x: F.gelu(x), (_a("gelu"),)),
    _c("aten.softmax", lambda s, x: x.softmax(-1), (_a("scores"),)),
    _c("aten._softmax", lambda s, x: aten._softmax(x, -1, False), (_a("scores"),)),
    _c("aten.log_softmax", lambda s, x: x.log_softmax(-1), (_a("scores"),)),
    _c("aten._log_softmax", lambda s, x: aten._log_softmax(x, -1, False), (_a("scores"),)),
    _c(
        "aten.layer_norm",
        lambda s, x: F.layer_norm(x, (D,), s.weight, s.bias),
        (_a("ln"),),
        params={"weight": (D,), "bias": (D,)},
    ),
    _c("aten.tanh", lambda s, x: torch.tanh(x), (_a("saturating"),)),
    _c("aten.sigmoid", lambda s, x: torch.sigmoid(x), (_a("saturating"),)),
    _c("aten.erf", lambda s, x: torch.erf(x), (_a("saturating"),)),
    _c("aten.silu", lambda s, x: F.silu(x), (_a("saturating"),)),
    _c("aten.exp", lambda s, x: torch.exp(x), (_a("exp"),)),
    # functions of public values (rotary angles): approx only; mpc and he run them on
    # plain tensors and claim no kernel on secrets
    _c("aten.cos", lambda s, x: torch.cos(x)),
    _c("aten.sin", lambda s, x: torch.sin(x)),
    _c("aten.log", lambda s, x: torch.log(x), POS),
    _c("aten.rsqrt", lambda s, x: torch.rsqrt(x), POS),
    _c("aten.sqrt", lambda s, x: torch.sqrt(x), POS),
    _c("aten.reciprocal", lambda s, x: torch.reciprocal(x), POS),
]

CASES: dict[str, list[Case]] = {}
for _case in (*_SHAPE, *_CREATE, *_SELECT, *_LINEAR, *_ARITH, *_NONLINEAR):
    CASES.setdefault(_case.op, []).append(_case)
ALL: list[Case] = [case for cases in CASES.values() for case in cases]
BY_NAME: dict[str, Case] = {case.name: case for case in ALL}
assert len(BY_NAME) == len(ALL), "case names must be unique"


# --- inputs -------------------------------------------------------------------------------
def _grid(values: np.ndarray, grid: float = GRID) -> np.ndarray:
    return np.round(values * grid) / grid


def _spread(shape: tuple[int, ...], lo: float, hi: float) -> np.ndarray:
    return np.linspace(lo, hi, math.prod(shape)).reshape(shape)


def draw(domain: str, shape: tuple[int, ...], range_: str, rng: np.random.Generator) -> Any:
    """Values of `domain` on `range_` (module docstring), float64 on the 2^-16 grid
    (int64 token ids for "ids"). Extremes are placed deterministically, so a sample and a
    query from the same range calibrate to the same interval."""
    outlier = range_ == "outlier"
    n = rng.normal(size=shape)
    if domain == "ids":
        return rng.integers(0, VOCAB, size=shape).astype(np.int64)
    if domain in ("act", "other", "tied"):
        values = n * (3.0 if outlier else 1.0)
        if outlier:  # outlier feature channels, as trained transformers have them
            values[..., 0] = _spread(values[..., 0].shape, -60.0, 60.0)
            values[..., -1] *= 10.0
    elif domain in ("gelu", "saturating"):
        values = np.clip(n * (4.0 if outlier else 1.0), -14.0, 14.0)
        bound = 14.0 if outlier else 3.0
        values.reshape(-1)[:8] = np.linspace(-bound, bound, 8)
    elif domain == "scores":
        values = n * (8.0 if outlier else 2.0)
        if outlier:
            values[..., 0] = 45.0  # a dominant key per row
            values[..., 1] = -45.0
    elif domain == "ln":
        offset = rng.normal(size=(*shape[:-1], 1))
        if outlier:
            rows = math.prod(shape[:-1])
            std = np.sqrt(np.logspace(-3, 3, rows)).reshape((*shape[:-1], 1))
            values = n * std + offset * 3.0
            values[..., 2] += 6.0 * std[..., 0]  # one big feature per row
        else:
            values = n + offset
    elif domain == "positive":
        if outlier:
            values = np.exp(rng.uniform(math.log(1e-3), math.log(1e3), size=shape))
            values.reshape(-1)[:2] = (1e-3, 1e3)
        else:
            values = rng.uniform(0.25, 4.0, size=shape)
            values.reshape(-1)[:2] = (0.25, 4.0)
    elif domain == "exp":
        lo, hi = (-40.0, 8.0) if outlier else (-4.0, 1.0)
        values = rng.uniform(lo, hi, size=shape)
        values.reshape(-1)[:2] = (lo, hi)
    else:
        raise ValueError(f"unknown domain {domain!r}")
    return _grid(values)


def inputs(case: Case, range_: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """The case's data-owner inputs on `range_` (seed 0: the query; 1: the calibration
    sample). "tied" shares half its entries with the first input (so eq/ne see equal
    values); "other" is drawn like "act", independently of it."""
    out: list[np.ndarray] = []
    for index, arg in enumerate(case.args):
        # seeded by domain, shape and position, not by case: cases of one domain share
        # their inputs, so their calibrated intervals (and the fits on them) coincide
        key = [seed, index, sum(map(ord, arg.domain)), *arg.shape]
        values = draw(arg.domain, arg.shape, range_, np.random.default_rng(key))
        if arg.domain == "tied":
            values = np.where(np.arange(values.size).reshape(values.shape) % 2 == 0, out[0], values)
        out.append(values)
    return tuple(
        torch.from_numpy(v) if v.dtype == np.int64 else torch.from_numpy(v).float() for v in out
    )


def samples(case: Case, range_: str) -> list[tuple[torch.Tensor, ...]]:
    """Calibration samples: another draw from the same range, and the query itself (a
    plan is calibrated on data like the queries it will see)."""
    return [inputs(case, range_, seed=1), inputs(case, range_)]


# --- the one combined program and the cut one-op graphs -----------------------------------
class OneOp(torch.nn.Module):
    """The module of one case: its parameters (weights on a 2^-8 grid) and buffers."""

    def __init__(self, case: Case, seed: int) -> None:
        super().__init__()
        self.case_forward = case.forward
        generator = torch.Generator().manual_seed(seed)
        for name, shape in case.params.items():
            value = torch.randn(shape, generator=generator, dtype=torch.float64) * 0.5
            if name == "weight" and case.op == "aten.layer_norm":
                value = 1.0 + 0.2 * value
            value = torch.round(value * WEIGHT_GRID) / WEIGHT_GRID
            self.register_parameter(name, torch.nn.Parameter(value.float(), requires_grad=False))
        for name, make in case.buffers.items():
            self.register_buffer(name, make())

    def forward(self, *xs: torch.Tensor) -> Any:
        return self.case_forward(self, *xs)


class Everything(torch.nn.Module):
    """Every case as a submodule `c<index>`; returns every case's output."""

    def __init__(self) -> None:
        super().__init__()
        for index, case in enumerate(ALL):
            self.add_module(f"c{index:03d}", OneOp(case, index))

    def forward(self, *xs: torch.Tensor) -> tuple[Any, ...]:
        outputs, at = [], 0
        for index, case in enumerate(ALL):
            count = len(case.args)
            outputs.append(getattr(self, f"c{index:03d}")(*xs[at : at + count]))
            at += count
        return tuple(outputs)


@dataclass
class Combined:
    """The one export of all cases: the program, its graph decomposed and as exported."""

    program: torch.export.ExportedProgram
    decomposed: Graph
    raw: Graph
    first_input: list[int]  # per case, the index of its first user input


@cache
def combined() -> Combined:
    """Export `Everything` on realistic inputs (dynamic dims where a case asks), once."""
    example: list[torch.Tensor] = []
    dynamic: list[Any] = []
    first: list[int] = []
    for case in ALL:
        first.append(len(example))
        example.extend(inputs(case, "realistic"))
        dynamic.extend(arg.dynamic for arg in case.args)
    program = torch.export.export(
        Everything().eval(), tuple(example), dynamic_shapes=(tuple(dynamic),)
    )
    return Combined(
        program,
        build_graph(decompose(program), decomposed=True),
        build_graph(program, decomposed=True),
        first,
    )


def cut(graph: Graph, index: int, count: int) -> Graph:
    """Case `index`'s one-op graph out of the combined `graph`: the backward slice of its
    output plus every node its submodule recorded (side-effect nodes such as
    _assert_tensor_metadata are used by nothing), with its `count` user inputs."""
    fx = graph.fx_graph
    output = next(n for n in fx.nodes if n.op == "output")
    target = output.args[0][index]
    prefix = f"c{index:03d}"
    keep: set[str] = set()
    stack = [target] if isinstance(target, torch.fx.Node) else []
    for node in fx.nodes:
        if (
            node.op == "call_function"
            and graph.node_by_name[node.name].module.split(".")[0] == prefix
        ):
            stack.append(node)
    while stack:
        node = stack.pop()
        if node.name in keep:
            continue
        keep.add(node.name)
        stack.extend(node.all_input_nodes)
    sub = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    for node in fx.nodes:
        if node.name in keep:
            env[node] = sub.node_copy(node, lambda n: env[n])
    sub.output((env[target],) if isinstance(target, torch.fx.Node) else (target,))
    names = {n.name for n in sub.nodes}
    nodes = [n for n in graph.nodes if n.name in names and n.kind != "output"]
    nodes.append(graph.nodes[-1])  # the output node
    user = [n for n in graph.user_inputs if n in names]
    assert len(user) == count, (prefix, user, count)
    return Graph(
        None,
        nodes,
        {k: v for k, v in graph.owned.items() if k in names},
        user,
        {n.name: n for n in sub.nodes},
        fx_graph=sub,
    )


@cache
def graph_of(name: str) -> Graph:
    """The one-op graph of case `name`, as a prepared graph holds it (raw: as exported)."""
    case = BY_NAME[name]
    index = ALL.index(case)
    whole = combined()
    return cut(whole.raw if case.raw else whole.decomposed, index, len(case.args))


@cache
def decomposed_ops(name: str) -> tuple[str, ...]:
    """The ops of case `name` after core ATen decomposition (what `prepare` would give)."""
    case = BY_NAME[name]
    return tuple(n.op for n in cut(combined().decomposed, ALL.index(case), len(case.args)).calls)


def module_of(name: str) -> OneOp:
    """Case `name`'s own module (the same weights as in the combined program)."""
    case = BY_NAME[name]
    return OneOp(case, ALL.index(case)).eval()


# --- plans, references, claims --------------------------------------------------------------
def plan_for(name: str, backend: str, range_: str, target: str | None = None) -> tuple[Graph, Plan]:
    """`secinfer.core.prepare.prepare`'s steps on the case's cut graph: the backend's kernels
    checked, the plan made for `plan_target(backend, target)` from a calibration on
    `samples(case, range_)`, no config."""
    graph = graph_of(name)
    check_supported(graph, backend)
    calibration = calibrate(graph, samples(BY_NAME[name], range_))
    return graph, make_plan(graph, plan_target(backend, target), {}, calibration)


def reference(name: str, range_: str) -> np.ndarray:
    """The plain run of the case's graph on its query inputs, as float64."""
    result = Executor(graph_of(name), "plain").run(inputs(BY_NAME[name], range_))
    return as_array(result.outputs[0])


def magnitude(name: str, range_: str) -> np.ndarray:
    """The plain run on the absolute values of the inputs and weights: for sums and
    products, the size of the summands at which a float32 reference rounds (x @ y rounds at
    |x| @ |y|, not at its possibly cancelling result)."""
    graph = graph_of(name)
    owned = {k: v.abs() if v.is_floating_point() else v for k, v in graph.owned.items()}
    absolute = dataclasses.replace(graph, owned=owned)
    xs = tuple(x.abs() if x.is_floating_point() else x for x in inputs(BY_NAME[name], range_))
    return np.abs(as_array(Executor(absolute, "plain").run(xs).outputs[0]))


def as_array(value: Any) -> np.ndarray:
    return np.asarray(torch.as_tensor(value).double().numpy())


def op_node(name: str) -> str:
    """The node of the case's graph that calls the case's op (the last, if several)."""
    case = BY_NAME[name]
    return [n.name for n in graph_of(name).calls if n.op == case.op][-1]


def claims(op: str, backend: str) -> bool:
    """Whether `backend` claims a kernel computing `op` on its secret values (what `secinfer
    inspect` counts as supported: an he kernel marked `plain_only` does not)."""
    kernel = REGISTRY[op].kernels.get(backend)
    return kernel is not None and not getattr(kernel, "plain_only", False)


__all__ = [
    "ALL",
    "BY_NAME",
    "CASES",
    "RANGES",
    "Case",
    "claims",
    "graph_of",
    "inputs",
    "plan_for",
    "reference",
    "samples",
]
