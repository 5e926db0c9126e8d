"""The MPC section of `make bench`: our secure kernels and whole encoder layers against
CrypTen's built-ins, side by side in one run, on the same inputs.

Everything runs for real: the model owner (CrypTen rank 0), the data owner (rank 1) and the
dealer (CrypTen's trusted third party) are three fresh processes on this machine
(`protocols.mpc.local.run_local`), with 16 fractional bits in CrypTen's 64-bit ring. In one
run both implementations of a comparison are computed one after the other on the same
shares, and a meter on each party's communicator (`protocols.mpc.meter`) is read before and
after each of them.

1. Ops at transformer shapes: GELU (128 x 1536), softmax (12 x 128 x 128), LayerNorm
   (128 x 384, no affine), with trained-model-like inputs (module constants below).
2. One BERT encoder layer (self-attention, softmax, two LayerNorms, GELU FFN), batch 1, at
   MiniLM and BERT-base size. Ours is the product path: torch.export of a transformers
   BertLayer, `secinfer.runner.prepare` (graph, plan calibrated on a sample input), the
   `Executor` on the mpc backend with the `Seeder` (weights shared by the model owner, the
   input by the data owner; the data owner loads the public architecture, weights zeroed).
   CrypTen's is the same layer written by hand with its built-ins (matmul, `softmax`, GELU
   as x sigmoid(1.702 x), LayerNorm with `inv_sqrt`), same weights and input. Plain is
   torch float32 on one thread.

Columns: max abs error against float64 torch on the same input; rounds (calls in which a
party waits for the other, the larger count of the two parties); MB sent by one computing
party (the larger of the two; MB = 10^6 bytes); dealer MB (both parties' traffic with the
dealer: triples, seeds and requests); seconds (the slower party's wall time); ratios ours /
CrypTen. Sharing the inputs and revealing the outputs are outside the measured span (with
CrypTen's pseudo-random zero sharing, sharing costs no traffic anyway).

Figures published or measured elsewhere (DESIGN.md section 4) are printed in a table of
their own, labelled as such: they are never mixed with this run's measurements.
"""

from __future__ import annotations

import copy
import math
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from protocols.mpc.runtime import Role

MB = 1e6
EPS = 1e-12  # BertConfig's layer_norm_eps; the op benchmark's LayerNorm uses the same
PRECISION_BITS = 16
PEER_TIMEOUT = 300.0  # seconds a party may wait for another (the dealer idles during set-up)

# Inputs of the op benchmark (trained-model-like ranges)
GELU_STD, GELU_OUTLIER_RATE, GELU_OUTLIER = 3.0, 0.002, (6.0, 12.0)
SCORE_STDS = (0.5, 2.75)  # per head, linearly spaced: largest row spread about 20
LN_VARIANCES = (1e-2, 1e2)  # per row, log-uniform

# Weights of the benchmark layers: BERT's initializer (N(0, 0.02) weights), small random
# biases and LayerNorm affines, then query/key and intermediate weights rescaled so that the
# attention scores and GELU inputs have the spread of a trained model's.
INIT_STD = 0.02
TARGET_SCORE_STD = 3.0
TARGET_GELU_STD = 2.5


@dataclass(frozen=True)
class OpCase:
    op: str
    shape: tuple[int, ...]
    variants: tuple[str, ...]  # keys of VARIANTS
    baseline: str  # the CrypTen variant the ratios refer to


@dataclass(frozen=True)
class LayerSize:
    name: str
    hidden: int
    heads: int
    intermediate: int
    seq: int


OP_CASES = (
    OpCase(
        "GELU",
        (128, 1536),
        (
            "gelu.product",
            "gelu.puma_refit",
            "gelu.bolt",
            "gelu.crypten_sigmoid",
            "gelu.crypten_erf",
        ),
        "gelu.crypten_sigmoid",
    ),
    OpCase(
        "softmax",
        (12, 128, 128),
        ("softmax.product", "softmax.order2", "softmax.crypten"),
        "softmax.crypten",
    ),
    OpCase(
        "LayerNorm", (128, 384), ("layer_norm.product", "layer_norm.crypten"), "layer_norm.crypten"
    ),
)
FUNCTION = {"GELU": "gelu", "softmax": "softmax", "LayerNorm": "layer_norm"}
PRODUCT_TARGETS = {
    "gelu": torch.ops.aten.gelu.default,
    "softmax": torch.ops.aten.softmax.int,
    "layer_norm": torch.ops.aten.layer_norm.default,
}
QUICK_SHAPES = {"GELU": (16, 96), "softmax": (2, 16, 16), "LayerNorm": (16, 64)}

LAYER_SIZES = (
    LayerSize("MiniLM", 384, 12, 1536, 128),
    LayerSize("BERT-base", 768, 12, 3072, 128),
)
TINY_LAYER = LayerSize("tiny", 64, 4, 128, 16)

_CRYPTEN_COUNT = "probably CrypTen's own comm_bytes, which counts an all-reduce as sent + received"
_UNKNOWN_COUNT = "SPU's counter; convention not checked here"
PUBLISHED = (
    {
        "source": "DESIGN.md section 4 (measured on these machines earlier, not in this run)",
        "system": "CrypTen built-ins, 2 parties",
        "layer": "BERT-base layer, seq 128",
        "mb_per_party_as_reported": 746,
        "counting": _CRYPTEN_COUNT,
        "rounds": "186 rounds",
        "max_error": None,
        "seconds": 6.7,
    },
    {
        "source": "DESIGN.md section 4 (PUMA's implementation, measured elsewhere)",
        "system": "SecretFlow-SPU 0.9.5 PUMA, 2PC SEMI2K, 64-bit ring",
        "layer": "BERT-base layer, seq 128",
        "mb_per_party_as_reported": 374,
        "counting": _UNKNOWN_COUNT,
        "rounds": "289 messages",
        "max_error": 0.0088,
        "seconds": 6.6,
    },
    {
        "source": "DESIGN.md section 4",
        "system": "plaintext",
        "layer": "BERT-base layer, seq 128",
        "mb_per_party_as_reported": None,
        "counting": None,
        "rounds": None,
        "max_error": None,
        "seconds": 0.016,
    },
    {
        "source": "the bench brief (not in DESIGN.md; unverified)",
        "system": "CrypTen built-ins",
        "layer": "MiniLM layer",
        "mb_per_party_as_reported": 492,
        "counting": _CRYPTEN_COUNT,
        "rounds": None,
        "max_error": None,
        "seconds": None,
    },
    {
        "source": "the bench brief (not in DESIGN.md; unverified)",
        "system": "SecretFlow-SPU PUMA",
        "layer": "MiniLM layer",
        "mb_per_party_as_reported": 243,
        "counting": _UNKNOWN_COUNT,
        "rounds": None,
        "max_error": None,
        "seconds": None,
    },
)


# --- the implementations compared (they run inside the parties) ------------------------------
def crypten_layer_norm(x: Any, weight: Any, bias: Any, eps: float) -> Any:
    """LayerNorm with CrypTen's built-ins: mean, variance, `(var + eps).inv_sqrt()`."""
    centred = x - x.mean(-1, keepdim=True)
    variance = (centred * centred).mean(-1, keepdim=True)
    out = centred * (variance + eps).inv_sqrt()
    if weight is not None:
        out = out * weight
    return out if bias is None else out + bias


def crypten_gelu(x: Any) -> Any:
    """CrypTen has no GELU (issue 474); the usual stand-in is x sigmoid(1.702 x)."""
    return x * (x * 1.702).sigmoid()


def _gelu_ours(method: str) -> Callable[[Any, dict], Any]:
    def run(x: Any, params: dict) -> Any:
        from protocols.mpc.piecewise import gelu

        return gelu(x, method)

    return run


def _product_kernel(x: Any, params: dict) -> Any:
    """The mpc backend's kernel for the op, with the plan's choice for the calibrated input:
    exactly what the executor calls for such a node."""
    import secinfer.kernels  # noqa: F401 - registers the kernels
    from secinfer.plan import Choice
    from secinfer.registry import Call, lookup

    choice = Choice(**params["choice"])
    target = PRODUCT_TARGETS[choice.function]
    if choice.function == "gelu":
        args: tuple[Any, ...] = (x,)
    elif choice.function == "softmax":
        args = (x, -1)
    else:
        args = (x, [int(x.size(-1))], None, None, params["eps"])
    spec = lookup(choice.op)
    assert spec is not None
    return spec.kernels["mpc"](Call(target, args, {}, choice))


def _softmax_order2(x: Any, params: dict) -> Any:
    from protocols.mpc.softmax import softmax

    squarings, cutoff = params["product_exp"]
    return softmax(x, -1, squarings=squarings - 1, cutoff=cutoff, order=2)


# key -> (label, fn(secret x, params))
VARIANTS: dict[str, tuple[str, Callable[[Any, dict], Any]]] = {
    "gelu.product": ("ours: the plan's default", _product_kernel),
    "gelu.puma_refit": ("ours: piecewise puma_refit", _gelu_ours("puma_refit")),
    "gelu.bolt": ("ours: piecewise bolt", _gelu_ours("bolt")),
    "gelu.crypten_sigmoid": ("CrypTen: x * (1.702x).sigmoid()", lambda x, p: crypten_gelu(x)),
    "gelu.crypten_erf": (
        "CrypTen: 0.5x (1 + (x/sqrt2).erf())",
        lambda x, p: (x * 0.5) * ((x * (1 / math.sqrt(2))).erf() + 1),
    ),
    "softmax.product": ("ours: the plan's default", _product_kernel),
    "softmax.order2": (
        "ours: the same with order=2 and one squaring fewer (not the plan's default)",
        _softmax_order2,
    ),
    "softmax.crypten": ("CrypTen: x.softmax(-1)", lambda x, p: x.softmax(-1)),
    "layer_norm.product": ("ours: the plan's default", _product_kernel),
    "layer_norm.crypten": (
        "CrypTen: mean, var, (var + eps).inv_sqrt()",
        lambda x, p: crypten_layer_norm(x, None, None, p["eps"]),
    ),
}


def exact(op: str, x: torch.Tensor) -> torch.Tensor:
    """The float64 torch reference of an op."""
    x = x.double()
    if op == "GELU":
        return F.gelu(x)
    if op == "softmax":
        return torch.softmax(x, -1)
    if op == "LayerNorm":
        return F.layer_norm(x, (x.shape[-1],), eps=EPS)
    raise ValueError(op)


def op_input(op: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Trained-model-like inputs (see the module constants)."""
    gen = torch.Generator().manual_seed(seed)
    if op == "GELU":
        x = torch.randn(shape, generator=gen) * GELU_STD
        lo, hi = GELU_OUTLIER
        outlier = torch.rand(shape, generator=gen) < GELU_OUTLIER_RATE
        sign = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0)
        size = lo + (hi - lo) * torch.rand(shape, generator=gen)
        return torch.where(outlier, sign * size, x).clamp(-hi, hi)
    if op == "softmax":
        stds = torch.linspace(*SCORE_STDS, shape[0]).view(-1, *([1] * (len(shape) - 1)))
        return torch.randn(shape, generator=gen) * stds
    if op == "LayerNorm":
        rows = shape[:-1]
        lo, hi = (math.log10(v) for v in LN_VARIANCES)
        variance = 10 ** (lo + (hi - lo) * torch.rand(*rows, 1, generator=gen))
        mean = torch.randn(*rows, 1, generator=gen) * 2
        z = torch.randn(shape, generator=gen)
        z = (z - z.mean(-1, keepdim=True)) / z.std(-1, unbiased=False, keepdim=True)
        return mean + variance.sqrt() * z  # each row's variance exactly as drawn
    raise ValueError(op)


class _OpModule(torch.nn.Module):
    """One op as a model, to be planned exactly as a node of a real model is."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op == "GELU":
            return F.gelu(x)
        if self.op == "softmax":
            return torch.softmax(x, -1)
        return F.layer_norm(x, (x.shape[-1],), eps=EPS)


def plan_choice(op: str, sample: torch.Tensor) -> dict[str, Any]:
    """The plan's choice for this op calibrated on `sample` (the model owner's data, not
    the measured input): the op exported alone and planned by `runner.prepare` for the mpc
    backend, as any model's node would be."""
    from dataclasses import asdict

    from secinfer.runner import prepare

    program = torch.export.export(_OpModule(op), (sample,))
    _, plan = prepare(program, "mpc", [(sample,)], None)
    (choice,) = plan.choices.values()
    return asdict(choice)


def describe_choice(choice: dict[str, Any]) -> str:
    """What the plan's default resolves to (for the table's label)."""
    from secinfer.kernels import mpc_nonlinear as K
    from secinfer.plan import Choice

    c = Choice(**choice)
    lo, hi = c.interval
    where = f"calibrated [{lo:.3g}, {hi:.3g}]"
    if c.function == "gelu" and c.method in ("auto", "sign_exp"):
        form = K.gelu_form(c)
        if hasattr(form, "squarings"):
            shape = (
                f"sign_exp: 1 comparison, exp by {form.squarings} squarings, "
                f"abs(x) <= {form.bound:g}"
            )
        else:
            shape = f"even polynomial x/2 + q(x^2), no comparison, degree {form.degree}"
        return f"{c.method} -> {shape}; {where}"
    if c.function == "softmax" and c.method == "exp_limit":
        squarings, cutoff = K.softmax_exp_settings(c)
        return f"exp_limit, {squarings} squarings, cut-off {cutoff}; {where}"
    return f"{c.method}; {where}"


# --- party programs (module level: spawned processes import them) ----------------------------
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _warm_up() -> None:
    """One-time set-up our kernels cache (polynomial fits), done before anything is timed."""
    from protocols.mpc.inverse import initial_guess

    initial_guess("reciprocal", 2)
    initial_guess("rsqrt", 4)


def _share(value: np.ndarray, owner: Role, role: Role) -> Any:
    """Shares of `value`, which only `owner` contributes (the other passes zeros of its
    shape: the harness hands both the array, the protocol uses the owner's only)."""
    from protocols.mpc.crypten_setup import import_crypten

    tensor = torch.from_numpy(np.asarray(value, dtype=np.float32))
    if role is not owner:
        tensor = torch.zeros(tensor.shape)
    return import_crypten().cryptensor(tensor, src=int(owner))


def _reveal(y: Any, role: Role) -> dict[str, Any] | None:
    """y opened to the data owner as ring integers with its scale (None elsewhere).

    Not `get_plain_text`: CrypTen 0.4.1's `FixedPointEncoder.decode` divides negative values
    by 2^16 - 1 instead of 2^16 for the integer part, so it returns some negative values
    just above an integer (-39.9999 -> -40.9999) exactly 1.0 too low; the error, not the
    protocol, is then what a table would show. `decoded` decodes exactly; `crypten_decode_
    errors` counts the elements CrypTen's decode would have got wrong."""
    ring = y.reveal(dst=int(Role.DATA_OWNER))
    if role is not Role.DATA_OWNER:
        return None
    return {"ring": ring.numpy().copy(), "scale": int(y.encoder.scale)}


def decoded(opened: dict[str, Any]) -> torch.Tensor:
    """Exact fixed-point decoding (float64) of what `_reveal` returned."""
    return torch.from_numpy(opened["ring"]).double() / opened["scale"]


def crypten_decode_errors(opened: dict[str, Any]) -> int:
    """How many elements CrypTen's own decode (`get_plain_text`) would get wrong by more
    than half a unit, on these very ring values."""
    from protocols.mpc.crypten_setup import import_crypten

    encoder = import_crypten().encoder.FixedPointEncoder()
    encoder._scale = opened["scale"]  # sets the precision bits as well
    theirs = encoder.decode(torch.from_numpy(opened["ring"])).double()
    return int(((theirs - decoded(opened)).abs() > 0.5).sum())


def ops_party(role: Role, cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Every variant of every op case on the data owner's input; traffic per variant."""
    from protocols.mpc.meter import Meter

    _warm_up()
    meter = Meter().install()
    results = []
    try:
        for case in cases:
            x = _share(case["x"], Role.DATA_OWNER, role)
            small = case["x"].reshape(-1, case["x"].shape[-1])[:2]
            warm = _share(small, Role.DATA_OWNER, role)
            for key in case["variants"]:
                fn = VARIANTS[key][1]
                fn(warm, case["params"]).get_plain_text()  # unmetered warm-up, tiny
                before = meter.snapshot()
                began = time.perf_counter()
                y = fn(x, case["params"])
                seconds = time.perf_counter() - began
                cost = meter.snapshot() - before
                results.append(
                    {
                        "op": case["op"],
                        "variant": key,
                        "seconds": seconds,
                        "traffic": cost.to_dict(),
                        "y": _reveal(y, role),
                    }
                )
                del y
    finally:
        meter.remove()
    return {"results": results, "peak_rss_mb": _peak_rss_mb()}


def crypten_bert_layer(x: Any, w: dict[str, Any], heads: int, eps: float, mark: Callable) -> Any:
    """A BertLayer written with CrypTen's built-ins. `w` holds the model owner's shared
    weights, linear weights already transposed to (in, out). `mark(stage)` is called at the
    end of each stage (cost attribution)."""

    def linear(t: Any, name: str) -> Any:
        return t.matmul(w[f"{name}.weight"]) + w[f"{name}.bias"]

    batch, seq, hidden = (int(s) for s in x.size())
    d = hidden // heads

    def split(t: Any) -> Any:  # (b, s, h) -> (b, heads, s, d)
        return t.reshape([batch, seq, heads, d]).permute(0, 2, 1, 3)

    q = split(linear(x, "attention.self.query"))
    k = split(linear(x, "attention.self.key"))
    v = split(linear(x, "attention.self.value"))
    scores = q.matmul(k.transpose(-1, -2))
    mark("matmul")
    scores = scores * (1.0 / math.sqrt(d))
    mark("other")
    probs = scores.softmax(-1)
    mark("softmax")
    context = probs.matmul(v).permute(0, 2, 1, 3).reshape([batch, seq, hidden])
    attention = linear(context, "attention.output.dense")
    mark("matmul")
    h1 = attention + x
    mark("other")
    h1 = crypten_layer_norm(
        h1, w["attention.output.LayerNorm.weight"], w["attention.output.LayerNorm.bias"], eps
    )
    mark("layer_norm")
    inner = linear(h1, "intermediate.dense")
    mark("matmul")
    inner = crypten_gelu(inner)
    mark("gelu")
    out = linear(inner, "output.dense")
    mark("matmul")
    h2 = out + h1
    mark("other")
    h2 = crypten_layer_norm(h2, w["output.LayerNorm.weight"], w["output.LayerNorm.bias"], eps)
    mark("layer_norm")
    return h2


OP_CATEGORY = {
    "aten.linear": "matmul",
    "aten.matmul": "matmul",
    "aten.mm": "matmul",
    "aten.bmm": "matmul",
    "aten.addmm": "matmul",
    "aten.softmax": "softmax",
    "aten._softmax": "softmax",
    "aten.layer_norm": "layer_norm",
    "aten.gelu": "gelu",
}


def _protocol_warm_up() -> None:
    """Unmetered small products, a matmul, comparisons and CrypTen's own approximations on
    both parties, so that first-call costs (dealer requests, code paths, allocations) are
    charged to neither implementation."""
    from protocols.mpc.crypten_setup import import_crypten

    crypten = import_crypten()
    a = crypten.cryptensor(torch.rand(4, 8) + 0.5, src=0)
    b = crypten.cryptensor(torch.rand(8, 4), src=1)
    (a.matmul(b) * a[:, :4]).softmax(-1).get_plain_text()
    (a.inv_sqrt() + a.sigmoid() + (a > 1.0)).get_plain_text()


def _ours_layer(role: Role, graph: Any, plan: Any, x: np.ndarray, meter: Any) -> dict[str, Any]:
    """The product path: the executor on the mpc backend, the Seeder sharing placeholders."""
    from secinfer.execute import Executor
    from secinfer.party import Seeder

    inputs = (torch.from_numpy(x) if role is Role.DATA_OWNER else torch.zeros(x.shape),)
    executor = Executor(graph, "mpc", plan, seeder=Seeder(role), meter=meter.snapshot)
    before = meter.snapshot()
    began = time.perf_counter()
    result = executor.run(inputs)
    seconds = time.perf_counter() - began
    cost = meter.snapshot() - before
    y = _reveal(result.outputs[0], role)
    nodes = [
        {"node": r.name, "op": r.op, "seconds": r.seconds, **r.cost.to_dict()}
        for r in result.records
        if r.cost is not None
    ]
    return {
        "seconds": seconds,
        "traffic": cost.to_dict(),
        "nodes": nodes,
        "y": y,
    }


def _crypten_layer(
    role: Role, x: np.ndarray, weights: dict[str, np.ndarray], heads: int, eps: float, meter: Any
) -> dict[str, Any]:
    """CrypTen's built-ins by hand, on the model owner's weights and the data owner's x."""
    stages: dict[str, dict[str, float]] = {}
    last = [meter.snapshot(), time.perf_counter()]

    def mark(stage: str) -> None:
        now, clock = meter.snapshot(), time.perf_counter()
        entry = stages.setdefault(stage, {"seconds": 0.0})
        entry["seconds"] += clock - last[1]
        for k, v in (now - last[0]).to_dict().items():
            entry[k] = entry.get(k, 0) + v
        last[:] = [now, clock]

    before = meter.snapshot()
    began = time.perf_counter()
    shared = {name: _share(value, Role.MODEL_OWNER, role) for name, value in weights.items()}
    secret_x = _share(x, Role.DATA_OWNER, role)
    mark("sharing")
    y = crypten_bert_layer(secret_x, shared, heads, eps, mark)
    seconds = time.perf_counter() - began
    cost = meter.snapshot() - before
    revealed = _reveal(y, role)
    return {
        "seconds": seconds,
        "traffic": cost.to_dict(),
        "stages": stages,
        "y": revealed,
    }


def layer_party(
    role: Role,
    full_archive: str,
    public_archive: str,
    plan: dict[str, Any],
    x: np.ndarray,
    weights: dict[str, np.ndarray],
    heads: int,
    eps: float,
    repeats: int = 2,
) -> dict[str, Any]:
    """Ours (the product's executor) and CrypTen's hand-written layer on the same inputs,
    `repeats` times each in the order A B B A A B ... (neither always goes first)."""
    from protocols.mpc.meter import Meter
    from secinfer.graph import build_graph
    from secinfer.plan import Plan

    _warm_up()
    # The data owner gets the public architecture only (floating-point weights zeroed).
    program = torch.export.load(full_archive if role is Role.MODEL_OWNER else public_archive)
    graph = build_graph(program)
    executor_plan = Plan.from_dict(plan)
    meter = Meter().install()
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "crypten": []}
    try:
        _protocol_warm_up()
        for i in range(repeats):
            order = ("ours", "crypten") if i % 2 == 0 else ("crypten", "ours")
            for which in order:
                if which == "ours":
                    runs["ours"].append(_ours_layer(role, graph, executor_plan, x, meter))
                else:
                    runs["crypten"].append(_crypten_layer(role, x, weights, heads, eps, meter))
    finally:
        meter.remove()
    return {**runs, "peak_rss_mb": _peak_rss_mb()}


# --- combining the two parties' counts -----------------------------------------------------
def combine(model_owner: dict[str, int], data_owner: dict[str, int]) -> dict[str, Any]:
    """One row's traffic from both parties' counters (see the module docstring)."""
    return {
        "rounds": max(model_owner["rounds"], data_owner["rounds"]),
        "mb_sent_per_party": max(model_owner["bytes_sent"], data_owner["bytes_sent"]) / MB,
        "mb_sent": {
            "model_owner": model_owner["bytes_sent"] / MB,
            "data_owner": data_owner["bytes_sent"] / MB,
        },
        "dealer_mb": sum(
            t["dealer_bytes_sent"] + t["dealer_bytes_received"] for t in (model_owner, data_owner)
        )
        / MB,
        "dealer_rounds": max(model_owner["dealer_rounds"], data_owner["dealer_rounds"]),
        # CrypTen's own `comm_bytes` counts an all-reduce of n bytes as 2n (sent plus
        # received): this is the figure in that convention
        "mb_sent_plus_received_per_party": max(
            t["bytes_sent"] + t["bytes_received"] for t in (model_owner, data_owner)
        )
        / MB,
    }


RATIO_KEYS = ("max_abs_error", "rounds", "mb_sent_per_party", "dealer_mb", "seconds")


def ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float | None]:
    return {
        k: (ours[k] / theirs[k] if theirs.get(k) and ours.get(k) is not None else None)
        for k in RATIO_KEYS
    }


# --- section 1: ops --------------------------------------------------------------------------
def op_section(
    quick: bool = False, seed: int = 0, selection: tuple[OpCase, ...] = OP_CASES
) -> dict[str, Any]:
    """Every case of `selection` (default: all) in one run of the three parties."""
    from protocols.mpc.local import run_local

    cases, inputs, labels = [], {}, {}
    for i, case in enumerate(selection):
        shape = QUICK_SHAPES[case.op] if quick else case.shape
        x = op_input(case.op, shape, seed + i)
        inputs[case.op] = x
        choice = plan_choice(case.op, op_input(case.op, shape, seed + 100 + i))
        params = {"eps": EPS, "choice": choice}
        if case.op == "softmax":
            from secinfer.kernels.mpc_nonlinear import softmax_exp_settings
            from secinfer.plan import Choice

            params["product_exp"] = list(softmax_exp_settings(Choice(**choice)))
        labels[case.op] = describe_choice(choice)
        cases.append(
            {"op": case.op, "x": x.numpy(), "variants": list(case.variants), "params": params}
        )
    began = time.perf_counter()
    parties = run_local(
        ops_party,
        cases,
        timeout=1200,
        peer_timeout=PEER_TIMEOUT,
        precision_bits=PRECISION_BITS,
    )
    wall = time.perf_counter() - began
    mo, do = parties[Role.MODEL_OWNER].value, parties[Role.DATA_OWNER].value
    rows = []
    for a, b in zip(mo["results"], do["results"], strict=True):
        x = inputs[a["op"]]
        error = (decoded(b["y"]) - exact(a["op"], x)).abs().max().item()
        rows.append(
            {
                "op": a["op"],
                "shape": list(x.shape),
                "variant": a["variant"],
                "implementation": VARIANTS[a["variant"]][0]
                + (f" ({labels[a['op']]})" if a["variant"].endswith(".product") else ""),
                "ours": not a["variant"].split(".")[1].startswith("crypten"),
                "max_abs_error": error,
                "crypten_decode_errors": crypten_decode_errors(b["y"]),
                "seconds": max(a["seconds"], b["seconds"]),
                **combine(a["traffic"], b["traffic"]),
            }
        )
    baselines = {c.op: c.baseline for c in selection}
    by_key = {(r["op"], r["variant"]): r for r in rows}
    for r in rows:
        base = by_key[(r["op"], baselines[r["op"]])]
        r["baseline"] = base["implementation"]
        r["is_baseline"] = r is base
        r["ratio_ours_over_crypten"] = ratios(r, base) if r["ours"] else None
    stats = input_stats(inputs)
    return {
        "rows": rows,
        "inputs": stats,
        "wall_seconds": wall,
        "peak_rss_mb": {"model_owner": mo["peak_rss_mb"], "data_owner": do["peak_rss_mb"]},
    }


def input_stats(inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    if "GELU" in inputs:
        x = inputs["GELU"]
        stats["GELU"] = {"std": float(x.std()), "min": float(x.min()), "max": float(x.max())}
    if "softmax" in inputs:
        x = inputs["softmax"]
        spread = x.amax(-1) - x.amin(-1)
        stats["softmax"] = {"max_row_spread": float(spread.max())}
    if "LayerNorm" in inputs:
        var = inputs["LayerNorm"].double().var(-1, unbiased=False)
        stats["LayerNorm"] = {"row_variance": [float(var.min()), float(var.max())]}
    return stats


# --- section 2: one encoder layer ------------------------------------------------------------
class EncoderLayer(torch.nn.Module):
    """A transformers BertLayer returning its hidden states only (batch 1, no mask)."""

    def __init__(self, size: LayerSize, seed: int) -> None:
        super().__init__()
        import transformers as T

        cfg = T.BertConfig(
            hidden_size=size.hidden,
            num_attention_heads=size.heads,
            intermediate_size=size.intermediate,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            attn_implementation="eager",
        )
        torch.manual_seed(seed)
        self.layer = T.models.bert.modeling_bert.BertLayer(cfg).eval()
        self.eps = float(cfg.layer_norm_eps)
        self.heads = size.heads
        gen = torch.Generator().manual_seed(seed)
        score_scale = math.sqrt(TARGET_SCORE_STD) / (INIT_STD * math.sqrt(size.hidden))
        gelu_scale = TARGET_GELU_STD / (INIT_STD * math.sqrt(size.hidden))
        with torch.no_grad():
            for name, p in self.layer.named_parameters():
                if "LayerNorm" in name:
                    base = 1.0 if name.endswith("weight") else 0.0
                    p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))
                elif name.endswith("bias"):
                    p.copy_(INIT_STD * torch.randn(p.shape, generator=gen))
                else:
                    std = INIT_STD
                    if ".query." in name or ".key." in name:
                        std *= score_scale
                    elif "intermediate." in name:
                        std *= gelu_scale
                    p.copy_(std * torch.randn(p.shape, generator=gen))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        out = self.layer(hidden_states)
        return out[0] if isinstance(out, tuple) else out


def layer_input(size: LayerSize, seed: int) -> torch.Tensor:
    """Hidden states as after an embedding LayerNorm: N(0, 1), batch 1."""
    return torch.randn(1, size.seq, size.hidden, generator=torch.Generator().manual_seed(seed))


def plain_seconds(module: torch.nn.Module, x: torch.Tensor, repeats: int = 5) -> float:
    """Median float32 forward time on one thread (each party also computes on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            module(x)
            times = []
            for _ in range(repeats):
                began = time.perf_counter()
                module(x)
                times.append(time.perf_counter() - began)
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times)


def layer_internals(module: EncoderLayer, x: torch.Tensor) -> dict[str, Any]:
    """Ranges inside the plain float64 layer (what the approximations face)."""
    seen: dict[str, torch.Tensor] = {}
    layer = module.layer
    hooks = [
        layer.intermediate.intermediate_act_fn.register_forward_hook(
            lambda m, i, o: seen.__setitem__("gelu", i[0])
        ),
        layer.attention.output.LayerNorm.register_forward_hook(
            lambda m, i, o: seen.__setitem__("ln1", i[0])
        ),
        layer.output.LayerNorm.register_forward_hook(lambda m, i, o: seen.__setitem__("ln2", i[0])),
    ]
    try:
        with torch.no_grad():
            module(x)
            attention = layer.attention.self
            b, s, h = x.shape
            d = h // module.heads

            def split(t: torch.Tensor) -> torch.Tensor:
                return t.view(b, s, module.heads, d).transpose(1, 2)

            q, k = split(attention.query(x)), split(attention.key(x))
            scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    finally:
        for hook in hooks:
            hook.remove()
    variances = torch.cat(
        [seen["ln1"].var(-1, unbiased=False), seen["ln2"].var(-1, unbiased=False)]
    )
    return {
        "gelu_input": {
            "std": float(seen["gelu"].std()),
            "max_abs": float(seen["gelu"].abs().max()),
        },
        "attention_scores": {
            "std": float(scores.std()),
            "max_row_spread": float((scores.amax(-1) - scores.amin(-1)).max()),
        },
        "layer_norm_variance": [float(variances.min()), float(variances.max())],
    }


def _summarise(
    runs_mo: list[dict], runs_do: list[dict], reference: torch.Tensor
) -> tuple[dict[str, Any], int]:
    """One implementation's row over its repeats: the largest error and the smallest
    cosine of any repeat, the fastest repeat's seconds (the slower party's), and traffic
    (the same in every repeat; checked). Also returns the fastest repeat's index."""
    errors, cosines, seconds, decode_errors = [], [], [], []
    for mo, do in zip(runs_mo, runs_do, strict=True):
        got = decoded(do["y"])
        decode_errors.append(crypten_decode_errors(do["y"]))
        errors.append((got - reference).abs().max().item())
        cosines.append(F.cosine_similarity(got.flatten(), reference.flatten(), dim=0).item())
        seconds.append(max(mo["seconds"], do["seconds"]))
    traffic = [
        combine(mo["traffic"], do["traffic"]) for mo, do in zip(runs_mo, runs_do, strict=True)
    ]
    fastest = int(np.argmin(seconds))
    return {
        "max_abs_error": max(errors),
        "cosine": min(cosines),
        "seconds": seconds[fastest],
        "seconds_each_repeat": seconds,
        "max_abs_error_each_repeat": errors,
        "traffic_same_every_repeat": all(t == traffic[0] for t in traffic),
        "crypten_decode_errors_each_repeat": decode_errors,
        **traffic[0],
    }, fastest


def by_category(nodes_mo: list[dict], nodes_do: list[dict]) -> dict[str, dict[str, float]]:
    """Our per-node costs summed per op category (matmul, softmax, layer_norm, gelu, other)."""
    out: dict[str, dict[str, float]] = {}
    for a, b in zip(nodes_mo, nodes_do, strict=True):
        entry = out.setdefault(
            OP_CATEGORY.get(a["op"], "other"),
            {"rounds": 0, "mb_sent_per_party": 0.0, "dealer_mb": 0.0, "seconds": 0.0},
        )
        row = combine(a, b)
        entry["rounds"] += row["rounds"]
        entry["mb_sent_per_party"] += row["mb_sent_per_party"]
        entry["dealer_mb"] += row["dealer_mb"]
        entry["seconds"] += max(a["seconds"], b["seconds"])
    return out


def crypten_categories(stages_mo: dict, stages_do: dict) -> dict[str, dict[str, float]]:
    out = {}
    for stage in stages_mo:
        a, b = stages_mo[stage], stages_do[stage]
        row = combine(a, b)
        out[stage] = {
            "rounds": row["rounds"],
            "mb_sent_per_party": row["mb_sent_per_party"],
            "dealer_mb": row["dealer_mb"],
            "seconds": max(a["seconds"], b["seconds"]),
        }
    return out


def top_nodes(nodes_mo: list[dict], nodes_do: list[dict], count: int = 6) -> list[dict]:
    rows = []
    for a, b in zip(nodes_mo, nodes_do, strict=True):
        row = combine(a, b)
        rows.append(
            {
                "node": a["node"],
                "op": a["op"],
                "rounds": row["rounds"],
                "mb_sent_per_party": row["mb_sent_per_party"],
                "seconds": max(a["seconds"], b["seconds"]),
            }
        )
    rows.sort(key=lambda r: -r["mb_sent_per_party"])
    return rows[:count]


def layer_run(size: LayerSize, seed: int = 0, repeats: int = 2) -> dict[str, Any]:
    """One size: ours, CrypTen built-ins and plain, on the same weights and input; the
    secure layers `repeats` times each, alternating which goes first."""
    from protocols.mpc.local import LocalRunError, run_local
    from secinfer import wire
    from secinfer.runner import prepare

    module = EncoderLayer(size, seed).eval()
    x = layer_input(size, seed + 1)
    sample = layer_input(size, seed + 2)  # the model owner's calibration sample
    with torch.no_grad():
        reference = copy.deepcopy(module).double()(x.double())
    record: dict[str, Any] = {
        "size": asdict(size),
        "parameters": sum(p.numel() for p in module.parameters()),
        "internals": layer_internals(copy.deepcopy(module).double(), x.double()),
        "plain_seconds": plain_seconds(module, x),
        "repeats": repeats,
    }
    program = torch.export.export(module, (sample,))
    _, plan = prepare(program, "mpc", [(sample,)], None)
    weights = {
        name: (p.detach().t().contiguous() if p.dim() == 2 else p.detach()).numpy()
        for name, p in module.layer.named_parameters()
    }
    with tempfile.TemporaryDirectory(prefix="secinfer-bench-") as tmp:
        full, public = Path(tmp) / "layer.pt2", Path(tmp) / "public.pt2"
        torch.export.save(program, full)
        public.write_bytes(wire.public_architecture(program))
        began = time.perf_counter()
        try:
            parties = run_local(
                layer_party,
                str(full),
                str(public),
                plan.to_dict(),
                x.numpy(),
                weights,
                size.heads,
                module.eps,
                repeats,
                timeout=1800,
                peer_timeout=PEER_TIMEOUT,
                precision_bits=PRECISION_BITS,
            )
        except LocalRunError as exc:
            record["error"] = f"did not run: {exc}"
            return record
        record["wall_seconds"] = time.perf_counter() - began
    mo, do = parties[Role.MODEL_OWNER].value, parties[Role.DATA_OWNER].value
    record["peak_rss_mb"] = {"model_owner": mo["peak_rss_mb"], "data_owner": do["peak_rss_mb"]}
    ours, i = _summarise(mo["ours"], do["ours"], reference)
    crypten, j = _summarise(mo["crypten"], do["crypten"], reference)
    record["ours"] = {**ours, "implementation": "ours: secinfer executor, mpc backend"}
    record["crypten"] = {**crypten, "implementation": "CrypTen built-ins by hand"}
    record["ratio_ours_over_crypten"] = ratios(ours, crypten)
    record["ours_by_op"] = by_category(mo["ours"][i]["nodes"], do["ours"][i]["nodes"])
    record["crypten_by_stage"] = crypten_categories(
        mo["crypten"][j]["stages"], do["crypten"][j]["stages"]
    )
    record["ours_top_nodes"] = top_nodes(mo["ours"][i]["nodes"], do["ours"][i]["nodes"])
    record["plan"] = {
        name: {"method": c.method, "interval": c.interval} for name, c in plan.choices.items()
    }
    return record


def layer_section(
    sizes: tuple[LayerSize, ...], seed: int = 0, repeats: int = 2
) -> list[dict[str, Any]]:
    return [layer_run(size, seed, repeats) for size in sizes]


# --- the whole section -----------------------------------------------------------------------
def code_state() -> dict[str, Any]:
    """The commit measured and the tracked files that differ from it (kernels change)."""
    import subprocess

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, check=False, timeout=30
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    modified = git("status", "--porcelain", "--untracked-files=no").splitlines()
    return {"commit": git("rev-parse", "HEAD") or None, "modified": [m[3:] for m in modified]}


def run(quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Both parts; `quick` uses tiny shapes (a check that everything runs, not a figure)."""
    began = time.perf_counter()
    ops = op_section(quick=quick, seed=seed)
    layers = layer_section((TINY_LAYER,) if quick else LAYER_SIZES, seed=seed)
    return {
        "quick": quick,
        "setting": {
            "parties": "model owner + data owner + dealer (CrypTen TTP), 3 local processes, "
            "1 torch thread each",
            "precision_bits": PRECISION_BITS,
            "mb": "10^6 bytes",
        },
        "ops": ops,
        "layers": layers,
        "published_elsewhere": list(PUBLISHED),
        "code": code_state(),
        "seconds": time.perf_counter() - began,
    }


# --- markdown --------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.2e}"
    return f"{value:.{digits}g}"


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|")


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}x"


def markdown(record: dict[str, Any]) -> str:
    ops, layers = record["ops"], record["layers"]
    lines = []
    if record.get("quick"):
        lines += [
            "_Quick run at tiny shapes: checks that everything runs; these are not the "
            "benchmark's figures._",
            "",
        ]
    lines += [
        "**Secure ops, ours vs CrypTen's built-ins** (one run: model owner, data owner and "
        "dealer as 3 processes, 16-bit fixed point, same inputs; error vs float64 torch; "
        "rounds and MB sent per computing party, dealer MB for both parties together; "
        "ratios ours / CrypTen's baseline row):",
        "",
        "| op | shape | implementation | max abs error | rounds | MB sent / party | dealer MB "
        "| seconds | error ratio | rounds ratio | MB ratio | dealer ratio | time ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ops["rows"]:
        q = r["ratio_ours_over_crypten"] or {}
        tag = " (baseline)" if r["is_baseline"] else ""
        lines.append(
            f"| {r['op']} | {'x'.join(map(str, r['shape']))} | {_cell(r['implementation'])}{tag} "
            f"| {_fmt(r['max_abs_error'])} | {r['rounds']} | {_fmt(r['mb_sent_per_party'])} "
            f"| {_fmt(r['dealer_mb'])} | {_fmt(r['seconds'])} | "
            + " | ".join(_ratio(q.get(k)) for k in RATIO_KEYS)
            + " |"
        )
    stats = ops["inputs"]
    parts = []
    if "GELU" in stats:
        g = stats["GELU"]
        parts.append(f"GELU std {g['std']:.2f}, range [{g['min']:.1f}, {g['max']:.1f}]")
    if "softmax" in stats:
        parts.append(f"scores: max row spread {stats['softmax']['max_row_spread']:.1f}")
    if "LayerNorm" in stats:
        lo, hi = stats["LayerNorm"]["row_variance"]
        parts.append(f"LayerNorm row variances [{lo:.2g}, {hi:.2g}]")
    lines += ["", "Inputs: " + "; ".join(parts) + "."]
    lines += [
        "",
        "**One encoder layer** (BertLayer, batch 1, random seeded weights scaled to trained-"
        "model ranges; ours = the secinfer executor on the mpc backend, weights shared by the "
        "model owner and the input by the data owner; CrypTen = the same layer by hand with "
        "its built-ins, GELU as x sigmoid(1.702x); plain = torch float32, one thread):",
        "",
        "| layer | implementation | max abs error | cosine | rounds | MB sent / party "
        "| dealer MB | seconds | error ratio | rounds ratio | MB ratio | dealer ratio "
        "| time ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for layer in layers:
        s = layer["size"]
        name = f"{s['name']} (h {s['hidden']}, ffn {s['intermediate']}, seq {s['seq']})"
        if "error" in layer:
            lines.append(f"| {name} | {layer['error']} |" + " |" * 11)
            continue
        q = layer["ratio_ours_over_crypten"]
        for key, ratio in (("ours", q), ("crypten", None)):
            r = layer[key]
            lines.append(
                f"| {name} | {r['implementation']} | {_fmt(r['max_abs_error'])} "
                f"| {r['cosine']:.5f} | {r['rounds']} | {_fmt(r['mb_sent_per_party'])} "
                f"| {_fmt(r['dealer_mb'])} | {_fmt(r['seconds'])} | "
                + " | ".join(_ratio(ratio.get(k)) if ratio else "-" for k in RATIO_KEYS)
                + " |"
            )
        lines.append(
            f"| {name} | plain torch float32 | - | - | - | - | - | {_fmt(layer['plain_seconds'])} "
            f"| - | - | - | - | - |"
        )
    lines += [
        "",
        "Rounds: calls in which a party waits for the other. MB: bytes one party sends, "
        "10^6 per MB; an all-reduce of n bytes counts n. CrypTen's own statistics "
        "(`comm_bytes`) count it as 2n, sent plus received; in that convention the rows "
        "above are: "
        + "; ".join(
            f"{layer['size']['name']} ours "
            f"{layer['ours']['mb_sent_plus_received_per_party']:.0f} MB, CrypTen "
            f"{layer['crypten']['mb_sent_plus_received_per_party']:.0f} MB"
            for layer in layers
            if "error" not in layer
        )
        + ".",
    ]
    decode = [
        f"{layer['size']['name']} ours {sum(layer['ours']['crypten_decode_errors_each_repeat'])}"
        f", CrypTen {sum(layer['crypten']['crypten_decode_errors_each_repeat'])}"
        for layer in layers
        if "error" not in layer
    ]
    op_decode = sum(r["crypten_decode_errors"] for r in ops["rows"])
    lines += [
        "",
        "Outputs are opened as ring integers and decoded exactly. CrypTen's own decode "
        "(`get_plain_text`) puts some negative values just above an integer exactly 1.0 too "
        "low (it divides negatives by 2^16 - 1); on this run's outputs it would have got "
        f"{op_decode} op output elements wrong and, over all repeats, these layer output "
        f"elements: {'; '.join(decode) or '-'}.",
    ]
    for layer in layers:
        if "error" in layer:
            continue
        s, i = layer["size"], layer["internals"]
        lo, hi = i["layer_norm_variance"]
        ours_ops = layer["ours_by_op"]
        total_mb = sum(e["mb_sent_per_party"] for e in ours_ops.values()) or 1.0
        total_rounds = sum(e["rounds"] for e in ours_ops.values()) or 1
        most_mb = max(ours_ops, key=lambda k: ours_ops[k]["mb_sent_per_party"])
        most_rounds = max(ours_ops, key=lambda k: ours_ops[k]["rounds"])
        lines += [
            "",
            f"{s['name']}, ours: {most_mb} has "
            f"{100 * ours_ops[most_mb]['mb_sent_per_party'] / total_mb:.0f} % of the bytes, "
            f"{most_rounds} {100 * ours_ops[most_rounds]['rounds'] / total_rounds:.0f} % of "
            f"the rounds. GELU inputs std {i['gelu_input']['std']:.2f} (max |x| "
            f"{i['gelu_input']['max_abs']:.1f}), attention scores std "
            f"{i['attention_scores']['std']:.2f} (max row spread "
            f"{i['attention_scores']['max_row_spread']:.1f}), LayerNorm variances "
            f"[{lo:.2g}, {hi:.2g}]; peak memory per party "
            f"{max(layer['peak_rss_mb'].values()):.0f} MB. Cost by op (rounds / MB sent per "
            "party / seconds), ours | CrypTen:",
            "",
            "| op | ours rounds | ours MB | ours s | CrypTen rounds | CrypTen MB | CrypTen s |",
            "|---|---|---|---|---|---|---|",
        ]
        ours, theirs = layer["ours_by_op"], layer["crypten_by_stage"]
        for op in ("matmul", "softmax", "layer_norm", "gelu", "other", "sharing"):
            a, b = ours.get(op), theirs.get(op)
            if a is None and b is None:
                continue
            cells = []
            for entry in (a, b):
                if entry is None:
                    cells += ["-", "-", "-"]
                else:
                    cells += [
                        str(int(entry["rounds"])),
                        _fmt(entry["mb_sent_per_party"]),
                        _fmt(entry["seconds"]),
                    ]
            lines.append(f"| {op} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "**Published / measured elsewhere** (NOT measured in this run; other set-ups, other "
        "networks; for orientation only, never compared by ratio with the rows above):",
        "",
        "| source | system | layer | MB per party, as reported | counting | rounds "
        "| max error | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    measured = {layer["size"]["name"]: layer for layer in layers if "error" not in layer}
    for p in record["published_elsewhere"]:
        counting = p["counting"] or "-"
        same = next((m for name, m in measured.items() if p["layer"].startswith(name)), None)
        if p["counting"] == _CRYPTEN_COUNT and same is not None:
            counting += (
                "; this run's CrypTen layer counted so: "
                f"{same['crypten']['mb_sent_plus_received_per_party']:.0f} MB"
            )
        lines.append(
            f"| {p['source']} | {p['system']} | {p['layer']} "
            f"| {_fmt(p['mb_per_party_as_reported'])} | {counting} "
            f"| {p['rounds'] or '-'} | {_fmt(p['max_error'])} | {_fmt(p['seconds'])} |"
        )
    code = record.get("code") or {}
    if code.get("commit"):
        changed = ", ".join(code.get("modified", [])) or "none"
        date = record.get("meta", {}).get("date", "")
        lines += [
            "",
            f"_Measured {date} on commit {code['commit'][:10]}; tracked files changed since: "
            f"{changed}._",
        ]
    return "\n".join(lines)


def _strip_arrays(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_arrays(v) for k, v in value.items() if k != "y"}
    if isinstance(value, list):
        return [_strip_arrays(v) for v in value]
    return value


def write(record: dict[str, Any], out_dir: Path) -> str:
    """Write `mpc.json` and `mpc.md` into `out_dir` (`mpc.quick.*` for a quick run, so that
    it never replaces real figures); return the markdown."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "mpc.quick" if record.get("quick") else "mpc"
    table = markdown(record)
    (out_dir / f"{stem}.json").write_text(json.dumps(_strip_arrays(record), indent=2))
    (out_dir / f"{stem}.md").write_text(table + "\n")
    return table


__all__ = [
    "LAYER_SIZES",
    "OP_CASES",
    "PUBLISHED",
    "EncoderLayer",
    "crypten_bert_layer",
    "crypten_layer_norm",
    "layer_run",
    "markdown",
    "op_section",
    "run",
    "write",
]
