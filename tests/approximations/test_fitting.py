"""`approximations.fit`: Remez equioscillates, beats interpolation, and its error is certified."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import approximations
from approximations import ApproximationError, Polynomial, fit
from approximations.coefficients import depth, paterson_stockmeyer_multiplications

EQUIOSCILLATION_TOLERANCE = 0.01  # the extrema's |error| equal within 1 % of the largest


def assert_equioscillates(poly: Polynomial, fn) -> None:
    errors = poly.equioscillation(fn)
    assert errors.size == poly.degree + 2 or errors.size == len(poly.extrema)
    assert len(poly.extrema) >= poly.degree + 2
    signs = np.sign(errors)
    assert np.all(signs[1:] == -signs[:-1]), f"extrema do not alternate: {errors}"
    mags = np.abs(errors)
    assert mags.min() >= (1 - EQUIOSCILLATION_TOLERANCE) * mags.max(), errors
    # ... and the levelled error is the certified max error.
    assert math.isclose(mags.max(), poly.max_error, rel_tol=EQUIOSCILLATION_TOLERANCE)


def independent_max_error(poly: Polynomial, fn, n: int = 50_000, seed: int = 1) -> float:
    a, b = poly.interval
    gen = torch.Generator().manual_seed(seed)
    x = a + (b - a) * torch.rand(n, dtype=torch.float64, generator=gen)
    x = torch.cat([x, torch.tensor([a, b], dtype=torch.float64)])
    err = (poly(x) - fn(x)).abs()
    if poly.error_kind == "relative":
        err = err / fn(x).abs()
    return float(err.max())


def test_remez_exp_degree8_equioscillates_and_beats_chebyshev() -> None:
    remez = fit(torch.exp, (-8.0, 0.0), 8, "remez")
    cheb = fit(torch.exp, (-8.0, 0.0), 8, "chebyshev")
    lstsq = fit(torch.exp, (-8.0, 0.0), 8, "lstsq")
    assert remez.degree == 8 and len(remez.extrema) == 10
    assert_equioscillates(remez, torch.exp)
    assert remez.max_error < cheb.max_error < lstsq.max_error
    # The minimax error of exp on [-8, 0] at degree 8 (measured: 7.95e-05).
    assert 7.0e-5 < remez.max_error < 9.0e-5


@pytest.mark.parametrize("method", ["remez", "chebyshev", "lstsq"])
def test_certified_error_holds_on_independent_points(method: str) -> None:
    fn = torch.nn.functional.gelu
    poly = fit(fn, (-6.0, 6.0), 12, method)
    observed = independent_max_error(poly, fn)
    assert observed <= poly.max_error * (1 + 1e-9)
    assert observed >= 0.98 * poly.max_error  # the certificate is tight, not inflated


def test_relative_fit_gives_the_classic_reciprocal_guess() -> None:
    poly = fit(lambda x: 1.0 / x, (0.5, 1.0), 1, relative=True)
    # The relative-minimax line for 1/x on [0.5, 1] is 48/17 - 32/17 x, error 1/17.
    np.testing.assert_allclose(poly.coefficients, [48 / 17, -32 / 17], rtol=1e-6)
    assert math.isclose(poly.max_error, 1 / 17, rel_tol=1e-6)
    assert poly.error_kind == "relative"


smooth_functions = {
    "exp": torch.exp,
    "sin": torch.sin,
    "runge": lambda x: 1.0 / (1.0 + 4.0 * x * x),
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "gelu": torch.nn.functional.gelu,
    "log1p_sq": lambda x: torch.log1p(x * x),
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(smooth_functions)),
    centre=st.floats(-3.0, 3.0),
    half_width=st.floats(0.2, 4.0),
    degree=st.integers(1, 12),
)
def test_remez_property(name: str, centre: float, half_width: float, degree: int) -> None:
    fn = smooth_functions[name]
    interval = (centre - half_width, centre + half_width)
    remez = fit(fn, interval, degree, "remez")
    if remez.max_error < 1e-12:  # at machine precision there is nothing to level
        return
    assert_equioscillates(remez, fn)
    cheb = fit(fn, interval, degree, "chebyshev")
    assert remez.max_error <= cheb.max_error * (1 + 1e-6)
    assert independent_max_error(remez, fn, n=5_000) <= remez.max_error * (1 + 1e-9)


def test_power_coefficients_match_evaluation_and_autograd() -> None:
    poly = fit(torch.sin, (-2.0, 3.0), 7)
    x = torch.linspace(-2.0, 3.0, 101, dtype=torch.float64, requires_grad=True)
    via_power = np.polynomial.polynomial.polyval(x.detach().numpy(), poly.coefficients)
    np.testing.assert_allclose(poly(x).detach().numpy(), via_power, atol=1e-12)
    poly(x).sum().backward()
    derivative = np.polynomial.polynomial.polyder(poly.coefficients)
    np.testing.assert_allclose(
        x.grad.numpy(), np.polynomial.polynomial.polyval(x.detach().numpy(), derivative), atol=1e-10
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_callable_in_any_dtype(dtype: torch.dtype) -> None:
    poly = fit(torch.exp, (-4.0, 0.0), 6)
    x = torch.linspace(-4.0, 0.0, 50, dtype=dtype)
    y = poly(x)
    assert y.dtype == dtype
    tol = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 5e-2}[dtype]
    assert float((y.double() - torch.exp(x.double())).abs().max()) < poly.max_error + tol


def test_json_and_repr_round_trip() -> None:
    poly = fit(torch.tanh, (-3.0, 3.0), 9)
    again = Polynomial.from_json(poly.to_json())
    assert again == poly and again.max_error == poly.max_error
    assert eval(repr(poly), {"Polynomial": Polynomial}) == poly
    record = json.loads(poly.to_json())
    assert record["degree"] == 9 and record["depth"] == 4
    assert len(record["coefficients"]) == 10


def test_depth_and_multiplication_counts() -> None:
    assert [depth(d) for d in (0, 1, 2, 3, 4, 7, 8, 15, 16)] == [0, 1, 2, 2, 3, 3, 4, 4, 5]
    assert fit(torch.exp, (-1.0, 0.0), 7).depth == 3  # TenSEAL: degree 7 needs 3 levels
    for d in (8, 16, 32, 64):
        mults, _ = paterson_stockmeyer_multiplications(d)
        # About sqrt(2d) + log2(d), well below Horner's d.
        assert mults <= math.sqrt(2 * d) + math.log2(d) + 2 and mults < d


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"interval": (3.0, 1.0)}, "interval=(3, 1): need a < b"),
        ({"interval": (1.0, 1.0)}, "interval=(1, 1): need a < b"),
        ({"interval": (0.0, math.inf)}, "interval"),
        ({"degree": -1}, "degree=-1"),
        ({"degree": 2.5}, "degree=2.5"),
        ({"method": "taylor"}, "method='taylor'"),
        ({"fn": 3}, "fn=3"),
        ({"fn": torch.log, "interval": (-1.0, 1.0)}, "fn=log returned nan"),
        ({"fn": lambda x: torch.sqrt(x), "interval": (-1.0, 1.0)}, "fn=<lambda> returned nan"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict, needle: str) -> None:
    args = {"fn": torch.exp, "interval": (-1.0, 0.0), "degree": 3, "method": "remez"} | kwargs
    with pytest.raises(ApproximationError) as info:
        fit(args["fn"], args["interval"], args["degree"], args["method"])
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_import_alone_pulls_no_cryptography() -> None:
    import subprocess
    import sys

    code = (
        "import sys, approximations;"
        "print(sorted(m for m in ('crypten', 'tenseal', 'secinfer', 'protocols', 'transformers')"
        " if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    assert approximations.fit is fit
