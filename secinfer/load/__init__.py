"""Load a model file or directory into a `torch.export` program, safely.

`load_model(path)` detects the format by content, never by file name:

  torch.export archive    zip holding `archive_format` (what `torch.export.save` writes, under
                          any name: `model.pt2`, `model.pt`, ...): checked, then read by torch
                          without any way to run code from the file (`safe_archive`); pickled
                          payloads, custom objects and code-like strings are refused unless
                          `trust_model=True` (then `torch.export.load` itself).
  TorchScript archive     zip holding `code/` and `constants.pkl` (`torch.jit.save`):
                          `torch.jit.load`, only with `trust_model=True`: its code runs.
  Hugging Face directory  `config.json` + `*.safetensors`: loaded offline with the class named
                          in `config.architectures` (else `AutoModel`), eager attention, and
                          exported with positional tensor inputs returning the first output.
  secinfer safetensors    a safetensors file whose metadata names `secinfer.zoo.digits`.
  torch.save file         zip holding `data.pkl`, or a legacy pickle (first byte 0x80): opened
                          with `weights_only=True` first. Tensors only (a state_dict) are
                          refused: no architecture. Anything else holds Python objects, which
                          run code when unpickled: refused unless `trust_model=True`.

TorchScript and pickled modules record no input shapes, so they are exported once the inputs
are known: their `LoadedModel.program` is None and `example_inputs` empty until
`program_for(inputs)` (alias `ensure_program`) exports them; it exports again when later
inputs do not fit the program it made.

Default samples (`LoadedModel.example_inputs`):
  torch.export            the example inputs saved in the archive, else for each input
                          uniform [0, 1) floats (seed 0) or zeros, symbolic dims at their minimum.
  Hugging Face text       batch 1, TEXT_SEQ_LEN (16) token ids (7 i + 3) mod vocab_size and a
                          full attention mask; batch and sequence length are dynamic (up to the
                          config's maximum positions).
  Hugging Face vision     one image of uniform [-1, 1) pixels (seed 0), [1, C, H, W] at the
                          config's image size; the batch is dynamic, H and W are fixed.
  secinfer safetensors    the first test image of the digits split, (1, 64); dynamic batch.

Every user mistake raises `UserError` with one line naming the file or input and the fix.

Modules: `torch_files` (single-file formats), `safe_archive` and `archive_checks` (untrusted
torch.export archives), `huggingface` (model directories), `model`
(`LoadedModel`), `checks` (input checks), `inputs` (input files and text), `messages`.
"""

from __future__ import annotations

from pathlib import Path

from secinfer.errors import UserError
from secinfer.load.checks import ShapeMismatch
from secinfer.load.huggingface import TEXT_SEQ_LEN, load_huggingface
from secinfer.load.inputs import encode_text, read_input
from secinfer.load.messages import EXPORT_RECIPE
from secinfer.load.model import TEXT_INPUTS, LoadedModel
from secinfer.load.torch_files import (
    MAX_BATCH,
    load_safetensors,
    load_torch_save,
    load_zip,
    looks_like_safetensors,
    read_head,
)

__all__ = [
    "EXPORT_RECIPE",
    "MAX_BATCH",
    "TEXT_INPUTS",
    "TEXT_SEQ_LEN",
    "LoadedModel",
    "ShapeMismatch",
    "encode_text",
    "load_model",
    "read_input",
]


def load_model(path: str | Path, *, trust_model: bool = False) -> LoadedModel:
    """Load the model at `path` (a file or a Hugging Face directory); see the module docstring.

    `trust_model` allows a pickled nn.Module, and torch.export archives with pickled members,
    both of which run code from the file when loaded.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    if path.is_dir():
        return load_huggingface(path)
    head = read_head(path)
    if looks_like_safetensors(head):
        return load_safetensors(path)
    if head.startswith(b"PK\x03\x04"):
        return load_zip(path, trust_model)
    if head[:1] == b"\x80":
        return load_torch_save(path, trust_model)
    raise UserError(
        f"{path}: not a model format secinfer reads (torch.export, TorchScript, Hugging Face "
        f"directory, secinfer safetensors); {EXPORT_RECIPE}"
    )
