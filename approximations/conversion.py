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
- attention (`attention="soft"`): self-attention written out with `q`, `k`, `v`, `out`
  linear projections and `n_heads` (`secinfer.zoo.digits.SelfAttention`) becomes
  `SoftAttention` (`approximations.soft_attention`: softmax-free, its keys sharing the
  queries' projection), which needs fine-tuning. `attention_options`: `landmarks`
  (default 4), `iterations` (Newton-Schulz, default NS_ITERATIONS), `normalise` (default
  True), `order` ("linear", or "kernel" for the he engine). Given alone (no target), it
  converts the attention only.

Targets. `target=None` keeps the defaults below (PUMA's GELU, power-softmax, LayerNorm
kept). `target="mpc"` is the same. `target="he"` picks what CKKS evaluates with additions and
products only, for every method not given explicitly: GELU "minimax" (one polynomial),
power-softmax with HE_SOFTMAX_OPTIONS (p 4, normaliser "mean", eps 1e-3, a constant scale),
LayerNorm "poly" (a polynomial inverse square root on each LayerNorm's calibrated interval);
piecewise GELUs, rsqrt "newton" and scale=True (comparisons) are refused.

Calibration. `samples=` (a tensor, a tuple of positional inputs, a dict of keyword inputs,
or a list of those) runs the original model and a probe copy on them
(`approximations.calibration`) and gives every site its own interval: each LayerNorm's
range of var + eps (rsqrt "poly"), each GELU's input range (a "minimax" GELU is fitted on
it), each power-softmax's score scale and normaliser range. The replacements carry what was
observed and what was chosen; `calibration_record(replacements)` is the JSON form that
`convert(..., calibration=record)` replays without the samples.

Power-softmax masks are multiplicative (1 keep, 0 drop): additive masks (0 keep, large
negative drop) are turned into 0/1 masks on the way. A model that adds its own additive mask
in front of a plain `nn.Softmax` module is not rewritten: power-softmax would give the
masked positions large weights, so such attention must call the mask-aware form.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from approximations import calibration as cal
from approximations import functions
from approximations.attention import (
    ATTENTION_IMPLEMENTATION,
    SOFTMAX_ATTRIBUTE,
    ExplicitMultiheadAttention,
    power_softmax_attention,
    register_attention,
)
from approximations.errors import ApproximationError, ConversionError
from approximations.modules import PolyGELU, PolyLayerNorm, PowerSoftmax
from approximations.soft_attention import NS_ITERATIONS, ORDERS, SoftAttention
from approximations.surgery import Site, check_convertible, original_sites, replace_sites

__all__ = [
    "ATTENTION_IMPLEMENTATION",
    "DEFAULT",
    "HE_SOFTMAX_OPTIONS",
    "SOFTMAX_ATTRIBUTE",
    "TARGETS",
    "ExplicitMultiheadAttention",
    "Replacement",
    "calibration_record",
    "convert",
    "power_softmax_attention",
    "register_attention",
]

SOFTMAX_METHODS = ("power",)
TARGETS = (None, "mpc", "he")


class _Default:
    """The value of a method argument that was not given (the target's default applies)."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()

DEFAULT_METHODS: dict[str | None, dict[str, str | None]] = {
    None: {"gelu": "puma_refit", "softmax": "power", "layernorm": None},
    "mpc": {"gelu": "puma_refit", "softmax": "power", "layernorm": None},
    "he": {"gelu": "minimax", "softmax": "power", "layernorm": "poly"},
}
"""target -> the method used for each kind when the argument is not given."""

HE_SOFTMAX_OPTIONS: dict[str, Any] = {"p": 4, "normalizer": "mean", "eps": 1e-3, "scale": False}
"""PowerSoftmax options under target "he" (softmax_options given override them one by one).
The normaliser "mean" keeps the reciprocal's input bounded whatever the row length; with
samples the scale becomes a calibrated constant c (scores / c, |.| <= 1 for scores within
the calibrated margin), so eps 1e-3 floors a normaliser that lies in [eps, 1 + eps]. Measured
against the original model (no fine-tuning): the same fidelity as the raw scores with eps
1e-3 (outlier BERT cosine 0.99948 against 0.99955; digits accuracy 57.8% against 56.4%), with
HE values bounded: raw outlier scores of 40 make x^4 = 2.6e6, beyond a refresh's message
space."""

HE_REFUSED: dict[str, dict[str, str]] = {
    "gelu": {
        m: "a piecewise GELU needs comparisons; use 'minimax' or 'quad'"
        for m in ("puma", "puma_refit", "bolt")
    },
    "layernorm": {"newton": "its range normalisation needs comparisons; use 'poly'"},
}


@dataclass(frozen=True)
class Replacement:
    """One replaced site of a converted model, with what calibration found for it.

    observed   the range the calibration samples produced at this site: GELU input,
               LayerNorm var + eps, power-softmax normaliser (the reciprocal's input);
               None without calibration
    interval   where the replacement's approximation holds: the fitted GELU's [-B, B], the
               LayerNorm rsqrt's interval, the power-softmax normaliser's widened range
    scale      power-softmax's constant score scale c (scores / c), if any
    max_error  certified error on `interval` (GELU absolute; LayerNorm rsqrt relative),
               None where the replacement's error is not a single figure (softmax)
    """

    path: str  # module path in the converted model, e.g. "encoder.layer.0.output.LayerNorm"
    kind: str  # "gelu" | "softmax" | "layernorm" | "attention"
    old: str  # what was there, e.g. "GELUActivation" or "sdpa attention softmax"
    new: str  # repr of the replacement, e.g. "PolyGELU(method='puma')"
    observed: tuple[float, float] | None = None
    interval: tuple[float, float] | None = None
    scale: float | None = None
    max_error: float | None = None


@dataclass
class _Settings:
    """The methods and options of one conversion, after the target's defaults."""

    target: str | None
    gelu: str | None
    softmax: str | None
    layernorm: str | None
    softmax_options: dict[str, Any]
    layernorm_interval: tuple[float, float] | None
    calibrate_scale: bool  # the softmax scale comes from calibration

    @property
    def kinds(self) -> set[str]:
        chosen = {"gelu": self.gelu, "softmax": self.softmax, "layernorm": self.layernorm}
        return {kind for kind, method in chosen.items() if method is not None}


@dataclass
class _SiteValues:
    """Calibrated values of one site (from samples or a calibration record)."""

    observed: tuple[float, float] | None = None
    interval: tuple[float, float] | None = None
    scale: float | None = None


def convert(
    model: nn.Module,
    gelu: str | None = DEFAULT,
    softmax: str | None = DEFAULT,
    layernorm: str | None = DEFAULT,
    *,
    attention: str | None = None,
    attention_options: dict[str, Any] | None = None,
    target: str | None = None,
    samples: Any = None,
    calibration: Mapping[str, Mapping[str, Any]] | None = None,
    softmax_options: dict[str, Any] | None = None,
    layernorm_interval: tuple[float, float] | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, list[Replacement]]:
    """Replace GELU, softmax and LayerNorm in `model` by MPC/HE-friendly modules.

    gelu       PolyGELU method (default "puma_refit"; "minimax" under target "he", fitted
               on each site's calibrated range when there are samples; "quad" needs
               distillation), or None to keep the GELUs.
    softmax    "power" for PowerSoftmax(**softmax_options), or None to keep the softmaxes.
               `softmax_options` takes PowerSoftmax's arguments except `dim`, which comes
               from each site (the last dimension for attention).
    layernorm  PolyLayerNorm rsqrt method ("exact", "newton", "poly"), or None to keep the
               LayerNorms (default None; "poly" under target "he"); "poly" needs the
               range of var + eps: `samples` (per LayerNorm) or `layernorm_interval` (one
               for all, it wins over samples).
    attention  "soft" to rebuild explicit self-attention as `SoftAttention` with
               `attention_options` (module docstring); then softmax is not converted, and
               without a target the other kinds are kept unless named (target "he": the
               "kernel" order unless given).
    target     None or "mpc" (the defaults above) or "he" (see the module docstring).
    samples    inputs to calibrate on: a tensor, a tuple of positional inputs, a dict of
               keyword inputs, or a list / iterable of those (batches).
    calibration  a `calibration_record` of an earlier conversion: the same per-site values
               without samples (a site it does not name is not calibrated).
    inplace    convert `model` itself instead of a deep copy.

    Returns the converted model and its replacements in module order. Raises
    ConversionError on a bad argument, on attention whose softmax cannot be swapped, and
    when nothing of the requested kinds is found.
    """
    soft = soft_attention_options(attention, attention_options, softmax)
    if soft is not None:
        softmax = None
        if target == "he" and "order" not in (attention_options or {}):
            soft["order"] = "kernel"  # the he engine packs ordinary attention's products
        if target is None:
            gelu, layernorm = (None if m is DEFAULT else m for m in (gelu, layernorm))
        if gelu is None and layernorm is None:
            return _convert_attention(model if inplace else copy.deepcopy(model), soft)
    settings = _settings(
        target, gelu, softmax, layernorm, softmax_options, layernorm_interval, samples, calibration
    )
    check_convertible(model, settings.softmax is not None)
    values: dict[str, _SiteValues] = {}
    if samples is not None:
        values, kinds = _calibrate(model, settings, cal.batches(samples))
        _check_calibrated(model, settings, values, kinds, "samples")
    elif calibration is not None:
        values = _from_record(calibration)
        _check_calibrated(model, settings, values, _site_kinds(model, settings), "calibration")
    if not inplace:
        model = copy.deepcopy(model)
    sites = replace_sites(model, _FinalBuilders(settings, values), settings.kinds)
    if not sites:
        raise ConversionError(_nothing_found_message(model, settings))
    replaced = [_describe(model, site, values.get(site.path)) for site in sites]
    if soft is not None:
        model, attention_sites = _convert_attention(model, soft)
        replaced += attention_sites
    return model, replaced


SOFT_OPTIONS: dict[str, Any] = {
    "landmarks": 4,
    "iterations": NS_ITERATIONS,
    "normalise": True,
    "order": "linear",
}
"""`attention_options` of attention="soft" and their defaults."""


def soft_attention_options(
    attention: str | None, options: dict[str, Any] | None, softmax: Any
) -> dict[str, Any] | None:
    """The SOFT settings (defaults filled in), None without attention="soft";
    ConversionError for another attention, an unknown option, an option without a value
    or of the wrong type, and a softmax method named beside it."""
    if attention is None:
        if options:
            raise ConversionError(
                "convert(attention_options=...): given without attention='soft'; name the "
                "attention to convert"
            )
        return None
    if attention != "soft":
        raise ConversionError(f"convert(attention={attention!r}): choose 'soft' or None")
    if softmax is not DEFAULT and softmax is not None:
        raise ConversionError(
            f"convert(attention='soft', softmax={softmax!r}): SOFT attention has no softmax "
            "to replace; leave softmax out"
        )
    given = dict(options or {})
    unknown = sorted(set(given) - set(SOFT_OPTIONS))
    if unknown:
        raise ConversionError(
            f"convert(attention_options={{{unknown[0]!r}: ...}}): unknown SOFT option; "
            f"choose from {', '.join(SOFT_OPTIONS)}"
        )
    for key, value in given.items():
        if value is None:
            raise ConversionError(
                f"convert(attention_options={{{key!r}: None}}): the SOFT option {key!r} needs "
                "a value"
            )
        if key == "order":
            if value not in ORDERS:
                raise ConversionError(
                    f"convert(attention_options={{'order': {value!r}}}): choose from "
                    f"{', '.join(ORDERS)}"
                )
            continue
        wanted = bool if key == "normalise" else int
        if type(value) is not wanted or (wanted is int and value < 1):
            raise ConversionError(
                f"convert(attention_options={{{key!r}: {value!r}}}): expected "
                f"{'True or False' if wanted is bool else 'an integer >= 1'}"
            )
    return {**SOFT_OPTIONS, **given}


def _is_explicit_attention(module: nn.Module) -> bool:
    return isinstance(getattr(module, "n_heads", None), int) and all(
        isinstance(getattr(module, name, None), nn.Linear) for name in ("q", "k", "v", "out")
    )


def _convert_attention(
    model: nn.Module, soft: dict[str, Any]
) -> tuple[nn.Module, list[Replacement]]:
    """Every explicit self-attention of `model` (in place) as `SoftAttention`."""
    found = [
        (path, module)
        for path, module in model.named_modules()
        if path and _is_explicit_attention(module)
    ]
    if not found:
        raise ConversionError(
            f"convert(attention='soft'): found no self-attention written out with q, k, v, "
            f"out projections and n_heads in {type(model).__name__} (as "
            "secinfer.zoo.digits.SelfAttention)"
        )
    replaced = []
    for path, module in found:
        new = SoftAttention.from_attention(
            module, soft["landmarks"], soft["iterations"], order=soft["order"]
        )
        new.normalise = soft["normalise"]
        parent, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, name, new)
        replaced.append(
            Replacement(
                path,
                "attention",
                type(module).__name__,
                f"SoftAttention(landmarks={soft['landmarks']}, "
                f"iterations={soft['iterations']}, normalise={soft['normalise']}, "
                f"order={soft['order']!r})",
            )
        )
    return model, replaced


def calibration_record(replacements: list[Replacement]) -> dict[str, dict[str, Any]]:
    """JSON-ready {path: {"observed", "interval", "scale"}} of the calibrated sites, for
    `convert(model, ..., calibration=record)` (same methods) to rebuild the same model."""
    record: dict[str, dict[str, Any]] = {}
    for r in replacements:
        entry: dict[str, Any] = {}
        if r.observed is not None:
            entry["observed"] = list(r.observed)
        if r.interval is not None:
            entry["interval"] = list(r.interval)
        if r.scale is not None:
            entry["scale"] = r.scale
        if entry:
            record[r.path] = entry
    return record


# --- arguments ------------------------------------------------------------------------------
def _settings(
    target: str | None,
    gelu: Any,
    softmax: Any,
    layernorm: Any,
    softmax_options: dict[str, Any] | None,
    layernorm_interval: tuple[float, float] | None,
    samples: Any,
    calibration: Any,
) -> _Settings:
    """Apply the target's defaults and validate every argument (no model work yet)."""
    if target not in TARGETS:
        raise ConversionError(
            f"convert(target={target!r}): choose None, 'mpc' or 'he' (the backend the "
            "converted model is meant for)"
        )
    if samples is not None and calibration is not None:
        raise ConversionError(
            "convert(samples=..., calibration=...): give one; samples calibrate anew, a "
            "calibration record replays an earlier calibration"
        )
    defaults = DEFAULT_METHODS[target]
    gelu = defaults["gelu"] if gelu is DEFAULT else gelu
    softmax = defaults["softmax"] if softmax is DEFAULT else softmax
    layernorm = defaults["layernorm"] if layernorm is DEFAULT else layernorm
    if gelu is None and softmax is None and layernorm is None:
        raise ConversionError(
            "convert(gelu=None, softmax=None, layernorm=None): nothing requested; "
            "name at least one method"
        )
    given = dict(softmax_options or {})
    options = {**HE_SOFTMAX_OPTIONS, **given} if target == "he" else given
    calibrated = samples is not None or calibration is not None
    if target == "he":
        _refuse_for_he(gelu, layernorm, options)
    _check_methods(gelu, softmax, layernorm, options, layernorm_interval, calibrated)
    return _Settings(
        target=target,
        gelu=gelu,
        softmax=softmax,
        layernorm=layernorm,
        softmax_options=options,
        layernorm_interval=tuple(layernorm_interval) if layernorm_interval is not None else None,
        calibrate_scale=target == "he" and calibrated and "scale" not in given,
    )


def _refuse_for_he(gelu: str | None, layernorm: str | None, options: dict[str, Any]) -> None:
    for kind, method in (("gelu", gelu), ("layernorm", layernorm)):
        reason = HE_REFUSED[kind].get(method or "")
        if reason:
            raise ConversionError(
                f"convert(target='he', {kind}={method!r}): CKKS evaluates additions and "
                f"products only, and {reason}"
            )
    if options.get("scale") is True:
        raise ConversionError(
            "convert(target='he', softmax_options={'scale': True}): dividing by each row's "
            "maximum needs comparisons; leave 'scale' out (a calibrated constant with "
            "samples=) or give a positive constant"
        )


def _check_methods(
    gelu: str | None,
    softmax: str | None,
    layernorm: str | None,
    options: dict[str, Any],
    layernorm_interval: tuple[float, float] | None,
    calibrated: bool,
) -> None:
    if gelu is not None:
        try:
            functions.check_gelu_method(gelu)
        except ApproximationError as err:
            raise ConversionError(f"convert(gelu={gelu!r}): {err}") from err
    if softmax is not None and softmax not in SOFTMAX_METHODS:
        raise ConversionError(
            f"convert(softmax={softmax!r}): unknown softmax method; choose one of "
            f"{', '.join(map(repr, SOFTMAX_METHODS))} or None"
        )
    if "dim" in options:
        raise ConversionError(
            "convert(softmax_options=...): 'dim' is not an option; each site keeps its own dim"
        )
    if softmax is not None:
        _construct_or_raise(f"softmax_options={options!r}", PowerSoftmax, **options)
    if layernorm is None:
        return
    if layernorm not in functions.RSQRT_METHODS:
        raise ConversionError(
            f"convert(layernorm={layernorm!r}): choose one of "
            f"{', '.join(map(repr, functions.RSQRT_METHODS))} or None"
        )
    if layernorm == "poly" and layernorm_interval is None and not calibrated:
        raise ConversionError(
            "convert(layernorm='poly'): a polynomial inverse square root holds on an "
            "interval of var + eps only; pass samples=<typical inputs> (calibrates each "
            "LayerNorm) or layernorm_interval=(lo, hi)"
        )
    if layernorm == "poly" and layernorm_interval is None:  # calibrated: nothing to fit yet
        return
    interval = tuple(layernorm_interval) if layernorm_interval is not None else None
    _construct_or_raise(
        f"layernorm={layernorm!r}, layernorm_interval={layernorm_interval!r}",
        PolyLayerNorm,
        1,
        rsqrt=layernorm,
        interval=interval,
    )


def _construct_or_raise(argument: str, cls: type[nn.Module], *args: Any, **kwargs: Any) -> None:
    """Build `cls(*args, **kwargs)` once to validate them; re-raise errors naming `argument`."""
    try:
        cls(*args, **kwargs)
    except (ApproximationError, TypeError) as err:
        raise ConversionError(f"convert({argument}): {err}") from err


def _nothing_found_message(model: nn.Module, settings: _Settings) -> str:
    kinds = [
        name
        for name, method in (
            ("GELU", settings.gelu),
            ("softmax", settings.softmax),
            ("LayerNorm", settings.layernorm),
        )
        if method is not None
    ]
    wanted = kinds[0] if len(kinds) == 1 else f"{', '.join(kinds[:-1])} or {kinds[-1]}"
    return (
        f"convert(model=...): found no {wanted} to replace in {type(model).__name__}; "
        "nothing converted"
    )


def _from_record(record: Mapping[str, Mapping[str, Any]]) -> dict[str, _SiteValues]:
    """Site values from a `calibration_record` (JSON lists allowed)."""
    if not isinstance(record, Mapping):
        raise ConversionError(
            f"convert(calibration=...): expected the dict of calibration_record, got a "
            f"{type(record).__name__}"
        )
    values = {}
    for path, entry in record.items():
        try:
            values[str(path)] = _SiteValues(
                observed=_pair(entry.get("observed")),
                interval=_pair(entry.get("interval")),
                scale=float(entry["scale"]) if entry.get("scale") is not None else None,
            )
        except (AttributeError, TypeError, ValueError):
            raise ConversionError(
                f"convert(calibration=...): the entry for {path} is not a calibration_record "
                f"entry ({entry!r})"
            ) from None
    return values


def _pair(value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    lo, hi = (float(v) for v in value)
    return (lo, hi)


def _site_kinds(model: nn.Module, settings: _Settings) -> dict[str, str]:
    """path -> kind of every site of `model` (a conversion of a copy, placeholders only)."""

    class Placeholders:
        def gelu(self, paths: list[str]) -> nn.Module:
            return nn.Identity()

        def layernorm(self, module: nn.LayerNorm, paths: list[str]) -> nn.Module:
            return nn.Identity()

        def softmax(self, dim: int, paths: list[str]) -> nn.Module:
            return nn.Identity()

    sites = replace_sites(copy.deepcopy(model), Placeholders(), settings.kinds)
    return {site.path: site.kind for site in sites}


def _check_calibrated(
    model: nn.Module,
    settings: _Settings,
    values: dict[str, _SiteValues],
    kinds: dict[str, str],
    source: str,
) -> None:
    """Before any change to the model: every calibrated path is a site, and every site
    that needs an interval (rsqrt "poly" without layernorm_interval) has one."""
    unknown = sorted(set(values) - set(kinds))
    if unknown:
        raise ConversionError(
            f"convert(calibration=...): names {unknown[0]}, which is no site of this "
            f"{type(model).__name__}; use the record of a conversion of the same model"
        )
    if settings.layernorm != "poly" or settings.layernorm_interval is not None:
        return
    for path, kind in kinds.items():
        if kind == "layernorm" and (path not in values or values[path].interval is None):
            reason = (
                "the samples never reached it"
                if source == "samples"
                else "the calibration record does not name it"
            )
            raise ConversionError(
                f"convert(layernorm='poly'): the LayerNorm at {path} has no calibrated "
                f"interval ({reason}); pass samples= that run through it or "
                "layernorm_interval=(lo, hi)"
            )


# --- building the replacements --------------------------------------------------------------
class _FinalBuilders:
    """The modules of the conversion, each site with its calibrated values."""

    def __init__(self, settings: _Settings, values: dict[str, _SiteValues]) -> None:
        self.settings = settings
        self.values = values

    def _site(self, paths: list[str]) -> _SiteValues:
        """The values of a module's paths (one module shared by paths: their union)."""
        found = [self.values[p] for p in paths if p in self.values]
        if not found:
            return _SiteValues()
        merged = found[0]
        for other in found[1:]:
            merged = _SiteValues(
                _union(merged.observed, other.observed),
                _union(merged.interval, other.interval),
                max(merged.scale or 0.0, other.scale or 0.0) or None,
            )
        return merged

    def gelu(self, paths: list[str]) -> nn.Module:
        method = self.settings.gelu
        assert method is not None
        interval = self._site(paths).interval if method == "minimax" else None
        return PolyGELU(method, interval=interval)

    def layernorm(self, module: nn.LayerNorm, paths: list[str]) -> nn.Module:
        rsqrt = self.settings.layernorm
        assert rsqrt is not None
        site = self._site(paths)
        interval = self.settings.layernorm_interval
        if interval is None and rsqrt == "poly":
            interval = site.interval  # present: `_check_calibrated`
        return PolyLayerNorm.from_layer_norm(module, rsqrt=rsqrt, interval=interval)

    def softmax(self, dim: int, paths: list[str]) -> nn.Module:
        options = dict(self.settings.softmax_options)
        site = self._site(paths)
        if site.scale is not None:
            options["scale"] = site.scale
        return PowerSoftmax(dim=dim, interval=site.interval, **options)


def _union(a: tuple[float, float] | None, b: tuple[float, float] | None) -> Any:
    if a is None or b is None:
        return a or b
    return (min(a[0], b[0]), max(a[1], b[1]))


def _describe(model: nn.Module, site: Site, values: _SiteValues | None) -> Replacement:
    module = model.get_submodule(site.path)
    interval, scale, error = None, None, None
    if isinstance(module, (PolyGELU, PolyLayerNorm)):
        interval, error = module.interval, module.max_error
    elif isinstance(module, PowerSoftmax):
        interval = module.interval
        scale = None if isinstance(module.scale, bool) else module.scale
    return Replacement(
        site.path,
        site.kind,
        site.old,
        repr(module),
        observed=values.observed if values is not None else None,
        interval=tuple(interval) if interval is not None else None,
        scale=scale,
        max_error=error,
    )


# --- calibration ----------------------------------------------------------------------------
class _ProbeBuilders:
    """Exact stand-ins at every site (GELU and LayerNorm exact, power-softmax with the
    conversion's options and `scales`), to observe what each site will see."""

    def __init__(self, settings: _Settings, scales: dict[str, float] | None) -> None:
        self.settings = settings
        self.scales = scales

    def gelu(self, paths: list[str]) -> nn.Module:
        return PolyGELU("exact")

    def layernorm(self, module: nn.LayerNorm, paths: list[str]) -> nn.Module:
        return PolyLayerNorm.from_layer_norm(module, rsqrt="exact")

    def softmax(self, dim: int, paths: list[str]) -> nn.Module:
        options = dict(self.settings.softmax_options)
        if self.settings.calibrate_scale:
            scales = [self.scales[p] for p in paths if p in self.scales] if self.scales else []
            options["scale"] = max(scales) if scales else False
        return PowerSoftmax(dim=dim, **options)


def _probe(
    model: nn.Module, settings: _Settings, scales: dict[str, float] | None
) -> tuple[nn.Module, dict[nn.Module, str], dict[str, nn.Module]]:
    """A converted copy of `model` with exact stand-ins: (copy, module -> kind, path ->
    module)."""
    probe = copy.deepcopy(model)
    sites = replace_sites(probe, _ProbeBuilders(settings, scales), settings.kinds)
    at = {s.path: probe.get_submodule(s.path) for s in sites}
    return probe, {at[s.path]: s.kind for s in sites}, at


def _calibrate(
    model: nn.Module, settings: _Settings, calls: list[cal.Call]
) -> tuple[dict[str, _SiteValues], dict[str, str]]:
    """Per-site values from running the original model and probe copies on `calls`.

    1. the original model: GELU inputs and LayerNorm var + eps at its GELU and LayerNorm
       modules;
    2. if the softmax scale is calibrated: a probe with raw power-softmax (scale False),
       for each site's largest |score|, hence c (`calibration.softmax_scale`);
    3. a probe with exact GELU and LayerNorm and the final power-softmax: what every site
       of the converted model sees (its inputs follow the power-softmax, not the softmax);
       a c exceeded there is raised, the normaliser range rescaled to it.
    GELU and LayerNorm ranges are the union of 1 and 3. Returns the values of the sites the
    samples reached and the kind of every site.
    """
    kinds = settings.kinds
    original = original_sites(model, kinds)
    seen_original = cal.observe(model, calls, {m: kind for m, kind in original.values()})
    scales: dict[str, float] = {}
    if settings.calibrate_scale and "softmax" in kinds:
        raw, sites, at = _probe(model, settings, None)
        seen = cal.observe(raw, calls, {m: k for m, k in sites.items() if k == "softmax"})
        for path, module in at.items():
            if module in seen and seen[module].scores is not None:
                scales[path] = cal.softmax_scale(seen[module].scores)
    probe, sites, at = _probe(model, settings, scales)
    seen_probe = cal.observe(probe, calls, sites)

    values: dict[str, _SiteValues] = {}
    for path, module in at.items():
        observation = seen_probe.get(module)
        if path in original:
            first = seen_original.get(original[path][0])
            observation = first.union(observation) if first is not None else observation
        if observation is None or not observation.values.seen:
            continue
        values[path] = _site_values(settings, sites[module], path, module, observation, scales)
    return values, {path: sites[module] for path, module in at.items()}


def _site_values(
    settings: _Settings,
    kind: str,
    path: str,
    module: nn.Module,
    observation: cal.Observation,
    scales: dict[str, float],
) -> _SiteValues:
    observed = observation.values
    if kind == "gelu":
        interval = cal.gelu_interval(observed) if settings.gelu == "minimax" else None
        return _SiteValues(observed.as_tuple(), interval)
    if kind == "layernorm":
        interval = None
        if settings.layernorm == "poly" and settings.layernorm_interval is None:
            interval = cal.layer_norm_interval(observed, module.eps)
        return _SiteValues(observed.as_tuple(), interval)
    assert isinstance(module, PowerSoftmax)
    scale = scales.get(path)
    if scale is not None and observation.scores is not None:
        needed = cal.softmax_scale(observation.scores)
        if needed > scale:  # later layers' scores grew under power-softmax
            observed = cal.rescale_normaliser(observed, module.eps, module.p, scale, needed)
            scale = needed
    return _SiteValues(observed.as_tuple(), cal.normaliser_interval(observed, module.eps), scale)
