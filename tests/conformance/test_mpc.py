"""`mpc` against `plain`: every op the mpc backend claims, both ranges, in ONE session.

The parent builds every case's graph and its mpc plan (calibrated on the case's range),
describes the graph as the model owner's public architecture, and starts the three real
CrypTen parties once (`protocols.mpc.local.run_local`, 16 fractional bits, the dealer's
Beaver triples); `mpc_session.run_jobs` runs every one-op graph in that session as a
query and reveals it to the data owner. Each case is then checked here against the plain
run of the same graph within `bounds` (fixed point at 16 fractional bits; nonlinear ops:
the plan's certified error plus the secure kernel's fixed-point part).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest

from conformance.cases import ALL, BY_NAME, claims, combined, inputs, plan_for, reference
from conformance.checks import assert_conforms, params, secure_items
from conformance.mpc_session import Job, run_jobs
from protocols.mpc.local import run_local
from protocols.mpc.runtime import Role
from secinfer.core import architecture
from secinfer.load.checks import InputSpec

ITEMS, SLOW_ITEMS = secure_items("mpc")
UNCLAIMED = sorted({case.op for case in ALL if not claims(case.op, "mpc")})


def _job(name: str, range_: str) -> tuple[Job, Any]:
    graph, plan = plan_for(name, "mpc", range_)
    ranges = combined().program.range_constraints
    specs = [
        InputSpec.of(input_name, graph.fx_nodes[input_name].meta["val"], ranges)
        for input_name in graph.user_inputs
    ]
    described = architecture.describe(graph, specs, list(graph.user_inputs), "output")
    public = json.loads(json.dumps(described))  # as the wire carries it (JSON)
    weights = {k: v.numpy() for k, v in graph.owned.items() if v.is_floating_point()}
    xs = inputs(BY_NAME[name], range_)
    plan_data = json.loads(json.dumps(plan.to_dict()))
    job = Job(f"{name}|{range_}", public, weights, plan_data, [x.numpy() for x in xs])
    return job, plan


def _session(items: list[tuple[str, str]]) -> dict[str, Any]:
    """Every job of `items` in one run of the parties: key -> (status, value), plans."""
    jobs, plans = [], {}
    for name, range_ in items:
        job, plans[job.key] = _job(name, range_)
        jobs.append(job)
    began = time.perf_counter()
    parties = run_local(run_jobs, jobs, timeout=900.0, peer_timeout=120.0)
    seconds = time.perf_counter() - began
    return {"results": parties[Role.DATA_OWNER].value, "plans": plans, "seconds": seconds}


@pytest.fixture(scope="module")
def session() -> dict[str, Any]:
    return _session(ITEMS)


@pytest.fixture(scope="module")
def slow_session() -> dict[str, Any]:
    return _session(SLOW_ITEMS)


def test_the_mpc_backend_claims_what_it_registered() -> None:
    """The ops without an mpc kernel are exactly those the backend leaves out on purpose
    (argmax, conv2d as exported, cos and sin of public angles, index_select, log and
    log-softmax, or on bits)."""
    assert UNCLAIMED == [
        "aten._log_softmax",
        "aten.argmax",
        "aten.bitwise_or",
        "aten.conv2d",
        "aten.cos",
        "aten.index_select",
        "aten.log",
        "aten.log_softmax",
        "aten.logical_or",
        "aten.sin",
    ]


@pytest.mark.parametrize(("name", "range_"), params("mpc", ITEMS))
def test_mpc_matches_plain(session: dict[str, Any], name: str, range_: str) -> None:
    check(session, name, range_)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "range_"), params("mpc", SLOW_ITEMS))
def test_mpc_matches_plain_on_outliers(slow_session: dict[str, Any], name: str, range_: str):
    """Exact ops on the outlier range (a second session: make test-all)."""
    check(slow_session, name, range_)


def check(session: dict[str, Any], name: str, range_: str) -> None:
    key = f"{name}|{range_}"
    status, value, _ = session["results"][key]
    assert status == "ok", f"{name} on mpc, {range_} range, failed: {value}"
    xs = inputs(BY_NAME[name], range_)
    want = reference(name, range_)
    assert_conforms(name, "mpc", range_, session["plans"][key], xs, want, np.asarray(value))
