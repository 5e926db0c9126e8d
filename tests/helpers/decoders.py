"""Small causal language models (GPT-2 and LLaMA-style) with weights at trained scale,
saved as Hugging Face directories for `secinfer generate`.

Weights at trained scale by `secinfer.zoo.scale.trained_scale` (projections
N(0, g^2 / fan_in), embeddings N(0, 1)): the logits spread over several units, so greedy
decoding does not repeat one token.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as T

from secinfer.zoo.scale import trained_scale


def decoder(
    family: str,
    *,
    hidden: int = 32,
    heads: int = 4,
    kv_heads: int | None = None,
    layers: int = 2,
    vocab: int = 100,
    positions: int = 64,
    seed: int = 1,
) -> torch.nn.Module:
    """A causal LM of `family` ("gpt2" or "llama"; LLaMA with `kv_heads` key/value heads,
    grouped-query attention when fewer than `heads`), weights at trained scale."""
    torch.manual_seed(seed)
    if family == "gpt2":
        config = T.GPT2Config(
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            vocab_size=vocab,
            n_positions=positions,
            bos_token_id=None,
            eos_token_id=None,  # no token is special: greedy decoding never stops early
            attn_implementation="eager",
        )
        model = T.GPT2LMHeadModel(config)
    elif family == "llama":
        config = T.LlamaConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads or heads,
            intermediate_size=2 * hidden,
            vocab_size=vocab,
            max_position_embeddings=positions,
            bos_token_id=None,
            eos_token_id=None,  # no token is special: greedy decoding never stops early
            attn_implementation="eager",
        )
        model = T.LlamaForCausalLM(config)
    else:
        raise ValueError(family)
    trained_scale(model, seed)
    return model.eval()


def save(model: torch.nn.Module, directory: Path) -> Path:
    """`model` as a Hugging Face directory (config.json and safetensors)."""
    model.save_pretrained(directory)
    return directory


def greedy(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> list[int]:
    """transformers' own greedy decoding of `new_tokens` after `prompt` (no stop token:
    the models have no end-of-sequence id, so no logits processor masks one)."""
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return out[0, prompt.shape[1] :].tolist()


def save_tokenizer(directory: Path, vocab: int = 100) -> Path:
    """A word-level tokenizer of `vocab` words "w0", "w1", ... (id i is "wi") saved into
    `directory` as transformers' fast tokenizer files."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"w{i}": i for i in range(vocab)}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="w0").save_pretrained(directory)
    return directory
