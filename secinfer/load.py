"""Load a model file or directory into a `torch.export` program, safely.

Formats, detected by content (never by file name):
  torch.export archive  zip with `archive_format` and `models/*.json`: torch.export.load
  TorchScript archive   zip with `code/` and `constants.pkl`: torch.jit.load (a restricted
                        language, not pickle), converted with inputs (`--input` needed)
  Hugging Face dir      config.json + safetensors: loaded offline with the class its config
                        names, eager attention, exported with a default sample
  secinfer safetensors  the bundled format (architecture in the metadata)
  torch.save pickle     a state_dict: refused (no architecture); a pickled nn.Module:
                        refused unless trust_model=True, because unpickling runs code
Every user mistake raises `UserError` with one line naming the file and the fix.
"""

from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from secinfer.errors import UserError

EXPORT_RECIPE = (
    'export it: torch.export.save(torch.export.export(model.eval(), example_args), "model.pt2")'
)
TEXT_SEQ = 16  # length of the default text sample


@dataclass
class LoadedModel:
    """A loaded model: its exported program (or the module to export once inputs are
    known), its default sample, and what its inputs and first output are."""

    source: str
    path: Path
    program: torch.export.ExportedProgram | None
    example_inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_name: str = "output"
    tokenizer: Any = None
    module: nn.Module | Any = field(default=None, repr=False)

    def ensure_program(self, inputs: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
        """The exported program, exporting the module with `inputs` if not done yet."""
        if self.program is None:
            self.program = _export_module(self.module, inputs, self.path)
            self.input_names = [f"input_{i}" for i in range(len(inputs))]
        return self.program

    def check_inputs(self, inputs: tuple[torch.Tensor, ...]) -> None:
        """UserError unless `inputs` match the program's inputs in count, dtype and shape."""
        if self.program is None:
            return
        expected = _placeholder_values(self.program)
        if len(inputs) != len(expected):
            raise UserError(
                f"{self.path}: the model takes {len(expected)} input(s) "
                f"({', '.join(self.input_names)}), got {len(inputs)}"
            )
        for name, got, want in zip(self.input_names, inputs, expected, strict=True):
            if not isinstance(got, torch.Tensor):
                raise UserError(f"input {name}: expected a tensor, got {type(got).__name__}")
            if got.dtype != want.dtype:
                raise UserError(
                    f"input {name}: dtype {_dt(got.dtype)}, the model wants {_dt(want.dtype)}"
                )
            if got.dim() != want.dim() or any(
                isinstance(w, int) and g != w for g, w in zip(got.shape, want.shape, strict=True)
            ):
                raise UserError(
                    f"input {name}: shape {tuple(got.shape)}, the model wants "
                    f"{tuple(w if isinstance(w, int) else '*' for w in want.shape)}"
                )


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _placeholder_values(program: torch.export.ExportedProgram) -> list[Any]:
    user = set(program.graph_signature.user_inputs)
    return [
        n.meta["val"]
        for n in program.graph.nodes
        if n.op == "placeholder" and n.name in user and isinstance(n.meta.get("val"), torch.Tensor)
    ]


# --- entry points ---------------------------------------------------------------------------
def load_model(path: str | Path, *, trust_model: bool = False) -> LoadedModel:
    """Load `path` (file or Hugging Face directory); see the module docstring."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(
                f"{path}: a directory without config.json; give a Hugging Face model directory "
                "or a model file"
            )
        return _load_huggingface(path)
    head = _read_head(path)
    if _is_safetensors(head, path):
        return _load_safetensors(path)
    if head.startswith(b"PK\x03\x04"):
        return _load_zip(path, trust_model)
    if head[:1] == b"\x80":
        return _load_pickle(path, trust_model)
    raise UserError(
        f"{path}: not a model file secinfer knows (torch.export, TorchScript, safetensors, "
        f"Hugging Face directory); {EXPORT_RECIPE}"
    )


def read_input(path: str | Path, model: LoadedModel) -> tuple[torch.Tensor, ...]:
    """Inputs from `.npy` (no pickle) or `.pt` (weights_only): a tensor, a list or tuple of
    tensors, or a dict keyed by input name. A text model given only token ids gets a full
    attention mask."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--input {path}: no such file")
    if path.suffix == ".npy":
        try:
            values: Any = torch.from_numpy(np.load(path, allow_pickle=False))
        except ValueError as exc:
            raise UserError(
                f"--input {path}: not a plain .npy array ({_first_line(exc)})"
            ) from None
    elif path.suffix == ".pt":
        try:
            values = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as exc:
            raise UserError(
                f"--input {path}: not a tensor file loadable safely ({_first_line(exc)})"
            ) from None
    else:
        raise UserError(f"--input {path}: use a .npy or .pt file")
    if isinstance(values, dict):
        missing = [n for n in model.input_names if n not in values]
        if missing:
            raise UserError(f"--input {path}: missing {', '.join(missing)}")
        return tuple(values[n] for n in model.input_names)
    inputs = tuple(values) if isinstance(values, (list, tuple)) else (values,)
    if model.input_names == ["input_ids", "attention_mask"] and len(inputs) == 1:
        ids = inputs[0]
        inputs = (ids, torch.ones_like(ids))
    return inputs


def encode_text(text: str, model: LoadedModel) -> tuple[torch.Tensor, ...]:
    """Token ids and attention mask for `text` from the model directory's tokenizer."""
    if model.tokenizer is None:
        raise UserError(f"--text needs a tokenizer, and {model.path} has none; pass --input")
    encoded = model.tokenizer(text, return_tensors="pt")
    return tuple(encoded[name].to(torch.int64) for name in model.input_names)


# --- file formats ---------------------------------------------------------------------------
def _read_head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(16)


def _is_safetensors(head: bytes, path: Path) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= path.stat().st_size - 8 and head[8:9] == b"{"


def _load_safetensors(path: Path) -> LoadedModel:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:
        raise UserError(f"{path}: a damaged safetensors file ({_first_line(exc)})") from None
    if "format" not in metadata:
        raise UserError(
            f"{path}: weights only (a state_dict) without the architecture, so there is "
            f"nothing to run; {EXPORT_RECIPE}"
        )
    from secinfer.zoo import digits

    try:
        model = digits.load_model(path)
    except digits.ModelFileError as exc:
        raise UserError(str(exc)) from None
    _, _, test_x, _ = digits.load_split(0)
    example = test_x[:1].clone()  # the default sample: the first test image
    batch = torch.export.Dim("batch", min=1, max=4096)
    # traced with two rows so that the batch dimension stays symbolic
    program = torch.export.export(model.eval(), (test_x[:2],), dynamic_shapes=({0: batch},))
    return LoadedModel("secinfer-safetensors", path, program, (example,), ["images"], "logits")


def _load_zip(path: Path, trust_model: bool) -> LoadedModel:
    try:
        names = zipfile.ZipFile(path).namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"{path}: a damaged zip archive ({_first_line(exc)})") from None
    if any(n.endswith("archive_format") for n in names) or any("/models/" in n for n in names):
        return _load_export(path)
    if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
        return _load_torchscript(path)
    if any(n.endswith("data.pkl") for n in names):
        return _load_pickle(path, trust_model)
    raise UserError(f"{path}: a zip archive that is not a model secinfer knows; {EXPORT_RECIPE}")


def _load_export(path: Path) -> LoadedModel:
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise UserError(f"{path}: a damaged torch.export archive ({_first_line(exc)})") from None
    values = _placeholder_values(program)
    example = tuple(_sample_like(v) for v in values)
    names = list(program.graph_signature.user_inputs)
    return LoadedModel("torch.export", path, program, example, [str(n) for n in names])


def _sample_like(fake: torch.Tensor) -> torch.Tensor:
    """A deterministic sample with the placeholder's dtype and shape (symbolic dims -> 1)."""
    shape = [d if isinstance(d, int) else 1 for d in fake.shape]
    gen = torch.Generator().manual_seed(0)
    if fake.dtype.is_floating_point:
        return torch.rand(shape, generator=gen, dtype=fake.dtype)
    if fake.dtype == torch.bool:
        return torch.ones(shape, dtype=torch.bool)
    return torch.zeros(shape, dtype=fake.dtype)


def _load_torchscript(path: Path) -> LoadedModel:
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise UserError(f"{path}: a damaged TorchScript archive ({_first_line(exc)})") from None
    return LoadedModel("torchscript", path, None, (), [], module=module)


def _load_pickle(path: Path, trust_model: bool) -> LoadedModel:
    try:
        torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # the safe loader refused: it holds code, or it is damaged
        if "weights only load failed" not in str(exc).lower():
            raise UserError(f"{path}: a damaged torch.save file ({_first_line(exc)})") from None
        if not trust_model:
            raise UserError(
                f"{path}: a pickled Python object; loading it would run code from the file. "
                f"Pass --trust-model only if you trust its source, or {EXPORT_RECIPE}"
            ) from None
        module = torch.load(path, weights_only=False, map_location="cpu")
        if not isinstance(module, nn.Module):
            raise UserError(f"{path}: holds a {type(module).__name__}, not an nn.Module") from None
        return LoadedModel("pickle", path, None, (), [], module=module.eval())
    raise UserError(
        f"{path}: tensors only (a state_dict) without the architecture, so there is nothing "
        f"to run; {EXPORT_RECIPE}"
    )


def _export_module(module: Any, inputs: tuple[torch.Tensor, ...], path: Path) -> Any:
    if not inputs:
        raise UserError(f"{path}: this format records no input shapes; pass --input FILE")
    try:
        if isinstance(module, torch.jit.ScriptModule):
            from torch._export.converter import TS2EPConverter

            return TS2EPConverter(module, inputs).convert()
        return torch.export.export(module, inputs, strict=False)
    except Exception as exc:
        raise UserError(
            f"{path}: could not export the model with these inputs ({_first_line(exc)})"
        ) from None


# --- Hugging Face ---------------------------------------------------------------------------
class FirstOutput(nn.Module):
    """Positional tensors in, the model's first output tensor out."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs, strict=True)))[0]


def _load_huggingface(path: Path) -> LoadedModel:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    try:
        config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path / 'config.json'}: not valid JSON ({_first_line(exc)})") from None
    implementation = "eager"
    if config.get("_attn_implementation") == "secinfer_power_softmax":
        from approximations.convert import register_attention

        register_attention()
        implementation = "secinfer_power_softmax"
    architectures = config.get("architectures") or []
    cls = getattr(transformers, architectures[0], None) if architectures else None
    if cls is None:
        cls = transformers.AutoModel
    try:
        model = cls.from_pretrained(
            str(path),
            local_files_only=True,
            trust_remote_code=False,
            attn_implementation=implementation,
        ).eval()
    except Exception as exc:
        raise UserError(
            f"{path}: could not load this Hugging Face model ({_first_line(exc)})"
        ) from None
    if config.get("model_type") in ("vit", "deit", "beit") or "image_size" in config:
        side = int(config.get("image_size", 224))
        channels = int(config.get("num_channels", 3))
        gen = torch.Generator().manual_seed(0)
        example: tuple[torch.Tensor, ...] = (torch.rand(1, channels, side, side, generator=gen),)
        names = ["pixel_values"]
    else:
        vocab = int(config.get("vocab_size", 100))
        ids = (torch.arange(TEXT_SEQ, dtype=torch.int64) * 7 + 3) % vocab
        example = (ids[None, :], torch.ones(1, TEXT_SEQ, dtype=torch.int64))
        names = ["input_ids", "attention_mask"]
    wrapper = FirstOutput(model, names).eval()
    with torch.no_grad():
        output_name = next(iter(model(**dict(zip(names, example, strict=True))).keys()))
    # Traced on two rows with batch and sequence length left to export (Dim.AUTO), so that
    # other batch sizes and lengths (e.g. --text) run on the same program.
    traced = tuple(torch.cat([t, t]) for t in example)
    auto = torch.export.Dim.AUTO
    dynamic = tuple(
        {d: auto for d in range(t.dim() if names != ["pixel_values"] else 1)} for t in traced
    )
    try:
        program = torch.export.export(wrapper, traced, dynamic_shapes=(dynamic,), strict=False)
    except Exception as exc:
        raise UserError(f"{path}: torch.export failed on this model ({_first_line(exc)})") from None
    return LoadedModel("huggingface", path, program, example, names, output_name, _tokenizer(path))


def _tokenizer(path: Path) -> Any:
    if not any(
        (path / f).exists() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
    ):
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception:
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
