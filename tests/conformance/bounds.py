"""The stated tolerances: how far each backend may be from `plain` on each case.

A bound is elementwise: |got - want| <= allowed, `want` the plain run of the same graph
on the same inputs (float32, as the exported program computes). Every term below is
stated before any run and is not fitted to what the backends measured.

Exact ops (shape, create, select, linear, arith; division by a public value and integer
powers included):
  approx  1e-6 of the output's largest magnitude: float64 against torch's float32, so
          about eight float32 rounding units of headroom.
  mpc     fixed point with 16 fractional bits. Inputs and weights lie on the grid (inputs
          on 2^-16, weights and constants on 2^-8), so encoding is exact; each
          truncation of a product adds at most 2 units of 2^-16 (each party truncates its
          share: one unit of rounding, one of carry), and an op with T sequential
          truncations may be off by 2T units, plus the ulps an op amplifies
          (`Case.mpc_gain`: x^3 multiplies the error of x^2 by |x|); plus 2^-22 of the
          summands' size for the float32 reference's own rounding (x @ y rounds at
          |x| @ |y|, `cases.magnitude`, not at its possibly cancelling result).
  he      CKKS at scale 2^40 (N = 8192, chain [60, 40, 40, 60]): 1e-5 of max(1, the
          output's largest magnitude), the tolerance the repository's HE tensor tests hold
          encrypted attention products to (two product levels, tests/test_he_keys.py).
          (A first per-op estimate of 1e-6 was too tight for products of two
          ciphertexts: q k^T measured 1.5e-6 of its magnitude; see the report.)

Nonlinear ops: the certified error of the approximation the plan chose (its `max_error`
on the plan's interval, from `approximations`, for the object the backend's kernel
evaluates), propagated to the op's output as `_nonlinear` states per function, plus
2^-22 |want| for the float32 reference's rounding (and 2^-22 |x| for GELU and the
saturating functions, whose float32 forms round intermediates of the input's size: GELU's
1 + erf(x / sqrt 2) cancels for negative x), plus:
  approx  nothing more (float64).
  mpc     the fixed-point part of the secure kernel, as `protocols.mpc` states it ("about"
          in a statement read as at most twice the figure): polynomial and piecewise forms
          (even GELU, tanh, sigmoid, erf, silu) 1e-3 absolute (the bound the mpc kernel
          tests hold every polynomial GELU to against its own plaintext form); the
          sign-exp GELU "about 2^n 2^-16 relative on the exponential" (n its squarings;
          the exponential term is relu(x) - GELU(x) in size) plus 1e-3; exp by n squarings
          2^(n+1) units of 2^-16 relative (each squaring doubles the base's relative
          error) plus 2 units absolute times the shift e^c; 1/x and 1/sqrt(x) the bounds
          the mpc kernel tests hold the range-normalised kernels to (tests/
          test_mpc_kernels.py: 2e-4 |want| + 4 units for 1/x, 5e-5 |want| + 4 units for
          1/sqrt x; `protocols.mpc.inverse`'s own "+-5.1e-5 / +-3.4e-6 relative, plus
          about 2 units absolutely" does not hold for results above 1, see the report);
          LayerNorm the mpc kernel tests' bound 1e-3 |want| + 2e-3 on variances 1e-3 ..
          1e3 (its rsqrt: 1.4e-5 relative, `protocols.mpc.layer_norm`).
A float32 LayerNorm reference is itself off by about 2^-24 of the row's largest input
divided by the row's deviation (a row of deviation 0.03 around 9: 1e-5 relative); its
bound adds 2^-20 of that ratio.
  he      1e-4 of max(1, the output's largest magnitude): polynomial evaluation with
          refreshes (CKKS's 2^-30 times the coefficients' magnitude and the levels used).
The he plan's forms sized by the calibrated interval (`secinfer.core.forms`: GELU, tanh,
sigmoid, erf, silu "chebyshev" and GELU "piecewise", softmax "exp_max", LayerNorm
"minimax_newton") are bounded by the very object the kernels evaluate, on approx and he
alike: the elementwise ones by their certified max error; softmax per weight by the form's
`weight_error` (E (1 + n w) (1 + rho) / (D_low - n E) + rho w: the exp's absolute error E,
the reciprocal's relative error rho, D_low the least denominator the row allows);
LayerNorm by the inverse square root's relative error times |want - bias| as above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F

import approximations as A
from approximations.iterative import ExpBySquaring, he_reciprocal
from secinfer.core.forms import form_for, sized_by_interval
from secinfer.core.plan import Choice, Plan
from secinfer.core.registry import REGISTRY

ULP = 2.0**-16
APPROX_EXACT = 1e-6
HE_EXACT = 1e-5
HE_NONLINEAR = 1e-4
MPC_POLYNOMIAL = 1e-3
MPC_RECIPROCAL = 2e-4
MPC_RSQRT = 5e-5
MPC_INVERSE_ULPS = 4
FLOAT32 = 2.0**-22
ELEMENTWISE = frozenset({"gelu", "tanh", "sigmoid", "erf", "silu"})


@dataclass
class Bound:
    """The elementwise allowance and where it comes from."""

    allowed: np.ndarray
    how: str


def function_of(case_op: str, variant: str) -> str | None:
    """The function a case's node approximates (None: an exact op)."""
    spec = REGISTRY[case_op]
    if spec.category == "nonlinear":
        return spec.function
    return {"-0.5": "rsqrt", "0.5": "sqrt", "-1": "reciprocal", "secret": "div"}.get(variant)


def exact(
    backend: str, want: np.ndarray, size: np.ndarray, truncations: int = 0, gain: float = 0.0
) -> Bound:
    """The bound of an exact op on `backend` (module docstring); `size` is the op on the
    absolute values (`cases.magnitude`), where the float32 reference rounds."""
    scale = float(np.max(np.abs(want), initial=0.0))
    if backend == "approx":
        return Bound(np.full(want.shape, APPROX_EXACT * scale), "1e-6 x max|want|")
    if backend == "mpc":
        ulps = 1 + 2 * truncations + gain
        return Bound(ULP * ulps + FLOAT32 * size, f"{ulps:g} x 2^-16 + 2^-22 |size|")
    return Bound(np.full(want.shape, HE_EXACT * max(1.0, scale)), "1e-5 x max(1, max|want|)")


# --- certified errors of the approximations -------------------------------------------------
@cache
def _saturated(function: str) -> float:
    """The catalog minimax's error inside its interval, the limit's error outside (largest
    at the interval's ends: each function approaches its limit monotonically there)."""
    entry = A.catalog[f"{function}.minimax"]
    lo, hi = entry.interval
    exact = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "erf": torch.erf, "silu": F.silu}
    ends = exact[function](torch.tensor([lo, hi], dtype=torch.float64))
    below = -1.0 if function in ("tanh", "erf") else 0.0
    above = hi if function == "silu" else 1.0
    tail = max(abs(float(ends[0]) - below), abs(float(ends[1]) - above))
    return max(float(entry.max_error), tail)


@cache
def _exp_error(squarings: int, cutoff: float | None, order: int, reach: float) -> float:
    """Certified absolute error of exp by squaring for z <= 0: on [-cutoff, 0] plus e^-cutoff
    below it, or on [-reach, 0] without a cut-off."""
    if cutoff is None:
        form = ExpBySquaring(squarings=squarings, interval=(-reach, 0.0), order=order)
        return float(form.max_error)
    form = ExpBySquaring(squarings=squarings, interval=(-cutoff, 0.0), cutoff=cutoff, order=order)
    return float(form.max_error) + math.exp(-cutoff)


def _interval(choice: Choice) -> tuple[float, float] | None:
    return tuple(choice.interval) if choice.interval else None  # type: ignore[return-value]


def _rsqrt_relative(choice: Choice, backend: str) -> float:
    """Relative error of 1/sqrt(x) as the backend's kernel computes it for this choice."""
    if backend == "mpc":
        return MPC_RSQRT
    if backend == "he":
        from secinfer.backends.he.kernels import rsqrt_for

        return float(rsqrt_for(_interval(choice)).max_error)
    if choice.method in ("poly", "polynomial") and choice.interval and choice.interval[0] > 0:
        from secinfer.backends.he.kernels import rsqrt_for  # the same fit, cached

        return float(rsqrt_for(_interval(choice)).max_error)
    return float(A.catalog["rsqrt.newton"].max_error)


def _reciprocal_relative(choice: Choice, backend: str) -> float:
    if backend == "mpc":
        return MPC_RECIPROCAL
    if backend == "he" or choice.method == "polynomial":
        lo, hi = _interval(choice) or (1e-4, 1e4)
        return float(he_reciprocal(lo, hi).max_error)
    return float(A.catalog[f"reciprocal.{choice.method}"].max_error)


def _softmax(x: np.ndarray, eps_exp: float, eps_rec: float, rec_ulps: float = 0.0) -> np.ndarray:
    """Softmax weights w = e_i / S from exps with absolute error eps_exp (the maximum's is
    exactly 1, so the approximate sum S' >= max(1, S - n eps_exp)) and a reciprocal of
    relative error eps_rec: |w' - w| <= eps_exp (1 + n w_i) / S' (1 + eps_rec) + eps_rec w_i."""
    z = x - x.max(-1, keepdims=True)
    e = np.exp(z)
    s = e.sum(-1, keepdims=True)
    w = e / s
    n = x.shape[-1]
    low = np.maximum(1.0, s - n * eps_exp)
    return eps_exp * (1 + n * w) / low * (1 + eps_rec) + eps_rec * w + rec_ulps * ULP


def _interval_form(
    function: str,
    choice: Choice,
    x: np.ndarray,
    want: np.ndarray,
    inputs: tuple[torch.Tensor, ...],
    noise: float,
) -> Bound:
    """The he plan's forms sized by the calibrated interval: the very object the kernels
    evaluate (`secinfer.core.forms.form_for`) and its certificate."""
    if function == "softmax":
        form = form_for(choice, x.shape[-1])
        allowed = form.weight_error(inputs[0].double(), -1).numpy()
        return Bound(allowed + noise, f"exp_max {form.mode}, cert {form.max_error:.3g}")
    form = form_for(choice)
    cert = float(form.max_error)
    return Bound(np.full(want.shape, cert + noise), f"{choice.method} cert {cert:.3g}")


def nonlinear(
    function: str,
    backend: str,
    plan: Plan,
    node: str,
    inputs: tuple[torch.Tensor, ...],
    want: np.ndarray,
    bias: np.ndarray | None = None,
) -> Bound:
    """The bound of a nonlinear node (module docstring): certified + the backend's part."""
    bound = _nonlinear(function, backend, plan, node, inputs, want, bias)
    rounding = FLOAT32 * np.abs(want)  # the float32 reference's own rounding
    if function in ELEMENTWISE:  # torch rounds intermediates of the input's size
        rounding = rounding + FLOAT32 * np.abs(inputs[0].double().numpy())
    bound.allowed = bound.allowed + rounding
    return bound


def _nonlinear(
    function: str,
    backend: str,
    plan: Plan,
    node: str,
    inputs: tuple[torch.Tensor, ...],
    want: np.ndarray,
    bias: np.ndarray | None,
) -> Bound:
    choice = plan.choices[node]
    x = inputs[0].double().numpy()
    scale = float(np.max(np.abs(want), initial=0.0))
    absolute = np.abs(want)
    noise = HE_NONLINEAR * max(1.0, scale) if backend == "he" else 0.0
    mpc = backend == "mpc"
    if sized_by_interval(choice) and function != "layer_norm":  # the he plan's forms
        return _interval_form(function, choice, x, want, inputs, noise)
    if function == "gelu":
        extra: np.ndarray | float = MPC_POLYNOMIAL if mpc else noise
        if choice.method in ("auto", "sign_exp", "tail"):
            from approximations.even_gelu import secure_gelu_form
            from approximations.sign_exp_gelu import SignExpGELU
            from secinfer.core.options import comparisons_of

            fss = comparisons_of(choice) == "fss"
            form = secure_gelu_form(choice.method, _interval(choice), fss)
            cert = float(form.max_error)
            if mpc and isinstance(form, SignExpGELU):
                term = np.abs(np.maximum(x, 0.0) - want)  # the exponential term's size
                extra = 2 * 2.0**form.squarings * ULP * term + MPC_POLYNOMIAL
        else:
            from secinfer.core.kernels.approx import gelu_approximation

            cert = float(gelu_approximation(choice.method, _interval(choice))[0].max_error)
        allowed = np.broadcast_to(cert + extra, want.shape)
        return Bound(allowed, f"{choice.method} cert {cert:.3g}")
    if function in ("tanh", "sigmoid", "erf", "silu"):
        cert = _saturated(function)
        extra = MPC_POLYNOMIAL if mpc else noise
        return Bound(np.full(want.shape, cert + extra), f"saturated minimax cert {cert:.3g}")
    if function == "exp":
        squarings, cutoff = int(choice.options["squarings"]), choice.options.get("cutoff")
        shift = max(0.0, math.ceil(choice.interval[1])) if choice.interval else 0.0
        cert = math.exp(shift) * _exp_error(squarings, cutoff, 1, 0.0)
        allowed = np.full(want.shape, cert)
        if mpc:
            allowed = allowed + 2.0 ** (squarings + 1) * ULP * absolute + 2 * ULP * math.exp(shift)
        return Bound(allowed + noise, f"exp by {squarings} squarings, shift {shift:g}")
    if function in ("softmax", "log_softmax"):
        squarings, cutoff = int(choice.options["squarings"]), choice.options.get("cutoff")
        order = int(choice.options.get("order", 1))
        reach = 2.0 ** (squarings + order - 1)
        eps_exp = _exp_error(squarings, cutoff, order, reach)
        if mpc:
            eps_exp += 2.0 ** (squarings + 1) * ULP
        if function == "log_softmax":
            e = np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)
            n = x.shape[-1]
            eps_log = float(A.catalog["log.normalised"].max_error)
            allowed = n * eps_exp / np.maximum(1.0, e - n * eps_exp) + eps_log
            return Bound(np.broadcast_to(allowed, want.shape) + noise, "log-sum-exp")
        name = choice.options.get("reciprocal", "goldschmidt")
        eps_rec = MPC_RECIPROCAL if mpc else float(A.catalog[f"reciprocal.{name}"].max_error)
        allowed = _softmax(x, eps_exp, eps_rec, MPC_INVERSE_ULPS if mpc else 0.0)
        return Bound(allowed + noise, f"exp eps {eps_exp:.3g}, reciprocal {eps_rec:.3g}")
    if function == "layer_norm":
        if mpc:
            allowed = 1e-3 * absolute + 2e-3
            return Bound(allowed, "mpc LayerNorm: 1e-3 |want| + 2e-3")
        from approximations.functions import rsqrt_approximation

        method = choice.method
        if sized_by_interval(choice):
            rel = float(form_for(choice).max_error)
        else:
            rel = float(rsqrt_approximation(method, _interval(choice)).max_error)
        shifted = absolute + (np.abs(bias).max() if bias is not None else 0.0)
        # torch's float32 LayerNorm itself: its mean and variance round at the scale of the
        # row's largest input, which the normalisation divides by the row's deviation
        centred = x - x.mean(-1, keepdims=True)
        ratio = np.abs(x).max(-1, keepdims=True) / np.sqrt(
            (centred**2).mean(-1, keepdims=True) + 1e-5
        )
        reference = 2.0**-20 * ratio * (shifted + 1.0)
        return Bound(rel * shifted + reference + noise, f"rsqrt {method} rel {rel:.3g}")
    if function == "log":
        cert = float(A.catalog["log.normalised"].max_error)
        return Bound(np.full(want.shape, cert + noise), f"log.normalised cert {cert:.3g}")
    if function in ("rsqrt", "sqrt"):
        rel = _rsqrt_relative(choice, backend)
        allowed = rel * absolute
        if mpc:
            allowed = allowed + MPC_INVERSE_ULPS * ULP * (np.abs(x) if function == "sqrt" else 1)
            allowed = allowed + 2 * ULP
        return Bound(allowed + noise, f"1/sqrt relative {rel:.3g}")
    if function in ("reciprocal", "div"):
        rel = _reciprocal_relative(choice, backend)
        allowed = rel * absolute
        if mpc:
            numerator = np.abs(x) if function == "div" else 1.0
            allowed = allowed + MPC_INVERSE_ULPS * ULP * numerator + 2 * ULP
        return Bound(allowed + noise, f"1/x relative {rel:.3g}")
    raise AssertionError(f"no bound for function {function}")
