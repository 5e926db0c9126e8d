"""Small causal language models (GPT-2 and LLaMA-style) with weights at trained scale,
saved as Hugging Face directories for `secinfer generate`.

Random initialisation (std 0.02) leaves every logit near zero and greedy decoding
repeating one token; here every projection is N(0, g^2 / fan_in), embeddings N(0, 1), so
the hidden states stay O(1) through the layers as in a trained model, and the gains g
widen what the approximations see: attention scores to about +-15, FFN inputs to +-10,
logits spread over several units.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as T

GAINS = {
    "c_attn": 2.0,  # GPT-2's fused q, k, v
    "q_proj": 2.0,
    "k_proj": 2.0,
    "c_fc": 3.0,
    "gate_proj": 3.0,
    "up_proj": 3.0,
    "lm_head": 3.0,
    "c_proj": 3.0,  # GPT-2's attention and FFN outputs: the blocks, not the input token's
    # (tied) embedding, dominate the last hidden state, or greedy decoding repeats the token
}


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


def trained_scale(model: torch.nn.Module, seed: int) -> None:
    """The module docstring's weights, in place."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            leaf = name.rsplit(".", 2)[-2] if "." in name else name
            if parameter.dim() == 2 and ("wte" in name or "wpe" in name or "embed" in name):
                parameter.normal_(0.0, 1.0, generator=generator)
            elif parameter.dim() == 2:
                # GPT-2's Conv1D stores (in, out), nn.Linear (out, in)
                fan_in = parameter.shape[0] if "transformer.h." in name else parameter.shape[1]
                gain = GAINS.get(leaf, 1.0)
                parameter.normal_(0.0, gain / fan_in**0.5, generator=generator)
            elif name.endswith("bias"):
                parameter.normal_(0.0, 0.02, generator=generator)


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
