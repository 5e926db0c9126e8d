"""The pieces a calibrated HE conversion is made of: GELU fitted on a calibrated [-B, B],
power-softmax with a constant scale, the polynomial rsqrt shared across scaled intervals,
and Chebyshev series in logarithmic depth (`approximations.lowdepth`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from approximations import coefficients as coef
from approximations import functions, lowdepth
from approximations.errors import ApproximationError
from approximations.iterative import InverseSqrt
from approximations.modules import PolyGELU, PowerSoftmax


# --- lowdepth -------------------------------------------------------------------------------
@pytest.mark.parametrize("degree", [1, 2, 3, 7, 8, 9, 20, 27, 33, 54, 64])
def test_low_depth_evaluation_equals_clenshaw(degree: int) -> None:
    rng = np.random.default_rng(degree)
    chebyshev = rng.normal(size=degree + 1) / (1.0 + np.arange(degree + 1))
    x = torch.linspace(-3.0, 5.0, 2001, dtype=torch.float64)
    want = coef.evaluate(chebyshev, (-3.0, 5.0), x)
    got = lowdepth.evaluate_chebyshev(chebyshev, (-3.0, 5.0), x)
    assert float((got - want).abs().max()) <= 1e-13 * (1.0 + float(want.abs().max()))


@pytest.mark.parametrize("degree", [1, 2, 3, 5, 7, 8, 15, 16, 27, 31, 54, 63, 64])
def test_low_depth_is_logarithmic(degree: int) -> None:
    """Clenshaw needs `degree` products in sequence; the baby/giant schedule at most two
    more than ceil(log2(d + 1)) (the affine map included)."""
    assert lowdepth.depth(degree) <= math.ceil(math.log2(degree + 1)) + 2


def test_low_depth_keeps_gradients() -> None:
    q = functions.gelu_minimax_on(8.0)  # on s in [0, 64]
    s = torch.linspace(0.0, 64.0, 101, dtype=torch.float64, requires_grad=True)
    lowdepth.evaluate(q, s).sum().backward()
    reference = s.detach().clone().requires_grad_()
    q(reference).sum().backward()
    assert s.grad is not None and reference.grad is not None
    assert torch.allclose(s.grad, reference.grad, rtol=1e-9, atol=1e-12)


# --- GELU fitted on a calibrated interval ---------------------------------------------------
@pytest.mark.parametrize("bound", [4.0, 8.0, 19.03, 32.0])
def test_gelu_fit_meets_its_target_and_its_certificate(bound: float) -> None:
    """Error at most 1e-3 B (the target), certified: a dense check never exceeds it."""
    q = functions.gelu_minimax_on(bound)
    assert q.max_error is not None and q.max_error <= functions.GELU_RELATIVE_TARGET * bound
    x = torch.linspace(-bound, bound, 200_001, dtype=torch.float64)
    error = (functions.even_gelu_form(x, q) - F.gelu(x)).abs().max()
    assert float(error) <= q.max_error * (1 + 1e-6) + 1e-12


def test_gelu_fit_degree_grows_with_the_bound_and_diverges_outside() -> None:
    degrees = [functions.gelu_minimax_on(b).degree for b in (4.0, 8.0, 19.03, 32.0)]
    assert degrees == sorted(degrees) and degrees[0] < degrees[-1]
    q = functions.gelu_minimax_on(8.0)
    outside = torch.tensor([12.0], dtype=torch.float64)
    assert float((functions.even_gelu_form(outside, q) - F.gelu(outside)).abs()) > 1.0


def test_poly_gelu_interval_is_made_symmetric_and_reported() -> None:
    module = PolyGELU("minimax", interval=(-3.0, 5.0))
    assert module.interval == (-5.0, 5.0)
    assert module.max_error == functions.gelu_minimax_on(5.0).max_error
    text = repr(module)
    assert "interval=(-5, 5)" in text and "degree=" in text and "max_error=" in text
    x = torch.linspace(-5.0, 5.0, 1001)
    assert float((module(x) - F.gelu(x)).abs().max()) <= module.max_error + 1e-6
    assert PolyGELU("minimax").interval is None  # the catalog's [-8, 8] polynomial


@pytest.mark.parametrize(
    ("method", "interval", "message"),
    [
        ("puma", (-4.0, 4.0), "only GELU method 'minimax'"),
        ("minimax", (2.0, 1.0), "lo < hi"),
        ("minimax", (0.0, math.inf), "finite"),
        ("minimax", "wide", "(lo, hi)"),
    ],
)
def test_poly_gelu_bad_intervals(method: str, interval: object, message: str) -> None:
    with pytest.raises(ApproximationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PolyGELU(method, interval=interval)  # type: ignore[arg-type]


# --- power-softmax with a constant scale ----------------------------------------------------
@given(
    rows=st.integers(1, 4),
    length=st.integers(1, 9),
    p=st.sampled_from([2, 4, 6]),
    normalizer=st.sampled_from(["sum", "mean"]),
    seed=st.integers(0, 2**16),
)
def test_constant_scale_bounds_the_normaliser(
    rows: int, length: int, p: int, normalizer: str, seed: int
) -> None:
    """For |x| <= c every (x / c)^p <= 1: mean + eps lies in [eps, 1 + eps] (sum + eps in
    [eps, L + eps]) whatever the scores; the weights are power-softmax of x / c."""
    generator = torch.Generator().manual_seed(seed)
    c, eps = 40.0, 1e-3
    x = (torch.rand(rows, length, generator=generator, dtype=torch.float64) * 2 - 1) * c
    module = PowerSoftmax(p=p, normalizer=normalizer, eps=eps, scale=c)
    normaliser = module.normaliser(x)
    top = 1.0 if normalizer == "mean" else float(length)
    assert float(normaliser.min()) >= eps and float(normaliser.max()) <= top + eps
    expected = functions.power_softmax(x / c, p=p, normalizer=normalizer, eps=eps, scale=False)
    assert torch.allclose(module(x), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("scale", [True, False, 7.5])
@pytest.mark.parametrize("normalizer", ["sum", "mean"])
def test_no_mask_equals_an_all_ones_mask(scale: bool | float, normalizer: str) -> None:
    """Without a mask nothing is multiplied by ones (a product less under HE): the same
    weights as with a mask keeping everything."""
    x = torch.randn(3, 2, 5, dtype=torch.float64) * 6
    kwargs = {"p": 4, "normalizer": normalizer, "eps": 1e-3, "scale": scale}
    plain = functions.power_softmax(x, **kwargs)
    masked = functions.power_softmax(x, mask=torch.ones(3, 1, 5), **kwargs)
    assert torch.allclose(plain, masked, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("scale", [0.0, -2.0, math.nan, math.inf, "4"])
def test_bad_constant_scale(scale: object) -> None:
    with pytest.raises(ApproximationError, match="positive constant"):
        PowerSoftmax(scale=scale)  # type: ignore[arg-type]


def test_power_softmax_repr_shows_a_constant_scale_and_interval() -> None:
    assert "scale" not in repr(PowerSoftmax())  # the default row maximum, as before
    text = repr(PowerSoftmax(scale=72.3, interval=(1e-3, 0.6)))
    assert "scale=72.3" in text and "interval=(0.001, 0.6)" in text


# --- polynomial rsqrt on calibrated (power-of-two) intervals --------------------------------
def test_rsqrt_search_is_shared_by_intervals_four_times_apart() -> None:
    """[0.5, 8] = [2, 32] / 4: the same configuration as searching [0.5, 8] itself, the same
    relative error; a non-power-of-two interval is searched as given."""
    shared = functions.rsqrt_approximation("poly", (0.5, 8.0))
    direct = InverseSqrt.polynomial_only((0.5, 8.0))
    assert shared is not None
    assert (shared.initial_degree, shared.iterations, shared.guess_scale) == (
        direct.initial_degree,
        direct.iterations,
        direct.guess_scale,
    )
    assert shared.interval == (0.5, 8.0)
    assert shared.max_error == pytest.approx(direct.max_error, rel=1e-6)
    v = torch.logspace(math.log10(0.5), math.log10(8.0), 501, dtype=torch.float64)
    assert float(((shared(v) - torch.rsqrt(v)) / torch.rsqrt(v)).abs().max()) <= 1e-3


def test_layer_norm_poly_rsqrt_holds_on_its_interval() -> None:
    """The low-depth guess changes nothing: LayerNorm with rsqrt 'poly' within the rsqrt's
    relative error of the exact one for variances inside the interval."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 16, dtype=torch.float64, generator=generator)
    x = (x - x.mean(-1, keepdim=True)) / x.std(-1, unbiased=False, keepdim=True)
    spread = torch.logspace(math.log10(0.3), math.log10(100.0), 24, dtype=torch.float64)
    x = x * spread.sqrt().view(4, 6, 1)  # row variances 0.3 .. 100, inside the interval
    interval = (0.25, 128.0)
    variances = x.var(-1, unbiased=False) + 1e-5
    assert interval[0] <= float(variances.min()) and float(variances.max()) <= interval[1]
    exact = functions.layer_norm(x, 16, eps=1e-5)
    poly = functions.layer_norm(x, 16, eps=1e-5, rsqrt="poly", interval=interval)
    approx = functions.rsqrt_approximation("poly", interval)
    assert approx is not None
    assert float((poly - exact).abs().max()) <= approx.max_error * float(exact.abs().max()) * 1.01
