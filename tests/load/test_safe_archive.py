"""Model archives never run code from the file: each way `torch.export.load` can be made to
run code is built into a real archive (a `torch.export.save` of a small model, members
rewritten with zipfile), shown to run its payload under torch's own loader, and refused by
`load_model` and by `secinfer inspect` (one line, exit 2) with the payload's marker file absent.
A clean archive still loads and runs; `--trust-model` still opens a pickled-weight archive."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import subprocess
import traceback
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as T
from click.testing import CliRunner
from torch import nn

from secinfer.cli import main
from secinfer.errors import UserError
from secinfer.load import load_model, safe_archive
from secinfer.load.archive_checks import (
    Refused,
    check_expression,
    check_guard,
    check_target,
)
from secinfer.load.messages import quiet
from secinfer.load.safe_archive import no_code_from_files

TOL = 1e-6


class Small(nn.Module):
    """Linear, a registered buffer (a weight) and a plain tensor attribute (a constant)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 6)
        self.register_buffer("shift", torch.linspace(-1, 1, 6))
        self.scale = torch.full((6,), 0.5)  # lifted as a tensor constant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.lin(x) + self.shift) * self.scale


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean archive: batch dynamic (1..64), so sizes are symbolic expressions."""
    path = tmp_path_factory.mktemp("clean") / "small.pt2"
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(
        Small().eval(), (torch.randn(3, 4),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, str(path))
    return path


class Touch:
    """A pickle whose unpickling creates `marker` (no shell, nothing else)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def rewrite(
    src: Path,
    dst: Path,
    program: Callable[[dict[str, Any]], None] | None = None,
    members: dict[str, bytes | None] | None = None,
    configs: Callable[[str, dict[str, Any]], None] | None = None,
) -> Path:
    """Copy the archive `src` to `dst`, editing models/model.json, the payload configs, and
    replacing (bytes), adding (new name) or dropping (None) members named below the top folder."""
    members = dict(members or {})
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        top = zin.namelist()[0].split("/", 1)[0]
        for info in zin.infolist():
            name = info.filename.split("/", 1)[1]
            data = zin.read(info)
            if name == "models/model.json" and program:
                document = json.loads(data)
                program(document)
                data = json.dumps(document).encode()
            if name.endswith("_config.json") and configs:
                document = json.loads(data)
                configs(name, document)
                data = json.dumps(document).encode()
            if name in members:
                data = members.pop(name)
                if data is None:
                    continue
            zout.writestr(info, data)
        for name, data in members.items():
            if data is not None:
                zout.writestr(f"{top}/{name}", data)
    return dst


def first_expression(document: dict[str, Any]) -> dict[str, Any]:
    """The first symbolic size of a tensor value (the dynamic batch)."""
    for value in document["graph_module"]["graph"]["tensor_values"].values():
        for size in value["sizes"]:
            if "as_expr" in size:
                return size["as_expr"]
    raise AssertionError("no symbolic size in the archive")


def make_pickled_payload(kind: str, marker: Path) -> Callable[[str, dict[str, Any]], None]:
    """Mark the first weight ("weight") or constant ("constant") `use_pickle`."""

    def edit(name: str, document: dict[str, Any]) -> None:
        if (kind == "weight") == name.startswith("data/weights/"):
            entry = next(iter(document["config"].values()))
            entry["use_pickle"] = True

    return edit


def payload_member(clean: Path, folder: str) -> str:
    """The member name of the first entry of a payload config ("weights" or "constants")."""
    with zipfile.ZipFile(clean) as archive:
        top = archive.namelist()[0].split("/", 1)[0]
        config = json.loads(archive.read(f"{top}/data/{folder}/model_{folder}_config.json"))
    return f"data/{folder}/{next(iter(config['config'].values()))['path_name']}"


def build(case: str, clean: Path, tmp_path: Path, marker: Path) -> Path:
    """The malicious archive of `case`, its payload creating `marker`."""
    dst = tmp_path / f"{case}.pt2"
    payload = pickle.dumps(Touch(marker), protocol=2)  # torch.save's protocol
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    if case == "sample_inputs_pickle":
        return rewrite(clean, dst, members={"data/sample_inputs/model.pt": payload})
    if case in ("use_pickle_weight", "use_pickle_constant"):
        kind = case.rsplit("_", 1)[1]
        member = payload_member(clean, "weights" if kind == "weight" else "constants")
        return rewrite(
            clean, dst, members={member: payload}, configs=make_pickled_payload(kind, marker)
        )
    if case == "opaque_constant":

        def opaque(name: str, document: dict[str, Any]) -> None:
            if name.startswith("data/constants/"):
                document["config"]["evil"] = {
                    "path_name": "opaque_obj_0",
                    "is_param": False,
                    "use_pickle": True,
                    "tensor_meta": None,
                }

        return rewrite(clean, dst, members={"data/constants/opaque_obj_0": payload}, configs=opaque)
    if case == "expr_str":

        def expression(document: dict[str, Any]) -> None:
            entry = first_expression(document)
            entry["expr_str"] = f"{code} or {entry['expr_str']}"

        return rewrite(clean, dst, program=expression)
    if case == "guards_code":
        return rewrite(clean, dst, program=lambda d: d["guards_code"].append(f"{code} is None"))
    if case == "node_target":

        def target(document: dict[str, Any]) -> None:
            nodes = document["graph_module"]["graph"]["nodes"]
            nodes.insert(
                0,
                {
                    "target": "torch.os.system",
                    "name": "system",
                    "inputs": [
                        {"name": "command", "arg": {"as_string": f"touch {marker}"}, "kind": 1}
                    ],
                    "outputs": [],
                    "metadata": {},
                    "is_hop_single_tensor_return": None,
                },
            )

        return rewrite(clean, dst, program=target)
    raise AssertionError(case)


CASES = {
    # case: (what the one-line refusal names, whether torch.export.load alone runs it)
    "sample_inputs_pickle": ("data/sample_inputs/model.pt", True),  # and the global it names
    "use_pickle_weight": ("use_pickle", True),
    "use_pickle_constant": ("use_pickle", True),
    "opaque_constant": ("data/constants/opaque_obj_0", True),
    "expr_str": ("__import__", True),
    "guards_code": ("guards_code[0]", True),
    "node_target": ("torch.os.system", False),
}


def torch_loads(path: Path) -> None:
    """torch's own loader, then a call of `.module()` (whose guards it compiled), errors
    ignored: what a user of torch.export.load would do with the file."""
    with contextlib.suppress(Exception):
        program = torch.export.load(str(path))
        program.module()(torch.randn(3, 4))


def secinfer_here(*args: str) -> subprocess.CompletedProcess:
    """`secinfer` in this process (click's CliRunner), tracebacks shown as a user sees them."""
    result = CliRunner().invoke(main, list(args))
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(["secinfer", *args], result.exit_code, result.stdout, stderr)


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = [line for line in done.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize("case", list(CASES))
def test_malicious_archive_refused_and_payload_never_runs(
    case: str, clean: Path, tmp_path: Path
) -> None:
    needle, torch_runs_it = CASES[case]
    marker = tmp_path / "payload-ran"
    path = build(case, clean, tmp_path, marker)
    if torch_runs_it:  # the archive is really malicious: torch's own loader runs the payload
        torch_loads(path)
        assert marker.exists(), f"{case}: torch.export.load did not run the payload"
        marker.unlink()
    with pytest.raises(UserError) as caught:
        load_model(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and needle in message, message
    assert "--trust-model" in message and "torch.export.save" in message, message
    assert not marker.exists()
    line = one_error_line(secinfer_here("inspect", str(path)))
    assert needle in line and "refused" in line, line
    assert not marker.exists()


@pytest.mark.parametrize(
    "case",
    [
        "sample_inputs_pickle",
        "use_pickle_weight",
        "use_pickle_constant",
        "opaque_constant",
        "expr_str",
    ],
)
def test_guard_alone_stops_each_payload(case: str, clean: Path, tmp_path: Path) -> None:
    """Defence in depth: torch's reader on the unchecked archive, inside the guard only."""
    marker = tmp_path / "payload-ran"
    path = build(case, clean, tmp_path, marker)
    with pytest.raises((pickle.UnpicklingError, Refused)), no_code_from_files(), quiet():
        safe_archive._deserialize(path.read_bytes())
    assert not marker.exists()


def test_clean_archive_loads_and_runs_plain(clean: Path) -> None:
    loaded = load_model(clean)
    assert loaded.source == "torch.export" and loaded.input_names == ["x"]
    assert loaded.example_inputs[0].shape == (3, 4)  # the archive's own sample
    x = torch.randn(5, 4)
    with torch.no_grad():
        expected = Small().eval()(x)
        assert (loaded.program_for((x,)).module()(x) - expected).abs().max() < TOL
    done = secinfer_here("run", str(clean), "-b", "plain")
    assert done.returncode == 0, done.stderr[-2000:]


def test_trust_model_opens_pickled_weight_archive(clean: Path, tmp_path: Path) -> None:
    member = payload_member(clean, "weights")
    with zipfile.ZipFile(clean) as archive:
        top = archive.namelist()[0].split("/", 1)[0]
        config = json.loads(archive.read(f"{top}/data/weights/model_weights_config.json"))
    fqn, _ = next(iter(config["config"].items()))
    weight = dict(Small().named_parameters())[fqn]  # lin.weight, a parameter
    buffer = io.BytesIO()
    torch.save(weight, buffer)  # what torch.export.save writes for a tensor subclass
    path = rewrite(
        clean,
        tmp_path / "pickled.pt2",
        members={member: buffer.getvalue()},
        configs=make_pickled_payload("weight", tmp_path / "unused"),
    )
    with pytest.raises(UserError, match="use_pickle"):
        load_model(path)
    loaded = load_model(path, trust_model=True)
    x = torch.randn(2, 4)
    with torch.no_grad():
        assert (loaded.program.module()(x) - Small().eval()(x)).abs().max() < TOL


@pytest.mark.parametrize(
    ("members", "needle"),
    [
        ({"data/weights/model.pt": b"x"}, "legacy-format"),
        ({"data/aotinductor/model/model.so": b"\x7fELF"}, "AOTInductor"),
        ({"data/constants/custom_obj_0": b"x"}, "custom-object"),
        ({"notes/readme.txt": b"hello"}, "not a member torch.export.save writes"),
        ({"data/sample_inputs/model.pt": None}, "missing"),
    ],
)
def test_unexpected_members_refused(
    clean: Path, tmp_path: Path, members: dict[str, bytes | None], needle: str
) -> None:
    path = rewrite(clean, tmp_path / "odd.pt2", members=members)
    with pytest.raises(UserError, match=needle) as caught:
        load_model(path)
    assert "\n" not in str(caught.value)


def test_zip_tricks_refused(clean: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(clean) as archive:
        infos = [(info, archive.read(info)) for info in archive.infolist()]
    twice = tmp_path / "twice.pt2"
    with zipfile.ZipFile(twice, "w") as out, pytest.warns(UserWarning, match="Duplicate"):
        for info, data in infos:
            out.writestr(info, data)
        out.writestr(infos[0][0], infos[0][1])
    with pytest.raises(UserError, match="present twice"):
        load_model(twice)
    two_tops = tmp_path / "tops.pt2"
    with zipfile.ZipFile(two_tops, "w") as out:
        for info, data in infos:
            out.writestr(info, data)
        out.writestr("other/models/model.json", b"{}")
    with pytest.raises(UserError, match="top-level folders"):
        load_model(two_tops)


def test_injected_argument_names_refused(clean: Path, tmp_path: Path) -> None:
    """Names FX pastes into generated source: the forward's argument names, keyword names."""

    def argument(document: dict[str, Any]) -> None:
        signature = document["graph_module"]["module_call_graph"][0]["signature"]
        signature["forward_arg_names"] = ["x=__import__('os').getpid()"]

    path = rewrite(clean, tmp_path / "names.pt2", program=argument)
    with pytest.raises(UserError, match="forward_arg_names"):
        load_model(path)

    def placeholder(document: dict[str, Any]) -> None:
        text = json.dumps(document).replace('"x"', json.dumps("x, y=print('hi')"))
        document.update(json.loads(text))

    path = rewrite(clean, tmp_path / "placeholder.pt2", program=placeholder)
    with pytest.raises(UserError, match="not a plain identifier"):
        load_model(path)


def test_malformed_json_shapes_are_one_line_and_resolved_metadata_is_dropped(
    clean: Path, tmp_path: Path
) -> None:
    """A signature that is not an object: one line, not a traceback. Node metadata torch
    resolves by name (source_fn_stack: getattr chains under torch) never reaches torch."""

    def listed(document: dict[str, Any]) -> None:
        document["graph_module"]["module_call_graph"][0]["signature"] = []

    path = rewrite(clean, tmp_path / "signature.pt2", program=listed)
    with pytest.raises(UserError, match="signature that is not an object"):
        load_model(path)
    seen: list[str] = []

    def resolved(document: dict[str, Any]) -> None:
        for node in document["graph_module"]["graph"]["nodes"]:
            node.setdefault("metadata", {})["source_fn_stack"] = "x,torch.os.system"
            seen.append(node["target"])

    path = rewrite(clean, tmp_path / "source_fn.pt2", program=resolved)
    program = load_model(path).program
    assert seen and all("source_fn_stack" not in n.meta for n in program.graph.nodes)


# --- the grammars on their own -----------------------------------------------------------------
REAL_EXPRESSIONS = [
    "Symbol('s77', positive=True, integer=True)",
    "Mul(Integer(32), Symbol('s53', positive=True, integer=True))",
    "Mul(Integer(2), Pow(Symbol('s48', positive=True, integer=True), Integer(2)))",
    "Add(FloorDiv(Mul(Symbol('s17', positive=True, integer=True), Symbol('s27', positive=True, "
    "integer=True)), Integer(2)), Integer(1))",
    "Add(PythonMod(Add(Mul(Integer(-1), Symbol('s27', positive=True, integer=True)), "
    "Integer(-3)), Integer(4)), Integer(8))",
    "Max(Symbol('s17', positive=True, integer=True), Symbol('s27', positive=True, integer=True))",
    "Min(Integer(128), Mul(Integer(128), Symbol('s53', positive=True, integer=True)))",
    "s0*2 + (s1 // 3) % 4 - 1",
]
HOSTILE_EXPRESSIONS = [
    "__import__('os').system('true')",
    "Symbol('s1').__class__",
    "Symbol('s1', positive=True)[0]",
    "sympify('1')",
    "Function('f')(s1)",
    "lambda: 1",
    "Symbol('__import__')",
    "Symbol('s1', evaluate=__import__('os'))",
    "Pow(Integer(10), Integer(10000000000))",
    "Pow(Integer(10), Pow(Integer(10), Integer(60)))",
    "Integer(" + "9" * 40 + ")",
    "eval('1')",
    "s1 if s2 else s3",
    "[s1 for s1 in s2]",
    "Add(*s1)",
    "'s1'",
    "ｓ1 + 1",
]


@pytest.mark.parametrize("text", REAL_EXPRESSIONS)
def test_torch_expressions_accepted(text: str) -> None:
    check_expression(text, "test")


@pytest.mark.parametrize("text", HOSTILE_EXPRESSIONS)
def test_hostile_expressions_refused(text: str) -> None:
    with pytest.raises(Refused):
        check_expression(text, "test")


def test_guard_grammar() -> None:
    for guard in (
        "L['attention_mask'].size()[0] == L['input_ids'].size()[0]",
        "((L['m'].size()[0]*L['m'].size()[1]) % L['i'].size()[0]) == 0",
        "1 + ((L['x'].size()[1]*L['x'].size()[0]) // 2) <= L['x'].size()[1]*L['x'].size()[0]",
        "L['x'].stride()[0] == 4 and not L['x'].storage_offset() != 0",
        # a LLaMA step's cache length, bounded twice (torch.export writes min of the two)
        "min(8 + 8 * L['cache'][0].size()[2], 16 + 16 * L['cache'][0].size()[2]) >= 0",
    ):
        check_guard(guard, "test")
    for guard in (
        "__import__('os').system('true') == 0",
        "L['x'].size()[0].__class__ == 1",
        "L['x'].numpy() == 1",
        "L['x\"+print(1)+\"'].size()[0] == 1",
        "G['x'].size()[0] == 1",
        "(lambda: 1)() == 1",
        "min(__import__('os').getpid(), 1) == 1",
        "min(L['x'].size()[0]) == 1",
        "max(L['x'].size()[0], 2, key=print) == 2",
        "max(*L['x'].size()) == 2",
        "len(L['x'].size(), 2) == 2",
    ):
        with pytest.raises(Refused):
            check_guard(guard, "test")


def test_target_allow_list() -> None:
    for target in ("torch.ops.aten.linear.default", "_operator.mul", "torch.sym_max"):
        check_target(target, "test")
    for target in (
        "torch.os.system",
        "torch.load",
        "torch.ops.load_library",
        "torch.ops.aten.save.default",
        "torch.ops.aten.from_file.default",
        "torch.ops.aten.no_such_op.default",
        "torch.ops.higher_order.cond",
        "torch.ops.myns.myop.default",
        "#custom_namespace:op",
        "_operator.getitem",
        "builtins.eval",
    ):
        with pytest.raises(Refused):
            check_target(target, "test")


def test_guard_forces_weights_only_and_restores(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    payload = pickle.dumps(Touch(marker), protocol=2)
    real_load = torch.load
    with no_code_from_files():
        with pytest.raises(pickle.UnpicklingError):
            torch.load(io.BytesIO(payload), weights_only=False)
        with pytest.raises(Refused):
            torch._C._pickle_load_obj(payload)
        import torch.export.pt2_archive._package as package

        with pytest.raises(Refused):
            package.pickle.loads(payload)
    assert not marker.exists()
    assert torch.load is real_load and package.pickle is pickle


# --- Hugging Face directories ------------------------------------------------------------------
def test_hf_pickled_bin_and_remote_code_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    config = T.BertConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        vocab_size=50, max_position_embeddings=32,
    )  # fmt: skip
    model = T.BertModel(config).eval()
    # a directory whose only model weights are a pickled .bin (safetensors under another name)
    bin_dir = tmp_path / "bin"
    model.save_pretrained(bin_dir)
    (bin_dir / "model.safetensors").rename(bin_dir / "adapter.safetensors")
    (bin_dir / "pytorch_model.bin").write_bytes(pickle.dumps(Touch(marker)))
    with pytest.raises(UserError, match=r"model\.safetensors"):
        load_model(bin_dir)
    assert not marker.exists()
    # model and tokenizer code shipped in the directory and named by auto_map
    remote = tmp_path / "remote"
    model.save_pretrained(remote)
    code = f"open({str(marker)!r}, 'w')\nfrom transformers import BertModel, BertTokenizerFast\n"
    (remote / "evil.py").write_text(
        code + "class Evil(BertModel): pass\nclass EvilTok(BertTokenizerFast): pass\n"
    )
    settings = json.loads((remote / "config.json").read_text())
    settings["auto_map"] = {"AutoModel": "evil.Evil"}
    settings["architectures"] = ["Evil"]
    (remote / "config.json").write_text(json.dumps(settings))
    (remote / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]"]) + "\n")
    (remote / "tokenizer_config.json").write_text(
        json.dumps({"auto_map": {"AutoTokenizer": ["evil.EvilTok", None]}})
    )
    loaded = load_model(remote)  # the built-in BertModel; the directory's code is not run
    assert type(loaded.program).__name__ == "ExportedProgram"
    assert not marker.exists()
