"""Kept Beaver masks (`protocols.mpc.reuse`) on real parties: right values, fewer bytes.

One run of the three CrypTen processes (dealer provider). Each step is metered on its own
(bytes the data owner sends to the model owner). Checked against plaintext float64 on the
shared values, and against the byte counts the protocol claims: 8 bytes per element of
each operand not yet opened, nothing for a kept operand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protocols.mpc.local import run_local
from protocols.mpc.runtime import Role

TOLERANCE = 4e-4  # a few units of 2^-16 times the magnitudes below (|x| <= 4, |w| <= 1)


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {
        "x": (torch.rand(6, 16, generator=g) * 8 - 4),
        "y": (torch.rand(6, 16, generator=g) * 8 - 4),
        "w": torch.rand(16, 5, generator=g) * 2 - 1,
        "f": torch.rand(6, 1, generator=g) + 0.5,
    }


def steps(role: Role) -> dict[str, tuple[list | None, int, int]]:
    """name -> (revealed value on the data owner, bytes sent, rounds) per step."""
    from protocols.mpc import reuse
    from protocols.mpc.crypten_setup import import_crypten
    from protocols.mpc.meter import Meter
    from protocols.mpc.reveal import reveal_to

    crypten = import_crypten()
    data = _inputs()
    mine = role is Role.DATA_OWNER

    def share(name: str, owner: Role) -> object:
        value = data[name] if role is owner else torch.zeros_like(data[name])
        return crypten.cryptensor(value, src=int(owner))

    x, y, f = (share(n, Role.DATA_OWNER) for n in ("x", "y", "f"))
    w = share("w", Role.MODEL_OWNER)
    assert reuse.available()
    meter = Meter().install()
    out: dict[str, tuple[list | None, int, int]] = {}

    def step(name: str, run: object) -> None:
        before = meter.snapshot()
        value = run()  # type: ignore[operator]
        cost = meter.snapshot() - before
        shown = reveal_to(value, 1) if value is not None else None
        out[name] = (None if shown is None else shown.tolist(), cost.bytes_sent, cost.rounds)

    step("open_w", lambda: reuse.open_all([(w, "w")]))
    step("x_w", lambda: reuse.product(x, w, "matmul", y_key="w"))
    step("y_w", lambda: reuse.product(y, w, "matmul", y_key="w"))
    step("x_w_again", lambda: reuse.product(x, w, "matmul", x_key="x", y_key="w"))
    step("x_square_kept", lambda: reuse.square(x, key="x"))
    step("x_f", lambda: reuse.product(x, f, x_key="x", release=("x",)))
    step("x_f_released", lambda: reuse.product(x, f, x_key="x"))
    step("crypten_x_w", lambda: x.matmul(w))
    meter.remove()
    return out if mine else {}


@pytest.fixture(scope="module")
def run() -> dict[str, tuple[list | None, int, int]]:
    return run_local(steps)[Role.DATA_OWNER].value


def _on_grid(t: torch.Tensor) -> np.ndarray:
    return np.round(t.double().numpy() * 2**16) / 2**16


def test_products_with_kept_masks_match_plaintext(run: dict) -> None:
    d = {k: _on_grid(v) for k, v in _inputs().items()}
    want = {
        "x_w": d["x"] @ d["w"],
        "y_w": d["y"] @ d["w"],
        "x_w_again": d["x"] @ d["w"],
        "x_square_kept": d["x"] ** 2,
        "x_f": d["x"] * d["f"],
        "x_f_released": d["x"] * d["f"],
        "crypten_x_w": d["x"] @ d["w"],
    }
    for name, expected in want.items():
        got = np.asarray(run[name][0])
        scale = max(1.0, float(np.abs(expected).max()))
        assert np.abs(got - expected).max() <= TOLERANCE * scale, name


def test_a_kept_operand_is_not_opened_again(run: dict) -> None:
    x_bytes, w_bytes, f_bytes = 6 * 16 * 8, 16 * 5 * 8, 6 * 8
    sent = {name: value[1] for name, value in run.items()}
    assert sent["open_w"] == w_bytes  # the weight, once
    assert sent["x_w"] == x_bytes  # only the activation
    assert sent["y_w"] == x_bytes
    assert sent["x_w_again"] == x_bytes  # x opened here, kept under "x"
    assert sent["x_square_kept"] == 0 and run["x_square_kept"][2] == 0  # nothing to open
    assert sent["x_f"] == f_bytes  # only the per-row factor
    assert sent["x_f_released"] == x_bytes + f_bytes  # released: a fresh mask for x
    assert sent["crypten_x_w"] == x_bytes + w_bytes  # CrypTen opens both every time
    assert run["x_w"][2] == 1 and run["crypten_x_w"][2] == 1
