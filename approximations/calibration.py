"""Calibration for `approximations.convert(..., samples=...)`: what each site sees, and the
interval its approximation is given.

`batches(samples)` turns the user's samples into (args, kwargs) calls; `observe(model,
batches, sites)` runs the model on them (eval mode, no grad) with a forward hook on every
site module and records, per module:

  gelu       the input's range
  layernorm  the range of var + eps over the normalised dimensions (the inverse square
             root's input; the biased variance LayerNorm uses)
  softmax    (a `PowerSoftmax`) the largest kept |score| and the range of the reciprocal's
             input (`PowerSoftmax.normaliser`: the mean or sum of (x / c)^p, plus eps)

The observed ranges are widened by margins, because the converted model will see inputs
beyond the calibration set (held-out inputs of the outlier test BERT reach GELU inputs 11%
beyond those of 16 calibration sequences; the digits test images push power-softmax
denominators 13x above the training images) and a polynomial diverges outside its
interval rather than degrading:

  GELU       [-B, B], B = GELU_MARGIN (1.5) max|x|, rounded up to a quarter octave
             (2^(k/4)); the fit's cost grows with B (`functions.gelu_minimax_on`).
  LayerNorm  [lo / 4, hi * 4] (LAYERNORM_MARGIN, geometric: a variance is a scale), never
             below eps, rounded outward to quarter octaves; the rsqrt's depth grows with
             log(hi / lo) only (about two levels per doubling of hi / lo).
  softmax    scale c = SCORE_MARGIN (1.5) max|score|, 3 significant digits up, so that
             |x / c|^p <= 1 for scores within 1.5x of those seen: HE values stay bounded
             and the normaliser lies in [eps, 1 + eps]. Normaliser interval
             [max(eps, lo / 16), hi * 16] (NORMALISER_MARGIN, as the HE reciprocal's own
             margin `iterative.HE_MARGIN`); eps is a proven lower bound.

Rounding to a grid lets sites with similar ranges share one fit (fits are cached) and
makes the intervals stable from one calibration set to another.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from approximations.errors import ConversionError

GELU_MARGIN = 1.5
LAYERNORM_MARGIN = 4.0
NORMALISER_MARGIN = 16.0
SCORE_MARGIN = 1.5
MIN_GELU_BOUND = 1.0
SENTINEL = 1e30
"""Values this large are masks' stand-ins for -inf (torch.finfo.min), not activations."""

Call = tuple[tuple[Any, ...], dict[str, Any]]


# --- samples --------------------------------------------------------------------------------
def batches(samples: Any) -> list[Call]:
    """The calls (args, kwargs) that `samples` stands for.

    One batch is a tensor (the only positional input), a tuple of positional inputs, or a
    dict of keyword inputs; anything else iterable (a list, a generator, a DataLoader) is a
    sequence of batches, each one of those three (a list inside it counts as a tuple).
    """
    if _is_batch(samples):
        return [_call(samples)]
    if isinstance(samples, (str, bytes)) or not isinstance(samples, Iterable):
        raise ConversionError(
            f"convert(samples=...): got a {type(samples).__name__}; give a tensor, a tuple of "
            "positional inputs, a dict of keyword inputs, or a list of those (batches)"
        )
    calls = []
    for i, batch in enumerate(samples):
        if not (_is_batch(batch) or isinstance(batch, list)):
            raise ConversionError(
                f"convert(samples=...): batch {i} is a {type(batch).__name__}; each batch is a "
                "tensor, a tuple of positional inputs or a dict of keyword inputs"
            )
        calls.append(_call(tuple(batch) if isinstance(batch, list) else batch))
    if not calls:
        raise ConversionError("convert(samples=...): no batches; give at least one input batch")
    return calls


def _is_batch(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, tuple, Mapping))


def _call(batch: Any) -> Call:
    if isinstance(batch, torch.Tensor):
        return (batch,), {}
    if isinstance(batch, Mapping):
        return (), dict(batch)
    return tuple(batch), {}


def run(model: nn.Module, calls: list[Call]) -> None:
    """`model(*args, **kwargs)` for every call, in eval mode without gradients (the
    model's training flags are restored after)."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            for i, (args, kwargs) in enumerate(calls):
                try:
                    model(*args, **kwargs)
                except ConversionError:
                    raise
                except Exception as err:
                    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                    raise ConversionError(
                        f"convert(samples=...): the model failed on batch {i} "
                        f"({type(err).__name__}: {first}); give inputs the model accepts"
                    ) from err
    finally:
        for module, training in modes.items():
            module.train(training)


# --- observation ----------------------------------------------------------------------------
@dataclass
class Range:
    """Running [lo, hi] of finite values (mask sentinels excluded)."""

    lo: float = math.inf
    hi: float = -math.inf

    def add(self, values: torch.Tensor) -> None:
        values = values.detach()
        finite = values[torch.isfinite(values) & (values.abs() < SENTINEL)]
        if finite.numel():
            self.lo = min(self.lo, float(finite.min()))
            self.hi = max(self.hi, float(finite.max()))

    def union(self, other: Range | None) -> Range:
        if other is None:
            return Range(self.lo, self.hi)
        return Range(min(self.lo, other.lo), max(self.hi, other.hi))

    @property
    def seen(self) -> bool:
        return self.lo <= self.hi

    def as_tuple(self) -> tuple[float, float]:
        return (self.lo, self.hi)


@dataclass
class Observation:
    """What one site saw: `values` (GELU input, LayerNorm var + eps, power-softmax
    normaliser) and, for softmax, `scores` (the kept scores)."""

    values: Range
    scores: Range | None = None

    def union(self, other: Observation | None) -> Observation:
        if other is None:
            return self
        scores = self.scores.union(other.scores) if self.scores is not None else other.scores
        return Observation(self.values.union(other.values), scores)


def layer_norm_input(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """var + eps of `x` over the module's normalised dimensions (biased variance)."""
    dims = tuple(range(-len(module.normalized_shape), 0))
    return x.detach().double().var(dim=dims, unbiased=False) + module.eps


def observe(
    model: nn.Module, calls: list[Call], sites: Mapping[nn.Module, str]
) -> dict[nn.Module, Observation]:
    """Run `model` on `calls`, recording what each site module (kind "gelu", "layernorm" or
    "softmax") sees; a module shared by several paths is observed once for all of them."""
    seen: dict[nn.Module, Observation] = {}

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], _out: Any) -> None:
        x = args[0] if args else kwargs.get("input", kwargs.get("x"))
        if not isinstance(x, torch.Tensor):
            return
        kind = sites[module]
        record = seen.setdefault(
            module, Observation(Range(), Range() if kind == "softmax" else None)
        )
        if kind == "gelu":
            record.values.add(x)
        elif kind == "layernorm":
            record.values.add(layer_norm_input(module, x))
        else:
            mask = args[1] if len(args) > 1 else kwargs.get("mask")
            keep = torch.ones_like(x) if mask is None else mask.to(x.dtype).expand_as(x)
            assert record.scores is not None
            record.scores.add(x.detach().abs()[keep > 0])
            record.values.add(module.normaliser(x.detach().double(), mask))

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in sites]
    try:
        run(model, calls)
    finally:
        for handle in handles:
            handle.remove()
    return seen


# --- margins --------------------------------------------------------------------------------
def gelu_interval(observed: Range) -> tuple[float, float]:
    """(-B, B): B = GELU_MARGIN max|x| rounded up to a quarter octave, at least 1."""
    bound = GELU_MARGIN * max(abs(observed.lo), abs(observed.hi), MIN_GELU_BOUND)
    bound = quarter_octave(bound, math.ceil)
    return (-bound, bound)


def layer_norm_interval(observed: Range, eps: float) -> tuple[float, float]:
    """[lo / LAYERNORM_MARGIN, hi * LAYERNORM_MARGIN] (lo at least eps), rounded outward to
    quarter octaves 2^(k/4) (at most 19% more each way: each doubling of hi / lo costs the
    rsqrt about one Newton step, two levels)."""
    lo = max(observed.lo / LAYERNORM_MARGIN, eps, 1e-30)
    hi = max(observed.hi * LAYERNORM_MARGIN, lo * 2)
    return (quarter_octave(lo, math.floor), quarter_octave(hi, math.ceil))


def quarter_octave(value: float, rounding: Callable[[float], int]) -> float:
    """`value` rounded to the grid 2^(k/4) (down with math.floor, up with math.ceil)."""
    nudge = 1e-9 if rounding is math.floor else -1e-9
    return 2.0 ** (rounding(4 * math.log2(value) + nudge) / 4)


def softmax_scale(scores: Range) -> float:
    """c = SCORE_MARGIN max|score|, rounded up to 3 significant digits (1 if no score)."""
    top = SCORE_MARGIN * scores.hi if scores.seen and scores.hi > 0 else 1.0
    return round_up(top)


def normaliser_interval(observed: Range, eps: float) -> tuple[float, float]:
    """[max(eps, lo / NORMALISER_MARGIN), hi * NORMALISER_MARGIN], 3 significant digits
    outward; eps bounds the normaliser from below whatever the input."""
    lo = max(eps, observed.lo / NORMALISER_MARGIN) if eps > 0 else observed.lo / NORMALISER_MARGIN
    hi = max(observed.hi * NORMALISER_MARGIN, lo * 2)
    return (round_down(lo), round_up(hi))


def rescale_normaliser(observed: Range, eps: float, p: int, old: float, new: float) -> Range:
    """The normaliser range for scale `new` from the one seen with scale `old`: the powered
    part scales by (old / new)^p, eps stays."""
    factor = (old / new) ** p
    return Range((observed.lo - eps) * factor + eps, (observed.hi - eps) * factor + eps)


def round_up(value: float, digits: int = 3) -> float:
    if value <= 0:
        return value
    step = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
    return float(f"{math.ceil(value / step - 1e-9) * step:.{digits + 1}g}")


def round_down(value: float, digits: int = 3) -> float:
    if value <= 0:
        return value
    step = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
    return float(f"{math.floor(value / step + 1e-9) * step:.{digits + 1}g}")
