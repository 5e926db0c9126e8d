"""Typed plan options (`secinfer.core.options`): each method declares its options once.

* a misspelt option or a wrong type in `--config` is one line naming the key and what is
  allowed, exit 2, no traceback, on every backend (plain's plan is never used, so approx,
  mpc and he), before calibration and before any party starts;
* a valid option set round-trips through `Plan.to_dict` / `Plan.from_dict` (hypothesis);
* a peer's plan with an option its method does not declare is refused by
  `Plan.from_peer`;
* the defaults have one source: the plan's table, the mpc kernel's settings for a bare
  choice and the options classes agree (7 squarings of order 2, cut-off 14).
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from secinfer.cli import main
from secinfer.core import options as O
from secinfer.core.graph import Graph, build_graph
from secinfer.core.plan import (
    DEFAULT_METHODS,
    DEFAULTS,
    METHODS,
    SOFTMAX_OPTIONS,
    TARGETS,
    Choice,
    Plan,
    make_plan,
    read_config,
)
from secinfer.errors import UserError

DATA = Path(__file__).parents[2] / "secinfer" / "data"
EXP_LIMIT = "options: squarings, order, cutoff, reciprocal, precision_bits, comparisons"
EXP_MAX = "options: target, maximum, precision_bits, comparisons"
BAD_CONFIGS = {
    "misspelt": (
        {"defaults": {"softmax": {"options": {"squaring": 6}}}},
        f"--config: softmax option 'squaring' is not an option of method exp_limit; {EXP_LIMIT}",
    ),
    "wrong type": (
        {"defaults": {"softmax": {"options": {"squarings": "6"}}}},
        "--config: softmax option 'squarings' of method exp_limit must be an integer from 1 "
        "to 64, not '6'",
    ),
}
HE_BAD_CONFIGS = {  # the he plan's softmax is exp_max, whose options differ
    case: f"--config: softmax option '{key}' is not an option of method exp_max; {EXP_MAX}"
    for case, key in (("misspelt", "squaring"), ("wrong type", "squarings"))
}
RUNS = {  # backend -> the bundled model it runs
    "plain": DATA / "digits.pt2",
    "approx": DATA / "digits.pt2",
    "mpc": DATA / "digits.pt2",
    "he": DATA / "digits_he.pt2",
}


def _no_party_may_start(*args: object, **kwargs: object) -> None:
    raise AssertionError("a party process was started for a config that must be refused first")


def _run(*args: str) -> tuple[int, str]:
    """`secinfer` in this process: (exit code, stderr with any escaped traceback)."""
    result = CliRunner().invoke(main, list(args))
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return result.exit_code, stderr


@pytest.mark.parametrize("backend", list(RUNS))
@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_a_bad_option_is_one_line_on_every_backend(
    backend: str, case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused before any party starts: starting one fails the test (no timing involved)."""
    from secinfer.backends import processes

    monkeypatch.setattr(processes, "start", _no_party_may_start)
    config, expected = BAD_CONFIGS[case]
    if backend == "he":
        expected = HE_BAD_CONFIGS[case]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    report = tmp_path / "report.json"
    code, stderr = _run(
        "run", str(RUNS[backend]), "-b", backend, "--config", str(path), "--report", str(report)
    )
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr == f"error: {expected}\n"
    assert not report.exists()


class _Attention(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(torch.softmax(x @ x.transpose(-1, -2), -1) @ x)


@pytest.fixture(scope="module")
def graph() -> Graph:
    x = torch.randn(2, 4, 8)
    return build_graph(torch.export.export(_Attention(), (x,)))


NODE_MISTAKES = {
    "nodes:\n  softmax:\n    options: {order: 3}\n": (
        "--config: node softmax: softmax option 'order' of method exp_limit must be one of "
        "1, 2, not 3"
    ),
    "nodes:\n  softmax:\n    options: {target: 0}\n": (
        "--config: node softmax: softmax option 'target' of method exp_max must be a number "
        "above 0 up to 0.1, not 0"
    ),
    "defaults:\n  softmax: {method: power}\nnodes:\n  softmax: {options: {squarings: 6}}\n": (
        "--config: node softmax: softmax option 'squarings' is not an option of method "
        "power; options: p, normalizer, eps, scale, reciprocal, precision_bits, comparisons"
    ),
    "defaults:\n  gelu: {option: {}}\n": (
        "--config: gelu: 'option' is not a setting; settings: method, options, interval"
    ),
    "defaults:\n  gelu: {options: {precision_bits: 20.5}}\n": (
        "--config: gelu option 'precision_bits' of method {gelu} must be an integer from 16 "
        "to 24, or null, not 20.5"
    ),
    "defaults:\n  softmax: {interval: [2, 1]}\n": (
        "--config: softmax interval: a finite [low, high] expected"
    ),
    "nodes:\n  gelu: {options: []}\n": (
        "--config: node gelu: gelu options of method {gelu} must be an object of name: "
        "value, not []"
    ),
}


@pytest.mark.parametrize("text", list(NODE_MISTAKES))
def test_yaml_node_and_entry_mistakes(graph: Graph, text: str, tmp_path: Path) -> None:
    """A YAML config; a node's options are checked against the method it runs (its
    function's defaults merged under its own entry, as the plan merges them)."""
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    config = read_config(path)
    expected = NODE_MISTAKES[text]
    if text.startswith("nodes:\n  softmax"):  # the method the message names, on both targets
        method = "exp_max" if "exp_max" in expected else "exp_limit"
        config = {**config, "defaults": {"softmax": {"method": method}}}
    for target in TARGETS:
        with pytest.raises(UserError) as caught:
            make_plan(graph, target, config)
        gelu = DEFAULT_METHODS[target]["gelu"]  # auto (mpc), chebyshev (he)
        assert str(caught.value) == expected.format(gelu=gelu)


def test_a_good_config_sets_the_node_its_method_options(graph: Graph) -> None:
    config = {
        "defaults": {"softmax": {"method": "power", "options": {"p": 6}}},
        "nodes": {"gelu": {"options": {"precision_bits": 18}}},
    }
    plan = make_plan(graph, "mpc", config)
    softmax, gelu = plan.choices["softmax"], plan.choices["gelu"]
    assert (softmax.method, softmax.options) == (
        "power",
        {**O.defaults("softmax", "power"), "p": 6},
    )
    assert gelu.options == {"precision_bits": 18}


def _choice_entry(function: str, method: str, options: dict[str, Any]) -> dict[str, Any]:
    return {
        "node": "n",
        "op": "aten._softmax.default",
        "module": "",
        "function": function,
        "method": method,
        "interval": [-3.0, 2.0],
        "observed": [-2.0, 1.0],
        "options": options,
    }


def _values(spec: O.Spec) -> st.SearchStrategy:
    """Values option `spec` allows, drawn from its declaration."""
    allowed = spec.allowed
    if spec.kind is bool:
        values: st.SearchStrategy = st.booleans()
    elif allowed.choices:
        values = st.sampled_from(allowed.choices)
    elif spec.kind is int:
        values = st.integers(int(allowed.low), int(allowed.high))
        values = values.filter(lambda v: v % 2 == 0) if allowed.even else values
    else:
        low = allowed.above if allowed.above is not None else allowed.low
        values = st.floats(low, allowed.high, exclude_min=allowed.above is not None)
    return st.none() | values if spec.nullable else values


@st.composite
def option_sets(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    """(function, method, a valid subset of its options)."""
    function, method = draw(st.sampled_from([*O.OPTIONS, ("gelu", "auto")]))
    specs = O.specs_of(O.options_class(function, method))
    return function, method, {s.name: draw(_values(s)) for s in specs if draw(st.booleans())}


@settings(max_examples=150, deadline=None)
@given(option_sets())
def test_valid_options_round_trip(case: tuple[str, str, dict[str, Any]]) -> None:
    function, method, values = case
    typed = O.check(function, method, values)
    entry = _choice_entry(function, method, O.complete(function, method, values))
    plan = Plan("mpc", {"n": Choice(**entry)})
    again = Plan.from_json(plan.to_json())
    assert again.to_dict() == plan.to_dict()
    assert O.options_for(again.choices["n"]) == typed
    peer = Plan.from_peer(json.loads(plan.to_json()), {"n": function})
    assert peer.to_dict() == plan.to_dict()
    for name, value in values.items():  # what was set is what the plan says
        assert getattr(typed, name) == value


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"squarings": 7, "squaring": 6}, f"'squaring' is not an option of method exp_limit; {EXP_LIMIT}"),  # noqa: E501
        ({"cutoff": "14"}, "option 'cutoff' of method exp_limit must be a number above 0"),
        ({"order": [2]}, "option 'order' of method exp_limit must be one of 1, 2"),
    ],
)  # fmt: skip
def test_a_peer_plan_with_a_bad_option_is_refused(options: dict[str, Any], needle: str) -> None:
    honest = {"backend": "mpc", "nodes": {"n": _choice_entry("softmax", "exp_limit", {})}}
    assert Plan.from_peer(honest, {"n": "softmax"}).choices["n"].options == SOFTMAX_OPTIONS
    crafted = {"backend": "mpc", "nodes": {"n": _choice_entry("softmax", "exp_limit", options)}}
    for read in (
        lambda: Plan.from_peer(crafted, {"n": "softmax"}),
        lambda: Plan.from_dict(crafted),
    ):
        with pytest.raises(ValueError) as caught:
            read()
        message = str(caught.value)
        assert message.startswith("plan node 'n': softmax option") and needle in message
        assert "\n" not in message


def test_one_source_for_every_default() -> None:
    """The plan's defaults are the options classes' (for every target's method), and the
    mpc kernel's settings for a choice that sets nothing are those: 7 squarings of order 2
    and the cut-off at 14, where the kernel once fell back to 8 of order 1."""
    from secinfer.backends.mpc.kernels.nonlinear import softmax_exp_settings

    for table in DEFAULTS.values():
        for function, (method, defaults) in table.items():
            assert method in METHODS[function]
            assert defaults == O.options_class(function, method)().as_dict()
    assert SOFTMAX_OPTIONS == {
        "squarings": 7,
        "order": 2,
        "cutoff": 14.0,
        "reciprocal": "goldschmidt",
    }
    bare = Choice("s", "aten._softmax", "", "softmax", "exp_limit")
    assert softmax_exp_settings(bare) == (7, 14.0, 2)
    assert O.options_for(Choice("e", "aten.exp", "", "exp", "squaring")).as_dict() == {
        "squarings": 8,
        "cutoff": 14.0,
    }
    # a common option is left out until set, and comes last
    assert list(O.complete("softmax", "exp_limit", {"precision_bits": 20, "order": 1})) == [
        *SOFTMAX_OPTIONS,
        "precision_bits",
    ]


def test_comparisons_is_a_common_option_with_a_default() -> None:
    """`comparisons` (fss | crypten) is accepted by every method, left out until set, and
    read through `comparisons_of` (unset: MPC_COMPARISONS); another value is one line."""
    from secinfer.core.plan import Choice

    choice = Choice("g", "aten.gelu", "", "gelu", "auto")
    assert O.comparisons_of(choice) == O.MPC_COMPARISONS
    assert O.comparisons_of(None) == O.MPC_COMPARISONS
    for value in O.COMPARISONS:
        choice.options = {"comparisons": value}
        assert O.comparisons_of(choice) == value
        assert O.complete("softmax", "exp_limit", {"comparisons": value})["comparisons"] == value
    with pytest.raises(O.OptionError, match="comparisons") as info:
        O.check("gelu", "auto", {"comparisons": "gpu"})
    assert "\n" not in str(info.value) and "fss" in str(info.value)
