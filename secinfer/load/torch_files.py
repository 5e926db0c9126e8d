"""Loaders for single files: torch.export, TorchScript, torch.save (pickle refused unless
trusted, state_dicts refused) and the secinfer safetensors format."""

from __future__ import annotations

import inspect
import json
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from secinfer.errors import UserError
from secinfer.load.checks import bounds, expected_inputs, static_size
from secinfer.load.messages import EXPORT_RECIPE, one_line, quiet
from secinfer.load.model import LoadedModel
from secinfer.load.safe_archive import load_untrusted

MAX_BATCH = 4096
CALIBRATION_IMAGES = 256
"""Training images the digits models calibrate on (the model owner's own data)."""
"""Largest batch the exported programs of Hugging Face and digits models accept."""


_OBJECT_MARKERS = (
    "unsupported global",
    "unsupported class",
    "unrecognized function",
    "can only build",
)
"""Phrases of torch's weights-only unpickler when a file names Python classes or functions."""


def read_head(path: Path) -> bytes:
    """The first 16 bytes of `path`."""
    try:
        with path.open("rb") as f:
            return f.read(16)
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({one_line(exc)})") from None


def looks_like_safetensors(head: bytes) -> bool:
    """A little-endian u64 header size (below 100 MB, as safetensors demands), then '{'.

    The size is not compared with the file's: a truncated file is reported as damaged.
    """
    if len(head) < 9:
        return False
    (size,) = struct.unpack("<Q", head[:8])
    return 0 < size < 100_000_000 and head[8:9] == b"{"


def load_zip(path: Path, trust_model: bool) -> LoadedModel:
    """Dispatch a zip archive on its member names: export, TorchScript or torch.save."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UserError(
            f"{path}: a damaged zip archive, truncated or corrupt ({one_line(exc)}); "
            "save the model again"
        ) from None
    members = {name.split("/", 1)[-1] for name in names}
    if "archive_format" in members:
        return _load_export(path, trust_model)
    if "constants.pkl" in members and any(m.startswith("code/") for m in members):
        if not trust_model:
            raise UserError(
                f"{path}: a TorchScript archive holds code (its code/ members) that runs when "
                "the model is loaded and run; pass --trust-model (trust_model=True) only if "
                f"you trust its source, or {EXPORT_RECIPE}"
            )
        return _load_torchscript(path)
    if "data.pkl" in members:
        return load_torch_save(path, trust_model)
    raise UserError(f"{path}: a zip archive but not a model file secinfer reads; {EXPORT_RECIPE}")


def _load_export(path: Path, trust_model: bool) -> LoadedModel:
    """A `torch.export.save` archive, with its saved example inputs as the default sample.

    Untrusted (the default): `safe_archive.load_untrusted`, which refuses anything that could
    run code from the file. `trust_model=True`: `torch.export.load` itself, which may unpickle.
    """
    if not trust_model:
        program = load_untrusted(path)
    else:
        try:
            with path.open("rb") as f, quiet():  # a file object: no warning about the suffix
                program = torch.export.load(f)
        except Exception as exc:
            raise UserError(
                f"{path}: a damaged or incompatible torch.export archive ({one_line(exc)}); "
                "export and save the model again"
            ) from None
    names = [str(n) for n in program.graph_signature.user_inputs]
    return LoadedModel(program, "torch.export", path, _export_sample(program), names)


def _export_sample(program: torch.export.ExportedProgram) -> tuple[torch.Tensor, ...]:
    """The archive's own example inputs when they fit, else synthetic ones."""
    stored = getattr(program, "example_inputs", None)
    expected = expected_inputs(program)
    if stored and not stored[1] and len(stored[0]) == len(expected):
        args = tuple(stored[0])
        if all(isinstance(a, torch.Tensor) for a in args):
            return args
    names = program.graph_signature.user_inputs
    return tuple(
        _sample_like(name, v, program.range_constraints)
        for name, v in zip(names, expected, strict=True)
    )


def _sample_like(name: str, value: Any, ranges: dict[Any, Any]) -> torch.Tensor:
    """Deterministic tensor with the placeholder's dtype and shape (symbolic dims at minimum)."""
    if not isinstance(value, torch.Tensor):
        raise UserError(
            f"input {name}: a {type(value).__name__}, not a tensor; secinfer runs programs whose "
            f"inputs are all tensors, so {EXPORT_RECIPE}"
        )
    shape = [static_size(d) or max(1, bounds(d, ranges)[0] or 1) for d in value.shape]
    generator = torch.Generator().manual_seed(0)
    if value.dtype.is_floating_point:
        return torch.rand(shape, generator=generator, dtype=value.dtype)
    if value.dtype == torch.bool:
        return torch.ones(shape, dtype=torch.bool)
    return torch.zeros(shape, dtype=value.dtype)


def _load_torchscript(path: Path) -> LoadedModel:
    """A TorchScript archive; exported by TS2EPConverter once the inputs are known."""
    try:
        with quiet():  # torch 2.13 marks TorchScript deprecated
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise UserError(
            f"{path}: a damaged TorchScript archive ({one_line(exc)}); save it again"
        ) from None
    module.eval()
    names = [a.name for a in module.forward.schema.arguments[1:]]
    return LoadedModel(None, "torchscript", path, (), names, source_module=module)


def load_torch_save(path: Path, trust_model: bool) -> LoadedModel:
    """A torch.save file: refuse tensors-only (state_dict) and, without trust, objects."""
    try:
        with quiet():
            content = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # the safe loader refused: Python objects, or a damaged file
        if not _names_python_objects(exc):
            raise UserError(
                f"{path}: a damaged torch.save file ({one_line(exc)}); save it again"
            ) from None
        if not trust_model:
            raise UserError(
                f"{path}: a pickled Python object (e.g. torch.save(model)); loading it would run "
                "code from the file. Pass --trust-model (trust_model=True) only if you trust "
                f"its source, or {EXPORT_RECIPE}"
            ) from None
        return _load_trusted_pickle(path)
    raise UserError(no_architecture(path, _describe(content)))


def _names_python_objects(exc: BaseException) -> bool:
    """Whether torch's weights-only unpickler refused a class or function (not a bad byte)."""
    text = str(exc).lower()
    return "weights only load failed" in text and any(m in text for m in _OBJECT_MARKERS)


def _load_trusted_pickle(path: Path) -> LoadedModel:
    """Unpickle an nn.Module (the caller has trust_model=True); exported once inputs are known."""
    try:
        module = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as exc:
        raise UserError(
            f"{path}: could not unpickle it ({one_line(exc)}); the classes it names must be "
            f"importable here, or {EXPORT_RECIPE}"
        ) from None
    if not isinstance(module, nn.Module):
        raise UserError(
            f"{path}: holds a {type(module).__name__}, not an nn.Module; {EXPORT_RECIPE}"
        )
    module.eval()
    names = positional_names(module)
    return LoadedModel(None, "pickle", path, (), names, source_module=module)


def positional_names(module: nn.Module) -> list[str]:
    """Names of forward's required positional parameters ([] when it takes *args)."""
    parameters = inspect.signature(module.forward).parameters.values()
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return []
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in parameters if p.kind in positional and p.default is p.empty]


def _describe(content: Any) -> str:
    """What a weights-only torch.save file holds, in a few words."""
    if isinstance(content, dict):
        return "tensors only (a state_dict)"
    if isinstance(content, torch.Tensor):
        return "a single tensor"
    return f"a {type(content).__name__} of tensors"


def no_architecture(path: Path, what: str) -> str:
    """The refusal for weights without an architecture."""
    hint = ""
    if (path.parent / "config.json").is_file():
        hint = f" (for a Hugging Face model pass the directory {path.parent})"
    return (
        f"{path}: {what} without the architecture, so there is nothing to run{hint}; "
        f"build the model, load the weights into it and {EXPORT_RECIPE}"
    )


def load_safetensors(path: Path) -> LoadedModel:
    """The bundled secinfer format: architecture in the metadata, weights in the file."""
    from secinfer.zoo import digits

    metadata = _safetensors_metadata(path)
    if metadata.get("format") != json.dumps(digits.FORMAT_NAME):
        raise UserError(no_architecture(path, "a safetensors file of weights only"))
    try:
        model = digits.load_model(path)
    except Exception as exc:  # anything the file's content makes the rebuild fail on
        raise UserError(f"{path}: a damaged secinfer model file ({one_line(exc)})") from None
    train_x, _, test_x, _ = digits.load_split(0)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with quiet():  # traced on two rows so that the batch dimension stays symbolic
        program = torch.export.export(model, (test_x[:2],), dynamic_shapes=({0: batch},))
    names = positional_names(model)
    model_info = LoadedModel(
        program, "secinfer-safetensors", path, (test_x[:1].clone(),), names, "logits"
    )
    model_info.calibration_inputs = (train_x[:CALIBRATION_IMAGES].clone(),)
    return model_info


def _safetensors_metadata(path: Path) -> dict[str, str]:
    """The raw metadata of a safetensors file; UserError when the file is damaged."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:
        raise UserError(f"{path}: a damaged safetensors file ({one_line(exc)})") from None
