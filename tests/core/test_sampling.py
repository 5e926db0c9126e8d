"""`secinfer.core.sampling`: the Gumbel-max rule samples from softmax(l / T), top-k keeps
the k largest, greedy is the argmax, and the options are checked."""

from __future__ import annotations

import math

import pytest
import torch

from secinfer.core.sampling import GREEDY, Sampling
from secinfer.errors import UserError

LOGITS = torch.tensor([2.0, 1.0, 0.5, -1.0, 0.0, 1.5])


def test_greedy_is_the_first_largest() -> None:
    assert GREEDY.pick(LOGITS, 0) == 0
    assert GREEDY.pick(torch.tensor([1.0, 3.0, 3.0]), 7) == 1
    assert torch.equal(GREEDY.noise(3, 5), torch.zeros(5, dtype=torch.float64))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_the_picks_follow_softmax_at_the_temperature(temperature: float) -> None:
    """20000 draws (steps of one seed): each token's frequency within 4 standard errors of
    softmax(l / T)."""
    rule = Sampling(temperature, None, seed=11)
    draws = 20_000
    counts = torch.bincount(
        torch.tensor([rule.pick(LOGITS, step) for step in range(draws)]), minlength=6
    ).double()
    want = torch.softmax(LOGITS.double() / temperature, 0)
    error = 4 * torch.sqrt(want * (1 - want) / draws)
    assert ((counts / draws - want).abs() <= error).all(), (counts / draws, want)


def test_top_k_keeps_the_k_largest_and_renormalises() -> None:
    rule = Sampling(1.0, 2, seed=5)
    picks = [rule.pick(LOGITS, step) for step in range(4000)]
    assert set(picks) == {0, 5}  # the two largest logits only
    share = picks.count(0) / len(picks)
    want = 1 / (1 + math.exp(1.5 - 2.0))
    assert abs(share - want) < 4 * math.sqrt(want * (1 - want) / len(picks))


def test_the_noise_is_a_function_of_seed_and_step() -> None:
    a, b = Sampling(1.0, None, 3), Sampling(1.0, None, 3)
    assert torch.equal(a.noise(4, 10), b.noise(4, 10))
    assert not torch.equal(a.noise(4, 10), a.noise(5, 10))
    assert not torch.equal(a.noise(4, 10), Sampling(1.0, None, 4).noise(4, 10))
    scaled = Sampling(2.0, None, 3).noise(4, 10)
    assert torch.allclose(scaled, 2 * a.noise(4, 10))
    big = Sampling(1.0, None, 0).noise(0, 100_000)
    assert float(big.min()) > -3.4 and float(big.max()) < 27.7  # fixed-point and CKKS safe


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ((-1.0, None, None), "--temperature -1.0"),
        ((float("nan"), None, None), "--temperature nan"),
        ((1.0, 0, None), "--top-k 0"),
        ((0.0, 5, None), "give --temperature T > 0 too"),
        ((1.0, None, -2), "--seed -2"),
    ],
)
def test_bad_options_name_the_option(options: tuple, message: str) -> None:
    with pytest.raises(UserError, match=message):
        Sampling.from_options(*options)


def test_options_and_their_arguments_round_trip() -> None:
    assert Sampling.from_options(None, None, None) == GREEDY and GREEDY.arguments() == []
    rule = Sampling.from_options(0.7, 3, 9)
    assert rule.arguments() == ["--temperature", "0.7", "--seed", "9", "--top-k", "3"]
    fresh = Sampling.from_options(1.0, None, None)
    assert fresh.seed >= 0 and fresh.to_dict()["seed"] == fresh.seed
