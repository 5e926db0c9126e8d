"""Module surgery for `approximations.convert`: find the GELU, softmax and LayerNorm sites
of a model and put the modules a builder makes in their place.

Sites, by kind, with their path in the converted model:
  gelu       `nn.GELU` modules and transformers' GELU activation modules (their path);
             module attributes holding `torch.nn.functional.gelu` (the attribute's path)
  layernorm  `nn.LayerNorm` modules (and subclasses keeping its forward)
  softmax    `nn.Softmax` modules (their path); `nn.MultiheadAttention`, rebuilt as
             `ExplicitMultiheadAttention` (path + ".attention_softmax"); transformers
             attention modules using the attention interface, given a softmax submodule and
             switched to ATTENTION_IMPLEMENTATION (path + ".attention_softmax")

The same model always yields the same sites in the same order, so a probe copy (used for
calibration) and the final conversion agree on every path. A module shared by several paths
gets one replacement, shared the same way; the builder sees all its paths.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch.nn.functional as F
from torch import nn

from approximations.attention import (
    ATTENTION_IMPLEMENTATION,
    SOFTMAX_ATTRIBUTE,
    ExplicitMultiheadAttention,
    register_attention,
)
from approximations.errors import ConversionError
from approximations.modules import PolyGELU, PolyLayerNorm, PowerSoftmax

KINDS = ("gelu", "layernorm", "softmax")

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


@dataclass(frozen=True)
class Site:
    """One replaced site: its path in the converted model, kind, and what was there."""

    path: str
    kind: str
    old: str


class Builders(Protocol):
    """What to put at each site (`paths`: every path of the replaced module)."""

    def gelu(self, paths: list[str]) -> nn.Module: ...

    def layernorm(self, module: nn.LayerNorm, paths: list[str]) -> nn.Module: ...

    def softmax(self, dim: int, paths: list[str]) -> nn.Module: ...


def replace_sites(model: nn.Module, builders: Builders, kinds: set[str]) -> list[Site]:
    """Replace every site of `kinds` in `model` (in place); the sites in module order."""
    sites: list[Site] = []
    if "gelu" in kinds:
        sites += _swap_modules(
            model, is_gelu_module, lambda _m, paths: builders.gelu(paths), "gelu"
        )
        sites += _replace_gelu_functions(model, builders)
    if "layernorm" in kinds:
        sites += _swap_modules(model, is_plain_layer_norm, builders.layernorm, "layernorm")
    if "softmax" in kinds:
        sites += _swap_modules(
            model,
            lambda m: type(m) is nn.Softmax,
            lambda m, paths: builders.softmax(m.dim, paths),
            "softmax",
        )
        sites += _replace_multihead_attention(model, builders)
        sites += _replace_hf_attention_softmax(model, builders)
    if sites:
        _disable_fused_fast_paths(model)
    order = {path: i for i, (path, _) in enumerate(model.named_modules(remove_duplicate=False))}
    return sorted(sites, key=lambda s: order.get(s.path, len(order)))


def original_sites(model: nn.Module, kinds: set[str]) -> dict[str, tuple[nn.Module, str]]:
    """path -> (module, kind) of the GELU and LayerNorm modules of the unconverted `model`
    (the sites that are modules before conversion, at the same paths after)."""
    found = {}
    for path, module in model.named_modules(remove_duplicate=False):
        if path and "gelu" in kinds and is_gelu_module(module):
            found[path] = (module, "gelu")
        elif path and "layernorm" in kinds and is_plain_layer_norm(module):
            found[path] = (module, "layernorm")
    return found


def check_convertible(model: nn.Module, softmax: bool) -> None:
    """Raise before changing anything: `model` is itself a site, or (when swapping
    softmaxes) some attention softmax cannot be replaced."""
    _check_not_a_leaf_site(model)
    if softmax:
        _check_attention_is_swappable(model)


# --- swapping -------------------------------------------------------------------------------
def _set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put `new` at `path` ("a.b.0.c") in `model`."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)


def _swap_modules(
    model: nn.Module,
    matches: Callable[[nn.Module], bool],
    build: Callable[[nn.Module, list[str]], nn.Module],
    kind: str,
) -> list[Site]:
    """Replace every module `m` with `matches(m)` by `build(m, paths of m)`."""
    found = [
        (path, module)
        for path, module in model.named_modules(remove_duplicate=False)
        if path and matches(module)
    ]
    paths: dict[int, list[str]] = {}
    for path, module in found:
        paths.setdefault(id(module), []).append(path)
    built: dict[int, nn.Module] = {}
    sites = []
    for path, module in found:
        if id(module) not in built:
            built[id(module)] = build(module, paths[id(module)])
        _set_module(model, path, built[id(module)])
        sites.append(Site(path, kind, type(module).__name__))
    return sites


# --- GELU -----------------------------------------------------------------------------------
def is_gelu_module(module: nn.Module) -> bool:
    cls = type(module)
    return isinstance(module, nn.GELU) or (
        cls.__name__ in _HF_GELU_CLASSES and cls.__module__.startswith("transformers.")
    )


def _replace_gelu_functions(model: nn.Module, builders: Builders) -> list[Site]:
    """Attributes holding `F.gelu` (e.g. TransformerEncoderLayer.activation) become modules."""
    sites = []
    for path, module in list(model.named_modules()):
        for name, value in list(vars(module).items()):
            if value is F.gelu and not name.startswith("_"):
                full = f"{path}.{name}" if path else name
                new = builders.gelu([full])
                delattr(module, name)
                setattr(module, name, new)
                sites.append(Site(full, "gelu", "torch.nn.functional.gelu"))
    return sites


# --- LayerNorm ------------------------------------------------------------------------------
def is_plain_layer_norm(module: nn.Module) -> bool:
    """nn.LayerNorm or a subclass that keeps its forward (a different forward is another norm)."""
    return isinstance(module, nn.LayerNorm) and type(module).forward is nn.LayerNorm.forward


# --- softmax: nn.MultiheadAttention ---------------------------------------------------------
def _replace_multihead_attention(model: nn.Module, builders: Builders) -> list[Site]:
    sites = _swap_modules(
        model,
        lambda m: type(m) is nn.MultiheadAttention,
        lambda m, paths: ExplicitMultiheadAttention.from_multihead_attention(
            m, builders.softmax(-1, [f"{p}.{SOFTMAX_ATTRIBUTE}" for p in paths])
        ),
        "softmax",
    )
    return [
        Site(
            f"{s.path}.{SOFTMAX_ATTRIBUTE}",
            "softmax",
            "MultiheadAttention fused softmax (module rebuilt as ExplicitMultiheadAttention)",
        )
        for s in sites
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


def _replace_hf_attention_softmax(model: nn.Module, builders: Builders) -> list[Site]:
    """Attach a softmax module to each attention module and switch to our attention function."""
    found = _hf_attention_modules(model)
    if not found:
        return []
    register_attention()
    sites = []
    for path, module in found:
        previous = module.config._attn_implementation or "sdpa"
        site = f"{path}.{SOFTMAX_ATTRIBUTE}"
        setattr(module, SOFTMAX_ATTRIBUTE, builders.softmax(-1, [site]))
        sites.append(Site(site, "softmax", f"{previous} attention softmax"))
    _switch_attention_implementation(model, found)
    return sites


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


# --- checks ---------------------------------------------------------------------------------
def _check_not_a_leaf_site(model: nn.Module) -> None:
    """A bare GELU/Softmax/LayerNorm/MultiheadAttention cannot be replaced inside itself."""
    if is_gelu_module(model) or isinstance(
        model, (nn.Softmax, nn.LayerNorm, nn.MultiheadAttention)
    ):
        raise ConversionError(
            f"convert(model=...): the model is itself a {type(model).__name__}; convert a "
            "module that contains it (e.g. nn.Sequential(model)) or use approximations.modules"
        )
