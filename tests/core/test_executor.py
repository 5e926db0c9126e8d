"""Graph, plan and executor: `plain` equals torch, `approx` stays close, calibration widens.

Models are tiny and randomly initialised, plus a BERT scaled to the outliers trained models
have (GELU inputs beyond +-10, attention scores beyond +-20, LayerNorm variances from 1e-3
to 10), plus the bundled digits models. Tolerances: plain within 1e-5 of torch's own
forward; approx cosine >= 0.999 against plain.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers.models import bert, gpt2, text_inputs, vit

from secinfer import backends
from secinfer.core.calibrate import calibrate
from secinfer.core.execute import Executor, UnsupportedOpError
from secinfer.core.graph import build_graph
from secinfer.core.plan import make_plan
from secinfer.errors import UserError
from secinfer.launch import run as runner

backends.load_all()  # plans and runs below are made for the secure backends too


class FirstOutput(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.model(*args)[0]


def case(name: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    ids, mask = text_inputs()
    if name == "bert":
        return bert(), (ids, mask)
    if name == "bert-outliers":
        return bert(scaled=True), (ids, mask)
    if name == "gpt2":
        return gpt2(), (ids, None, mask)
    return vit(), (torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)),)


def exported(model: torch.nn.Module, args: tuple) -> torch.export.ExportedProgram:
    return torch.export.export(FirstOutput(model), args, strict=False)


def program_inputs(args: tuple) -> tuple[torch.Tensor, ...]:
    return tuple(a for a in args if a is not None)


@pytest.mark.parametrize("name", ["bert", "gpt2", "vit", "bert-outliers"])
def test_plain_equals_torch_and_approx_is_close(name: str) -> None:
    model, args = case(name)
    program = exported(model, args)
    inputs = program_inputs(args)
    with torch.no_grad():
        expected = model(*args)[0]
    plain = runner.run(
        program, "plain", inputs, samples=[], model_name=name, output_name="last_hidden_state"
    )
    assert float((plain.output - expected).abs().max()) < 1e-5
    approx = runner.run(
        program,
        "approx",
        inputs,
        samples=[inputs],
        model_name=name,
        output_name="last_hidden_state",
    )
    assert approx.output.dtype == torch.float64
    assert approx.report["cosine"] >= 0.999, approx.report["cosine"]
    assert approx.report["out_of_range"] == 0
    layer_names = [layer["name"] for layer in approx.report["layers"]]
    assert any(".0" in n for n in layer_names) and any(".1" in n for n in layer_names)


def test_outlier_model_really_has_outliers() -> None:
    model, args = case("bert-outliers")
    graph = build_graph(exported(model, args))
    ranges = calibrate(graph, [program_inputs(args)])
    ops = {n.name: n.op for n in graph.calls}
    gelu = [r for n, r in ranges.items() if ops[n] == "aten.gelu"]
    scores = [r for n, r in ranges.items() if ops[n] == "aten.softmax"]
    norms = [r for n, r in ranges.items() if ops[n] == "aten.layer_norm"]
    assert max(max(abs(lo), abs(hi)) for lo, hi in gelu) > 10
    assert max(hi for _, hi in scores) > 20
    assert min(lo for lo, _ in norms) < 2e-3 and max(hi for _, hi in norms) > 10


def test_calibration_widens_a_single_polynomial_instead_of_clipping(tmp_path) -> None:
    model, args = case("bert-outliers")
    program = exported(model, args)
    inputs = program_inputs(args)
    config = tmp_path / "plan.json"
    config.write_text(json.dumps({"defaults": {"gelu": {"method": "minimax"}}}))
    outcome = runner.run(
        program,
        "approx",
        inputs,
        samples=[inputs],
        model_name="b",
        output_name="last_hidden_state",
        config_path=config,
    )
    for choice in outcome.plan.choices.values():
        if choice.function == "gelu":
            assert choice.method == "minimax"
            lo, hi = choice.observed
            assert choice.interval[0] < lo and choice.interval[1] > hi  # widened, beyond +-10
            assert max(abs(lo), abs(hi)) > 10
    assert outcome.report["out_of_range"] == 0
    assert outcome.report["cosine"] >= 0.999


def test_out_of_range_inputs_are_counted_with_the_worst_value(tmp_path) -> None:
    model, args = case("bert-outliers")
    program = exported(model, args)
    inputs = program_inputs(args)
    config = tmp_path / "plan.json"
    config.write_text(
        json.dumps({"defaults": {"gelu": {"method": "minimax", "interval": [-4, 4]}}})
    )
    outcome = runner.run(
        program,
        "approx",
        inputs,
        samples=[inputs],
        model_name="b",
        output_name="last_hidden_state",
        config_path=config,
    )
    report = outcome.report
    assert report["out_of_range"] > 0
    worst = report["out_of_range_nodes"][0]
    assert worst["interval"] == [-4.0, 4.0] and abs(worst["worst"]) > 10
    assert "widen" in __import__("secinfer.report.common", fromlist=["summary"]).summary(report)


def test_digits_bundled_program_plain_and_approx() -> None:
    from secinfer.zoo.digits import load_model, load_split

    _, _, test_x, _ = load_split(0)
    for stem in ("digits", "digits_he"):
        program = torch.export.load(f"secinfer/data/{stem}.pt2")
        x = (test_x[:200],)
        with torch.no_grad():
            expected = load_model(f"secinfer/data/{stem}.safetensors")(x[0])
        plain = runner.run(program, "plain", x, samples=[], model_name=stem, output_name="logits")
        assert float((plain.output - expected).abs().max()) < 1e-5
        approx = runner.run(
            program,
            "approx",
            x,
            samples=[(test_x[200:300],)],
            model_name=stem,
            output_name="logits",
        )
        assert approx.report["cosine"] >= 0.999
        assert approx.report["argmax_agreement"] >= 0.99


def test_unsupported_op_fails_before_work_naming_op_and_module() -> None:
    class Spectral(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.fft.fft(self.proj(x)).real

    program = torch.export.export(Spectral(), (torch.randn(2, 8),))
    graph = build_graph(program)
    with pytest.raises(UnsupportedOpError) as info:
        Executor(graph, "approx", make_plan(graph, "approx"))
    message = str(info.value)
    assert "aten._fft" in message and "supported on: no backend" in message
    assert "\n" not in message


def test_plan_is_data_and_config_overrides(tmp_path) -> None:
    model, args = case("bert")
    graph = build_graph(exported(model, args))
    plan = make_plan(
        graph,
        "mpc",
        {"defaults": {"softmax": {"method": "exact"}}, "nodes": {"gelu": {"method": "bolt"}}},
    )
    record = json.loads(plan.to_json())
    methods = {name: node["method"] for name, node in record["nodes"].items()}
    assert methods["gelu"] == "bolt" and methods["gelu_1"] == "auto"  # mpc's default
    assert all(m == "exact" for n, m in methods.items() if n.startswith("softmax"))
    with pytest.raises(UserError, match="no node named 'nope'"):
        make_plan(graph, "approx", {"nodes": {"nope": {}}})
    with pytest.raises(UserError, match="method 'cubic'"):
        make_plan(graph, "approx", {"defaults": {"gelu": {"method": "cubic"}}})
