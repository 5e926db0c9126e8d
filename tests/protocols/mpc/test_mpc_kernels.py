"""Secure nonlinear kernels (protocols.mpc) against plaintext float64 torch, with costs.

ONE run of the three real CrypTen parties (model owner, data owner, dealer; 16 fractional
bits) evaluates every kernel, and CrypTen's own built-ins on the same inputs, and reveals
the results to the data owner; references are computed here in float64 from the very
inputs the parties encode (rounded to the 2^-16 grid first, so the reference sees exactly
the shared values). Each kernel is metered on its own (bytes sent by the data owner to the
model owner, rounds: receives that wait on the other party).

Tolerances (max over all inputs):
  GELU puma_refit on [-12, 12]       abs <= 0.015 vs exact GELU; every method within
                                     1e-3 of its own plaintext approximation
  exp (cutoff 14) on [-40, 0] + far  abs <= 5e-3 vs exp (0 below the cutoff)
  1/x, 1/sqrt(x) on [1e-3, 1e3]      |err| <= 2e-4 |want| + 4 2^-16 (1/x),
                                     |err| <= 5e-5 |want| + 4 2^-16 (1/sqrt x)
  softmax 12x128x128, spread <= 30   abs <= 1e-2 vs exact softmax with causal / padding
                                     masks; <= 5e-3 vs the plaintext approximation
  power-softmax p = 4, eps = 1e-3     abs <= 1e-3 + 2^-15 / (the row's denominator)
  LayerNorm 128x384, var 1e-3..1e3   |err| <= 1e-3 |want| + 2e-3
Where a tolerance is claimed to be meaningful, the same check is shown to reject CrypTen's
built-in (or PUMA's published GELU), so these tests can fail. `test_report` bounds the
figures it prints: each of our kernels' error, bytes and rounds (`REPORT_BOUNDS`), and
CrypTen's built-ins no better than ours where the README's secure-ops table says ours are.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from approximations import Piecewise, Polynomial, Segment, catalog
from approximations.functions import power_softmax as plain_power_softmax
from approximations.functions import softmax as plain_softmax
from protocols.mpc.local import run_local
from protocols.mpc.reveal import reveal_to
from protocols.mpc.runtime import Role

SCALE = 2.0**16
ULP = 1.0 / SCALE
GELU_SHAPE = (128, 1536)
SCORES_SHAPE = (12, 128, 128)
LN_SHAPE = (128, 384)
LN_INTERVAL = (1e-3, 1e3)
LN_EPS = 1e-5
POWER_SCALE = 24.0  # public bound on |scores| for power-softmax
POWER_HEADS = [5, 11]  # a causal and a padded head


def _grid(a: np.ndarray) -> np.ndarray:
    """Round to the fixed-point grid: the reference then sees exactly what is shared."""
    return np.round(np.asarray(a, dtype=np.float64) * SCALE) / SCALE


def make_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2026)
    gelu = rng.normal(size=GELU_SHAPE) * 2.5
    gelu[:, :64] = np.linspace(-12.0, 12.0, GELU_SHAPE[0] * 64).reshape(GELU_SHAPE[0], 64)
    gelu = np.clip(gelu, -12.0, 12.0)
    spread = np.linspace(0.5, 4.0, SCORES_SHAPE[0])[:, None, None]
    scores = rng.normal(size=SCORES_SHAPE) * spread
    keys = rng.integers(0, SCORES_SHAPE[2], size=(SCORES_SHAPE[0], SCORES_SHAPE[1], 3))
    np.put_along_axis(scores, keys, rng.uniform(10.0, 22.0, size=keys.shape), axis=-1)
    scores = np.clip(scores, -8.0, 22.0)  # spread up to 30 within a row
    low = np.finfo(np.float32).min
    mask = np.zeros(SCORES_SHAPE)
    mask[:6] = np.triu(np.full(SCORES_SHAPE[1:], low), 1)  # causal heads
    mask[6:, :, -28:] = low  # padding: the last 28 keys
    variances = np.logspace(-3, 3, LN_SHAPE[0])
    ln = rng.normal(size=LN_SHAPE) * np.sqrt(variances)[:, None] + rng.normal(size=(128, 1)) * 3
    ln[::7, 5] += 6 * np.sqrt(variances[::7])  # trained-model outliers: one big feature
    return {
        "gelu": _grid(gelu),
        "unit": _grid(rng.uniform(-1.0, 1.0, 4096)),
        "wide": _grid(np.linspace(-4.0, 4.0, 4096)),
        "neg": _grid(
            np.concatenate(
                [np.linspace(-40.0, 0.0, 8001), [-1e4, -1e3, -600.0, -300.0, -257.0, -14.5]]
            )
        ),
        "pos": _grid(np.logspace(-3, 3, 2001)),
        "pos_high": _grid(np.logspace(0, 3, 1001)),
        "narrow": _grid(np.linspace(1.0, 1.9, 1001)),
        "scores": _grid(scores),
        "mask": mask,
        "ln": _grid(ln),
        "weight": _grid(1.0 + 0.1 * rng.normal(size=LN_SHAPE[1])),
        "bias": _grid(0.1 * rng.normal(size=LN_SHAPE[1])),
        "variance": _grid(variances + LN_EPS),
    }


def saturated_sigmoid() -> Piecewise:
    """0 below -8, the catalog's degree-13 minimax sigmoid on [-8, 8], 1 above: constant
    segments on both sides (they cost no product)."""
    inner = catalog["sigmoid.minimax"].approximation
    lo, hi = inner.interval
    return Piecewise(
        (
            Segment(-math.inf, lo, Polynomial.constant(0.0)),
            Segment(lo, hi, inner),
            Segment(hi, math.inf, Polynomial.constant(1.0)),
        ),
        (lo, hi),
    )


# --- the parties' program ---------------------------------------------------------------
def kernels(role: Role, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Every kernel on the data owner's inputs (and the model owner's LayerNorm weights).

    Returns, per kernel, (revealed values or None, traffic dict) on the data owner and
    the traffic dict on the model owner.
    """
    from protocols.mpc import compare, exp, inverse, layer_norm, piecewise, polynomial, softmax
    from protocols.mpc.crypten_setup import import_crypten
    from protocols.mpc.meter import Meter

    crypten = import_crypten()
    mine = role is Role.DATA_OWNER
    for name in ("gelu.puma", "gelu.puma_refit", "gelu.bolt", "gelu.quad", "sigmoid.minimax"):
        _ = catalog[name].approximation  # fit now, not inside a measurement
    inverse.initial_guess("reciprocal", 2)
    inverse.initial_guess("rsqrt", 4)

    def share(name: str, src: int = Role.DATA_OWNER) -> Any:
        value = torch.as_tensor(inputs[name])
        holder = mine if src == Role.DATA_OWNER else not mine
        return crypten.cryptensor(value if holder else torch.zeros_like(value), src=int(src))

    out: dict[str, Any] = {}

    def measure(name: str, fn: Callable[[], Any]) -> None:
        meter = Meter().install()
        began = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - began
        meter.remove()
        traffic = {**meter.traffic.to_dict(), "seconds": seconds}
        if isinstance(result, list):
            result = crypten.stack(result)
        plain = reveal_to(result, int(Role.DATA_OWNER))
        out[name] = (plain.numpy(), traffic) if mine else traffic

    unit, wide, neg, pos = share("unit"), share("wide"), share("neg"), share("pos")
    measure("mul", lambda: unit * unit)
    measure("compare", lambda: unit.ge(0))
    measure("powers6", lambda: polynomial.powers(unit, 6))
    measure("power6", lambda: polynomial.power(unit, 6))
    measure("power7", lambda: polynomial.power(unit, 7))
    measure("indicators", lambda: compare.indicators(unit, [-0.5, 0.0, 0.25]))
    measure("maximum", lambda: compare.maximum(unit.reshape(32, 128), -1))
    sextic = catalog["gelu.puma"].approximation.segments[2].polynomial.coefficients
    measure("poly_mapped", lambda: polynomial.evaluate_polynomial(wide, sextic, (-4.0, 4.0)))
    measure("poly_raw", lambda: polynomial.evaluate_polynomial(wide, sextic))

    gelu = share("gelu")
    for method in piecewise.GELU_METHODS:
        measure(f"gelu.{method}", lambda m=method: piecewise.gelu(gelu, m))
    measure("gelu.crypten", lambda: gelu * (gelu * 1.702).sigmoid())

    measure("exp", lambda: exp.exp_by_squaring(neg))
    measure("exp.crypten", lambda: neg.exp())
    measure("reciprocal", lambda: inverse.reciprocal(pos, (1e-3, 1e3)))
    # 2^shift / x must stay within the kernel's headroom (its docstring): up to 2^10 here
    pos_high = share("pos_high")
    measure("reciprocal.shift", lambda: inverse.reciprocal(pos_high, (1.0, 1e3), shift=10))
    measure("inv_sqrt", lambda: inverse.inv_sqrt(pos, (1e-3, 1e3)))
    narrow = share("narrow")
    measure("reciprocal.one_octave", lambda: inverse.reciprocal(narrow, (1.0, 1.9)))
    measure("sigmoid.saturated", lambda: piecewise.evaluate_piecewise(gelu, saturated_sigmoid()))
    measure("reciprocal.crypten", lambda: pos.reciprocal())
    measure("inv_sqrt.crypten", lambda: pos.inv_sqrt())

    scores, mask = share("scores"), torch.as_tensor(inputs["mask"])
    measure("softmax", lambda: softmax.softmax(scores, -1, mask=mask))
    measure("softmax.order2", lambda: softmax.softmax(scores, -1, mask=mask, squarings=7, order=2))
    measure("softmax.no_cutoff", lambda: softmax.softmax(scores, -1, mask=mask, cutoff=None))
    measure("softmax.crypten", lambda: (scores + mask.clamp(min=-200.0)).softmax(-1))
    measure("softmax.crypten_1e4", lambda: (scores[:1] + mask[:1].clamp(min=-1e4)).softmax(-1))
    measure("softmax.2quad", lambda: softmax.two_quad_softmax(scores, -1, 5.0, interval=(-8, 22)))
    measure("softmax.two_pass", lambda: softmax.two_pass_softmax(scores, -1))
    keep = (mask[POWER_HEADS] == 0).to(torch.long)
    for normalizer in ("sum", "mean"):
        measure(
            f"power_softmax.{normalizer}",
            lambda n=normalizer: softmax.power_softmax(
                scores[POWER_HEADS], -1, 4, n, 1e-3, scale=POWER_SCALE, mask=keep
            ),
        )

    ln, weight, bias = (
        share("ln"),
        share("weight", Role.MODEL_OWNER),
        share("bias", Role.MODEL_OWNER),
    )
    measure(
        "layer_norm",
        lambda: layer_norm.layer_norm(ln, LN_SHAPE[1], weight, bias, LN_EPS, LN_INTERVAL),
    )

    def crypten_layer_norm() -> Any:
        centred = ln - ln.mean(-1, keepdim=True)
        variance = centred.square().mean(-1, keepdim=True)
        return centred * (variance + LN_EPS).inv_sqrt() * weight + bias

    measure("layer_norm.crypten", crypten_layer_norm)
    variance = share("variance")
    measure("rsqrt_variance", lambda: inverse.inv_sqrt(variance, LN_INTERVAL))
    measure("rsqrt_variance.crypten", lambda: variance.inv_sqrt())
    return out


@pytest.fixture(scope="module")
def run() -> dict[str, Any]:
    inputs = make_inputs()
    began = time.perf_counter()
    parties = run_local(kernels, inputs, timeout=600.0)
    seconds = time.perf_counter() - began
    data = parties[Role.DATA_OWNER].value
    return {
        "inputs": inputs,
        "values": {k: v[0] for k, v in data.items()},
        "traffic": {k: v[1] for k, v in data.items()},
        "model_owner": parties[Role.MODEL_OWNER].value,
        "seconds": seconds,
    }


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def _max_abs(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.nanmax(np.abs(np.asarray(got) - np.asarray(want))))


def _within(got: np.ndarray, want: np.ndarray, rel: float, abs_: float) -> bool:
    err = np.abs(np.asarray(got) - want)
    return bool(np.all(np.isfinite(got)) and np.all(err <= rel * np.abs(want) + abs_))


# --- building blocks ----------------------------------------------------------------------
def test_powers_are_right_and_take_log_depth_rounds(run) -> None:
    x, values, traffic = run["inputs"]["unit"], run["values"], run["traffic"]
    want = np.stack([x**k for k in range(1, 7)])
    assert _max_abs(values["powers6"], want) < 1e-4
    assert _max_abs(values["power6"], x**6) < 1e-4
    assert _max_abs(values["power7"], x**7) < 1e-4
    mul = traffic["mul"]["rounds"]
    assert mul == 1
    assert traffic["powers6"]["rounds"] == 3 * mul  # ceil(log2 6) multiplication rounds
    assert traffic["power6"]["rounds"] == 3 * mul
    assert traffic["power7"]["rounds"] == 3 * mul
    # with the dealer, powers keeps every term's mask: x, x^2 and x^4 are opened once each
    # (8 bytes per element each); power's square-and-multiply opens 4 operands
    n = x.size
    assert traffic["powers6"]["bytes_sent"] == 3 * 8 * n
    assert traffic["power6"]["bytes_sent"] == 4 * 8 * n


def test_indicators_cost_the_rounds_of_one_comparison(run) -> None:
    x, values, traffic = run["inputs"]["unit"], run["values"], run["traffic"]
    want = np.stack([(x >= t).astype(float) for t in (-0.5, 0.0, 0.25)])
    assert np.array_equal(values["indicators"], want)
    one = traffic["compare"]
    assert traffic["indicators"]["rounds"] == one["rounds"]
    assert traffic["indicators"]["bytes_sent"] == 3 * one["bytes_sent"]


def test_tournament_maximum_is_exact(run) -> None:
    x = run["inputs"]["unit"].reshape(32, 128)
    assert np.array_equal(run["values"]["maximum"], x.max(-1))
    rounds = run["traffic"]["compare"]["rounds"] + run["traffic"]["mul"]["rounds"]
    assert run["traffic"]["maximum"]["rounds"] == 7 * rounds  # log2(128) levels


def test_mapping_to_the_unit_interval_keeps_fixed_point_error_small(run) -> None:
    x = run["inputs"]["wide"]
    sextic = catalog["gelu.puma"].approximation.segments[2].polynomial.coefficients
    want = np.polynomial.polynomial.polyval(x, sextic)
    mapped = _max_abs(run["values"]["poly_mapped"], want)
    raw = _max_abs(run["values"]["poly_raw"], want)
    assert mapped < 2e-3
    assert raw > 5 * mapped  # the raw power basis loses the small coefficients' bits


# --- GELU ---------------------------------------------------------------------------------
def test_gelu_methods_match_their_approximations_and_exact_gelu(run) -> None:
    x, values = run["inputs"]["gelu"], run["values"]
    exact = F.gelu(_t(x)).numpy()
    for method in ("puma", "puma_refit", "bolt", "quad"):
        approximation = catalog[f"gelu.{method}"].approximation
        plain = approximation(_t(x)).numpy()
        tol = 1e-3 if method != "quad" else 1e-3 * max(1.0, float(np.abs(plain).max()))
        assert _max_abs(values[f"gelu.{method}"], plain) < tol, method
        if method != "quad":
            assert _max_abs(values[f"gelu.{method}"], exact) < approximation.max_error + 2e-3
    assert _max_abs(values["gelu.puma_refit"], exact) <= 0.015
    # the check can fail: PUMA's published sextic and CrypTen's sigmoid form do not pass
    assert _max_abs(values["gelu.puma"], exact) > 0.015
    assert _max_abs(values["gelu.crypten"], exact) > 0.015


def test_gelu_beats_crypten_in_error_and_rounds(run) -> None:
    x, values, traffic = run["inputs"]["gelu"], run["values"], run["traffic"]
    exact = F.gelu(_t(x)).numpy()
    ours, theirs = traffic["gelu.puma_refit"], traffic["gelu.crypten"]
    assert _max_abs(values["gelu.puma_refit"], exact) < _max_abs(values["gelu.crypten"], exact)
    assert ours["rounds"] < theirs["rounds"]
    # one comparison + 3 rounds of powers (degree 6) + 1 selection product
    assert ours["rounds"] == traffic["compare"]["rounds"] + 4 * traffic["mul"]["rounds"]
    # Bytes do NOT favour us: 3 comparisons (216 B each per element) against CrypTen's one
    # comparison and ~12 products. Pin the measured cost so a regression shows up.
    n = x.size
    assert ours["bytes_sent"] == 720 * n  # 752 before terms kept their masks
    assert theirs["bytes_sent"] == 392 * n
    assert traffic["gelu.bolt"]["bytes_sent"] == 480 * n  # 496 before
    assert traffic["gelu.quad"]["bytes_sent"] == 8 * n


# --- exp, 1/x, 1/sqrt(x) ------------------------------------------------------------------
def test_exp_by_squaring_with_cutoff_is_right_far_below_zero(run) -> None:
    x, values = run["inputs"]["neg"], run["values"]
    want = np.where(x < -14.0, 0.0, np.exp(x))
    assert _max_abs(values["exp"], want) <= 5e-3
    far = x <= -257.0
    assert np.all(values["exp"][far] == 0.0)
    # CrypTen's exp is wrong below -256 (the base 1 + x/256 turns negative and overflows)
    assert _max_abs(values["exp.crypten"][far], np.exp(x[far])) > 1.0
    assert run["traffic"]["exp"]["rounds"] == (
        8 * run["traffic"]["mul"]["rounds"]
        + run["traffic"]["compare"]["rounds"]
        + run["traffic"]["mul"]["rounds"]
    )


def test_reciprocal_and_inverse_square_root_over_six_decades(run) -> None:
    x, values = run["inputs"]["pos"], run["values"]
    assert _within(values["reciprocal"], 1.0 / x, 2e-4, 4 * ULP)
    high = run["inputs"]["pos_high"]
    assert _within(values["reciprocal.shift"] / 2**10, 1.0 / high, 2e-4, 4 * ULP / 2**10)
    assert _within(values["inv_sqrt"], 1.0 / np.sqrt(x), 5e-5, 4 * ULP)
    # the same checks reject CrypTen's built-ins on this range
    assert not _within(values["reciprocal.crypten"], 1.0 / x, 2e-4, 4 * ULP)
    assert not _within(values["inv_sqrt.crypten"], 1.0 / np.sqrt(x), 5e-5, 4 * ULP)
    traffic, cmp_, mul = run["traffic"], run["traffic"]["compare"], run["traffic"]["mul"]
    # comparison + normalise + degree-2 polynomial + Newton (2) + scale back
    assert traffic["reciprocal"]["rounds"] == cmp_["rounds"] + 5 * mul["rounds"]
    # comparison + normalise + degree-4 polynomial (2) + Newton (2) + scale back
    assert traffic["inv_sqrt"]["rounds"] == cmp_["rounds"] + 6 * mul["rounds"]
    assert traffic["reciprocal"]["rounds"] < traffic["reciprocal.crypten"]["rounds"]
    assert traffic["inv_sqrt"]["rounds"] < traffic["inv_sqrt.crypten"]["rounds"]


def test_one_octave_reciprocal_needs_no_comparison(run) -> None:
    x, traffic = run["inputs"]["narrow"], run["traffic"]
    assert _within(run["values"]["reciprocal.one_octave"], 1.0 / x, 2e-4, 4 * ULP)
    assert traffic["reciprocal.one_octave"]["rounds"] == 4 * traffic["mul"]["rounds"]


def test_piecewise_with_constant_segments(run) -> None:
    x = run["inputs"]["gelu"]
    got = run["values"]["sigmoid.saturated"]
    assert _max_abs(got, saturated_sigmoid()(_t(x)).numpy()) < 1e-3  # fixed point alone
    assert _max_abs(got, torch.sigmoid(_t(x)).numpy()) < 2e-3
    # only the polynomial segment is multiplied: 216 B per breakpoint, terms of degree 13
    # with kept masks (levels open T1; T2; T3, T4; T5, T8: 8 + 8 + 16 + 16; 120 when every
    # level opened its operands) and one selection product
    assert run["traffic"]["sigmoid.saturated"]["bytes_sent"] == (2 * 216 + 48 + 16) * x.size


# --- softmax ------------------------------------------------------------------------------
def test_softmax_with_masks_and_wide_spreads(run) -> None:
    inputs, values = run["inputs"], run["values"]
    scores, mask = _t(inputs["scores"]), _t(inputs["mask"])
    kept = mask == 0
    spread = scores.masked_fill(~kept, -1e9).amax(-1) - scores.masked_fill(~kept, 1e9).amin(-1)
    assert float(spread.max()) > 25.0
    exact = torch.softmax(scores + mask, -1).numpy()
    keep = (mask == 0).double()
    plain = plain_softmax(scores, -1, "exp_limit", mask=keep, squarings=8, cutoff=14.0).numpy()
    got = values["softmax"]
    assert _max_abs(got, exact) <= 1e-2
    assert _max_abs(got, plain) <= 5e-3  # fixed point alone
    assert np.all(got[~kept.numpy()] == 0.0)  # masked: exactly 0
    assert _max_abs(got.sum(-1), 1.0) <= 1e-2
    assert _max_abs(values["softmax.no_cutoff"], exact) <= 1e-2  # spreads stay above -256
    assert _max_abs(values["softmax.order2"], exact) <= 3e-3  # same cost, bias removed
    # CrypTen's softmax: right with the mask clamped to -200, garbage with -1e4
    assert _max_abs(values["softmax.crypten"], exact) <= 1e-2
    assert _max_abs(values["softmax.crypten_1e4"], exact[:1]) > 1.0
    ours, theirs = run["traffic"]["softmax"], run["traffic"]["softmax.crypten"]
    assert ours["bytes_sent"] < theirs["bytes_sent"]
    assert ours["rounds"] < theirs["rounds"]


def test_power_softmax_matches_the_plaintext_form(run) -> None:
    """Fixed point holds each u^p to about 2^-16 absolutely, and the weights divide it by
    the row's denominator d (sum u^p + eps, or sum u^p + L eps), whose own rounding is the
    sum of the n kept entries' (random signs: about 0.7 sqrt(n) units of 2^-16 standard
    deviation, measured). Bound: 1e-3 + (4 + 4 w sqrt(n)) 2^-16 / d for a weight w: about
    5 standard deviations; the old 1e-3 + 2^-15 / d ignored the denominator's rounding and
    failed about once in 25 runs (measured: 7.6 units of d's error in a row of 100)."""
    inputs, values = run["inputs"], run["values"]
    scores = _t(inputs["scores"][POWER_HEADS]) / POWER_SCALE
    keep = (_t(inputs["mask"][POWER_HEADS]) == 0).double()
    total = (scores**4 * keep).sum(-1, keepdim=True).numpy()
    kept = keep.sum(-1, keepdim=True).numpy()
    for normalizer, eps_weight in (("sum", 1.0), ("mean", keep.sum(-1, keepdim=True).numpy())):
        want = plain_power_softmax(
            scores, -1, p=4, normalizer=normalizer, eps=1e-3, scale=False, mask=keep
        ).numpy()
        got = values[f"power_softmax.{normalizer}"]
        spread = 4 + 4 * np.abs(want) * np.sqrt(kept)
        bound = 1e-3 + spread * ULP / (total + 1e-3 * eps_weight)
        assert np.all(np.abs(got - want) <= bound), normalizer
        assert _max_abs(got, want) <= 2e-2


def test_two_quad_softmax_matches_mpcformer_s_form_at_a_fraction_of_the_cost(run) -> None:
    """MPCFormer's 2Quad on shares against `approximations.softmax(..., "2quad")` (exact
    reciprocal): within 1e-3 (fixed point and the reciprocal's 1e-4 relative); no max and
    no exp, so fewer rounds and bytes than our softmax on the same scores. Its distance
    from the real softmax is the model's business (distillation), not the kernel's."""
    from approximations.functions import softmax as plain_softmax

    scores = _t(run["inputs"]["scores"])
    want = plain_softmax(scores, -1, "2quad", c=5.0, reciprocal="exact").numpy()
    assert _max_abs(run["values"]["softmax.2quad"], want) <= 1e-3
    ours, quad = run["traffic"]["softmax"], run["traffic"]["softmax.2quad"]
    assert quad["rounds"] < ours["rounds"] and quad["bytes_sent"] < ours["bytes_sent"]


def test_two_pass_softmax_is_softmax_and_keeps_the_tournament(run) -> None:
    """Dukhan and Ablavatski's pairs on shares (unmasked scores) against the exact softmax:
    within 1e-3 (the mantissa's 2.8e-6 relative, fixed point, the reciprocal's 1e-4, weights
    below 2^-16 of the row's largest dropped). The verdict the README states: the pair
    representation keeps the row maximum's tournament (at least its rounds) and spends
    more bytes than our exp by squaring (17 comparisons per entry for 2^(n - N))."""
    scores = _t(run["inputs"]["scores"])
    want = torch.softmax(scores, -1).numpy()
    assert _max_abs(run["values"]["softmax.two_pass"], want) <= 1e-3
    ours, pairs = run["traffic"]["softmax"], run["traffic"]["softmax.two_pass"]
    tournament = math.ceil(math.log2(scores.shape[-1])) * 9
    assert pairs["rounds"] >= tournament
    assert pairs["bytes_sent"] > ours["bytes_sent"]


# --- LayerNorm ----------------------------------------------------------------------------
def test_layer_norm_over_six_decades_of_variance(run) -> None:
    inputs, values = run["inputs"], run["values"]
    want = F.layer_norm(
        _t(inputs["ln"]), (LN_SHAPE[1],), _t(inputs["weight"]), _t(inputs["bias"]), LN_EPS
    ).numpy()
    assert _within(values["layer_norm"], want, 1e-3, 2e-3)
    assert not _within(values["layer_norm.crypten"], want, 1e-3, 2e-3)
    var = inputs["variance"]
    rsqrt = 1.0 / np.sqrt(var)
    assert _within(values["rsqrt_variance"], rsqrt, 5e-5, 4 * ULP)
    ours, theirs = values["rsqrt_variance"], values["rsqrt_variance.crypten"]
    assert np.max(np.abs(ours / rsqrt - 1)) < np.max(np.abs(theirs / rsqrt - 1))
    traffic = run["traffic"]
    assert traffic["layer_norm"]["rounds"] < traffic["layer_norm.crypten"]["rounds"]
    # Bytes do NOT favour us for the inverse square root of 128 variances: 9 comparisons
    # (one per even octave of [1e-3, 1e3]) against CrypTen's 17 products; on the whole
    # LayerNorm the per-element products dominate and the gap is about 20 %.
    assert traffic["rsqrt_variance"]["bytes_sent"] > traffic["rsqrt_variance.crypten"]["bytes_sent"]
    assert traffic["layer_norm"]["bytes_sent"] < 1.3 * traffic["layer_norm.crypten"]["bytes_sent"]


# Bounds on each of our kernels in the report, on this file's inputs (GELU on [-12, 12],
# softmax rows spread up to 30 with causal and padding masks, LayerNorm and 1/sqrt(var)
# over variances 1e-3..1e3): max abs error against float64 torch, MB sent by the data owner
# (10^6 bytes), rounds. Measured at 16 bits over two runs (error / MB / rounds):
# puma_refit 7.6e-3 / 141.6 / 12, bolt 2.76e-2 / 94.4 / 11, softmax (order 1,
# 8 squarings, cut-off) 5.4e-3 to 5.5e-3 / 107.1 / 94, order 2 7.6e-4 to 8.8e-4 / 107.1 /
# 94, no cut-off 5.5e-3 to 5.6e-3 / 61.5 / 85, LayerNorm 1.1e-3 to 1.2e-3 / 0.95 / 19,
# 1/sqrt(var) 3.6e-4 to 5.2e-4 / 0.26 / 14. Error bounds: about 2x the worst measured
# where fixed-point noise dominates (the protocols' random truncation moves it from run to
# run), 4x for 1/sqrt(var) (its stated 5e-5 relative at 1/sqrt(1e-3) = 31.6, 1.6e-3,
# rounded up to 2e-3); the GELUs' error is their polynomial's own (0.0075, 0.0275) plus
# 2.5e-3. Bytes and rounds do not depend on the data: budgets are the measured cost
# rounded up by about 1 %.
REPORT_BOUNDS: dict[str, tuple[float, float, int]] = {
    "gelu.puma_refit": (1e-2, 143.0, 12),
    "gelu.bolt": (3e-2, 95.5, 11),
    "softmax": (1e-2, 108.5, 94),
    "softmax.order2": (2e-3, 108.5, 94),
    "softmax.no_cutoff": (1e-2, 62.5, 85),
    "layer_norm": (5e-3, 0.96, 19),
    "rsqrt_variance": (2e-3, 0.27, 14),
}
# CrypTen's built-in row -> our rows it must not beat, on what the README's secure-ops
# table says ours are better: GELU error (puma_refit) and rounds (puma_refit, bolt; its
# bytes are lower than ours), softmax error (order 2; order 1 is level with CrypTen's),
# rounds and bytes, LayerNorm error, rounds and bytes, 1/sqrt(var) error and rounds (its
# bytes are lower: 9 comparisons against 17 products, see the LayerNorm test).
NO_BETTER_THAN_OURS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "gelu.crypten": [
        ("gelu.puma_refit", ("error", "rounds")),
        ("gelu.bolt", ("rounds",)),
    ],
    "softmax.crypten": [
        ("softmax", ("rounds", "bytes")),
        ("softmax.order2", ("error", "rounds", "bytes")),
        ("softmax.no_cutoff", ("rounds", "bytes")),
    ],
    "layer_norm.crypten": [("layer_norm", ("error", "rounds", "bytes"))],
    "rsqrt_variance.crypten": [("rsqrt_variance", ("error", "rounds"))],
}


def test_report(run, capsys) -> None:
    """The figures (shown with pytest -s): max abs error against float64 torch, bytes sent
    by one party, rounds; then the checks on them. Each of our kernels stays within
    `REPORT_BOUNDS` (GELU puma_refit abs <= 1e-2 in <= 143 MB and 12 rounds, bolt
    <= 3e-2 in 95.5 MB and 11 rounds; softmax <= 1e-2 (order 1, with or without the
    cut-off) and <= 2e-3 (order 2), 108.5 MB / 94 rounds with the cut-off, 62.5 MB / 85
    without; LayerNorm <= 5e-3 in 0.96 MB and 19 rounds; 1/sqrt(var) <= 2e-3 in 0.27 MB
    and 14 rounds), and no CrypTen built-in is better than ours on an error, rounds or
    bytes figure the README's table claims for ours (`NO_BETTER_THAN_OURS`)."""
    inputs, values, traffic = run["inputs"], run["values"], run["traffic"]
    exact = {
        "gelu": F.gelu(_t(inputs["gelu"])).numpy(),
        "softmax": torch.softmax(_t(inputs["scores"]) + _t(inputs["mask"]), -1).numpy(),
        "layer_norm": F.layer_norm(
            _t(inputs["ln"]), (LN_SHAPE[1],), _t(inputs["weight"]), _t(inputs["bias"]), LN_EPS
        ).numpy(),
        "rsqrt_variance": 1.0 / np.sqrt(inputs["variance"]),
    }
    rows = [
        ("gelu", "gelu.puma_refit"),
        ("gelu", "gelu.bolt"),
        ("gelu", "gelu.crypten"),
        ("softmax", "softmax"),
        ("softmax", "softmax.order2"),
        ("softmax", "softmax.no_cutoff"),
        ("softmax", "softmax.crypten"),
        ("layer_norm", "layer_norm"),
        ("layer_norm", "layer_norm.crypten"),
        ("rsqrt_variance", "rsqrt_variance"),
        ("rsqrt_variance", "rsqrt_variance.crypten"),
    ]
    figures: dict[str, dict[str, float]] = {}
    for ref, name in rows:
        t = traffic[name]
        error = float(np.max(np.abs(np.asarray(values[name]) - exact[ref])))  # NaN stays NaN
        figures[name] = {"error": error, "bytes": t["bytes_sent"], "rounds": t["rounds"]}
    with capsys.disabled():
        print(f"\nkernels run: {run['seconds']:.1f} s (three processes, including start-up)")
        for _, name in rows:
            t, dealer, f = traffic[name], run["model_owner"][name], figures[name]
            bound = REPORT_BOUNDS.get(name)
            limits = f"  [bounds {bound[0]:.0e}, {bound[1]} MB, {bound[2]} rounds]" if bound else ""
            print(
                f"{name:24s} max abs err {f['error']:10.3g}  sent {t['bytes_sent'] / 1e6:8.2f} MB  "
                f"rounds {t['rounds']:4d}  {t['seconds']:6.2f} s  (model owner from dealer "
                f"{dealer['dealer_bytes_received'] / 1e6:.2f} MB, {dealer['dealer_rounds']} rounds)"
                f"{limits}"
            )
    failures = []
    for name, (max_error, megabytes, rounds) in REPORT_BOUNDS.items():
        f = figures[name]
        if not f["error"] <= max_error:  # a NaN fails too
            failures.append(f"{name}: max abs error {f['error']:.3g} > {max_error:g}")
        if f["bytes"] > megabytes * 1e6:
            failures.append(f"{name}: {f['bytes'] / 1e6:.2f} MB sent > {megabytes} MB")
        if f["rounds"] > rounds:
            failures.append(f"{name}: {f['rounds']} rounds > {rounds}")
    for builtin, ours in NO_BETTER_THAN_OURS.items():
        for name, claims in ours:
            for claim in claims:
                if figures[builtin][claim] < figures[name][claim]:
                    failures.append(
                        f"{builtin} {claim} {figures[builtin][claim]:.4g} beats {name}'s "
                        f"{figures[name][claim]:.4g}"
                    )
    assert not failures, "\n".join(failures)
