"""The composite sign (`approximations.composite_sign`) that HE's losses rest on, in
plaintext: the stages are odd, increasing and fix 1; the certificate holds on a dense
grid; the maximum never exceeds the larger input; step(0) is exactly 1/2."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from approximations.composite_sign import (
    CompositeSign,
    odd_sign_polynomial,
    steep_sign_polynomial,
)
from approximations.errors import ApproximationError


def test_the_sign_polynomial_is_cheon_et_al_f_n() -> None:
    assert odd_sign_polynomial(1) == [0.0, 1.5, 0.0, -0.5]
    f3 = np.array(odd_sign_polynomial(3)) * 16
    assert np.allclose(f3, [0, 35, 0, -35, 0, 21, 0, -5])


def test_the_steep_stage_is_odd_increasing_fixes_one_and_beats_f3_per_level() -> None:
    coefficients = np.array(steep_sign_polynomial(15))
    assert len(coefficients) == 16 and np.all(coefficients[::2] == 0)
    x = np.linspace(0.0, 1.0, 1_000_001)
    values = np.polynomial.polynomial.polyval(x, coefficients)
    assert np.all(np.diff(values) > 0) and abs(values[-1] - 1.0) < 1e-12
    # growth per level at 0: ln(5.37) / 4 levels against ln(35/16) / 3
    assert coefficients[1] > 5.3 and math.log(coefficients[1]) / 4 > math.log(35 / 16) / 3


@pytest.mark.parametrize(
    ("bound", "resolution", "error"), [(25.0, 0.01, 1e-3), (10.0, 0.4, 1e-7), (3.0, 0.1, 1e-4)]
)
def test_composite_sign_meets_its_certificate(
    bound: float, resolution: float, error: float
) -> None:
    sign = CompositeSign(bound, resolution, error)
    assert sign.max_error <= error
    assert sign.depth == sum(p.depth for p in sign.polynomials) and sign.iterations > 1
    x = torch.linspace(-bound, bound, 400_001, dtype=torch.float64)
    y = sign(x)
    covered = x.abs() >= resolution
    assert float((y[covered] - torch.sign(x[covered])).abs().max()) <= sign.max_error + 1e-12
    assert float(y.abs().max()) <= 1.0 + 1e-12
    assert float(sign(torch.zeros(1, dtype=torch.float64))) == 0.0
    assert float(sign.step(torch.zeros(1, dtype=torch.float64))) == 0.5
    # one fewer composition would not meet the target
    t = torch.tensor([resolution], dtype=torch.float64)
    for polynomial in sign.polynomials[:-1]:
        t = polynomial(t)
    assert 1.0 - float(t) > error


def test_the_maximum_never_exceeds_the_larger_input_and_errs_within_its_bound() -> None:
    sign = CompositeSign(20.0, 0.1, 1e-3)
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 100_000, generator=g, dtype=torch.float64) * 20 - 10
    got, want = sign.maximum(a, b), torch.maximum(a, b)
    assert float((got - want).max()) <= 1e-12
    assert float((want - got).max()) <= sign.maximum_error


def test_composite_sign_refuses_an_empty_range() -> None:
    with pytest.raises(ApproximationError, match="resolution"):
        CompositeSign(1.0, 2.0)
    with pytest.raises(ApproximationError, match="error"):
        CompositeSign(1.0, 0.1, error=1.5)
