"""Small randomly initialised Hugging Face models (seeded, eager attention) and their inputs."""

from __future__ import annotations

import torch
import transformers as T

SEQ = 16  # tokens per sequence of `text_inputs`


def text_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) for a batch of two sequences of `SEQ` tokens from a
    vocabulary of 200; the second row is padded after 10 tokens."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 200, (2, SEQ), generator=gen)
    mask = torch.ones(2, SEQ, dtype=torch.long)
    mask[1, 10:] = 0  # padding in the second row
    return ids, mask


def bert(scaled: bool = False) -> torch.nn.Module:
    """A 2-layer BERT (hidden 64, 4 heads); `scaled` multiplies the query/key, intermediate
    and output weights so that the activations have trained models' outliers (GELU inputs
    beyond +-10, attention scores beyond +-20)."""
    torch.manual_seed(0)
    cfg = T.BertConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        vocab_size=200,
        attn_implementation="eager",
    )
    model = T.BertModel(cfg).eval()
    if scaled:
        with torch.no_grad():
            for layer in model.encoder.layer:
                layer.attention.self.query.weight.mul_(20)
                layer.attention.self.key.weight.mul_(20)
                layer.intermediate.dense.weight.mul_(30)
                layer.output.dense.weight.mul_(5)
    return model


def gpt2() -> torch.nn.Module:
    """A 2-layer GPT-2 (hidden 64, 4 heads, vocabulary 200)."""
    torch.manual_seed(0)
    cfg = T.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=200, attn_implementation="eager")
    return T.GPT2Model(cfg).eval()


def vit() -> torch.nn.Module:
    """A 2-layer ViT on 16x16 images in 4x4 patches (hidden 64, 4 heads)."""
    torch.manual_seed(0)
    cfg = T.ViTConfig(
        image_size=16,
        patch_size=4,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        attn_implementation="eager",
    )
    return T.ViTModel(cfg).eval()
