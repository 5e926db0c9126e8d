"""Plaintext reference losses (`approximations.losses`) against torch and the formulas.

Tolerance 1e-12 in float64 (the same arithmetic, reordered); checked on realistic logits
(a trained classifier's range, about +-15) and on ties and bad labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from approximations import losses as L
from approximations.errors import ApproximationError

torch.manual_seed(0)
LOGITS = torch.randn(64, 10, dtype=torch.float64) * 5
LABELS = torch.randint(0, 10, (64,))


def test_cross_entropy_and_square_loss_match_torch() -> None:
    assert torch.allclose(L.cross_entropy(LOGITS, LABELS), F.cross_entropy(LOGITS, LABELS))
    onehot = F.one_hot(LABELS, 10).double()
    want = F.mse_loss(LOGITS, onehot, reduction="sum") / 64
    assert torch.allclose(L.square_loss(LOGITS, LABELS), want, atol=1e-12)


def test_z_loss_is_the_softplus_of_the_standardised_target_and_is_shift_and_scale_invariant() -> (
    None
):
    a, b = 0.5, 2.0
    row, y = LOGITS[0], int(LABELS[0])
    mu = float(row.mean())
    sigma = math.sqrt(float(((row - mu) ** 2).mean()))
    z = (float(row[y]) - mu) / sigma
    single = L.z_loss(LOGITS[:1], LABELS[:1], a, b)
    assert abs(float(single) - math.log1p(math.exp(a * (b - z))) / a) < 1e-12
    shifted = L.z_loss(3.0 * LOGITS + 7.0, LABELS, a, b)
    assert torch.allclose(shifted, L.z_loss(LOGITS, LABELS, a, b), atol=1e-12)


def test_gce_tends_to_cross_entropy_and_equals_mae_at_q_1() -> None:
    p_y = LOGITS.softmax(-1)[torch.arange(64), LABELS]
    assert torch.allclose(L.mean_absolute_error(LOGITS, LABELS), (1 - p_y).mean())
    assert torch.allclose(
        L.generalized_cross_entropy(LOGITS, LABELS, 1.0), L.mean_absolute_error(LOGITS, LABELS)
    )
    near_zero = L.generalized_cross_entropy(LOGITS, LABELS, 1e-6)
    assert abs(float(near_zero - L.cross_entropy(LOGITS, LABELS))) < 1e-3


def test_accuracy_counts_argmax_hits() -> None:
    hits = (LOGITS.argmax(-1) == LABELS).double().mean()
    assert float(L.accuracy(LOGITS, LABELS)) == float(hits)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (torch.tensor([0, 10]), "outside"),
        (torch.tensor([-1, 0]), "outside"),
        (torch.tensor([0.0, 1.0]), "integer"),
        (torch.tensor([0, 1, 2]), "one label per row"),
    ],
)
def test_bad_labels_are_named(labels: torch.Tensor, match: str) -> None:
    with pytest.raises(ApproximationError, match=match):
        L.cross_entropy(LOGITS[:2], labels)


def test_reference_by_name_and_unknown_names() -> None:
    for name in L.LOSS_NAMES:
        assert torch.isfinite(L.reference(name)(LOGITS, LABELS))
    with pytest.raises(ApproximationError, match="unknown loss 'hinge'"):
        L.reference("hinge")


def test_comp_sum_is_the_family_of_its_paper() -> None:
    """Against an independent float64 form, Phi_tau(u) with u = sum_{k != y} exp(o_k - o_y):
    tau = 0 the sum-exponential u, 1 log(1 + u), 2 u / (1 + u); and equal to the losses it
    generalises (ce at 1, gce with q = tau - 1 between 1 and 2, mae at 2)."""
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(40, 7, generator=generator, dtype=torch.float64) * 3
    labels = torch.randint(0, 7, (40,), generator=generator)
    label = logits.gather(-1, labels[:, None])
    others = torch.ones_like(logits).scatter(-1, labels[:, None], 0.0)
    u = ((logits - label).exp() * others).sum(-1)
    for tau in (0.0, 0.5, 1.0, 1.3, 2.0, 3.0):
        phi = torch.log1p(u) if tau == 1 else ((1 + u) ** (1 - tau) - 1) / (1 - tau)
        assert torch.allclose(L.comp_sum(logits, labels, tau), phi.mean(), rtol=1e-12)
    assert torch.allclose(L.comp_sum(logits, labels, 0.0), u.mean())
    assert torch.allclose(L.comp_sum(logits, labels, 1.0), L.cross_entropy(logits, labels))
    gce = L.generalized_cross_entropy(logits, labels, 0.3)
    assert torch.allclose(L.comp_sum(logits, labels, 1.3), gce)
    assert torch.allclose(L.comp_sum(logits, labels, 2.0), L.mean_absolute_error(logits, labels))
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ApproximationError, match="compsum tau"):
            L.comp_sum(logits, labels, bad)
    with pytest.raises(ApproximationError, match="secure backends take tau >= 1"):
        L.check_compsum_tau(0.5, secure=True)


def _threshold_by_bisection(
    z: torch.Tensor, mass: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """t per row with mass(z - t) summed to 1 (mass increasing in its argument), by 200
    bisection steps in float64: an independent route to the sort-based thresholds."""
    lo = z.max(-1, keepdim=True).values - z.shape[-1] - 2.0
    hi = z.max(-1, keepdim=True).values
    for _ in range(200):
        mid = (lo + hi) / 2
        over = mass(z - mid).sum(-1, keepdim=True) > 1
        lo, hi = torch.where(over, mid, lo), torch.where(over, hi, mid)
    return (lo + hi) / 2


def test_fenchel_young_losses_against_their_definitions() -> None:
    """sparsemax and entmax15 against the Fenchel-Young form Omega*(o) + Omega(e_y) - o_y,
    Omega*(o) = <o, p> - Omega(p), with p from a bisection on the threshold (not the sort
    rule the references use); both are >= 0 and vanish on a margin of 1 (sparsemax) or
    2 (entmax15) for the label."""
    generator = torch.Generator().manual_seed(5)
    z = torch.randn(64, 9, generator=generator, dtype=torch.float64) * 2.5
    y = torch.randint(0, 9, (64,), generator=generator)
    z_y = z.gather(-1, y[:, None]).squeeze(-1)
    t = _threshold_by_bisection(z, lambda d: d.clamp_min(0))
    p = (z - t).clamp_min(0)
    sparse = ((z * p).sum(-1) - 0.5 * (p**2).sum(-1) + 0.5 - z_y).mean()
    assert torch.allclose(L.sparsemax_loss(z, y), sparse, atol=1e-10)
    assert torch.allclose(L.sparsemax_threshold(z), t, atol=1e-10)
    half = z / 2
    t15 = _threshold_by_bisection(half, lambda d: d.clamp_min(0) ** 2)
    p15 = (half - t15).clamp_min(0) ** 2
    assert torch.allclose(L.entmax15(z), p15, atol=1e-10)
    omega = (4 / 3) * (p15**1.5 - p15).sum(-1)  # minus Tsallis' entropy, alpha = 1.5
    entmax = ((z * p15).sum(-1) - omega - z_y).mean()
    assert torch.allclose(L.entmax15_loss(z, y), entmax, atol=1e-10)
    for fn in (L.sparsemax_loss, L.entmax15_loss):
        rows = [float(fn(z[i : i + 1], y[i : i + 1])) for i in range(64)]
        assert min(rows) >= -1e-12
    sure = torch.zeros(3, 9, dtype=torch.float64)
    sure[torch.arange(3), torch.tensor([0, 4, 8])] = 2.0  # a margin of 2 on the label
    labels = torch.tensor([0, 4, 8])
    assert float(L.sparsemax_loss(sure, labels)) == pytest.approx(0.0, abs=1e-12)
    assert float(L.entmax15_loss(sure, labels)) == pytest.approx(0.0, abs=1e-12)


class ExactKernels:
    """The Fenchel-Young losses' kernels in float64 with exact comparisons: what the
    secure formulas compute when no backend approximates anything."""

    def __init__(self, steps: int = L.FY_STEPS) -> None:
        self.steps = steps

    def shared(self, o, t, *, needs_log_sum_exp, needs_maximum, accuracy):
        return L.SharedTerms((o * t).sum(-1), None, o.max(-1).values)

    def positive_part(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp_min(0)

    def step_of_excess(self, excess: torch.Tensor, power: int) -> torch.Tensor:
        return (excess >= 0).to(excess.dtype)

    def threshold(self, z: torch.Tensor, maximum: torch.Tensor, power: int) -> torch.Tensor:
        return L.bisection_threshold(self, z, maximum, power, self.steps)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 12),
    classes=st.integers(2, 40),
    spread=st.sampled_from([0.05, 1.0, 4.0, 40.0]),
    steps=st.integers(3, 10),
    seed=st.integers(0, 2**16),
)
def test_fenchel_young_duals_with_a_bisected_threshold(
    rows: int, classes: int, spread: float, steps: int, seed: int
) -> None:
    """The secure formulas (duals at a threshold found by `bisection_threshold`) against
    the references, within the second-order bound of the module docstring: a threshold off
    by delta <= w 2^-(steps + 1), w = 1 - C^(-1/k), moves sparsemax by at most
    C delta^2 / 2 and entmax15 by at most 2 (sqrt(C) + C delta) delta^2."""
    generator = torch.Generator().manual_seed(seed)
    o = torch.randn(rows, classes, generator=generator, dtype=torch.float64) * spread
    y = torch.randint(0, classes, (rows,), generator=generator)
    onehot = F.one_hot(y, classes).double()
    got = L.secure_per_example(
        ExactKernels(steps), o, onehot, ["sparsemax", "entmax15"], L.DEFAULT_OPTIONS,
        accuracy=False,
    )  # fmt: skip
    for name, power in (("sparsemax", 1), ("entmax15", 2)):
        delta = (1 - classes ** (-1 / power)) * 2.0 ** -(steps + 1)
        factor = 0.5 * classes if power == 1 else 2 * (classes**0.5 + classes * delta)
        want = torch.stack([L.reference(name)(o[i : i + 1], y[i : i + 1]) for i in range(rows)])
        assert (got[name] - want).abs().max() <= factor * delta**2 + 1e-12, name


def test_a_fenchel_young_loss_on_kernels_without_a_threshold_is_refused() -> None:
    """A backend whose kernels lack what a loss needs is named before any computation."""

    class NoThreshold(ExactKernels):
        threshold = None  # type: ignore[assignment]

    onehot = F.one_hot(LABELS, LOGITS.shape[1]).double()
    with pytest.raises(ApproximationError, match="'entmax15' needs the kernel 'threshold'"):
        L.secure_per_example(NoThreshold(), LOGITS, onehot, ["entmax15"], L.DEFAULT_OPTIONS)
