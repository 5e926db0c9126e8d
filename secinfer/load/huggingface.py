"""Hugging Face model directories: config.json + safetensors, loaded offline, never running
remote code, exported with positional tensor inputs and the first output."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from secinfer.errors import UserError
from secinfer.load.messages import EXPORT_RECIPE, one_line, quiet
from secinfer.load.model import TEXT_INPUTS, LoadedModel
from secinfer.load.torch_files import MAX_BATCH

TEXT_SEQ_LEN = 16
"""Sequence length of the default text sample."""


_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
)


_POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")


class TextModel(nn.Module):
    """(input_ids, attention_mask) positional tensors in, the model's first output out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask)[0]


class VisionModel(nn.Module):
    """pixel_values in, the model's first output out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values)[0]


def load_huggingface(path: Path) -> LoadedModel:
    """A Hugging Face directory, loaded offline and exported with dynamic batch (and length)."""
    config = read_config(path)
    check_weights(path)
    model = from_pretrained(path, config)
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # no key/value cache among the outputs
    text = _is_text_model(model, path)
    example = _text_sample(model.config) if text else _vision_sample(model.config, path)
    names = TEXT_INPUTS if text else ["pixel_values"]
    wrapper = (TextModel(model) if text else VisionModel(model)).eval()
    output_name = _first_output_name(model, names, example, path)
    program = _export_hf(wrapper, example, max_positions(model.config) if text else None, path)
    tokenizer, problem = read_tokenizer(path) if text else (None, f"{path} is a vision model")
    return LoadedModel(
        program, "huggingface", path, example, names, output_name, tokenizer, problem
    )


def read_config(path: Path) -> dict[str, Any]:
    """config.json as a dict; UserError when it is missing or not JSON."""
    config_path = path / "config.json"
    if not config_path.is_file():
        raise UserError(
            f"{path}: a directory without config.json; give a Hugging Face model directory "
            "(save_pretrained) or a model file"
        )
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{config_path}: not valid JSON ({one_line(exc)})") from None
    if not isinstance(config, dict):
        raise UserError(f"{config_path}: not a JSON object")
    return config


def check_weights(path: Path) -> None:
    """UserError unless the directory holds safetensors weights (never a pickled .bin)."""
    if any(path.glob("*.safetensors")):
        return
    if any(path.glob("*.bin")):
        raise UserError(
            f"{path}: weights only as pytorch_model.bin, a pickle; re-save them as safetensors "
            "with model.save_pretrained(directory) (the default)"
        )
    raise UserError(f"{path}: no *.safetensors weights next to config.json")


def from_pretrained(path: Path, config: dict[str, Any]) -> nn.Module:
    """The model of config.architectures (else AutoModel), offline, without remote code."""
    import transformers

    implementation = "eager"
    if config.get("_attn_implementation") == "secinfer_power_softmax":
        from approximations.conversion import ATTENTION_IMPLEMENTATION, register_attention

        register_attention()
        implementation = ATTENTION_IMPLEMENTATION
    cls = _model_class(config)
    try:
        with quiet():
            model = cls.from_pretrained(
                str(path),
                local_files_only=True,
                trust_remote_code=False,
                use_safetensors=True,
                attn_implementation=implementation,
            )
    except Exception as exc:
        name = getattr(cls, "__name__", "AutoModel")
        raise UserError(
            f"{path}: transformers could not load it as {name} ({one_line(exc)}); custom "
            f"model code is never run, so {EXPORT_RECIPE}"
        ) from None
    if not isinstance(model, transformers.PreTrainedModel):
        raise UserError(f"{path}: {type(model).__name__} is not a transformers model")
    return model.eval()


def _model_class(config: dict[str, Any]) -> Any:
    """The transformers class named first in config.architectures, else AutoModel."""
    import transformers

    for name in config.get("architectures") or []:
        cls = getattr(transformers, str(name), None) if isinstance(name, str) else None
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    return transformers.AutoModel


def _is_text_model(model: nn.Module, path: Path) -> bool:
    """True for token-id models, False for pixel models; UserError for anything else."""
    parameters = inspect.signature(model.forward).parameters
    if "input_ids" in parameters and "attention_mask" in parameters:
        return True
    if "pixel_values" in parameters and "input_ids" not in parameters:
        return False
    raise UserError(
        f"{path}: {type(model).__name__} takes neither (input_ids, attention_mask) nor "
        f"pixel_values alone; secinfer reads text and image models; {EXPORT_RECIPE}"
    )


def max_positions(config: Any) -> int | None:
    """The longest sequence the model's position embeddings cover, when the config says."""
    for key in _POSITION_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 1:
            return value
    return None


def _text_sample(config: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch 1 of TEXT_SEQ_LEN deterministic token ids and a full attention mask."""
    vocab = int(getattr(config, "vocab_size", 0) or 100)
    length = min(TEXT_SEQ_LEN, max_positions(config) or TEXT_SEQ_LEN)
    ids = (torch.arange(length, dtype=torch.int64) * 7 + 3) % vocab
    return ids[None, :], torch.ones(1, length, dtype=torch.int64)


def _vision_sample(config: Any, path: Path) -> tuple[torch.Tensor]:
    """One image of uniform [-1, 1) pixels (seed 0) at the config's size."""
    size = getattr(config, "image_size", None)
    height, width = (size, size) if isinstance(size, int) else tuple(size or (0, 0))[:2]
    if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
        raise UserError(f"{path}: config.json gives no image_size for this vision model")
    channels = int(getattr(config, "num_channels", 3))
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(1, channels, height, width, generator=generator) * 2 - 1,)


def _first_output_name(
    model: nn.Module, names: list[str], example: tuple[torch.Tensor, ...], path: Path
) -> str:
    """Name of the model's first output ("logits", "last_hidden_state", ...), by one run."""
    try:
        with torch.no_grad(), quiet():
            outputs = model(**dict(zip(names, example, strict=True)))
    except Exception as exc:
        raise UserError(
            _hf_failure(path, "the model fails on its default sample", one_line(exc))
        ) from None
    keys = list(outputs.keys()) if hasattr(outputs, "keys") else []
    if not keys or not isinstance(outputs[keys[0]], torch.Tensor):
        raise UserError(f"{path}: the model's first output is not a tensor; {EXPORT_RECIPE}")
    return str(keys[0])


def _export_hf(
    wrapper: nn.Module, example: tuple[torch.Tensor, ...], max_len: int | None, path: Path
) -> torch.export.ExportedProgram:
    """Export on two copies of the sample (so batch stays symbolic), trying named dims first.

    Text: batch 1..MAX_BATCH and sequence 1..max_len, shared by both inputs; if export
    rejects those, Dim.AUTO lets it choose. Vision: batch only.
    """
    traced = tuple(torch.cat([t, t]) for t in example)
    problem = ""
    for dynamic in _hf_dynamic_shapes(len(example), max_len):
        try:
            with quiet():
                return torch.export.export(wrapper, traced, dynamic_shapes=dynamic, strict=False)
        except Exception as exc:
            problem = one_line(exc)
    raise UserError(_hf_failure(path, "torch.export failed on this model", problem))


def _hf_failure(path: Path, what: str, problem: str) -> str:
    """The message for a model that fails to run or export, with the converted-model case."""
    if "attention_softmax" in problem:
        return (
            f"{path}: config.json asks for secinfer's power-softmax attention, but "
            "save_pretrained does not keep approximations.convert's modules; save the "
            "converted model with torch.export.save instead"
        )
    return f"{path}: {what} ({problem}); {EXPORT_RECIPE}"


def _hf_dynamic_shapes(count: int, max_len: int | None) -> list[tuple[dict[int, Any], ...]]:
    """Candidate dynamic_shapes for export, most specific first."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    auto = torch.export.Dim.AUTO
    if count == 1:
        return [({0: batch},), ({0: auto},)]
    seq = torch.export.Dim("seq", min=1, max=max_len) if max_len else auto
    named = tuple({0: batch, 1: seq} for _ in range(count))
    return [named, tuple({0: auto, 1: auto} for _ in range(count))]


def has_tokenizer(path: Path) -> bool:
    """Whether the directory holds tokenizer files (`read_tokenizer` may load them)."""
    return Path(path).is_dir() and any((Path(path) / n).is_file() for n in _TOKENIZER_FILES)


def tokenizer_arguments(model: Path) -> list[str]:
    """A local run's `--tokenizer DIR` for the data owner's process, when the model's
    directory holds tokenizer files (its progress lines then show each token's text)."""
    return ["--tokenizer", str(Path(model).resolve())] if has_tokenizer(model) else []


def read_tokenizer(path: Path) -> tuple[Any, str | None]:
    """The directory's tokenizer (offline, never its own code), or None and the reason."""
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        return None, f"{path} has no tokenizer files"
    try:
        from transformers import AutoTokenizer

        with quiet():
            tokenizer = AutoTokenizer.from_pretrained(
                str(path), local_files_only=True, trust_remote_code=False
            )
            return tokenizer, None
    except Exception as exc:
        return None, f"the tokenizer in {path} does not load ({one_line(exc)})"
