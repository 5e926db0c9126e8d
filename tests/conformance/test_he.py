"""`he` against `plain`: every op the he backend claims, in this process, ONE CKKS context.

The he backend registers a kernel for every op (the model owner's own plain computations
may use any); it claims those not marked `plain_only` (what `secinfer inspect` counts). Each
such case is planned for he (calibrated on its range), its inputs encrypted by the
client's context, run by the server's engine on the public copy with masked refreshes
(`he_session.HeRunner`) and decrypted; the bound is CKKS noise for exact ops and the
plan's certified error plus CKKS noise for the nonlinear ones (`bounds`).
"""

from __future__ import annotations

import pytest

from conformance.cases import BY_NAME, inputs, plan_for, reference
from conformance.checks import assert_conforms, params, secure_items
from conformance.he_session import HeRunner

ITEMS, SLOW_ITEMS = secure_items("he")


@pytest.fixture(scope="module")
def runner() -> HeRunner:
    return HeRunner()


@pytest.mark.parametrize(("name", "range_"), params("he", ITEMS))
def test_he_matches_plain(runner: HeRunner, name: str, range_: str) -> None:
    check(runner, name, range_)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "range_"), params("he", SLOW_ITEMS))
def test_he_matches_plain_on_outliers(runner: HeRunner, name: str, range_: str) -> None:
    """Exact ops on the outlier range (make test-all)."""
    check(runner, name, range_)


def check(runner: HeRunner, name: str, range_: str) -> None:
    graph, plan = plan_for(name, "he", range_)
    xs = inputs(BY_NAME[name], range_)
    got = runner.run(graph, plan, xs)
    assert_conforms(name, "he", range_, plan, xs, reference(name, range_), got)
