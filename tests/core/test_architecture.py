"""The public architecture (`secinfer.core.architecture`): the graph as JSON, rebuilt exactly by
the data owner, and crafted messages refused before anything runs, in process and from a
hostile model owner over the real channel."""

from __future__ import annotations

import base64
import copy
import io
import json
import pickle
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as T

from secinfer import backends, load
from secinfer.core import architecture
from secinfer.core.architecture import ArchitectureError, describe, rebuild
from secinfer.core.execute import Executor
from secinfer.core.graph import Graph, build_graph
from secinfer.errors import UserError
from secinfer.load.checks import input_specs

backends.load_all()  # plans and runs below are made for the secure backends too

DIGITS = Path(__file__).resolve().parents[2] / "secinfer" / "data" / "digits.safetensors"


def _bert() -> T.PreTrainedModel:
    config = T.BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
        vocab_size=50, max_position_embeddings=32, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    return T.BertForSequenceClassification(config).eval()


def _gpt2() -> T.PreTrainedModel:
    config = T.GPT2Config(n_embd=24, n_layer=1, n_head=3, vocab_size=40, n_positions=32)
    torch.manual_seed(1)
    return T.GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def models() -> dict[str, load.LoadedModel]:
    loaded = {"digits": load.load_model(DIGITS)}
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    path = Path(tempfile.mkdtemp(prefix="secinfer-arch-mlp-")) / "mlp.pt2"
    torch.export.save(torch.export.export(mlp.eval(), (torch.randn(3, 8),)), path)
    loaded["mlp"] = load.load_model(path)  # its input is named "input", which fx reserves
    for name, make in (("bert", _bert), ("gpt2", _gpt2)):
        folder = Path(tempfile.mkdtemp(prefix=f"secinfer-arch-{name}-"))
        make().save_pretrained(folder)
        loaded[name] = load.load_model(folder)
    return loaded


def public_of(model: load.LoadedModel) -> tuple[Graph, dict[str, Any]]:
    graph = build_graph(model.program)
    names = model.input_names
    message = describe(graph, input_specs(model.program, names), names, model.output_name)
    return graph, json.loads(json.dumps(message, allow_nan=False))  # as it travels


@pytest.mark.parametrize("name", ["digits", "mlp", "bert", "gpt2"])
def test_the_rebuilt_graph_is_the_model_owners_graph(
    models: dict[str, load.LoadedModel], name: str
) -> None:
    """Same nodes in the same order; no floating-point weight in the message; with the model
    owner's weights put back by their state_dict keys it computes the model exactly."""
    model = models[name]
    graph, message = public_of(model)
    public = rebuild(message)
    assert public.graph.nodes == graph.nodes
    assert public.input_names == model.input_names and public.output_name == model.output_name
    for node_name, value in public.graph.owned.items():
        if value.is_floating_point():
            assert not value.any(), node_name  # zeros: the data owner never sees a weight
        else:
            assert torch.equal(value, graph.owned[node_name])  # public integer buffers
    real = {n.name: graph.owned[n.name] for n in public.graph.nodes if n.name in graph.owned}
    public.graph.owned.update(real)
    inputs = model.example_inputs
    want = Executor(graph, "plain").run(inputs).outputs[0]
    got = Executor(public.graph, "plain").run(inputs).outputs[0]
    assert torch.equal(got, want)
    floating = [n for n in message["nodes"] if (n.get("dtype") or "").startswith(("float", "bf"))]
    assert floating and not any("data" in node for node in floating)


def test_the_described_inputs_check_the_data_owners_inputs(
    models: dict[str, load.LoadedModel],
) -> None:
    _, message = public_of(models["bert"])
    public = rebuild(message)
    ids = torch.zeros(1, 8, dtype=torch.int64)
    public.check_inputs((ids, torch.ones_like(ids)), Path("x.pt"))
    with pytest.raises(load.ShapeMismatch, match="dimension 1 is 40"):
        big = torch.zeros(1, 40, dtype=torch.int64)
        public.check_inputs((big, torch.ones_like(big)), Path("x.pt"))
    with pytest.raises(UserError, match="dtype float32, the model wants int64"):
        public.check_inputs((ids.float(), ids), Path("x.pt"))


def _tampered(message: dict[str, Any], edit: Any) -> dict[str, Any]:
    out = copy.deepcopy(message)
    edit(out)
    return out


def _first(message: dict[str, Any], kind: str, op: str | None = None) -> dict[str, Any]:
    for node in message["nodes"]:
        if node["kind"] == kind and (op is None or node.get("target", "").startswith(op)):
            return node
    raise AssertionError(f"no {kind} node")


TAMPERINGS = {
    "a Python builtin as op": lambda m: _first(m, "call").update(target="builtins.exec"),
    "torch.load as op": lambda m: _first(m, "call").update(target="torch.load"),
    "an aten op outside the registry": lambda m: _first(m, "call").update(
        target="aten._fft_r2c.default"
    ),
    "a missing overload": lambda m: _first(m, "call").update(target="aten.linear.nope"),
    "a pickle as argument": lambda m: _first(m, "call")["args"].append(
        {"pickle": base64.b64encode(pickle.dumps(print)).decode()}
    ),
    "a node used before it exists": lambda m: _first(m, "call")["args"].__setitem__(
        0, {"node": "output"}
    ),
    "a weight sent with values": lambda m: _first(m, "parameter").update(data="AAAAAA=="),
    "a huge shape": lambda m: _first(m, "parameter").update(shape=[2**30, 2**30]),
    "weights beyond what a data owner holds": lambda m: [
        node.update(shape=[2**16, 2**16]) for node in m["nodes"] if node["kind"] == "parameter"
    ],
    "an unknown dtype": lambda m: _first(m, "parameter").update(dtype="object"),
    "an unknown kind": lambda m: _first(m, "call").update(kind="call_module"),
    "a name that is not an identifier": lambda m: _first(m, "call").update(name="a.b()"),
    "a device other than cpu": lambda m: _first(m, "call", "aten.linear")["args"].append(
        {"device": "cuda"}
    ),
    "another version": lambda m: m.update(version=99),
    "no output": lambda m: m["nodes"].pop(),
}


@pytest.mark.parametrize("what", list(TAMPERINGS))
def test_crafted_architectures_are_refused(models: dict[str, load.LoadedModel], what: str) -> None:
    _, message = public_of(models["digits"])
    with pytest.raises(ArchitectureError) as caught:
        rebuild(_tampered(message, TAMPERINGS[what]))
    assert "\n" not in str(caught.value)


def malicious_archive(marker: Path) -> bytes:
    """A real torch.export archive whose sample inputs are a pickle that, when loaded
    without weights_only, creates `marker` (what the old wire format could carry)."""

    class Touch:
        def __reduce__(self) -> Any:
            return (Path.touch, (marker,))

    program = torch.export.export(torch.nn.Linear(4, 2), (torch.zeros(1, 4),))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    out = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if "sample_inputs" in info.filename:
                data = pickle.dumps(Touch())
            dst.writestr(info, data)
    return out.getvalue()


def hostile_model_owner(role: Any, payload: bytes, marker: str) -> Any:
    """The model owner sends `payload` as the architecture and a plan; the data owner runs
    the product's `receive_model`. Returns (on each side) what happened."""
    from protocols.mpc.meter import Meter
    from protocols.mpc.runtime import Role
    from secinfer.backends.mpc import wire
    from secinfer.backends.mpc.party import PeerAborted, receive_model

    if role is Role.MODEL_OWNER:
        wire.send_bytes(payload, src=Role.MODEL_OWNER)
        wire.send_json({"plan": {}}, src=Role.MODEL_OWNER)
        return wire.receive_json(src=Role.DATA_OWNER)
    try:
        receive_model(Meter())
    except PeerAborted as exc:
        return {"refused": str(exc), "marker": Path(marker).exists()}
    return {"refused": None, "marker": Path(marker).exists()}


def test_a_hostile_model_owner_cannot_run_code_on_the_data_owner(
    models: dict[str, load.LoadedModel], tmp_path: Path
) -> None:
    """Over the real channel (three processes): a torch archive carrying a pickle, and a
    JSON architecture naming a Python function, are both refused with one line and nothing
    runs; the model owner learns the refusal."""
    from protocols.mpc.local import run_local
    from protocols.mpc.runtime import Role

    marker = tmp_path / "pwned"
    _, message = public_of(models["digits"])
    crafted = _tampered(message, TAMPERINGS["torch.load as op"])
    for payload in (malicious_archive(marker), json.dumps(crafted).encode()):
        parties = run_local(hostile_model_owner, payload, str(marker), timeout=120)
        seen = parties[Role.DATA_OWNER].value
        assert seen["refused"] and "\n" not in seen["refused"], seen
        assert not seen["marker"] and not marker.exists()
        assert "error" in parties[Role.MODEL_OWNER].value
    assert architecture.FORMAT in json.dumps(message)


PLAN_TAMPERINGS = {
    "an unknown method": lambda c: c.update(method="exec"),
    "a count of 10^9": lambda c: c["options"].update(squarings=10**9),
    "a node the graph lacks": lambda c: c.update(node="elsewhere"),
    "another function": lambda c: c.update(function="exp"),
    "an unordered interval": lambda c: c.update(interval=[3.0, -3.0]),
    "an extra field": lambda c: c.update(code="print(1)"),
    "an option object": lambda c: c["options"].update(reciprocal={"pickle": "x"}),
}


@pytest.fixture(scope="module")
def digits_plan(models: dict[str, load.LoadedModel]) -> Any:
    from secinfer.core.prepare import prepare

    model = models["digits"]
    return prepare(model.program, "mpc", model.calibration_samples(), None)[1]


@pytest.mark.parametrize("what", list(PLAN_TAMPERINGS))
def test_crafted_plans_are_refused(
    models: dict[str, load.LoadedModel], digits_plan: Any, what: str
) -> None:
    """The model owner's plan is checked against the rebuilt graph before any kernel reads
    it; the honest plan passes unchanged."""
    from secinfer.backends.mpc.party import nonlinear_functions
    from secinfer.core.plan import Plan

    model, plan = models["digits"], digits_plan
    honest = json.loads(json.dumps(plan.to_dict()))
    functions = nonlinear_functions(rebuild(public_of(model)[1]).graph)
    assert Plan.from_peer(honest, functions).to_dict() == plan.to_dict()
    softmax = next(c for c in honest["nodes"].values() if c["function"] == "softmax")
    PLAN_TAMPERINGS[what](softmax)
    with pytest.raises(ValueError) as caught:
        Plan.from_peer(honest, functions)
    assert "\n" not in str(caught.value)
