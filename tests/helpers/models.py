"""Small randomly initialised Hugging Face models (seeded, eager attention) and their inputs."""

from __future__ import annotations

import math

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


def outlier_bert(
    hidden: int = 32,
    heads: int = 2,
    layers: int = 1,
    intermediate: int | None = None,
    vocab: int = 100,
    seq: int = 8,
    scores: float = 40.0,
    gelu: float = 17.0,
) -> torch.nn.Module:
    """A randomly initialised BERT with trained models' outliers: layer by layer, the query
    and key weights are scaled so that the attention scores reach +-`scores` and the
    intermediate weights so that the GELU inputs reach +-`gelu` (largest magnitude over
    four seeded batches of `seq` tokens from `outlier_inputs`), and one residual channel is
    pushed by a bias of 40 after attention and 100 after the feed-forward block, so that
    the LayerNorm variances run from about 1e-3 (embeddings) to several hundred. Eager
    attention, no dropout."""
    torch.manual_seed(0)
    cfg = T.BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate or 2 * hidden,
        vocab_size=vocab,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    model = T.BertModel(cfg).eval()
    batches = [outlier_inputs(seed, seq, vocab) for seed in range(4)]
    with torch.no_grad():
        for layer in model.encoder.layer:
            layer.attention.output.dense.bias[0] += 40.0
            layer.output.dense.weight.mul_(5)
            layer.output.dense.bias[0] += 100.0
            layer.output.LayerNorm.weight[0] = 3.0
            for _ in range(3):  # the scales interact a little through the residual
                top = _largest(model, batches, layer.attention.self, layer.intermediate.dense)
                factor = math.sqrt(scores / top[0])
                layer.attention.self.query.weight.mul_(factor)
                layer.attention.self.query.bias.mul_(factor)
                layer.attention.self.key.weight.mul_(factor)
                layer.attention.self.key.bias.mul_(factor)
                layer.intermediate.dense.weight.mul_(gelu / top[1])
                layer.intermediate.dense.bias.mul_(gelu / top[1])
    return model


def outlier_inputs(seed: int = 0, seq: int = 8, vocab: int = 100) -> tuple[torch.Tensor, ...]:
    """(token ids, an all-ones attention mask) for one sequence of `seq` tokens."""
    ids = torch.randint(0, vocab, (1, seq), generator=torch.Generator().manual_seed(seed))
    return ids, torch.ones(1, seq, dtype=torch.long)


def _largest(
    model: torch.nn.Module,
    batches: list[tuple[torch.Tensor, ...]],
    attention: torch.nn.Module,
    dense: torch.nn.Module,
) -> tuple[float, float]:
    """(largest |attention score|, largest |GELU input|) of one layer over `batches`."""
    seen = [0.0, 0.0]

    def scores(module: torch.nn.Module, args: tuple, kwargs: dict, out: tuple) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        q = module.query(hidden).unflatten(-1, (module.num_attention_heads, -1)).transpose(1, 2)
        k = module.key(hidden).unflatten(-1, (module.num_attention_heads, -1)).transpose(1, 2)
        s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        seen[0] = max(seen[0], float(s.abs().max()))

    def gelu(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        seen[1] = max(seen[1], float(out.abs().max()))

    handles = [
        attention.register_forward_hook(scores, with_kwargs=True),
        dense.register_forward_hook(gelu),
    ]
    with torch.no_grad():
        for ids, mask in batches:
            model(input_ids=ids, attention_mask=mask)
    for handle in handles:
        handle.remove()
    return seen[0], seen[1]


def hidden_states(model: torch.nn.Module) -> torch.nn.Module:
    """`model(input_ids=ids, attention_mask=mask).last_hidden_state` as a module of (ids,
    mask), for torch.export."""

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=ids, attention_mask=mask).last_hidden_state

    return Hidden().eval()
