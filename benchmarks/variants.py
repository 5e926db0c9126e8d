"""The implementations compared in the op section (`VARIANTS`, run inside the parties):
the product's kernel with the plan's choice, our other kernels, and CrypTen's built-ins;
and the plan's choice for an op, calibrated as for a node of a real model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.cases import EPS
from benchmarks.crypten_baselines import (
    crypten_gelu,
    crypten_gelu_erf,
    crypten_layer_norm,
)

PRODUCT_TARGETS = {
    "gelu": torch.ops.aten.gelu.default,
    "softmax": torch.ops.aten.softmax.int,
    "layer_norm": torch.ops.aten.layer_norm.default,
}


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
    the measured input): the op exported alone and planned by
    `secinfer.core.prepare.prepare` for the mpc backend, as any model's node would be."""
    from secinfer.backends import load
    from secinfer.core.prepare import prepare

    load("mpc")  # the mpc kernels registered, as in the mpc parties
    program = torch.export.export(_OpModule(op), (sample,))
    _, plan = prepare(program, "mpc", [(sample,)], None)
    (choice,) = plan.choices.values()
    return asdict(choice)


def describe_choice(choice: dict[str, Any]) -> str:
    """What the plan's default resolves to (for the table's label)."""
    from secinfer.backends.mpc.kernels import nonlinear as mpc_nonlinear
    from secinfer.core.options import comparisons_of
    from secinfer.core.plan import Choice

    c = Choice(**choice)
    lo, hi = c.interval
    fss = comparisons_of(c) == "fss"
    how = "FSS comparisons, keys dealt in the call" if fss else "CrypTen's comparisons"
    where = f"calibrated [{lo:.3g}, {hi:.3g}]; {how}"
    if c.function == "gelu" and c.method in ("auto", "sign_exp"):
        form = mpc_nonlinear.gelu_form(c)
        if hasattr(form, "clip"):
            shape = (
                f"tail: relu(x) - p(min(|x|, {form.clip:g})), 3 comparisons, degree "
                f"{form.poly.degree}"
            )
        elif hasattr(form, "squarings"):
            shape = (
                f"sign_exp: 1 comparison, exp by {form.squarings} squarings, "
                f"abs(x) <= {form.bound:g}"
            )
        else:
            shape = f"even polynomial x/2 + q(x^2), no comparison, degree {form.degree}"
        return f"{c.method} -> {shape}; {where}"
    if c.function == "softmax" and c.method == "exp_limit":
        squarings, cutoff, order = mpc_nonlinear.softmax_exp_settings(c)
        cut = "no cut-off" if cutoff is None else f"cut-off {cutoff:g}"
        return f"exp_limit, order {order}, {squarings} squarings, {cut}; {where}"
    return f"{c.method}; {where}"


def _gelu_ours(method: str) -> Callable[[Any, dict], Any]:
    def run(x: Any, params: dict) -> Any:
        from protocols.mpc.piecewise import gelu

        return gelu(x, method)

    return run


def _product_kernel(x: Any, params: dict) -> Any:
    """The mpc backend's kernel for the op, with the plan's choice for the calibrated input:
    exactly what the executor calls for such a node."""
    import secinfer.core.kernels  # noqa: F401 - registers the kernels
    from secinfer import backends
    from secinfer.core.plan import Choice
    from secinfer.core.registry import Call, lookup

    backends.load("mpc")  # in a party process: the mpc kernels register on import
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


def _two_quad(x: Any, params: dict) -> Any:
    """The mpc backend's kernel for a softmax node planned as MPCFormer's 2Quad, on the
    same calibrated interval as the plan's default."""
    quad = {**params["choice"], "method": "2quad", "options": {}}
    return _product_kernel(x, {**params, "choice": quad})


def _two_pass(x: Any, params: dict) -> Any:
    """Dukhan and Ablavatski's pairs: exp as m 2^n, the exponents' maximum by the
    tournament, 2^(n - N) from one stacked comparison (`protocols.mpc.softmax`)."""
    from protocols.mpc.softmax import two_pass_softmax

    return two_pass_softmax(x, -1)


def _comparisons(which: str) -> Callable[[Any, dict], Any]:
    """The product's kernel with the node's comparisons set to `which` (the plan option
    `comparisons`, as `--config` sets it): "fss" (the dealer's FSS keys; GELU "auto" is
    then the tail form) or "crypten"."""

    def run(x: Any, params: dict) -> Any:
        choice = params["choice"]
        options = {**choice.get("options", {}), "comparisons": which}
        return _product_kernel(x, {**params, "choice": {**choice, "options": options}})

    return run


def _softmax_order1(x: Any, params: dict) -> Any:
    """PUMA's base 1 + u with one more squaring than the default's order-2 base: same cost."""
    from protocols.mpc.softmax import softmax

    squarings, cutoff, order = params["product_exp"]
    return softmax(x, -1, squarings=squarings + order - 1, cutoff=cutoff, order=1)


# key -> (label, fn(secret x, params))
VARIANTS: dict[str, tuple[str, Callable[[Any, dict], Any]]] = {
    "gelu.product": ("ours: the plan's default", _product_kernel),
    "gelu.puma_refit": ("ours: piecewise puma_refit", _gelu_ours("puma_refit")),
    "gelu.bolt": ("ours: piecewise bolt", _gelu_ours("bolt")),
    "gelu.comparisons_crypten": (
        "ours: the plan with CrypTen's comparisons (--config comparisons crypten)",
        _comparisons("crypten"),
    ),
    "gelu.crypten_sigmoid": ("CrypTen: x * (1.702x).sigmoid()", lambda x, p: crypten_gelu(x)),
    "gelu.crypten_erf": (
        "CrypTen: 0.5x (1 + (x/sqrt2).erf())",
        lambda x, p: crypten_gelu_erf(x),
    ),
    "softmax.product": ("ours: the plan's default", _product_kernel),
    "softmax.order1": (
        "ours: the same with PUMA's order-1 base and one more squaring (same cost)",
        _softmax_order1,
    ),
    "softmax.2quad": (
        "MPCFormer's 2Quad: (x + 5)^2 normalised (not softmax: needs distillation)",
        _two_quad,
    ),
    "softmax.two_pass": (
        "Two-Pass (Dukhan-Ablavatski): exp as m 2^n, max over the exponents n",
        _two_pass,
    ),
    "softmax.comparisons_crypten": (
        "ours: the plan with CrypTen's comparisons (--config comparisons crypten)",
        _comparisons("crypten"),
    ),
    "softmax.crypten": ("CrypTen: x.softmax(-1)", lambda x, p: x.softmax(-1)),
    "layer_norm.product": ("ours: the plan's default", _product_kernel),
    "layer_norm.crypten": (
        "CrypTen: mean, var, (var + eps).inv_sqrt()",
        lambda x, p: crypten_layer_norm(x, None, None, p["eps"]),
    ),
}

__all__ = ["PRODUCT_TARGETS", "VARIANTS", "describe_choice", "plan_choice"]
