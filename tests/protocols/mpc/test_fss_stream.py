"""FSS keys between real parties (three processes over sockets): dealt ahead of a query
by the session's `KeySchedule`, and refused when the stream is wrong.

- Keys dealt ahead: a second query of the same shapes takes keys dealt before its input
  (all of its key traffic in `before`, none inside the query: no dealer or offline bytes
  there) and computes the same exact comparisons; a query of another shape gets its keys
  as it asks; a schedule that no longer matches (another request first) is dropped and
  the keys are dealt online, with the same results.
- A key stream cut short, or framed for another request, stops the data owner with one
  line (`KeyStreamError`) and the run ends at once: no party waits for its peer timeout.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch

from protocols.mpc.local import LocalRunError, run_local
from protocols.mpc.runtime import Role

BITS = 24
PEER_TIMEOUT = 60.0


def _values(n: int, seed: int) -> np.ndarray:
    return np.round(np.random.default_rng(seed).uniform(-50, 50, n) * 2**16) / 2**16


def schedule_program(role: Role) -> dict[str, Any]:
    from protocols.mpc import fss_compare
    from protocols.mpc.crypten_setup import import_crypten
    from protocols.mpc.meter import Meter
    from protocols.mpc.reveal import reveal_to

    crypten = import_crypten()
    mine = role is Role.DATA_OWNER
    schedule = fss_compare.KeySchedule()
    meter = Meter().install()
    out: dict[str, Any] = {}

    def query(name: str, n: int, seed: int, shapes: Any) -> None:
        x = _values(n, seed)
        secret = crypten.cryptensor(torch.as_tensor(x if mine else np.zeros(n)), src=1)
        start = meter.snapshot()
        schedule.before(shapes)
        ahead = meter.snapshot()
        with schedule.during(shapes):
            rectified = fss_compare.relu(secret, BITS)
            (below,) = fss_compare.less_than(secret, [3.0], BITS)  # an integer sharing
        inside = meter.snapshot() - ahead
        plain = [reveal_to(v, 1) for v in (rectified, below)]
        out[name] = {
            "values": np.stack([v.numpy() for v in plain]) if mine else None,
            "x": x,
            "ahead": (ahead - start).to_dict(),
            "inside": inside.to_dict(),
        }

    try:
        query("first", 500, 1, (500,))
        query("again", 500, 2, (500,))
        query("other_shape", 300, 3, (300,))
        query("stale_schedule", 300, 4, (500,))  # keys dealt for 500, the query needs 300
    finally:
        meter.remove()
    return out


@pytest.fixture(scope="module")
def run() -> dict[str, Any]:
    parties = run_local(schedule_program, timeout=300.0)
    return parties[Role.DATA_OWNER].value


def _exact(entry: dict[str, Any]) -> None:
    x = entry["x"]
    np.testing.assert_array_equal(entry["values"], np.stack([np.maximum(x, 0), x < 3.0]))


def test_a_repeated_shape_gets_its_keys_before_the_input(run) -> None:
    first, again = run["first"], run["again"]
    _exact(first)
    _exact(again)
    assert first["ahead"]["offline_bytes_received"] == 0  # nothing known yet: keys inside
    assert first["inside"]["offline_bytes_received"] > 0
    assert again["ahead"]["offline_bytes_received"] == first["inside"]["offline_bytes_received"]
    assert again["inside"]["offline_bytes_received"] == 0
    assert again["inside"]["bytes_sent"] == first["inside"]["bytes_sent"]  # online: the same


def test_other_shapes_and_a_stale_schedule_deal_as_they_ask(run) -> None:
    for name in ("other_shape", "stale_schedule"):
        _exact(run[name])
        assert run[name]["inside"]["offline_bytes_received"] > 0
    # the stale schedule's keys (for 500 elements) were dealt ahead, then dropped
    assert run["stale_schedule"]["ahead"]["offline_bytes_received"] > 0


def sabotaged_program(role: Role, how: str) -> str:
    from protocols.mpc import fss_compare
    from protocols.mpc.crypten_setup import import_crypten
    from protocols.mpc.fss import dealing

    crypten = import_crypten()
    if role is Role.MODEL_OWNER:
        real = dealing.frame
        if how == "cut":  # a stream that ends early: the last words never come
            dealing.frame = lambda *args: real(*args)[:-7]
        else:  # keys framed for another request
            dealing.frame = lambda words, n, bits, selects: real(words, n + 1, bits, selects)
    secret = crypten.cryptensor(torch.zeros(200), src=1)
    fss_compare.relu(secret, BITS)
    return "finished"


@pytest.mark.parametrize(
    ("how", "needle"),
    [("cut", "FSS key stream cut short"), ("shape", "FSS keys for another shape")],
)
def test_a_bad_key_stream_stops_the_parties_with_one_line(how: str, needle: str) -> None:
    began = time.perf_counter()
    with pytest.raises(LocalRunError) as info:
        run_local(sabotaged_program, how, timeout=120.0, peer_timeout=PEER_TIMEOUT)
    message = str(info.value)
    assert "data-owner" in message and needle in message
    line = next(part for part in message.splitlines() if needle in part)
    assert "KeyStreamError" in line
    assert time.perf_counter() - began < PEER_TIMEOUT  # nobody waited for a peer timeout
