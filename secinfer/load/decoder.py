"""Decoder language models for generation: a Hugging Face causal-LM directory as two
exported programs that carry the key/value cache as tensors.

    prefill(input_ids (1, P))             -> (logits (1, V), k_0, v_0, ..., k_{L-1}, v_{L-1})
    step(input_ids (1, 1), k_0, ..., v_{L-1}) -> (logits (1, V), k_0, ..., v_{L-1})

`logits` are the last position's (the only ones greedy decoding reads: the head's
product runs on one row), and k_l, v_l are layer l's cache, (1, kv_heads, T, head_dim)
for the T tokens seen so far; `step` returns each one row longer. The new token's
position is T, read from the cache's shape inside the program: a public integer, never a
secret. Both programs are exported from one wrapper around the same model, so their
weights are the same placeholders (a secure backend shares and opens them once for the
whole generation).

The caches pass through transformers' own `DynamicCache`, so attention, the position
embeddings (GPT-2's learned table, LLaMA's rotary angles), grouped-query attention and
the causal mask of the prompt are each family's own code; a family whose model class
takes `past_key_values` and `position_ids` exports the same way. Per new token the step
runs every linear layer on one row and attention over T cached keys: its cost grows
linearly with the context, where re-running the prefix would grow quadratically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from secinfer.errors import UserError
from secinfer.load.huggingface import (
    check_weights,
    from_pretrained,
    max_positions,
    read_config,
    read_tokenizer,
)
from secinfer.load.messages import EXPORT_RECIPE, one_line, quiet

SAMPLE_PROMPT = 8
"""Tokens of the prompt the programs are traced on."""
CALIBRATION_PROMPTS = 4
"""Prompts the programs are calibrated on (`Decoder.calibration_samples`)."""
CALIBRATION_STEPS = 4
"""Step contexts the step program is calibrated on (`Decoder.calibration_samples`)."""


@dataclass
class Decoder:
    """A causal language model ready to generate: its two programs and what they need."""

    path: Path
    prefill: torch.export.ExportedProgram
    step: torch.export.ExportedProgram
    layers: int
    vocab: int
    max_positions: int | None
    eos_token_id: int | None
    tokenizer: Any = None
    tokenizer_problem: str | None = field(default=None, repr=False)
    family: str = ""

    def calibration_samples(
        self, prompt_tokens: int, new_tokens: int
    ) -> tuple[list[tuple[torch.Tensor, ...]], list[tuple[torch.Tensor, ...]]]:
        """The model owner's own samples for the prefill and the step programs, at the
        lengths of the run (public): CALIBRATION_PROMPTS prompts of `prompt_tokens` ids
        (the first (7 i + 3) mod V, the others uniform, seeded), and for each the steps of
        its plaintext greedy continuation at up to CALIBRATION_STEPS contexts spread over
        the run, the longest always among them (softmax sums and attention grow with the
        context). Several prompts, because one prompt's ranges miss another's outliers
        (a tanh-GELU input of -46 beside a calibrated -38), and a polynomial outside its
        interval diverges."""
        generator = torch.Generator().manual_seed(0)
        prompts = [((torch.arange(prompt_tokens) * 7 + 3) % self.vocab)[None]]
        for _ in range(CALIBRATION_PROMPTS - 1):
            prompts.append(torch.randint(0, self.vocab, (1, prompt_tokens), generator=generator))
        steps = max(new_tokens - 1, 1)  # a step sample even when no step will run
        spread = max(CALIBRATION_STEPS - 1, 1)
        chosen = {round(k * (steps - 1) / spread) for k in range(CALIBRATION_STEPS)}
        prefill, step = self.prefill.module(), self.step.module()
        samples: list[tuple[torch.Tensor, ...]] = []
        with torch.no_grad():
            for prompt in prompts:
                logits, *cache = prefill(prompt)
                for index in range(steps):
                    token = logits.argmax(-1, keepdim=True)
                    if index in chosen:
                        samples.append((token, *cache))
                    logits, *cache = step(token, *cache)
        return [(prompt,) for prompt in prompts], samples

    def check_length(self, prompt_tokens: int, new_tokens: int, name: str | None = None) -> None:
        """UserError unless the prompt and the new tokens fit the model's positions; the
        message names the model as `name` (default: its path; a model owner answering a
        data owner names no path of its host)."""
        if prompt_tokens < 1:
            raise UserError("the prompt is empty; give at least one token")
        limit = self.max_positions
        if limit is not None and prompt_tokens + new_tokens > limit:
            raise UserError(
                f"a prompt of {prompt_tokens} tokens and {new_tokens} new tokens need "
                f"{prompt_tokens + new_tokens} positions; {name or self.path} has {limit}: "
                "shorten the prompt or lower --max-new-tokens"
            )

    def check_token(self, token: int, what: str) -> None:
        """UserError unless `token` is an id of the vocabulary."""
        if not 0 <= token < self.vocab:
            raise UserError(f"{what} {token}: not a token id of {self.path} (0..{self.vocab - 1})")


def token_text(tokenizer: Any, token: int) -> str:
    """ " 'piece'" for a progress line: the token decoded by `tokenizer` (none: "")."""
    if tokenizer is None:
        return ""
    return f" {tokenizer.decode([token])!r}"


def open_tokenizer(path: Path | None) -> Any:
    """The tokenizer in the directory `path` (a data owner's --tokenizer), for its progress
    lines; None without a path; UserError when it does not load."""
    if path is None:
        return None
    tokenizer, problem = read_tokenizer(Path(path))
    if tokenizer is None:
        raise UserError(f"--tokenizer {path}: {problem}; give a directory with tokenizer files")
    return tokenizer


def read_prompt(decoder: Decoder, text: str | None, path: Path | None) -> torch.Tensor:
    """The prompt as (1, P) int64 ids: `text` through the directory's tokenizer, or the ids
    in the .npy file `path` (`read_prompt_ids`, then checked against the vocabulary);
    UserError naming the problem and the fix."""
    if (text is None) == (path is None):
        raise UserError("give the prompt as --prompt TEXT or --input IDS.npy (one of them)")
    if text is not None:
        if decoder.tokenizer is None:
            reason = decoder.tokenizer_problem or f"{decoder.path} has no tokenizer files"
            raise UserError(f"--prompt needs a tokenizer and {reason}; pass --input IDS.npy")
        ids = decoder.tokenizer(text, return_tensors="pt")["input_ids"].to(torch.int64)
        if ids.numel() == 0:
            raise UserError("--prompt: the text has no tokens; give some text")
        return ids.reshape(1, -1)
    assert path is not None
    ids = read_prompt_ids(path)
    bad = ids[ids >= decoder.vocab]
    if bad.numel():
        raise UserError(
            f"--input {path}: token id {int(bad[0])} outside the vocabulary 0..{decoder.vocab - 1}"
        )
    return ids


def read_prompt_ids(path: Path) -> torch.Tensor:
    """Token ids from a .npy file: (1, P) int64 from shape (P,) or (1, P), non-negative
    integers; UserError naming the problem and the fix (the vocabulary is checked by whoever
    knows it)."""
    import numpy as np

    if path.suffix != ".npy" or not path.is_file():
        raise UserError(f"--input {path}: give an existing .npy file of token ids")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise UserError(f"--input {path}: not a readable .npy array ({one_line(exc)})") from None
    if array.dtype.kind not in "iu" or array.ndim not in (1, 2) or array.shape[0] < 1:
        raise UserError(
            f"--input {path}: {array.dtype} array of shape {array.shape}; give integer token "
            "ids of shape (P,) or (1, P)"
        )
    if array.ndim == 2 and array.shape[0] != 1:
        raise UserError(f"--input {path}: shape {array.shape}; generate takes one prompt, (1, P)")
    ids = torch.from_numpy(array.astype(np.int64)).reshape(1, -1)
    if ids.numel() == 0:
        raise UserError(f"--input {path}: no token ids; give at least one")
    if int(ids.min()) < 0:
        raise UserError(f"--input {path}: token id {int(ids.min())} is negative")
    return ids


class _CachedLM(nn.Module):
    """(input_ids, *caches) -> (last logits, *caches one row longer) around a causal LM."""

    def __init__(self, model: nn.Module, layers: int) -> None:
        super().__init__()
        self.model = model
        self.layers = layers

    def forward(self, input_ids: torch.Tensor, *cache: torch.Tensor) -> tuple[torch.Tensor, ...]:
        dynamic = _new_cache(self.model.config)
        for layer in range(len(cache) // 2):
            dynamic.update(cache[2 * layer], cache[2 * layer + 1], layer)
        past = cache[0].shape[2] if cache else 0
        positions = torch.arange(past, past + input_ids.shape[1]).unsqueeze(0)
        out = self.model(
            input_ids=input_ids,
            past_key_values=dynamic,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
        )
        return (out.logits[:, -1], *_cache_tensors(dynamic, self.layers))


def _new_cache(config: Any) -> Any:
    from transformers import DynamicCache

    try:
        return DynamicCache(config=config)
    except TypeError:  # transformers 4: no config argument
        return DynamicCache()


def _cache_tensors(cache: Any, layers: int) -> list[torch.Tensor]:
    """k_0, v_0, ..., k_{L-1}, v_{L-1} of a DynamicCache (transformers 5 or 4)."""
    out: list[torch.Tensor] = []
    for layer in range(layers):
        if hasattr(cache, "layers"):
            out += [cache.layers[layer].keys, cache.layers[layer].values]
        else:
            out += [cache.key_cache[layer], cache.value_cache[layer]]
    return out


DECODER_FILE = "decoder.json"
"""The description beside a saved decoder's two programs (`save_decoder`)."""
PROGRAM_FILES = {"prefill": "prefill.pt2", "step": "step.pt2"}


def load_decoder(path: Path) -> Decoder:
    """A Hugging Face causal-LM directory, or a directory `save_decoder` wrote (a converted
    model's programs), as a `Decoder` (module docstring); UserError for anything else,
    naming the file and the fix."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(
            f"{path}: generate reads Hugging Face model directories (config.json and "
            "*.safetensors) of causal language models, or a directory save_decoder wrote"
        )
    if (path / DECODER_FILE).is_file():
        return _load_saved(path)
    config = read_config(path)
    check_weights(path)
    model = from_pretrained(path, config)
    _check_causal_lm(model, path)
    return decoder_from_model(model, path)


def decoder_from_model(model: nn.Module, path: Path) -> Decoder:
    """The two programs of a causal LM module (a Hugging Face model class, or one
    `approximations.convert` rewrote), traced on a sample prompt; `path` names it in
    messages (and is where a tokenizer is looked for)."""
    layers = int(model.config.num_hidden_layers)
    vocab = int(model.config.vocab_size)
    wrapper = _CachedLM(model, layers).eval()
    prompt = ((torch.arange(SAMPLE_PROMPT) * 7 + 3) % vocab)[None, :]
    with torch.no_grad(), quiet():
        try:
            _, *cache = wrapper(prompt)
        except Exception as exc:
            raise UserError(
                f"{path}: the model fails on a sample prompt ({one_line(exc)}); {EXPORT_RECIPE}"
            ) from None
    prefill = _export(wrapper, (prompt,), ({1: torch.export.Dim.DYNAMIC},), path)
    token = prompt[:, :1]
    past = tuple({2: torch.export.Dim.DYNAMIC} for _ in cache)
    step = _export(wrapper, (token, *cache), (None, past), path)
    tokenizer, problem = read_tokenizer(path) if Path(path).is_dir() else (None, None)
    eos = getattr(model.config, "eos_token_id", None)
    eos = eos if isinstance(eos, int) and 0 <= eos < vocab else None
    return Decoder(
        Path(path),
        prefill,
        step,
        layers,
        vocab,
        max_positions(model.config),
        eos,
        tokenizer,
        problem,
        type(model).__name__,
    )


def save_decoder(decoder: Decoder, out_dir: Path) -> None:
    """Write `decoder` as a directory `load_decoder` reads: its two programs
    (`torch.export.save`, loaded back without running code from them:
    `safe_archive.load_untrusted`) and `decoder.json` (layers, vocabulary, positions, end
    token, family). For a model no Hugging Face class describes, such as one
    `approximations.convert` rewrote for HE."""
    import json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, file in PROGRAM_FILES.items():
        torch.export.save(getattr(decoder, name), out_dir / file)
    description = {
        "format": "secinfer-decoder/1",
        "layers": decoder.layers,
        "vocab": decoder.vocab,
        "max_positions": decoder.max_positions,
        "eos_token_id": decoder.eos_token_id,
        "family": decoder.family,
    }
    (out_dir / DECODER_FILE).write_text(json.dumps(description, indent=1) + "\n")


def _load_saved(path: Path) -> Decoder:
    """A directory `save_decoder` wrote: `decoder.json` checked field by field, the two
    programs through `safe_archive.load_untrusted` (no code from the files runs)."""
    import json

    from secinfer.load.safe_archive import load_untrusted

    where = path / DECODER_FILE
    try:
        description = json.loads(where.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(
            f"{where}: not readable JSON ({one_line(exc)}); write it with save_decoder"
        ) from None
    if not isinstance(description, dict) or description.get("format") != "secinfer-decoder/1":
        raise UserError(
            f"{where}: not a secinfer-decoder/1 description; write it with save_decoder"
        )

    def count(name: str, optional: bool = False) -> int | None:
        value = description.get(name)
        if value is None and optional:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise UserError(f"{where}: {name} is {value!r}, not a non-negative integer")
        return value

    layers, vocab = count("layers"), count("vocab")
    positions, eos = count("max_positions", True), count("eos_token_id", True)
    programs = {}
    for name, file in PROGRAM_FILES.items():
        if not (path / file).is_file():
            raise UserError(f"{path}: {file} is missing; write the directory with save_decoder")
        programs[name] = load_untrusted(path / file)
    wanted = {"prefill": 1, "step": 1 + 2 * layers}  # type: ignore[operator]
    for name, program in programs.items():
        taken = len(program.graph_signature.user_inputs)
        if taken != wanted[name]:
            raise UserError(
                f"{path / PROGRAM_FILES[name]}: takes {taken} inputs, a {layers}-layer "
                f"decoder's {name} takes {wanted[name]}; write the directory with save_decoder"
            )
    tokenizer, problem = read_tokenizer(path)
    assert layers is not None and vocab is not None
    return Decoder(
        path,
        programs["prefill"],
        programs["step"],
        layers,
        vocab,
        positions,
        eos if eos is not None and eos < vocab else None,
        tokenizer,
        problem,
        str(description.get("family", "")),
    )


def _check_causal_lm(model: nn.Module, path: Path) -> None:
    """UserError unless `model` is a causal language model with its head."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = type(model).__name__
    if name not in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
        raise UserError(
            f"{path}: {name} has no causal language-model head; generate needs one such as "
            "GPT2LMHeadModel or LlamaForCausalLM (config.json's architectures)"
        )


def _export(
    wrapper: nn.Module, args: tuple[Any, ...], dynamic: tuple[Any, ...], path: Path
) -> torch.export.ExportedProgram:
    try:
        with quiet():
            return torch.export.export(wrapper, args, dynamic_shapes=dynamic, strict=False)
    except Exception as exc:
        raise UserError(
            f"{path}: torch.export failed on the model with a key/value cache "
            f"({one_line(exc)}); generate supports the families whose forward takes "
            "past_key_values and position_ids (GPT-2, LLaMA, ...)"
        ) from None


__all__ = [
    "SAMPLE_PROMPT",
    "Decoder",
    "decoder_from_model",
    "load_decoder",
    "open_tokenizer",
    "read_prompt",
    "read_prompt_ids",
    "save_decoder",
    "token_text",
]
