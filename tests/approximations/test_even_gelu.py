"""approximations.even_gelu: GELU(x) ~ x/2 + q(x^2) on [-B, B], no comparison needed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from approximations.even_gelu import TARGET, auto_gelu, even_gelu, fit_even_gelu
from approximations.sign_exp_gelu import SignExpGELU


@pytest.mark.parametrize("bound", [2.0, 4.0, 6.5, 8.0, 10.0])
def test_certified_error_holds_against_torch(bound: float) -> None:
    q = fit_even_gelu(bound)
    assert q is not None and q.max_error is not None and q.max_error <= TARGET
    x = torch.linspace(-bound, bound, 200_001, dtype=torch.float64)
    err = float((even_gelu(x, q) - F.gelu(x)).abs().max())
    assert err <= q.max_error * 1.001 + 1e-12
    assert err > q.max_error * 0.5  # the certificate is tight, not a loose bound


def test_the_lowest_degree_that_reaches_the_target_is_chosen() -> None:
    small, large = fit_even_gelu(3.0), fit_even_gelu(8.0)
    assert small is not None and large is not None
    assert small.degree < large.degree <= 12


def test_too_wide_or_unknown_intervals_fall_back_to_sign_exp() -> None:
    assert fit_even_gelu(14.0) is None
    assert isinstance(auto_gelu(None), SignExpGELU)
    wide = auto_gelu((-9.0, 2.0))  # 1.5 x 9 = 13.5: beyond what degree 12 reaches
    assert isinstance(wide, SignExpGELU) and wide.bound >= 13.5
    assert not isinstance(auto_gelu((-3.0, 2.0)), SignExpGELU)


@pytest.mark.parametrize("bound", [4.0, 30.0, 45.0])
def test_sign_exp_form_is_certified_on_wide_intervals(bound: float) -> None:
    form = SignExpGELU.for_bound(bound)
    assert form.max_error < 1e-3
    x = torch.linspace(-bound, bound, 100_001, dtype=torch.float64)
    assert float((form(x) - F.gelu(x)).abs().max()) <= form.max_error * 1.001


def test_bad_bound_names_the_argument() -> None:
    with pytest.raises(ValueError, match="bound="):
        fit_even_gelu(0.0)


def test_gradients_flow() -> None:
    q = fit_even_gelu(4.0)
    x = torch.linspace(-3, 3, 7, requires_grad=True)
    even_gelu(x, q).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
