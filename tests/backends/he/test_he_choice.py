"""How an HE run chooses its CKKS parameters, states its hiding, and refuses what no 128-bit
parameter set can serve (`secinfer.backends.he.choice`), on small exported models.

- The value bound B: a power of two, at least 1.25 x the largest |value| of an encrypted
  tensor over the samples; values computed from the weights alone (plain) do not count.
- The choice: with the default 40 bits of hiding N = 8192 cannot keep the refresh's 2
  levels and leave 2 for products, so a larger ring wins, in coefficient mode, hiding >= 40;
  with 12 bits asked the slot mask at N = 8192 wins (today's parameters). Every candidate
  is listed with its predicted seconds on LAN and WAN, sorted, and the reason names the
  winner and its runner-up. Without refresh, the chain holds the model's depth.
- Refusals before any party starts (`secinfer run` in this process, the local launcher
  replaced by one that fails the test if called): an input wider than the largest ring's
  slots; without refresh, a model deeper than the deepest 128-bit chain; one `error:`
  line, exit 2.
- Flooding in a real session (server thread and client on loopback, N = 8192): the output
  within the stated slot error bound of the unflooded one, the record states the bits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.cli import assert_user_error, secinfer_here
from helpers.he import encrypted_run

pytest.importorskip("tenseal")

from secinfer.backends.he import local as he_local
from secinfer.backends.he.choice import (
    check_serviceable,
    choose_parameters,
    example_specs,
    value_bound,
)
from secinfer.core.prepare import prepare
from secinfer.errors import UserError


class Square(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return (y * y).mean(-1)


class Deep(Square):
    """`squarings` squarings (scaled to stay below 1) after the linear layer."""

    def __init__(self, squarings: int = 3) -> None:
        super().__init__()
        self.squarings = squarings

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x) * 0.1
        for _ in range(self.squarings):
            y = y * y
        return y.mean(-1)


class BigWeights(Square):
    """A large tensor computed from the weights alone (plain), small encrypted values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = self.fc.weight * 1e6
        return self.fc(x) + big.sum() * 0.0


def _prepared(model: torch.nn.Module, x: torch.Tensor):
    program = torch.export.export(model.eval(), (x,))
    graph, plan = prepare(program, "he", [(x,)], None)
    return graph, plan, example_specs(graph, (x,), False)


def test_the_value_bound_covers_encrypted_values_only() -> None:
    x = torch.randn(2, 3, 8) * 3
    graph, _, specs = _prepared(BigWeights(), x)
    bound = value_bound(graph, specs, [(x,)])
    with torch.no_grad():
        observed = float(BigWeights().eval()(x).abs().max())
    assert bound.observed == pytest.approx(observed, rel=1e-5)
    assert bound.bound >= 1.25 * observed and bound.bound < 2.5 * observed + 2
    assert float(np.log2(bound.bound)).is_integer()
    assert "calibration samples" in bound.explain()


@pytest.fixture(scope="module")
def square():
    x = torch.randn(2, 3, 8)
    graph, plan, specs = _prepared(Square(), x)
    return graph, plan, specs, value_bound(graph, specs, [(x,)])


def test_forty_bits_move_to_a_larger_ring_in_coefficient_mode(square) -> None:
    graph, plan, specs, bound = square
    choice = choose_parameters(graph, plan, specs, bound)
    assert choice.params.poly_modulus_degree >= 16384
    assert choice.refresh is not None and choice.refresh.mode == "coefficient"
    assert choice.hiding()["hiding_bits"] >= 40
    lan = [row["lan"] for row in choice.candidates]
    assert lan == sorted(lan) and len(lan) > 3
    assert all(row["wan"] > row["lan"] for row in choice.candidates)
    assert all(row["poly_modulus_degree"] > 8192 for row in choice.candidates)
    assert "N=8192" in choice.reason and "next:" in choice.reason
    assert str(choice.params.coeff_mod_bit_sizes) in choice.reason


def test_twelve_bits_keep_todays_parameters(square) -> None:
    graph, plan, specs, bound = square
    choice = choose_parameters(graph, plan, specs, bound, hiding_bits=12)
    assert choice.params.poly_modulus_degree == 8192
    assert choice.params.coeff_mod_bit_sizes == [60, 40, 40, 60]
    assert choice.refresh.mode == "slot" and choice.reserve == 0
    assert choice.hiding()["hiding_bits"] >= 12


def test_without_refresh_the_chain_holds_the_models_depth() -> None:
    x = torch.randn(2, 3, 8)
    graph, plan, specs = _prepared(Deep(4), x)
    choice = choose_parameters(
        graph, plan, specs, value_bound(graph, specs, [(x,)]), allow_refresh=False
    )
    assert choice.refresh is None and choice.hiding()["hiding_bits"] is None
    assert choice.params.depth >= 5  # the linear layer, the scaling, four squarings


# --- refusals before any party starts ------------------------------------------------------
@pytest.fixture
def no_parties(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a party was started")

    monkeypatch.setattr(he_local, "run_local_he", forbidden)


def test_an_input_wider_than_every_ring_is_refused_before_any_party(tmp_path, no_parties):
    x = torch.randn(40000, 8)
    path = tmp_path / "wide.pt2"
    torch.export.save(torch.export.export(Square().eval(), (x,)), path)
    done = secinfer_here("run", str(path), "--backend", "he")
    assert_user_error(done, "slots")
    assert "N=32768" in done.stderr


def test_a_model_deeper_than_every_chain_is_refused_without_refresh(tmp_path, no_parties):
    x = torch.randn(2, 3, 8)
    path = tmp_path / "deep.pt2"
    torch.export.save(torch.export.export(Deep(20).eval(), (x,)), path)
    done = secinfer_here("run", str(path), "--backend", "he", "--no-refresh")
    assert_user_error(done, "offers 19")


def test_check_serviceable_passes_a_servable_model(square) -> None:
    graph, plan, _, _ = square
    check_serviceable(graph, plan)
    check_serviceable(graph, plan, refresh=False)
    x = torch.randn(2, 3, 8)
    graph, plan, _ = _prepared(Deep(20), x)
    with pytest.raises(UserError, match="deepest 128-bit context"):
        check_serviceable(graph, plan, refresh=False)


# --- flooding in a session -----------------------------------------------------------------
def test_a_flooded_output_stays_within_the_stated_bound(square) -> None:
    graph, plan, _, _ = square
    x = torch.randn(2, 3, 8)
    y, expected, outcome = encrypted_run(graph, plan, (x,), timeout=60, flood_bits=20)
    record = outcome["record"]
    flood = record["flood"]
    assert flood["flood_bits"] == 20
    assert flood["slot_error_bound"] == pytest.approx(7.4e-4, rel=0.05)
    error = np.abs(y - expected).max()
    assert error <= flood["slot_error_bound"] + 1e-5
    assert error > 1e-7  # the flood is there (unflooded: about 1e-9)


def test_the_session_records_the_hiding(square) -> None:
    graph, plan, _, _ = square
    x = torch.randn(2, 3, 8)
    _, _, outcome = encrypted_run(graph, plan, (x,), timeout=60)
    record = outcome["record"]
    hiding = record["hiding"]
    assert hiding["mode"] == "slot" and hiding["hiding_bits"] == 12  # bare parameters
    assert hiding["value_bound"]["node"].startswith("nominal")
