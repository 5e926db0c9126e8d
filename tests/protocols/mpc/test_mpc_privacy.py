"""What each party receives, recorded by instrumenting the communicator, reveals nothing.

Two runs with the same weights and different inputs (and two with the same input and
different weights): every tensor a party receives from the other computing party is
recorded (`Meter(keep_views=True)`). The model owner's view must not depend on the input,
and the data owner's view must not depend on the weights except through the revealed
output. Checked: the views have the same shapes in both runs; opened 64-bit words look
uniformly random (bits 63..60, 48, 40 and 32 each set in half of the words within 6
standard deviations, and almost none small in magnitude, as encodings of real values
are); opened single bits (comparisons) are 1 half of the time; and no word equals the
fixed-point encoding of any secret value. A negative control shows the checks catch a
protocol that sends the input in the clear.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.privacy import SCALE, assert_uniform, encodings, words

from protocols.mpc.local import run_local
from protocols.mpc.reveal import reveal_to
from protocols.mpc.runtime import Role


def secrets(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 16, generator=g) * 3
    w1 = torch.randn(16, 32, generator=g) / 4
    w2 = torch.randn(32, 8, generator=g) / 4
    return x, w1, w2


def network(role: Role, input_seed: int, weight_seed: int) -> list[int] | None:
    """linear -> relu -> linear -> a LayerNorm-like scaling -> plus a power -> softmax on
    shares; the output revealed to the data owner. The weights' masks are kept and opened
    once before the input is used, the scaling reuses its input's mask, and the powers
    are batched products of kept terms (`protocols.mpc.reuse`), so the views include
    those protocols."""
    from protocols.mpc import reuse
    from protocols.mpc.crypten_setup import import_crypten
    from protocols.mpc.polynomial import powers

    crypten = import_crypten()
    x, _, _ = secrets(input_seed)
    _, w1, w2 = secrets(weight_seed)
    mine = role is Role.DATA_OWNER
    xs = crypten.cryptensor(x if mine else torch.zeros_like(x), src=1)
    w1s = crypten.cryptensor(w1 if not mine else torch.zeros_like(w1), src=0)
    w2s = crypten.cryptensor(w2 if not mine else torch.zeros_like(w2), src=0)
    reuse.open_all([(w1s, "w1"), (w2s, "w2")])
    h = reuse.product(xs, w1s, "matmul", y_key="w1").relu()
    h = reuse.product(h, w2s, "matmul", y_key="w2")
    squares = reuse.square(h, key="h").sum(-1, keepdim=True)
    h = reuse.product(h, squares * 0.01 + 1, x_key="h", release=("h",))
    h = h + powers(h * 0.1, 5)[4]  # batched products of kept terms
    h = h.softmax(-1)
    out = reveal_to(h, 1)
    return None if out is None else out.reshape(-1).tolist()


def leaky(role: Role, input_seed: int) -> None:
    """A broken protocol: the data owner broadcasts its encoded input in the clear."""
    from crypten import communicator

    x, _, _ = secrets(input_seed)
    encoded = (x * SCALE).round().long()
    communicator.get().broadcast(
        encoded if role is Role.DATA_OWNER else torch.zeros_like(encoded), 1
    )


def _views(input_seed: int, weight_seed: int) -> dict[Role, list[np.ndarray]]:
    results = run_local(network, input_seed, weight_seed, keep_views=True)
    return {role: results[role].views for role in (Role.MODEL_OWNER, Role.DATA_OWNER)}


@pytest.fixture(scope="module")
def runs() -> dict[tuple[int, int], dict[Role, list[np.ndarray]]]:
    return {(i, w): _views(i, w) for i, w in [(1, 10), (2, 10), (1, 20)]}


def test_model_owner_view_does_not_depend_on_the_input(runs) -> None:
    a, b = runs[(1, 10)][Role.MODEL_OWNER], runs[(2, 10)][Role.MODEL_OWNER]
    assert [v.shape for v in a] == [v.shape for v in b]
    for views in (a, b):
        assert_uniform(views)
    x1, _, _ = secrets(1)
    x2, _, _ = secrets(2)
    assert not (set(words(a).tolist()) & encodings(x1))
    assert not (set(words(b).tolist()) & encodings(x2))


def test_data_owner_view_does_not_depend_on_the_weights(runs) -> None:
    a, b = runs[(1, 10)][Role.DATA_OWNER], runs[(1, 20)][Role.DATA_OWNER]
    assert [v.shape for v in a] == [v.shape for v in b]
    for views in (a, b):
        assert_uniform(views[:-1])  # the last one is the output's share, revealed
    _, w1, w2 = secrets(10)
    assert not (set(words(a).tolist()) & encodings(w1, w2))


def test_the_view_is_not_empty_and_the_output_is_right(runs) -> None:
    """The instrument sees the protocol (so the tests above could fail)."""
    views = runs[(1, 10)][Role.MODEL_OWNER]
    assert len(views) > 10
    x, _, _ = secrets(1)
    _, w1, w2 = secrets(10)
    h = torch.relu(x @ w1) @ w2
    h = h * ((h * h).sum(-1, keepdim=True) * 0.01 + 1)
    expected = torch.softmax(h + (h * 0.1) ** 5, -1)
    got = run_local(network, 1, 10)[Role.DATA_OWNER].value
    assert np.abs(np.array(got) - expected.reshape(-1).numpy()).max() < 0.02


def test_a_leaky_protocol_is_caught() -> None:
    """Negative control: the same checks flag a protocol that sends the input in the clear."""
    views = run_local(leaky, 1, keep_views=True)[Role.MODEL_OWNER].views
    x, _, _ = secrets(1)
    assert set(words(views).tolist()) & encodings(x)
    with pytest.raises(AssertionError):
        assert_uniform(views * 20)
