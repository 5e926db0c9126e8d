"""The suite covers the registry: every registered op has a builder, every builder's graph
calls its op, and a graph cut from the combined export is the graph (and plan) that
`secinfer.core.prepare.prepare` makes from the case's own program."""

from __future__ import annotations

import pytest
import torch

from conformance.bounds import function_of
from conformance.cases import (
    ALL,
    BY_NAME,
    CASES,
    decomposed_ops,
    graph_of,
    inputs,
    module_of,
    plan_for,
    samples,
)
from secinfer.core.prepare import prepare
from secinfer.core.registry import REGISTRY


def missing_builders() -> list[str]:
    return sorted(op for op in REGISTRY if op not in CASES)


def test_every_registered_op_has_a_builder() -> None:
    missing = missing_builders()
    assert not missing, (
        f"registered ops without a conformance builder: {', '.join(missing)}; add a case for "
        "each to tests/conformance/cases.py (a tiny module calling the op, its inputs)"
    )


def test_a_newly_registered_op_is_found_without_a_builder() -> None:
    """The check above can fail: an op registered after the table was written is named."""
    from secinfer.core.registry import OpSpec

    REGISTRY["aten.brand_new_op"] = OpSpec("aten.brand_new_op", "arith")
    try:
        assert missing_builders() == ["aten.brand_new_op"]
    finally:
        del REGISTRY["aten.brand_new_op"]


def test_every_builder_is_for_a_registered_op() -> None:
    unknown = sorted(op for op in CASES if op not in REGISTRY)
    assert not unknown, f"builders for ops the registry does not know: {', '.join(unknown)}"


@pytest.mark.parametrize("name", [case.name for case in ALL])
def test_the_case_graph_calls_its_op(name: str) -> None:
    """A raw case is raw because decomposition removes its op; any other case's op is in
    the graph `prepare` would make."""
    case = BY_NAME[name]
    ops = [node.op for node in graph_of(name).calls]
    assert case.op in ops, f"the builder of {name} makes {ops}, not {case.op}"
    if case.raw:
        assert case.op not in decomposed_ops(name), (
            f"{case.op} survives decomposition: make its case a prepared one (raw=False)"
        )


def _own_program(name: str) -> torch.export.ExportedProgram:
    case = BY_NAME[name]
    dynamic = tuple(arg.dynamic for arg in case.args)
    xs = inputs(case, "realistic")
    shapes = (dynamic,) if any(d is not None for d in dynamic) else None
    return torch.export.export(module_of(name), xs, dynamic_shapes=shapes)


def _same_as_prepare(name: str) -> None:
    case = BY_NAME[name]
    targets = ["mpc", "he"] if function_of(case.op, case.variant) else ["mpc"]
    program = _own_program(name)
    for target in targets:  # approx: every op has a kernel; the plan is the target's
        graph, plan = prepare(program, "approx", samples(case, "realistic"), None, target)
        cut, cut_plan = plan_for(name, "approx", "realistic", target)
        assert [n.op for n in graph.calls] == [n.op for n in cut.calls]
        mine = [(c.function, c.method, c.interval, c.options) for c in cut_plan.choices.values()]
        theirs = [(c.function, c.method, c.interval, c.options) for c in plan.choices.values()]
        assert mine == theirs, (name, target)


@pytest.mark.parametrize("name", ["aten.gelu", "aten.layer_norm", "aten.pow[-0.5]", "aten.linear"])
def test_a_cut_graph_plans_as_prepare_does(name: str) -> None:
    """Four cases here (prepare's decomposition costs about a second a program)."""
    _same_as_prepare(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [case.name for case in ALL if not case.raw])
def test_every_cut_graph_plans_as_prepare_does(name: str) -> None:
    _same_as_prepare(name)
