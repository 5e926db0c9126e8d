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
