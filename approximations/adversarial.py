"""The smooth adversarial comp-sum loss (Mao, Mohri and Zhong, ICML 2023, section 6): a
plaintext training loss for adversarial robustness.

For a model h with scores h(x) in R^C, label y and the score differences
Delta_h(x, y) = (h(x)_k - h(x)_y)_k, the loss of an example is

    l_tau(h, x, y) + nu sup_{||x' - x|| <= gamma} || Delta_h(x', y) - Delta_h(x, y) ||_2

with l_tau the comp-sum loss of `approximations.losses.comp_sum` on the clean input (tau
as there; our reading of the paper's definition, whose H-consistency bounds are for this
clean-plus-smooth-term form). The supremum over the gamma-ball (l_inf or l_2) is
approximated, as the paper's algorithm does, by projected gradient ascent from a random
start: `steps` steps of size `step_size` (default 2.5 gamma / steps), each followed by the
projection onto the ball. The ascent runs with the model's parameters detached; the
returned loss is differentiable in them (the perturbed point is a constant).

It needs gradients with respect to the input, so it is a training loss only: a private
evaluation (`secinfer eval`) has no gradients of the data owner's input, and computing
them under MPC or HE would multiply the forward pass's cost by the ascent's steps. The
secure backends evaluate the comp-sum family itself (`--loss compsum`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from approximations.errors import ApproximationError
from approximations.losses import check_compsum_tau, comp_sum

NORMS = ("inf", "2")


def score_differences(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Delta_h(x, y) per row: h(x)_k - h(x)_y for every class k (0 at k = y)."""
    return scores - scores.gather(-1, labels[:, None])


def _project(delta: torch.Tensor, gamma: float, norm: str) -> torch.Tensor:
    """delta's nearest point in the gamma-ball of `norm`, per example (first axis)."""
    if norm == "inf":
        return delta.clamp(-gamma, gamma)
    flat = delta.flatten(1)
    scale = (gamma / flat.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
    return (flat * scale[:, None]).view_as(delta)


def _ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest ascent direction of unit `norm` for `grad`, per example."""
    if norm == "inf":
        return grad.sign()
    flat = grad.flatten(1)
    return (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(grad)


def worst_perturbation(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    labels: torch.Tensor,
    gamma: float,
    *,
    norm: str = "inf",
    steps: int = 10,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """delta in the gamma-ball maximising ||Delta_h(x + delta, y) - Delta_h(x, y)||_2 per
    example, by projected gradient ascent from a uniform random start (module docstring)."""
    _check(gamma, norm, steps)
    size = 2.5 * gamma / steps if step_size is None else float(step_size)
    with torch.no_grad():
        clean = score_differences(model(x), labels)
        start = torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1
        delta = _project(start.to(x.device) * gamma, gamma, norm)
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            moved = score_differences(model(x + delta), labels) - clean
            objective = moved.pow(2).sum()  # the per-example norms' ascent directions agree
            (grad,) = torch.autograd.grad(objective, delta)
        with torch.no_grad():
            delta = _project(delta + size * _ascent_direction(grad, norm), gamma, norm)
    return delta.detach()


def smooth_adversarial_comp_sum(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    tau: float = 1.5,
    nu: float = 1.0,
    gamma: float = 0.1,
    norm: str = "inf",
    steps: int = 10,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The mean over the batch of the smooth adversarial comp-sum loss (module docstring):
    comp-sum of parameter `tau` on model(x) plus `nu` times the norm of the score
    differences' change at the ascent's worst point of the `gamma`-ball."""
    check_compsum_tau(tau)
    if not nu >= 0:
        raise ApproximationError(f"smooth adversarial comp-sum nu={nu}: expected nu >= 0")
    scores = model(x)
    clean = comp_sum(scores, labels, tau)
    if nu == 0:
        return clean
    delta = worst_perturbation(
        model, x, labels, gamma, norm=norm, steps=steps, step_size=step_size,
        generator=generator,
    )  # fmt: skip
    moved = score_differences(model(x + delta), labels) - score_differences(scores, labels)
    return clean + nu * moved.norm(dim=-1).mean()


def _check(gamma: float, norm: str, steps: int) -> None:
    if not gamma > 0:
        raise ApproximationError(f"smooth adversarial comp-sum gamma={gamma}: expected > 0")
    if norm not in NORMS:
        raise ApproximationError(f"norm={norm!r}: choose from {', '.join(NORMS)}")
    if steps < 1:
        raise ApproximationError(f"steps={steps}: expected at least 1")


__all__ = ["score_differences", "smooth_adversarial_comp_sum", "worst_perturbation"]
