"""The smooth adversarial comp-sum loss (`approximations.adversarial`): comp-sum at nu = 0,
the ascent's worst point against the closed form of a linear model, the projection onto
the ball, gradients reaching the parameters, bad arguments named."""

from __future__ import annotations

import pytest
import torch

from approximations.adversarial import (
    score_differences,
    smooth_adversarial_comp_sum,
    worst_perturbation,
)
from approximations.errors import ApproximationError
from approximations.losses import comp_sum

torch.manual_seed(0)
X = torch.randn(16, 6, dtype=torch.float64)
Y = torch.randint(0, 4, (16,))


def linear() -> torch.nn.Linear:
    torch.manual_seed(1)
    return torch.nn.Linear(6, 4).double()


def test_nu_zero_is_the_comp_sum_loss() -> None:
    model = linear()
    got = smooth_adversarial_comp_sum(model, X, Y, tau=1.3, nu=0.0)
    assert torch.allclose(got, comp_sum(model(X), Y, 1.3))


def test_the_l2_ascent_reaches_the_linear_models_closed_form() -> None:
    """For h(x) = W x + b the change of the score differences is M delta, M's rows
    W_k - W_y: its largest norm over ||delta||_2 <= gamma is gamma sigma_max(M), an
    independent computation (singular values)."""
    model, gamma = linear(), 0.3
    g = torch.Generator().manual_seed(2)
    delta = worst_perturbation(model, X, Y, gamma, norm="2", steps=40, step_size=1.0, generator=g)
    assert (delta.norm(dim=1) <= gamma + 1e-9).all()
    moved = (score_differences(model(X + delta), Y) - score_differences(model(X), Y)).norm(dim=1)
    weights = model.weight.detach()
    for i in range(len(Y)):
        m = weights - weights[Y[i]]
        best = gamma * torch.linalg.matrix_norm(m, ord=2)
        assert moved[i] <= best + 1e-9
        assert moved[i] >= 0.99 * best


def test_the_linf_ascent_stays_in_the_box_and_beats_random_points() -> None:
    model, gamma = linear(), 0.2
    g = torch.Generator().manual_seed(3)
    delta = worst_perturbation(model, X, Y, gamma, steps=10, generator=g)
    assert delta.abs().max() <= gamma + 1e-12
    clean = score_differences(model(X), Y)
    found = (score_differences(model(X + delta), Y) - clean).norm(dim=1)
    for _ in range(20):
        random = (torch.rand(X.shape, generator=g, dtype=X.dtype) * 2 - 1) * gamma
        assert (found >= (score_differences(model(X + random), Y) - clean).norm(dim=1) - 1e-9).all()


def test_the_loss_trains_the_parameters() -> None:
    model = linear()
    loss = smooth_adversarial_comp_sum(model, X, Y, nu=0.5, gamma=0.1, steps=3)
    loss.backward()
    assert model.weight.grad is not None and model.weight.grad.abs().sum() > 0
    assert loss > comp_sum(model(X), Y, 1.5)  # the smooth term is positive


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gamma": 0.0}, "gamma=0.0"),
        ({"nu": -1.0}, "nu=-1.0"),
        ({"norm": "1"}, "norm='1'"),
        ({"steps": 0}, "steps=0"),
        ({"tau": -1.0}, "compsum tau=-1.0"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ApproximationError, match=match):
        smooth_adversarial_comp_sum(linear(), X, Y, **kwargs)
