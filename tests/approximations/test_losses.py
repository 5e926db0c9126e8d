"""Plaintext reference losses (`approximations.losses`) against torch and the formulas.

Tolerance 1e-12 in float64 (the same arithmetic, reordered); checked on realistic logits
(a trained classifier's range, about +-15) and on ties and bad labels.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

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
