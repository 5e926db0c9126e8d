"""Load a `torch.export.save` archive from an untrusted source without running code from it.

`torch.export.load` can run code from the file in several ways (torch 2.13): weights and
constants marked `use_pickle` go through `torch.load(weights_only=False)`; custom and opaque
object constants through `torch._C._pickle_load_obj` and `pickle.loads`; sample inputs through
`torch.load(weights_only=True)` with a silent retry at `weights_only=False`; a failed load
falls back to the pre-2.7 format; expression strings go through `sympy.sympify` (Python's
`eval`); `guards_code` is compiled by `ExportedProgram.module()`; node targets are resolved by
name; input names are pasted into generated source.

`load_untrusted(path)` closes each of these:

 1. The file is read into memory (at most `MAX_ARCHIVE_BYTES`) and opened with `zipfile`:
    one top-level folder, no duplicate or unsafe member names, at most `MAX_MEMBERS`.
 2. Every member must be one `torch.export.save` writes today: the format markers,
    `models/model.json`, sample inputs, weight and constant configs and raw tensor payloads,
    `extra/` text. Refused by name: legacy `.pt` weight or constant files, AOTInductor
    (compiled native code), custom- and opaque-object constants, anything unknown.
 3. Payload configs: no entry with `use_pickle`, every payload raw bytes named `weight_<n>` or
    `tensor_<n>`.
 4. Sample inputs must load with `torch.load(weights_only=True)` (torch's restricted
    unpickler: tensors and containers, no classes or functions of the file's choosing).
 5. `models/model.json` must obey `archive_checks` (targets, expressions, guards, names).
 6. torch then reads a new archive rebuilt from exactly the checked bytes (so a zip parser
    difference cannot smuggle other content) inside `no_code_from_files()`, which makes every
    unpickling path raise and re-checks each expression at `sympify`: torch cannot fall back.
 7. The loaded graph is checked once more: only allowed call_function targets.

Every refusal is a `UserError` of one line naming the member and the reason, and the fix
(re-export with `torch.export.save`, or `--trust-model` for a source the user trusts).
"""

from __future__ import annotations

import contextlib
import io
import json
import operator
import pickle
import re
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from secinfer.errors import UserError
from secinfer.load import archive_checks
from secinfer.load.archive_checks import Refused
from secinfer.load.messages import one_line, quiet

MAX_ARCHIVE_BYTES = 4 << 30
"""Largest archive read (file size, and total size of its members once extracted): 4 GiB."""
MAX_MEMBERS = 100_000
MAX_TEXT_BYTES = 1 << 30
"""Largest JSON or text member."""

FIX = (
    "re-export the model with torch.export.save(torch.export.export(model.eval(), "
    'example_args), "model.pt2"), or pass --trust-model (trust_model=True) only if you '
    "trust its source"
)

_MODEL = "models/model.json"
_SAMPLE = "data/sample_inputs/model.pt"
_WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
_CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
_MARKERS = {
    "archive_format": re.compile(rb"pt2"),
    "archive_version": re.compile(rb"[0-9]{1,6}"),
    "byteorder": re.compile(rb"little|big"),
    ".data/version": re.compile(rb"[0-9]{1,6}\n?"),
    ".data/serialization_id": re.compile(rb"[0-9A-Za-z_\-]{0,200}"),
}
_PAYLOAD = re.compile(r"data/(weights/weight|constants/tensor)_[0-9]{1,9}")
_EXTRA = re.compile(r"extra/[A-Za-z0-9_.\-]{1,200}")
_TOP = re.compile(r"[A-Za-z0-9_.\-]{1,200}")
_REFUSED_MEMBERS = (
    (re.compile(r"data/(weights|constants)/[^/]+\.pt"), "a legacy-format payload (pickled)"),
    (re.compile(r"data/aotinductor/.*"), "AOTInductor compiled code"),
    (re.compile(r"data/constants/custom_obj_.*"), "a custom-object constant (pickled)"),
    (re.compile(r"data/constants/opaque_obj_.*"), "an opaque-object constant (pickled)"),
    (re.compile(r"(version|serialized_[a-z_]+\.(json|pt))"), "a pre-2.7 format member"),
)

_GUARD_LOCK = threading.RLock()


def load_untrusted(path: Path) -> torch.export.ExportedProgram:
    """The archive's program, loaded without running code from the file; see the module doc.

    Raises UserError: refused (one line: member, reason, fix) or damaged.
    """
    data = _read_limited(path)
    try:
        top, members = _members(data)
        del data
        _check_members(members)
        _check_payload_config(members, _WEIGHTS_CONFIG, "weight")
        _check_payload_config(members, _CONSTANTS_CONFIG, "tensor")
        check_sample_inputs(members[_SAMPLE])
        archive_checks.check_program(_json(members, _MODEL))
    except Refused as exc:
        raise UserError(
            f"{path}: refused: {exc}; loading it could run code from the file; {FIX}"
        ) from None
    except (_Damaged, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise UserError(  # a shape of JSON the checks did not expect: not a torch archive
            f"{path}: a damaged or incompatible torch.export archive ({one_line(exc)}); "
            "export and save the model again"
        ) from None
    try:
        archive = _rebuild(top, members)
    except (TypeError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: a damaged torch.export archive ({one_line(exc)})") from None
    try:
        with no_code_from_files(), quiet():
            program = _deserialize(archive)
    except (Refused, pickle.UnpicklingError) as exc:  # only if the checks above missed it
        raise UserError(f"{path}: refused: {one_line(exc)}; {FIX}") from None
    except Exception as exc:
        raise UserError(
            f"{path}: a damaged or incompatible torch.export archive ({one_line(exc)}); "
            "export and save the model again"
        ) from None
    try:
        check_loaded_graph(program)
    except Refused as exc:
        raise UserError(f"{path}: refused: {exc}; {FIX}") from None
    return program


class _Damaged(Exception):
    """The archive is not a well-formed torch.export archive (not a security refusal)."""


def _read_limited(path: Path) -> bytes:
    """The whole file, refusing files above MAX_ARCHIVE_BYTES."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_ARCHIVE_BYTES + 1)
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({one_line(exc)})") from None
    if len(data) > MAX_ARCHIVE_BYTES:
        raise UserError(
            f"{path}: larger than {MAX_ARCHIVE_BYTES >> 30} GiB, the largest archive secinfer "
            "reads; export a smaller model"
        )
    return data


def _members(data: bytes) -> tuple[str, dict[str, bytes]]:
    """The single top-level folder and each member's bytes by its name below that folder."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
        if len(infos) > MAX_MEMBERS:
            raise Refused(f"{len(infos)} members, more than {MAX_MEMBERS}")
        if sum(info.file_size for info in infos) > MAX_ARCHIVE_BYTES:
            raise Refused(f"members larger than {MAX_ARCHIVE_BYTES >> 30} GiB once extracted")
        tops = {info.filename.split("/", 1)[0] for info in infos}
        if len(tops) != 1 or not _TOP.fullmatch(next(iter(tops))) or "" in tops:
            raise Refused(f"members under {len(tops)} top-level folders; torch writes one")
        members: dict[str, bytes] = {}
        for info in infos:
            name = info.filename.split("/", 1)[1] if "/" in info.filename else ""
            if not name or "\\" in name or ".." in name.split("/") or info.is_dir():
                raise Refused(f"member {info.filename[:100]!r}: not a file name torch writes")
            if name in members:
                raise Refused(f"member {name}: present twice")
            if info.flag_bits & 0x1:
                raise Refused(f"member {name}: encrypted")
            members[name] = archive.read(info)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as exc:
        raise _Damaged(one_line(exc)) from None
    except NotImplementedError as exc:  # an unsupported compression method
        raise _Damaged(one_line(exc)) from None
    return next(iter(tops)), members


def _check_members(members: dict[str, bytes]) -> None:
    """Every member is one `torch.export.save` writes today; refused ones are named."""
    for name, data in members.items():
        for pattern, reason in _REFUSED_MEMBERS:
            if pattern.fullmatch(name):
                raise Refused(f"member {name}: {reason}")
        if name in _MARKERS:
            if not _MARKERS[name].fullmatch(data):
                raise _Damaged(f"member {name}: unexpected content {data[:20]!r}")
        elif name in (_MODEL, _WEIGHTS_CONFIG, _CONSTANTS_CONFIG) or _EXTRA.fullmatch(name):
            if len(data) > MAX_TEXT_BYTES:
                raise Refused(f"member {name}: larger than {MAX_TEXT_BYTES >> 20} MiB")
        elif name != _SAMPLE and not _PAYLOAD.fullmatch(name):
            raise Refused(f"member {name[:100]}: not a member torch.export.save writes")
    for name in ("archive_format", _MODEL, _SAMPLE, _WEIGHTS_CONFIG, _CONSTANTS_CONFIG):
        if name not in members:
            raise _Damaged(f"member {name} is missing")


def _json(members: dict[str, bytes], name: str) -> Any:
    """A JSON member, parsed (plain data: json never builds objects of the file's choosing)."""
    try:
        return json.loads(members[name].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _Damaged(f"member {name}: not JSON ({one_line(exc)})") from None


def _check_payload_config(members: dict[str, bytes], name: str, prefix: str) -> None:
    """Each weight or constant is raw tensor bytes of the archive, never pickled."""
    config = _json(members, name)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise _Damaged(f"member {name}: no config object")
    folder = name.rsplit("/", 1)[0]
    for fqn, meta in entries.items():
        archive_checks.check_name(fqn, f"member {name}: entry")
        if not isinstance(meta, dict):
            raise _Damaged(f"member {name}: entry {fqn} is not an object")
        path_name = meta.get("path_name")
        member = f"{folder}/{path_name}"
        if meta.get("use_pickle") is not False:
            raise Refused(f"member {member} ({fqn}): a pickled payload (use_pickle)")
        if not isinstance(path_name, str) or not re.fullmatch(prefix + r"_[0-9]{1,9}", path_name):
            raise Refused(f"member {member[:100]} ({fqn}): not a raw tensor payload")
        if member not in members:
            raise _Damaged(f"member {member} ({fqn}) is missing")
        if not isinstance(meta.get("tensor_meta"), dict):
            raise _Damaged(f"member {name}: entry {fqn} has no tensor_meta")


def check_sample_inputs(data: bytes) -> Any:
    """The sample inputs, loaded with torch's restricted unpickler; Refused if it declines."""
    if not data:
        return {}
    try:
        with quiet():
            return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:
        raise Refused(
            f"member {_SAMPLE}: does not load with torch.load(weights_only=True) "
            f"({_unpickler_reason(exc)})"
        ) from None


def _unpickler_reason(exc: BaseException) -> str:
    """What torch's weights-only unpickler refused: the global the file names, else its line."""
    named = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if named:
        return f"it names the Python global {named.group(1)}"
    return one_line(exc)[:160]


def _rebuild(top: str, members: dict[str, bytes]) -> bytes:
    """A new stored zip of exactly the checked members (emptying `members` as it goes),
    the program's node metadata without the entries torch resolves by name
    (`_RESOLVED_METADATA`: their dotted names become getattr chains under torch)."""
    members[_MODEL] = _without_resolved_metadata(members[_MODEL])
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name in list(members):
            archive.writestr(f"{top}/{name}", members.pop(name))
    return out.getvalue()


_RESOLVED_METADATA = ("source_fn_stack", "torch_fn")
"""Node metadata that torch's reader turns into attribute look-ups (secinfer uses neither)."""


def _without_resolved_metadata(model_json: bytes) -> bytes:
    program = json.loads(model_json)
    stack: list[Any] = [program]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            metadata = value.get("metadata")
            if isinstance(metadata, dict):
                for key in _RESOLVED_METADATA:
                    metadata.pop(key, None)
            stack.extend(v for k, v in value.items() if k != "metadata")
    return json.dumps(program).encode()


def _deserialize(archive: bytes) -> torch.export.ExportedProgram:
    """torch's own reader on the checked archive: load_pt2, without torch.export.load's
    fallback to the pre-2.7 format."""
    from torch.export.pt2_archive._package import load_pt2

    contents = load_pt2(io.BytesIO(archive))
    if set(contents.exported_programs) != {"model"} or contents.aoti_runners:
        raise ValueError("no program named 'model' in the archive")
    return contents.exported_programs["model"]


def check_loaded_graph(program: torch.export.ExportedProgram) -> None:
    """Refused unless every node calls an allowed target (or `getitem`, which torch's reader
    adds for ops with several outputs) and no submodule graph exists."""
    for module in program.graph_module.modules():
        if module is not program.graph_module:
            raise Refused(f"a submodule {type(module).__name__} in the loaded program")
    for node in program.graph.nodes:
        if node.op in ("call_module", "call_method"):
            raise Refused(f"node {node.name}: {node.op}")
        if node.op == "call_function" and node.target is not operator.getitem:
            archive_checks.check_target(_target_name(node.target), f"node {node.name}")


def _target_name(target: Any) -> str:
    """A call_function target's name as torch's serializer writes it."""
    module = str(getattr(target, "__module__", None)).replace("torch._ops", "torch.ops")
    return f"{module}.{getattr(target, '__name__', repr(target))}"


class _RefusedUnpickle:
    """Stands in for `pickle` inside torch's archive reader: every load raises."""

    @staticmethod
    def loads(*_: Any, **__: Any) -> Any:
        raise Refused("the archive asked torch to unpickle an object")

    load = loads


def _refuse_unpickle(*_: Any, **__: Any) -> Any:
    raise Refused("the archive asked torch to unpickle an object")


class _CheckedSympy:
    """`sympy` for torch's deserializer, whose `sympify` re-checks each string first."""

    def __init__(self, module: Any) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def sympify(self, expression: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(expression, str):
            archive_checks.check_expression(expression, "an expression")
        return self._module.sympify(expression, *args, **kwargs)


@contextlib.contextmanager
def no_code_from_files() -> Iterator[None]:
    """While active (one thread at a time): `torch.load` always runs with `weights_only=True`
    and refuses a custom `pickle_module`; `pickle` in torch's archive reader and
    `torch._C._pickle_load_obj` raise; torch's deserializer re-checks expressions before
    `sympify`. Restored on exit, also on error; nested uses restore in turn."""
    import torch._export.serde.serialize as serialize
    import torch.export.pt2_archive._package as package

    real_load = torch.load

    def weights_only_load(
        f: Any, map_location: Any = None, pickle_module: Any = None, **kwargs: Any
    ) -> Any:
        if pickle_module is not None:
            raise Refused("the archive asked torch to unpickle with a custom pickle module")
        kwargs.pop("weights_only", None)
        return real_load(f, map_location=map_location, weights_only=True, **kwargs)

    with _GUARD_LOCK:
        saved = (torch.load, package.pickle, torch._C._pickle_load_obj, serialize.sympy)
        torch.load = weights_only_load  # type: ignore[assignment]
        package.pickle = _RefusedUnpickle  # type: ignore[assignment]
        torch._C._pickle_load_obj = _refuse_unpickle
        serialize.sympy = _CheckedSympy(saved[3])  # type: ignore[assignment]
        try:
            yield
        finally:
            torch.load, package.pickle, torch._C._pickle_load_obj, serialize.sympy = saved
