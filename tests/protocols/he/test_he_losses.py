"""Losses on encrypted logits (`protocols.he.losses`) and the composite sign they rest on.

Plaintext (`approximations.composite_sign`): the stages are odd, increasing and fix 1; the
certificate holds on a dense grid; the maximum never exceeds the larger input; step(0) is
exactly 1/2.

Encrypted (real TenSEAL, N = 8192, refreshes through the masking refresher with an
in-process client as in `test_he_tensor`): 24 rows of the bundled HE-friendly digits
model's logits and 8 wide synthetic rows, against the plaintext references of
`approximations.losses`. Measured here: per example within 5.3e-4 (ce), 2.9e-4 (gce, mae),
6.9e-4 (zloss: the inverse square root's 1e-3 relative target), 1.1e-5 (square, values up
to 80); the encrypted run against the same schedule in float64 within 2e-5; hits within
2e-7 of 0 or 1.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from approximations import losses as L
from approximations.composite_sign import (
    CompositeSign,
    odd_sign_polynomial,
    steep_sign_polynomial,
)
from approximations.errors import ApproximationError
from approximations.polynomial import Polynomial

NAMES = ["ce", "square", "zloss", "gce", "mae"]


# --- plaintext --------------------------------------------------------------------------------
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


def _digits_logits(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    from pathlib import Path

    from secinfer.zoo.digits import load_split

    _, _, x, y = load_split(0)
    root = Path(__file__).resolve().parents[3]
    program = torch.export.load(root / "secinfer" / "data" / "digits_he.pt2")
    with torch.no_grad():
        return program.module()(x[:rows]).double(), y[:rows]


def _plan(logits: torch.Tensor):
    from protocols.he.losses import HeLossPlan

    return HeLossPlan.calibrated(logits)


def test_the_schedule_in_float64_matches_the_references_on_the_digits_test_split() -> None:
    """The approximations alone (no encryption), all 360 test images: each loss's mean
    within 0.5 % of the reference's, hits exact."""
    from protocols.he.losses import per_example

    logits, labels = _digits_logits(360)
    plan = _plan(logits[:64])
    onehot = torch.nn.functional.one_hot(labels, 10).double()
    values = per_example(logits, onehot, NAMES, plan)
    for name in NAMES:
        want = float(L.reference(name)(logits, labels))
        assert abs(float(values[name].mean()) - want) <= 5e-3 * abs(want), name
    assert torch.equal(values["hit"].round(), (logits.argmax(-1) == labels).double())
    assert plan.depth("square") == 1 and plan.depth("ce") > plan.depth("accuracy")


def test_calibration_widens_the_bounds_the_model_owner_saw() -> None:
    from protocols.he.losses import HE_MARGIN, SPREAD_MARGIN

    logits, _ = _digits_logits(64)
    plan = _plan(logits)
    seen = float((logits.max(-1).values - logits.min(-1).values).max())
    assert math.isclose(plan.spread, SPREAD_MARGIN * seen)
    var = logits.var(-1, unbiased=False)
    assert math.isclose(plan.variance[0] * HE_MARGIN, float(var.min()))
    assert math.isclose(plan.variance[1] / HE_MARGIN, float(var.max()))


# --- encrypted --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def encrypted_losses(ctx):
    from protocols.he.codec import Codec
    from protocols.he.engine import Engine
    from protocols.he.layout import Layout
    from protocols.he.losses import per_example
    from protocols.he.refresh import MaskingRefresher
    from protocols.he.tensor import HeTensor

    logits, labels = _digits_logits(24)
    g = torch.Generator().manual_seed(3)
    wide = torch.randn(8, 10, generator=g, dtype=torch.float64) * 2.5  # spread up to ~15
    logits = torch.cat([logits, wide])
    labels = torch.cat([labels, torch.randint(0, 10, (8,), generator=g)])
    onehot = torch.nn.functional.one_hot(labels, 10).double()
    plan = _plan(torch.cat([logits, logits * 1.2]))
    codec, engine = Codec(ctx), Engine(ctx)

    def transport(cts, layout):
        used = layout.positions().reshape(-1)
        fresh = []
        for ct in cts:
            values = np.zeros(codec.slots)
            values[used] = codec.decrypt_slots(ct)[used]
            fresh.append(codec.encrypt_slots(values))
        return fresh

    refresher = MaskingRefresher(engine, transport, 17)
    layout = Layout.rows(tuple(logits.shape), 1, inner=16)

    def encrypt(values: torch.Tensor) -> HeTensor:
        grid = codec.encrypt(values.numpy(), layout)
        return HeTensor(engine, layout, grid, clean=True, refresher=refresher)

    out = per_example(encrypt(logits), encrypt(onehot), NAMES, plan)
    decrypted = {k: codec.decrypt(v.grid, v.layout) for k, v in out.items()}
    simulated = per_example(logits, onehot, NAMES, plan)
    return logits, labels, decrypted, simulated


def test_encrypted_losses_per_example_match_plaintext(encrypted_losses) -> None:
    logits, labels, decrypted, simulated = encrypted_losses
    tolerance = {"ce": 2e-3, "gce": 2e-3, "mae": 2e-3, "zloss": 3e-3, "square": 5e-5}
    for name in NAMES:
        want = torch.stack(
            [L.reference(name)(logits[i : i + 1], labels[i : i + 1]) for i in range(len(labels))]
        ).numpy()
        assert np.abs(decrypted[name] - want).max() <= tolerance[name], name
        assert np.abs(decrypted[name] - simulated[name].numpy()).max() <= 1e-4, name


def test_encrypted_hits_are_the_argmax_hits(encrypted_losses) -> None:
    logits, labels, decrypted, _ = encrypted_losses
    hits = (logits.argmax(-1) == labels).double().numpy()
    assert not hits.all() and hits.any()  # both kinds present
    assert np.abs(decrypted["hit"] - hits).max() < 1e-3


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

    logits, _ = _digits_logits(64)
    loss_plan = _plan(logits)
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
