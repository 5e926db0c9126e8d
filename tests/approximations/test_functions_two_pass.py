"""Two-Pass softmax (Dukhan and Ablavatski): the (mantissa, exponent) pairs and the softmax
they give, against an independent float64 softmax (max-subtracted exp) on realistic and
extreme scores, including rows where exp itself overflows."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from approximations.functions import exp_pairs, two_pass_softmax


def _reference(x: torch.Tensor) -> torch.Tensor:
    shifted = x - x.max(-1, keepdim=True).values
    e = torch.exp(shifted)
    return e / e.sum(-1, keepdim=True)


def test_pairs_hold_exp_with_a_bounded_mantissa() -> None:
    x = torch.linspace(-700, 700, 10_001, dtype=torch.float64)
    m, n = exp_pairs(x)
    assert float(m.min()) >= 2**-0.5 - 1e-12 and float(m.max()) <= 2**0.5 + 1e-12
    assert torch.equal(n, torch.round(n))
    assert torch.allclose(torch.log(m) + n * math.log(2.0), x, rtol=0, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    width=st.integers(1, 300),
    spread=st.sampled_from([1.0, 8.0, 40.0, 800.0]),
    seed=st.integers(0, 2**16),
)
def test_two_pass_softmax_is_softmax(rows: int, width: int, spread: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, width, generator=generator, dtype=torch.float64) * spread
    got = two_pass_softmax(x)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, _reference(x), rtol=1e-12, atol=1e-300)


def test_rows_where_exp_overflows() -> None:
    x = torch.tensor([[1000.0, 999.0, -5.0], [750.0, 750.0, 750.0]], dtype=torch.float64)
    assert not torch.isfinite(torch.exp(x)).all()  # the naive form fails here
    assert torch.allclose(two_pass_softmax(x), _reference(x), rtol=1e-12)
