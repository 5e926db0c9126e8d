"""Attention computed step by step, its softmax a swappable module.

- `ExplicitMultiheadAttention`: `nn.MultiheadAttention` without the fused kernel, its
  attention weights from the submodule `attention_softmax`.
- `power_softmax_attention`: the attention function registered in transformers'
  AttentionInterface as ATTENTION_IMPLEMENTATION; it calls the attention module's
  `attention_softmax` submodule.

Masks reach the softmax as multiplicative 0/1 masks (1 keep, 0 drop): boolean masks and
additive float masks (0 keep, -inf / finfo.min / -1e4 drop) are turned into them.
`approximations.convert` wires these in.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from approximations.errors import ConversionError
from approximations.modules import PowerSoftmax

ATTENTION_IMPLEMENTATION = "secinfer_power_softmax"
"""Name under which the power-softmax attention function is registered in transformers."""

SOFTMAX_ATTRIBUTE = "attention_softmax"
"""Name of the softmax submodule attached to every converted attention module."""

_UNSUPPORTED_ATTENTION_KWARGS = ("softcap", "position_bias", "s_aux", "sinks")


def _keep_from_mask(mask: torch.Tensor, dtype: torch.dtype, true_means_keep: bool) -> torch.Tensor:
    """A 0/1 keep mask of `dtype` from a boolean or additive float mask.

    Boolean masks keep True (`true_means_keep`) or False positions; float masks are additive:
    0 keeps, anything else (-inf, finfo.min, -1e4) drops. Additive biases other than 0 are
    therefore dropped positions: power-softmax has no additive form.
    """
    if mask.dtype != torch.bool:
        return (mask == 0).to(dtype)
    return (mask if true_means_keep else ~mask).to(dtype)


class ExplicitMultiheadAttention(nn.MultiheadAttention):
    """`nn.MultiheadAttention` computed step by step, its softmax a swappable submodule.

    Same parameters, arguments and outputs as `nn.MultiheadAttention` (batch_first, kdim and
    vdim, add_bias_kv, add_zero_attn, boolean or additive masks, is_causal, need_weights), but
    no fused kernel: the attention weights are `self.attention_softmax(scores, mask=keep)`
    with `keep` a multiplicative 0/1 mask. A row whose positions are all masked gets zero
    weights (the fused kernel gives NaN).
    """

    def __init__(self, *args: Any, softmax: nn.Module | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.attention_softmax = softmax if softmax is not None else PowerSoftmax()

    @classmethod
    def from_multihead_attention(
        cls, mha: nn.MultiheadAttention, softmax: nn.Module
    ) -> ExplicitMultiheadAttention:
        """A copy of `mha` (configuration, parameters, train/eval mode) using `softmax`."""
        reference = mha.out_proj.weight
        new = cls(
            mha.embed_dim,
            mha.num_heads,
            dropout=mha.dropout,
            bias=mha.in_proj_bias is not None,
            add_bias_kv=mha.bias_k is not None,
            add_zero_attn=mha.add_zero_attn,
            kdim=mha.kdim,
            vdim=mha.vdim,
            batch_first=mha.batch_first,
            device=reference.device,
            dtype=reference.dtype,
            softmax=softmax,
        )
        new.load_state_dict(mha.state_dict())
        return new.train(mha.training)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batched = query.dim() == 3
        q, k, v = (self._to_batch_first(t, batched) for t in (query, key, value))
        if key_padding_mask is not None and not batched:
            key_padding_mask = key_padding_mask.unsqueeze(0)
        q, k, v = self._project(q, k, v)
        keep = self._keep_mask(attn_mask, key_padding_mask, is_causal, q, k)
        q, k, v = (self._split_heads(t) for t in (q, k, v))
        if self.add_zero_attn:
            k, v = (torch.cat([t, t.new_zeros(*t.shape[:2], 1, t.shape[3])], dim=2) for t in (k, v))
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.head_dim**-0.5
        weights = self.attention_softmax(scores, mask=self._pad_keep(keep, k.shape[2]))
        weights = F.dropout(weights, p=self.dropout, training=self.training)
        out = torch.matmul(weights, v).transpose(1, 2).flatten(2)
        out = self._from_batch_first(self.out_proj(out), batched)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(dim=1)
        return out, weights if batched else weights.squeeze(0)

    def _to_batch_first(self, x: torch.Tensor, batched: bool) -> torch.Tensor:
        if not batched:
            return x.unsqueeze(0)
        return x if self.batch_first else x.transpose(0, 1)

    def _from_batch_first(self, x: torch.Tensor, batched: bool) -> torch.Tensor:
        if not batched:
            return x.squeeze(0)
        return x if self.batch_first else x.transpose(0, 1)

    def _project(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Input projections, then the learned bias_k / bias_v position if any."""
        if self._qkv_same_embed_dim:
            weights = self.in_proj_weight.chunk(3)
        else:
            weights = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        biases = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
        q, k, v = (F.linear(x, w, b) for x, w, b in zip((q, k, v), weights, biases, strict=True))
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(k.shape[0], 1, -1)], dim=1)
            v = torch.cat([v, self.bias_v.expand(v.shape[0], 1, -1)], dim=1)
        return q, k, v

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def _keep_mask(
        self,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        is_causal: bool,
        q: torch.Tensor,
        k: torch.Tensor,
    ) -> torch.Tensor | None:
        """Multiplicative mask broadcastable to (batch, heads, target, source)."""
        batch, target, source = q.shape[0], q.shape[1], k.shape[1] - (self.bias_k is not None)
        keep = None
        if attn_mask is not None:
            keep = _keep_from_mask(attn_mask, q.dtype, true_means_keep=False)
            keep = keep.view(batch, self.num_heads, target, source) if keep.dim() == 3 else keep
        elif is_causal:
            keep = torch.ones(target, source, dtype=q.dtype, device=q.device).tril()
        if key_padding_mask is not None:
            padding = _keep_from_mask(key_padding_mask, q.dtype, true_means_keep=False)
            padding = padding.view(batch, 1, 1, source)
            keep = padding if keep is None else keep * padding
        return keep

    def _pad_keep(self, keep: torch.Tensor | None, width: int) -> torch.Tensor | None:
        """Keep the bias_k / zero-attention columns appended to the keys."""
        if keep is None:
            return None
        return F.pad(keep, (0, width - keep.shape[-1]), value=1.0)


def register_attention() -> None:
    """Register the power-softmax attention and its mask function with transformers.

    Idempotent. The mask function is transformers' boolean `sdpa_mask` with the causal
    shortcut disabled, so causal models always receive their mask (True = keep).
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION_IMPLEMENTATION, power_softmax_attention)
    AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, _boolean_attention_mask)


def _boolean_attention_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    from transformers.masking_utils import sdpa_mask

    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


def power_softmax_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention function for transformers' AttentionInterface using `module.attention_softmax`.

    query (batch, heads, q, d), key and value (batch, kv_heads, kv, d). Scores are
    query key^T * scaling; `attention_mask` (boolean True = keep, or additive float
    0 = keep) becomes a 0/1 mask for the softmax module. Returns (output transposed to
    (batch, q, heads, d), attention weights), as transformers' eager attention does.
    """
    softmax = getattr(module, SOFTMAX_ATTRIBUTE, None)
    if softmax is None:
        raise ConversionError(
            f"{type(module).__name__} has no {SOFTMAX_ATTRIBUTE!r} submodule: the attention "
            f"implementation {ATTENTION_IMPLEMENTATION!r} is set by approximations.convert"
        )
    unsupported = [name for name in _UNSUPPORTED_ATTENTION_KWARGS if kwargs.get(name) is not None]
    if unsupported:
        raise ConversionError(
            f"{type(module).__name__}: power-softmax attention cannot apply "
            f"{', '.join(unsupported)} (an additive score bias or cap has no multiplicative "
            "form); convert this model with softmax=None"
        )
    key, value = _repeat_kv_heads(key, value, query.shape[1])
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    keep = _attention_keep(module, attention_mask, scores, kwargs.get("is_causal"))
    weights = softmax(scores, mask=keep).to(value.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


def _repeat_kv_heads(
    key: torch.Tensor, value: torch.Tensor, heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grouped-query attention: repeat each key/value head for its group of query heads."""
    groups = heads // key.shape[1]
    if groups == 1:
        return key, value
    return key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)


def _attention_keep(
    module: nn.Module,
    attention_mask: torch.Tensor | None,
    scores: torch.Tensor,
    is_causal: bool | None,
) -> torch.Tensor | None:
    """0/1 mask for `scores` (batch, heads, q, kv) from transformers' attention mask."""
    q_length, kv_length = scores.shape[-2:]
    if attention_mask is not None:
        mask = attention_mask[..., :kv_length]
        return _keep_from_mask(mask, scores.dtype, true_means_keep=True)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    if causal and q_length > 1:  # no mask was built: causal as sdpa's is_causal (top-left)
        return torch.ones(q_length, kv_length, dtype=scores.dtype, device=scores.device).tril()
    return None
