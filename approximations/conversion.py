"""Swap GELU, softmax and LayerNorm in a model for the modules of `approximations.modules`.

`convert(model)` returns a converted copy and the list of what it replaced:

- GELU: `nn.GELU` modules, the GELU activation modules of `transformers.activations`, and
  module attributes holding the function `torch.nn.functional.gelu` (for example
  `nn.TransformerEncoderLayer.activation`) become `PolyGELU` submodules.
- softmax: `nn.Softmax` modules become `PowerSoftmax` on the same `dim`.
  `nn.MultiheadAttention`, whose softmax sits inside a fused kernel, is rebuilt as
  `ExplicitMultiheadAttention` (same parameters, attention computed step by step) with a
  `PowerSoftmax` submodule. Hugging Face attention modules (those calling
  `ALL_ATTENTION_FUNCTIONS.get_interface`) get a `PowerSoftmax` submodule and the model is
  switched to the attention implementation "secinfer_power_softmax" registered here.
- LayerNorm: `nn.LayerNorm` becomes `PolyLayerNorm` with the chosen inverse square root.

Power-softmax masks are multiplicative (1 keep, 0 drop): additive masks (0 keep, large
negative drop) are turned into 0/1 masks on the way. A model that adds its own additive mask
in front of a plain `nn.Softmax` module is not rewritten: power-softmax would give the
masked positions large weights, so such attention must call the mask-aware form.
"""

from __future__ import annotations

import copy
import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from approximations.errors import ApproximationError, ConversionError
from approximations.modules import PolyGELU, PolyLayerNorm, PowerSoftmax

ATTENTION_IMPLEMENTATION = "secinfer_power_softmax"
"""Name under which the power-softmax attention function is registered in transformers."""

SOFTMAX_ATTRIBUTE = "attention_softmax"
"""Name of the softmax submodule attached to every converted attention module."""

SOFTMAX_METHODS = ("power",)

_HF_GELU_CLASSES = frozenset(
    {
        "GELUActivation",
        "NewGELUActivation",
        "GELUTanh",
        "PytorchGELUTanh",
        "FastGELUActivation",
        "QuickGELUActivation",
        "ClippedGELUActivation",
        "AccurateGELUActivation",
    }
)
_UNSUPPORTED_ATTENTION_KWARGS = ("softcap", "position_bias", "s_aux", "sinks")


@dataclass(frozen=True)
class Replacement:
    """One replaced site of a converted model."""

    path: str  # module path in the converted model, e.g. "encoder.layer.0.output.LayerNorm"
    kind: str  # "gelu" | "softmax" | "layernorm"
    old: str  # what was there, e.g. "GELUActivation" or "sdpa attention softmax"
    new: str  # repr of the replacement, e.g. "PolyGELU(method='puma')"


def convert(
    model: nn.Module,
    gelu: str | None = "puma_refit",
    softmax: str | None = "power",
    layernorm: str | None = None,
    *,
    softmax_options: dict[str, Any] | None = None,
    layernorm_interval: tuple[float, float] | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, list[Replacement]]:
    """Replace GELU, softmax and LayerNorm in `model` by MPC/HE-friendly modules.

    gelu       PolyGELU method (default "puma_refit"; "quad" or "minimax" for HE, where
               piecewise forms need comparisons), or None to keep the GELUs.
    softmax    "power" for PowerSoftmax(**softmax_options), or None to keep the softmaxes.
               `softmax_options` takes PowerSoftmax's arguments except `dim`, which comes
               from each site (the last dimension for attention).
    layernorm  PolyLayerNorm rsqrt method ("exact", "newton", "poly"), or None to keep the
               LayerNorms; `layernorm_interval` is the calibrated range of var + eps.
    inplace    convert `model` itself instead of a deep copy.

    Returns the converted model and its replacements in module order. Raises
    ConversionError on a bad argument, on attention whose softmax cannot be swapped, and
    when nothing of the requested kinds is found.
    """
    options = _check_arguments(gelu, softmax, layernorm, softmax_options, layernorm_interval)
    _check_not_a_leaf_site(model)
    if softmax is not None:
        _check_attention_is_swappable(model)
    if not inplace:
        model = copy.deepcopy(model)
    replacements: list[Replacement] = []
    if gelu is not None:
        replacements += _replace_gelu_modules(model, gelu)
        replacements += _replace_gelu_functions(model, gelu)
    if layernorm is not None:
        replacements += _replace_layer_norms(model, layernorm, layernorm_interval)
    if softmax is not None:
        replacements += _replace_softmax_modules(model, options)
        replacements += _replace_multihead_attention(model, options)
        replacements += _replace_hf_attention_softmax(model, options)
    if not replacements:
        raise ConversionError(_nothing_found_message(model, gelu, softmax, layernorm))
    _disable_fused_fast_paths(model)
    return model, _in_module_order(model, replacements)


# --- arguments ------------------------------------------------------------------------------
def _check_arguments(
    gelu: str | None,
    softmax: str | None,
    layernorm: str | None,
    softmax_options: dict[str, Any] | None,
    layernorm_interval: tuple[float, float] | None,
) -> dict[str, Any]:
    """Validate the method names and options; return the PowerSoftmax options."""
    if gelu is None and softmax is None and layernorm is None:
        raise ConversionError(
            "convert(gelu=None, softmax=None, layernorm=None): nothing requested; "
            "name at least one method"
        )
    if gelu is not None:
        _construct_or_raise(f"gelu={gelu!r}", PolyGELU, gelu)
    if softmax is not None and softmax not in SOFTMAX_METHODS:
        raise ConversionError(
            f"convert(softmax={softmax!r}): unknown softmax method; choose one of "
            f"{', '.join(map(repr, SOFTMAX_METHODS))} or None"
        )
    options = dict(softmax_options or {})
    if "dim" in options:
        raise ConversionError(
            "convert(softmax_options=...): 'dim' is not an option; each site keeps its own dim"
        )
    if softmax is not None:
        _construct_or_raise(f"softmax_options={options!r}", PowerSoftmax, **options)
    if layernorm is not None:
        interval = tuple(layernorm_interval) if layernorm_interval is not None else None
        _construct_or_raise(
            f"layernorm={layernorm!r}, layernorm_interval={layernorm_interval!r}",
            PolyLayerNorm,
            1,
            rsqrt=layernorm,
            interval=interval,
        )
    return options


def _construct_or_raise(argument: str, cls: type[nn.Module], *args: Any, **kwargs: Any) -> None:
    """Build `cls(*args, **kwargs)` once to validate them; re-raise errors naming `argument`."""
    try:
        cls(*args, **kwargs)
    except (ApproximationError, TypeError) as err:
        raise ConversionError(f"convert({argument}): {err}") from err


def _check_not_a_leaf_site(model: nn.Module) -> None:
    """A bare GELU/Softmax/LayerNorm/MultiheadAttention cannot be replaced inside itself."""
    if _is_gelu_module(model) or isinstance(
        model, (nn.Softmax, nn.LayerNorm, nn.MultiheadAttention)
    ):
        raise ConversionError(
            f"convert(model=...): the model is itself a {type(model).__name__}; convert a "
            "module that contains it (e.g. nn.Sequential(model)) or use approximations.modules"
        )


def _nothing_found_message(
    model: nn.Module, gelu: str | None, softmax: str | None, layernorm: str | None
) -> str:
    kinds = [
        name
        for name, method in (("GELU", gelu), ("softmax", softmax), ("LayerNorm", layernorm))
        if method is not None
    ]
    wanted = kinds[0] if len(kinds) == 1 else f"{', '.join(kinds[:-1])} or {kinds[-1]}"
    return (
        f"convert(model=...): found no {wanted} to replace in {type(model).__name__}; "
        "nothing converted"
    )


# --- module surgery -------------------------------------------------------------------------
def _set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put `new` at `path` ("a.b.0.c") in `model`."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)


def _swap_modules(model: nn.Module, matches: Any, build: Any, kind: str) -> list[Replacement]:
    """Replace every module `m` with `matches(m)` by `build(m)`.

    A module shared by several paths gets one replacement, shared the same way.
    """
    found = [
        (path, module)
        for path, module in model.named_modules(remove_duplicate=False)
        if path and matches(module)
    ]
    built: dict[int, nn.Module] = {}
    replacements = []
    for path, module in found:
        if id(module) not in built:
            built[id(module)] = build(module)
        new = built[id(module)]
        _set_module(model, path, new)
        replacements.append(Replacement(path, kind, type(module).__name__, repr(new)))
    return replacements


def _in_module_order(model: nn.Module, replacements: list[Replacement]) -> list[Replacement]:
    order = {path: i for i, (path, _) in enumerate(model.named_modules(remove_duplicate=False))}
    return sorted(replacements, key=lambda r: order.get(r.path, len(order)))


# --- GELU -----------------------------------------------------------------------------------
def _is_gelu_module(module: nn.Module) -> bool:
    cls = type(module)
    return isinstance(module, nn.GELU) or (
        cls.__name__ in _HF_GELU_CLASSES and cls.__module__.startswith("transformers.")
    )


def _replace_gelu_modules(model: nn.Module, method: str) -> list[Replacement]:
    return _swap_modules(model, _is_gelu_module, lambda _: PolyGELU(method), "gelu")


def _replace_gelu_functions(model: nn.Module, method: str) -> list[Replacement]:
    """Attributes holding `F.gelu` (e.g. TransformerEncoderLayer.activation) become PolyGELU."""
    replacements = []
    for path, module in list(model.named_modules()):
        for name, value in list(vars(module).items()):
            if value is F.gelu and not name.startswith("_"):
                new = PolyGELU(method)
                delattr(module, name)
                setattr(module, name, new)
                full = f"{path}.{name}" if path else name
                replacements.append(
                    Replacement(full, "gelu", "torch.nn.functional.gelu", repr(new))
                )
    return replacements


# --- LayerNorm ------------------------------------------------------------------------------
def _is_plain_layer_norm(module: nn.Module) -> bool:
    """nn.LayerNorm or a subclass that keeps its forward (a different forward is another norm)."""
    return isinstance(module, nn.LayerNorm) and type(module).forward is nn.LayerNorm.forward


def _replace_layer_norms(
    model: nn.Module, rsqrt: str, interval: tuple[float, float] | None
) -> list[Replacement]:
    interval = tuple(interval) if interval is not None else None
    return _swap_modules(
        model,
        _is_plain_layer_norm,
        lambda ln: PolyLayerNorm.from_layer_norm(ln, rsqrt=rsqrt, interval=interval),
        "layernorm",
    )


# --- softmax: nn.Softmax modules ------------------------------------------------------------
def _replace_softmax_modules(model: nn.Module, options: dict[str, Any]) -> list[Replacement]:
    return _swap_modules(
        model,
        lambda m: type(m) is nn.Softmax,
        lambda m: PowerSoftmax(dim=m.dim, **options),
        "softmax",
    )


# --- softmax: nn.MultiheadAttention ---------------------------------------------------------
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


def _replace_multihead_attention(model: nn.Module, options: dict[str, Any]) -> list[Replacement]:
    replacements = _swap_modules(
        model,
        lambda m: type(m) is nn.MultiheadAttention,
        lambda m: ExplicitMultiheadAttention.from_multihead_attention(m, PowerSoftmax(**options)),
        "softmax",
    )
    return [
        Replacement(
            f"{r.path}.{SOFTMAX_ATTRIBUTE}",
            "softmax",
            "MultiheadAttention fused softmax (module rebuilt as ExplicitMultiheadAttention)",
            repr(model.get_submodule(r.path).get_submodule(SOFTMAX_ATTRIBUTE)),
        )
        for r in replacements
    ]


def _disable_fused_fast_paths(model: nn.Module) -> None:
    """Keep nn.TransformerEncoder(Layer) off their fused kernels where anything was replaced.

    The fused path reads the layer's weights and runs its own attention, activation and
    LayerNorm, bypassing replaced submodules; `activation_relu_or_gelu = 0` and
    `use_nested_tensor = False` make torch take the module-by-module path.
    """
    converted = (PolyGELU, PowerSoftmax, PolyLayerNorm, ExplicitMultiheadAttention)
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoderLayer) and any(
            isinstance(m, converted) for m in module.modules()
        ):
            module.activation_relu_or_gelu = 0
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder) and any(
            layer.activation_relu_or_gelu == 0 for layer in module.layers
        ):
            module.use_nested_tensor = False


# --- softmax: Hugging Face attention modules ------------------------------------------------
@functools.cache
def _forward_source(cls: type) -> str:
    try:
        return inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return ""


def _uses_attention_interface(module: nn.Module) -> bool:
    """A transformers attention module: its forward dispatches to ALL_ATTENTION_FUNCTIONS."""
    return hasattr(module, "config") and "ALL_ATTENTION_FUNCTIONS" in _forward_source(type(module))


def _has_inline_softmax(module: nn.Module) -> bool:
    """An attention module whose forward computes a softmax we have no handle on."""
    if isinstance(module, nn.MultiheadAttention) or _uses_attention_interface(module):
        return False
    if "attention" not in type(module).__name__.lower():
        return False
    source = _forward_source(type(module))
    if "softmax" not in source and "scaled_dot_product_attention" not in source:
        return False
    return not any(isinstance(child, (nn.Softmax, PowerSoftmax)) for child in module.children())


def _check_attention_is_swappable(model: nn.Module) -> None:
    """Raise before changing anything if some softmax cannot be replaced."""
    for path, module in model.named_modules():
        if type(module) is nn.Softmax and module.dim is None:
            raise ConversionError(
                f"convert(softmax='power'): nn.Softmax at {path} has dim=None (implicit dim); "
                "give it an explicit dim"
            )
        if _has_inline_softmax(module):
            raise ConversionError(
                f"convert(softmax='power'): {path or 'model'} ({type(module).__name__}) computes "
                "its attention softmax inline (softmax or scaled_dot_product_attention in its "
                "forward), so there is nothing to swap; make it call an nn.Softmax submodule "
                "or the attention interface, or pass softmax=None"
            )
    for path, module in _hf_attention_modules(model):
        owner = _owning_pretrained_model(model, path)
        if owner is not None and not type(owner)._can_set_attn_implementation():
            raise ConversionError(
                f"convert(softmax='power'): {path} ({type(module).__name__}) belongs to "
                f"{type(owner).__name__}, which does not let set_attn_implementation switch "
                "its attention function; pass softmax=None"
            )


def _hf_attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(p, m) for p, m in model.named_modules() if _uses_attention_interface(m)]


def _is_pretrained_model(module: nn.Module) -> bool:
    return any(
        cls.__name__ == "PreTrainedModel" and cls.__module__.startswith("transformers.")
        for cls in type(module).__mro__
    )


def _owning_pretrained_model(model: nn.Module, path: str) -> nn.Module | None:
    """The outermost PreTrainedModel on the way from `model` to `path`, if any."""
    parts = path.split(".")
    for depth in range(len(parts)):
        candidate = model.get_submodule(".".join(parts[:depth]))
        if _is_pretrained_model(candidate):
            return candidate
    return None


def _replace_hf_attention_softmax(model: nn.Module, options: dict[str, Any]) -> list[Replacement]:
    """Attach a PowerSoftmax to each attention module and switch to our attention function."""
    sites = _hf_attention_modules(model)
    if not sites:
        return []
    register_attention()
    replacements = []
    for path, module in sites:
        previous = module.config._attn_implementation or "sdpa"
        new = PowerSoftmax(**options)
        setattr(module, SOFTMAX_ATTRIBUTE, new)
        replacements.append(
            Replacement(
                f"{path}.{SOFTMAX_ATTRIBUTE}", "softmax", f"{previous} attention softmax", repr(new)
            )
        )
    _switch_attention_implementation(model, sites)
    return replacements


def _switch_attention_implementation(model: nn.Module, sites: list[tuple[str, nn.Module]]) -> None:
    """Set ATTENTION_IMPLEMENTATION on every model owning `sites` (sub-configs included)."""
    owners = {
        id(o): o for path, _ in sites if (o := _owning_pretrained_model(model, path)) is not None
    }
    for owner in owners.values():
        owner.set_attn_implementation(ATTENTION_IMPLEMENTATION)
    for path, module in sites:
        if module.config._attn_implementation == ATTENTION_IMPLEMENTATION:
            continue
        if _owning_pretrained_model(model, path) is not None:
            raise ConversionError(
                f"convert(softmax='power'): set_attn_implementation did not reach {path} "
                f"({type(module).__name__}); its config still selects "
                f"{module.config._attn_implementation!r}"
            )
        module.config._attn_implementation = ATTENTION_IMPLEMENTATION  # a bare attention module


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
