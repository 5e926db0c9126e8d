"""SOFT attention (`approximations.soft_attention`) and `convert(model, attention="soft")`.

Against independent float64 computations: the Gaussian kernel against `torch.cdist`;
Newton-Schulz against `torch.linalg.pinv` (a hypothesis sweep of landmark counts, widths
and spreads); the whole module, with every token its own landmark (then P A^+ P^T is the
exact kernel S), against D^(-1/2) S D^(-1/2) V computed directly. The conversion of the
digits model, its export, and its bad arguments (one error each)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from approximations.conversion import convert
from approximations.errors import ConversionError
from approximations.soft_attention import (
    SoftAttention,
    gaussian_kernel,
    newton_schulz_pseudo_inverse,
)
from secinfer.zoo.digits import DigitsConfig, DigitsTransformer


def test_the_gaussian_kernel_is_exp_of_minus_half_the_squared_distance() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 7, 5, generator=g, dtype=torch.float64)
    b = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    want = torch.exp(-0.5 * torch.cdist(a, b) ** 2)
    assert torch.allclose(gaussian_kernel(a, b), want, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 12),
    width=st.integers(1, 16),
    spread=st.sampled_from([0.3, 1.0, 3.0]),
    iterations=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_newton_schulz_follows_its_eigenvalue_recursion(
    m: int, width: int, spread: float, iterations: int, seed: int
) -> None:
    """On kernel matrices A of m random points, V is a polynomial in A: on each of A's
    eigenvectors (torch.linalg.eigh, eigenvalue lambda) V has the eigenvalue mu with
    1 - lambda mu = (1 - lambda^2 / m^2)^(2^k) exactly, and no cross terms. So V tends to
    1 / lambda on every eigenvalue, the slowest the smallest."""
    g = torch.Generator().manual_seed(seed)
    points = torch.randn(m, width, generator=g, dtype=torch.float64) * spread
    a = gaussian_kernel(points, points)
    v = newton_schulz_pseudo_inverse(a, iterations)
    values, vectors = torch.linalg.eigh(a)
    in_basis = vectors.T @ v @ vectors
    mu = torch.diagonal(in_basis)
    want = 1 - (1 - values**2 / m**2) ** (2**iterations)
    assert torch.allclose(values * mu, want, atol=1e-9)
    assert torch.allclose(in_basis, torch.diag(mu), atol=1e-7 * float(mu.abs().max()) + 1e-9)


def test_eight_iterations_invert_well_separated_landmarks() -> None:
    """The docstring's figure: m = 4, every eigenvalue >= 1: A V within 7e-8 of I."""
    points = torch.eye(4, dtype=torch.float64) * 3.0  # pairwise distance^2 18: A near I
    a = gaussian_kernel(points, points)
    assert torch.linalg.eigvalsh(a).min() >= 1.0 - 1e-3
    v = newton_schulz_pseudo_inverse(a, 8)
    assert (a @ v - torch.eye(4, dtype=torch.float64)).abs().max() < 7e-8


@pytest.mark.parametrize("order", ["linear", "kernel"])
@pytest.mark.parametrize(("heads", "n", "normalise"), [(1, 6, True), (2, 8, True), (2, 8, False)])
def test_with_every_token_a_landmark_the_module_is_exact_soft(
    heads: int, n: int, normalise: bool, order: str
) -> None:
    torch.manual_seed(3)
    module = SoftAttention(8, heads, landmarks=n, iterations=40, normalise=normalise,
                           order=order).double()  # fmt: skip
    x = torch.randn(2, n, 8, dtype=torch.float64)
    d = 8 // heads
    q = module.q(x).reshape(2, n, heads, d).transpose(1, 2)
    v = module.v(x).reshape(2, n, heads, d).transpose(1, 2)
    s = torch.exp(-(torch.cdist(q, q) ** 2) / (2 * math.sqrt(d)))
    if normalise:
        scale = s.sum(-1, keepdim=True).rsqrt()
        ctx = scale * (s @ (scale * v))
    else:
        ctx = s @ v / n
    want = module.out(ctx.transpose(1, 2).reshape(2, n, 8))
    assert torch.allclose(module(x), want, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(
    landmarks=st.sampled_from([1, 2, 4, 8]),
    heads=st.sampled_from([1, 2, 4]),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_the_two_orders_compute_the_same_function(
    landmarks: int, heads: int, batch: int, seed: int
) -> None:
    """ "linear" (P (A+ (P^T V))) and "kernel" (((P A+) P^T) V) at a sweep of landmark
    counts, heads and batches over 16 tokens: equal within float64 rounding."""
    torch.manual_seed(seed)
    linear = SoftAttention(16, heads, landmarks).double()
    kernel = SoftAttention(16, heads, landmarks, order="kernel").double()
    kernel.load_state_dict(linear.state_dict())
    x = torch.randn(batch, 16, 16, dtype=torch.float64)
    assert torch.allclose(linear(x), kernel(x), atol=1e-9, rtol=1e-9)


def digits() -> DigitsTransformer:
    torch.manual_seed(0)
    return DigitsTransformer(DigitsConfig()).eval()


def test_convert_rebuilds_the_digits_attention_and_the_result_exports() -> None:
    model = digits()
    converted, replaced = convert(model, attention="soft", attention_options={"landmarks": 8})
    assert [r.path for r in replaced] == ["blocks.0.attn", "blocks.1.attn"]
    assert {r.kind for r in replaced} == {"attention"}
    for block, original in zip(converted.blocks, model.blocks, strict=True):
        assert isinstance(block.attn, SoftAttention) and block.attn.landmarks == 8
        assert torch.equal(block.attn.q.weight, original.attn.q.weight)
        assert not hasattr(block.attn, "k")
        assert type(block.mlp.act) is torch.nn.GELU  # the other kinds are kept
    x = torch.rand(5, 64)
    program = torch.export.export(converted, (x,))
    assert torch.allclose(program.module()(x), converted(x), atol=1e-6)
    assert isinstance(model.blocks[0].attn, type(model.blocks[1].attn))  # a copy changed
    assert not isinstance(model.blocks[0].attn, SoftAttention)


def test_convert_with_a_target_converts_the_rest_too() -> None:
    converted, replaced = convert(digits(), attention="soft", target="he",
                                  layernorm_interval=(1e-3, 10.0))  # fmt: skip
    assert {r.kind for r in replaced} == {"gelu", "layernorm", "attention"}
    assert isinstance(converted.blocks[0].attn, SoftAttention)
    assert converted.blocks[0].attn.order == "kernel"  # what the he engine packs


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"attention": "soft", "attention_options": {"landmarks": None}}, "needs a value"),
        ({"attention": "soft", "attention_options": {"landmarks": 0}}, "an integer >= 1"),
        ({"attention": "soft", "attention_options": {"rank": 4}}, "unknown SOFT option"),
        ({"attention": "soft", "softmax": "power"}, "has no softmax to replace"),
        ({"attention": "linear"}, "choose 'soft' or None"),
        ({"attention_options": {"landmarks": 4}}, "without attention='soft'"),
        ({"attention": "soft", "attention_options": {"order": "quadratic"}}, "choose from"),
    ],
)
def test_bad_soft_arguments_are_one_error_each(kwargs: dict, match: str) -> None:
    with pytest.raises(ConversionError, match=match):
        convert(digits(), **kwargs)


def test_a_model_without_explicit_attention_is_named() -> None:
    with pytest.raises(ConversionError, match="found no self-attention written out"):
        convert(torch.nn.Sequential(torch.nn.Linear(4, 4)), attention="soft")


def test_a_sequence_the_landmarks_do_not_divide_is_named() -> None:
    module = SoftAttention(8, 2, landmarks=3)
    with pytest.raises(Exception, match="divisible"):
        module(torch.randn(1, 8, 8))
