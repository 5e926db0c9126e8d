"""Causal language models at the scale of trained ones, for tests and benchmarks.

Random initialisation (std 0.02) leaves every logit near zero and greedy decoding
repeating one token. `trained_scale` draws every projection from N(0, g^2 / fan_in) and
embeddings from N(0, 1), so the hidden states stay O(1) through the layers as in a trained
model, and the gains g (`GAINS`, by the projection's name) widen what the approximations
see: attention scores to about +-15, FFN inputs to +-10, logits spread over several units.
"""

from __future__ import annotations

import torch

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


def trained_scale(model: torch.nn.Module, seed: int) -> None:
    """The module docstring's weights, in place, drawn in the order of
    `named_parameters` from a generator seeded with `seed`; biases N(0, 0.02^2), norms'
    gains left as they are."""
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


__all__ = ["GAINS", "trained_scale"]
