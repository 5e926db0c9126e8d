"""What only HE has in secure loss evaluation (`protocols.he.losses`): its schedule,
calibration and depth.

The encrypted per-example losses against the plaintext references, on he and mpc alike,
are in `tests/protocols/test_losses_secure.py`; the composite sign they rest on in
`tests/approximations/test_composite_sign.py`. Here: the schedule in float64 on the whole
digits test split (each loss's mean within 0.5 % of the reference's, hits exact); the
calibration's margins; the level probe against each polynomial's own depth and against
real ciphertexts (TenSEAL, N = 8192).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers.losses import NAMES, digits_he_logits, he_loss_plan

from approximations import losses
from approximations.composite_sign import odd_sign_polynomial
from approximations.polynomial import Polynomial


def test_the_schedule_in_float64_matches_the_references_on_the_digits_test_split() -> None:
    """The approximations alone (no encryption), all 360 test images: each loss's mean
    within 0.5 % of the reference's, hits exact."""
    from protocols.he.losses import per_example

    logits, labels = digits_he_logits(360)
    plan = he_loss_plan(logits[:64])
    onehot = torch.nn.functional.one_hot(labels, 10).double()
    values = per_example(logits, onehot, list(NAMES), plan)
    for name in NAMES:
        want = float(losses.reference(name)(logits, labels))
        assert abs(float(values[name].mean()) - want) <= 5e-3 * abs(want), name
    assert torch.equal(values["hit"].round(), (logits.argmax(-1) == labels).double())
    assert plan.depth("square") == 1 and plan.depth("ce") > plan.depth("accuracy")


def test_calibration_widens_the_bounds_the_model_owner_saw() -> None:
    from protocols.he.losses import HE_MARGIN, SPREAD_MARGIN

    logits, _ = digits_he_logits(64)
    plan = he_loss_plan(logits)
    seen = float((logits.max(-1).values - logits.min(-1).values).max())
    assert math.isclose(plan.spread, SPREAD_MARGIN * seen)
    var = logits.var(-1, unbiased=False)
    assert math.isclose(plan.variance[0] * HE_MARGIN, float(var.min()))
    assert math.isclose(plan.variance[1] / HE_MARGIN, float(var.max()))


def test_the_level_probe_counts_what_the_encrypted_run_consumes(ctx) -> None:
    """The probe against `plan`'s own depth for every polynomial a loss plan uses, and
    against real ciphertexts (2 levels per fresh one): what the probe puts at 2 levels runs
    without a refresh and ends at level 0; what it puts at 3 cannot run."""
    from protocols.he.codec import Codec
    from protocols.he.engine import Engine
    from protocols.he.layout import Layout
    from protocols.he.losses import LevelProbe
    from protocols.he.polynomial import evaluate_approximation, plan
    from protocols.he.tensor import DepthExhausted, HeTensor

    logits, _ = digits_he_logits(64)
    loss_plan = he_loss_plan(logits)
    polynomials = [*loss_plan.max_sign.polynomials, *loss_plan.hit_sign.polynomials]
    polynomials += [loss_plan.log, loss_plan.softplus, loss_plan.rsqrt.initial]
    for polynomial in polynomials:
        probe = evaluate_approximation(LevelProbe((4,)), polynomial)
        schedule = plan(polynomial.chebyshev[: polynomial.degree + 1], polynomial.interval,
                        chebyshev=True)  # fmt: skip
        assert probe.depth == schedule.depth, polynomial
    codec, engine = Codec(ctx), Engine(ctx)
    layout = Layout.rows((4,), 0)

    def fresh() -> HeTensor:
        grid = codec.encrypt(np.linspace(-0.9, 0.9, 4), layout)
        return HeTensor(engine, layout, grid, clean=True, refresher=None)

    cubic = Polynomial.from_coefficients([0.0, 1.5, 0.0, -0.5], (-1.0, 1.0))
    seventh = Polynomial.from_coefficients(odd_sign_polynomial(3), (-1.0, 1.0))
    assert evaluate_approximation(LevelProbe((4,)), cubic).depth == 2
    assert evaluate_approximation(fresh(), cubic).level == 0
    assert evaluate_approximation(LevelProbe((4,)), seventh).depth == 3
    with pytest.raises(DepthExhausted):
        evaluate_approximation(fresh(), seventh)
