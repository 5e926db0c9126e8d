"""exp on a calibrated interval (`approximations.shifted_exp.ShiftedExp`, the he target's
`exp` "calibrated"): the certified error meets the target on a hypothesis sweep of
intervals, against torch.exp on random points, and the depth counts the shift's product."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from approximations.shifted_exp import ShiftedExp


@settings(max_examples=40, deadline=None)
@given(
    lo=st.floats(-120.0, -0.5),
    width=st.floats(0.1, 130.0),
    target=st.sampled_from([1e-3, 1e-4, 1e-5]),
    seed=st.integers(0, 2**16),
)
def test_the_error_meets_the_target_on_its_interval(
    lo: float, width: float, target: float, seed: int
) -> None:
    hi = min(lo + width, 6.0)
    form = ShiftedExp.for_interval((lo, hi), target)
    assert form.shift == max(math.ceil(hi), 0.0)
    assert form.max_error <= target * 1.01
    g = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(2000, generator=g, dtype=torch.float64)
    assert (form(x) - torch.exp(x)).abs().max() <= form.max_error + 1e-12
    assert form.depth == form.exp.squarings + 2 + int(form.shift > 0)


def test_a_nonpositive_interval_needs_no_shift() -> None:
    form = ShiftedExp.for_interval((-40.0, 0.0))
    assert form.shift == 0.0 and form.depth == form.exp.squarings + 2
    assert form.to_dict()["max_error"] == form.max_error
