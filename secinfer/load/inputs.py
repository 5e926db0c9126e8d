"""User inputs: `.npy`/`.pt` files (never unpickling) and text through the model's tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from secinfer.errors import UserError
from secinfer.load.checks import bounds, expected_inputs, static_size
from secinfer.load.messages import one_line
from secinfer.load.model import TEXT_INPUTS, LoadedModel


def read_input(path: str | Path, model: LoadedModel) -> tuple[torch.Tensor, ...]:
    """Read the model's inputs from `.npy` or `.pt`, without running code from the file.

    `.npy`: one array (numpy.load with allow_pickle=False). `.pt`: torch.load with
    weights_only=True of a tensor, a tuple or list of tensors, or a dict keyed by input name.
    A text model given token ids alone gets a full attention mask. Shapes and dtypes are
    checked later by `LoadedModel.check_inputs`.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--input {path}: no such file")
    if path.suffix == ".npy":
        values: Any = _read_npy(path)
    elif path.suffix == ".pt":
        values = _read_pt(path)
    else:
        raise UserError(f"--input {path}: use a .npy or .pt file")
    inputs = _as_input_tuple(values, model, path)
    if model.input_names == TEXT_INPUTS and len(inputs) == 1:
        inputs = (inputs[0], torch.ones_like(inputs[0]))
    return inputs


def encode_text(text: str, model: LoadedModel) -> tuple[torch.Tensor, ...]:
    """Token ids and attention mask (int64, batch 1) for `text`, by the directory's tokenizer.

    Text longer than the model's maximum positions is truncated.
    """
    if model.tokenizer is None:
        reason = model.tokenizer_problem or f"{model.path} has no tokenizer files"
        raise UserError(f"--text needs a tokenizer and {reason}; pass --input FILE instead")
    if "input_ids" not in model.input_names:
        raise UserError(
            f"--text: {model.path} takes {', '.join(model.input_names)}, not token ids; "
            "pass --input FILE"
        )
    limit = _max_text_length(model)
    encoded = model.tokenizer(
        text, return_tensors="pt", truncation=limit is not None, max_length=limit
    )
    return tuple(encoded[name].to(torch.int64) for name in model.input_names)


def _max_text_length(model: LoadedModel) -> int | None:
    """The longest token sequence both the tokenizer and the program accept (None: no limit)."""
    limits = []
    tokenizer_limit = getattr(model.tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 1_000_000:
        limits.append(tokenizer_limit)
    if model.program is not None:
        ids = expected_inputs(model.program)[model.input_names.index("input_ids")]
        if isinstance(ids, torch.Tensor) and ids.dim() == 2:
            sizes = (
                static_size(ids.shape[1]),
                bounds(ids.shape[1], model.program.range_constraints)[1],
            )
            limits += [size for size in sizes if size is not None]
    return min(limits) if limits else None


def _read_npy(path: Path) -> torch.Tensor:
    """One array from a .npy file, never unpickling."""
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UserError(
            f"--input {path}: not a plain .npy array ({one_line(exc)}); save it with numpy.save"
        ) from None
    if not isinstance(array, np.ndarray):
        raise UserError(f"--input {path}: holds several arrays; give one .npy array or a .pt file")
    try:
        return torch.from_numpy(np.ascontiguousarray(array))
    except TypeError as exc:
        raise UserError(f"--input {path}: unsupported array dtype ({one_line(exc)})") from None


def _read_pt(path: Path) -> Any:
    """The content of a .pt file, loaded with weights_only=True."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise UserError(
            f"--input {path}: not a tensor file that loads safely ({one_line(exc)}); "
            "save tensors with torch.save"
        ) from None


def _as_input_tuple(values: Any, model: LoadedModel, path: Path) -> tuple[torch.Tensor, ...]:
    """A tensor, tuple/list of tensors, or dict by input name, as the model's input tuple."""
    if isinstance(values, dict):
        missing = [n for n in model.input_names if n not in values]
        unknown = [str(k) for k in values if k not in model.input_names]
        if not model.input_names or unknown or (missing and missing != ["attention_mask"]):
            raise UserError(
                f"--input {path}: keys {', '.join(map(str, values)) or '(none)'}, the model "
                f"takes {', '.join(model.input_names) or 'positional inputs: give a tuple'}"
            )
        values = [values[n] for n in model.input_names if n in values]
    inputs = tuple(values) if isinstance(values, list | tuple) else (values,)
    for index, value in enumerate(inputs):
        if not isinstance(value, torch.Tensor):
            raise UserError(
                f"--input {path}: item {index} is a {type(value).__name__}, not a tensor"
            )
    return inputs
