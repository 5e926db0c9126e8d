"""`approx` against `plain`: every registered op (approx claims all), both ranges; the
nonlinear ones under the plans of both targets (mpc, he). Bounds: `bounds`."""

from __future__ import annotations

import pytest

from conformance.bounds import function_of
from conformance.cases import ALL, RANGES, Case, claims, inputs, plan_for, reference
from conformance.checks import assert_conforms, params
from secinfer.core.execute import Executor
from secinfer.core.plan import TARGETS


def _targets(case: Case) -> tuple[str, ...]:
    """Exact ops have no plan to speak of; nonlinear ops run under the mpc plan, and under
    the he plan where he claims the op (elsewhere the he plan holds mpc's methods)."""
    if function_of(case.op, case.variant) is None:
        return ("mpc",)
    return TARGETS if claims(case.op, "he") else ("mpc",)


ITEMS = [
    (case.name, range_, target) for case in ALL for range_ in RANGES for target in _targets(case)
]


@pytest.mark.parametrize(("name", "range_", "target"), params("approx", ITEMS))
def test_approx_matches_plain(name: str, range_: str, target: str) -> None:
    from conformance.cases import BY_NAME

    graph, plan = plan_for(name, "approx", range_, target)
    xs = inputs(BY_NAME[name], range_)
    got = Executor(graph, "approx", plan).run(xs).outputs[0]
    assert_conforms(name, "approx", range_, plan, xs, reference(name, range_), got)
