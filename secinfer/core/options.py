"""Plan options: what each approximation method accepts, with its type, default and range.

A method's options are one frozen dataclass below, its fields the options: the annotation
is the type (`int`, `float`, `str`, `bool`, or one of those `| None`), the field's default
is THE default (no other module holds one: the kernels read a choice's options only
through `options_for`), and `setting(...)` states the allowed range or choices. OPTIONS
maps (function, method) to its class; a method not listed takes the common options only
(`MethodOptions`: `precision_bits`, `comparisons`).

Guarantees: `check` accepts exactly the declared names, with values of the declared type
inside the declared range (an int is accepted for a float and stored as a float), and
raises OptionError, one line naming the key and what is allowed, otherwise. `as_dict` is
JSON data in a fixed order (the method's own options, then the common ones; a common
option left unset is omitted), and `check(f, m, as_dict(o)) == o`: a plan's options
round-trip through `Plan.to_dict` / `Plan.from_dict`.

The checks here are pure (no MPC or HE library): what depends on a node's calibrated
interval (the headroom of `precision_bits`, `secinfer.core.precision`) is the plan's.
"""

from __future__ import annotations

import json
import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from typing import Any, TypeVar, get_type_hints

from approximations.exp_softmax import MAXIMA
from approximations.functions import POWER_NORMALIZERS, RECIPROCAL_CHOICES
from secinfer.core.precision import MAX_BITS, MIN_BITS

MAX_COUNT = 64
"""Largest count an option may set (squarings, powers)."""
MAX_NUMBER = 1e12
"""Largest magnitude of a real-valued option."""
COMPARISONS = ("fss", "crypten")
"""Who computes an mpc node's comparisons (the common option `comparisons`)."""
MPC_COMPARISONS = "fss"
"""The default of `comparisons`: the cheaper online at no worse error in bench/mpc.md's
one run (a BERT-base layer: 48 MB sent per party against 202 with CrypTen's comparisons,
error 2.0e-3 against 2.6e-3), though slower on the clock while the dealer's keys are
generated inside the query (`protocols.mpc.fss_compare.keys`)."""


T = TypeVar("T", bound="MethodOptions")


class OptionError(ValueError):
    """An option that its method does not declare, or a value it does not allow; the
    message is one line, naming the key and what is allowed."""


@dataclass(frozen=True)
class Allowed:
    """The values an option allows beyond its type: `choices` (when given), else numbers
    in [low, high] (`above`: strictly greater), and even integers only when `even`."""

    low: float | None = None
    high: float | None = None
    above: float | None = None
    choices: tuple[Any, ...] = ()
    even: bool = False


def setting(default: Any, doc: str, **allowed: Any) -> Any:
    """A dataclass field declaring one option: its default, what it does, what it allows.
    The classes hold values; `check` is what validates them (build instances through it)."""
    return field(default=default, metadata={"allowed": Allowed(**allowed), "doc": doc})


@dataclass(frozen=True)
class MethodOptions:
    """The options every method takes (a method with no options of its own: these only)."""

    precision_bits: int | None = setting(
        None,
        "mpc: the node's fractional bits (unset: the run's --precision-bits); "
        "secinfer.core.precision",
        low=MIN_BITS,
        high=MAX_BITS,
    )
    comparisons: str | None = setting(
        None,
        "mpc: who computes the node's comparisons: 'fss' (the dealer's function-secret-"
        "sharing keys, one opening of x + r) or 'crypten' (CrypTen's 64-bit bit "
        "decomposition); unset: MPC_COMPARISONS",
        choices=COMPARISONS,
    )

    def as_dict(self) -> dict[str, Any]:
        """The options as JSON data, in `names` order; an unset common option is left out."""
        out = {}
        for spec in specs_of(type(self)):
            value = getattr(self, spec.name)
            if value is None and spec.default is None:
                continue
            out[spec.name] = value
        return out

    def arguments(self) -> dict[str, Any]:
        """The method's own options (not the common ones), as keyword arguments."""
        common = {spec.name for spec in fields(MethodOptions)}
        return {k: v for k, v in self.as_dict().items() if k not in common}


_RECIPROCAL_DOC = (
    "approx: the row sum's reciprocal, exact or a catalog method (the mpc kernel runs "
    "protocols.mpc's reciprocal)"
)


@dataclass(frozen=True)
class SoftmaxExpLimit(MethodOptions):
    """softmax "exp_limit": exp by squaring of z = x - max, one reciprocal per row. Under
    `mpc` the plan stores the squarings and cut-off its kernel derives from these
    (`secinfer.core.plan.mpc_softmax_exp`)."""

    squarings: int = setting(7, "n: the base raised to 2^n", low=1, high=MAX_COUNT)
    order: int = setting(2, "the base: 1 + u (1) or 1 + u + u^2/2 (2)", choices=(1, 2))
    cutoff: float | None = setting(
        14.0, "z below -cutoff gives 0 (null: no cut-off)", above=0.0, high=MAX_NUMBER
    )
    reciprocal: str = setting("goldschmidt", _RECIPROCAL_DOC, choices=RECIPROCAL_CHOICES)


@dataclass(frozen=True)
class SoftmaxPower(MethodOptions):
    """softmax "power": x^p normalised (`approximations.power_softmax`)."""

    p: int = setting(4, "the power", low=2, high=MAX_COUNT, even=True)
    normalizer: str = setting("sum", "divide by the sum or the mean", choices=POWER_NORMALIZERS)
    eps: float = setting(1e-6, "added to the normaliser", low=0.0, high=1.0)
    scale: bool = setting(True, "approx: divide x by its row max |x| first")
    reciprocal: str = setting("goldschmidt", _RECIPROCAL_DOC, choices=RECIPROCAL_CHOICES)


@dataclass(frozen=True)
class SoftmaxTwoQuad(MethodOptions):
    """softmax "2quad": (x + c)^2 normalised (MPCFormer)."""

    c: float = setting(5.0, "the shift", low=-MAX_NUMBER, high=MAX_NUMBER)
    reciprocal: str = setting("goldschmidt", _RECIPROCAL_DOC, choices=RECIPROCAL_CHOICES)


@dataclass(frozen=True)
class ExpSquaring(MethodOptions):
    """exp "squaring" and log_softmax "exp_limit": exp by squaring of the base 1 + u."""

    squarings: int = setting(8, "n: the base raised to 2^n", low=1, high=MAX_COUNT)
    cutoff: float | None = setting(
        14.0, "x below -cutoff gives 0 (null: no cut-off)", above=0.0, high=MAX_NUMBER
    )


_TARGET_DOC = "the certified error the approximation must reach on the calibrated interval"


@dataclass(frozen=True)
class SoftmaxExpMax(MethodOptions):
    """softmax "exp_max" (he): a stand-in m for the row maximum, exp(x - m) by squaring, one
    Goldschmidt reciprocal of the row sum; everything sized from the calibrated interval of
    the scores and the row length (`approximations.exp_softmax.ExpSoftmax`)."""

    target: float = setting(1e-4, _TARGET_DOC + " (absolute, per weight)", above=0.0, high=0.1)
    maximum: str = setting(
        "auto",
        "the stand-in for the row maximum: a composite-sign tournament, the row mean, the "
        "calibrated upper bound (auto: the shallowest that meets the target)",
        choices=MAXIMA,
    )


@dataclass(frozen=True)
class LayerNormMinimaxNewton(MethodOptions):
    """layer_norm "minimax_newton" (he): LayerNorm as one op, 1/sqrt(var + eps) by a
    polynomial guess and Newton steps with per-step minimax coefficients on the calibrated
    interval of var + eps (`approximations.folded_layer_norm.FoldedLayerNorm`)."""

    target: float = setting(1e-4, _TARGET_DOC + " (relative)", above=0.0, high=0.1)


@dataclass(frozen=True)
class ChebyshevFit(MethodOptions):
    """gelu, tanh, sigmoid, erf, silu "chebyshev" (he): one polynomial on the calibrated
    interval, of the lowest depth and degree that meets the target
    (`approximations.target_fit.fit_to_target`)."""

    target: float = setting(1e-4, _TARGET_DOC + " (absolute)", above=0.0, high=0.1)
    max_degree: int = setting(255, "the highest degree tried", low=1, high=1023)


@dataclass(frozen=True)
class GeluPiecewise(MethodOptions):
    """gelu "piecewise" (he): 0, a polynomial, x, the segments chosen by composite signs
    (`approximations.piecewise_gelu.PiecewiseGelu`)."""

    target: float = setting(1e-4, _TARGET_DOC + " (absolute)", above=0.0, high=0.1)


@dataclass(frozen=True)
class ExpCalibrated(MethodOptions):
    """exp "calibrated" (he): e^s exp(x - s) by squaring on the calibrated interval, s its
    upper end (`approximations.shifted_exp.ShiftedExp`)."""

    target: float = setting(1e-4, _TARGET_DOC + " (absolute)", above=0.0, high=0.1)


OPTIONS: dict[tuple[str, str], type[MethodOptions]] = {
    ("softmax", "exp_limit"): SoftmaxExpLimit,
    ("softmax", "power"): SoftmaxPower,
    ("softmax", "2quad"): SoftmaxTwoQuad,
    ("softmax", "exp_max"): SoftmaxExpMax,
    ("log_softmax", "exp_limit"): ExpSquaring,
    ("exp", "squaring"): ExpSquaring,
    ("exp", "calibrated"): ExpCalibrated,
    ("layer_norm", "minimax_newton"): LayerNormMinimaxNewton,
    ("gelu", "piecewise"): GeluPiecewise,
    **{(f, "chebyshev"): ChebyshevFit for f in ("gelu", "tanh", "sigmoid", "erf", "silu")},
}
"""(function, method) -> its options; any other method: MethodOptions."""


def options_class(function: str, method: str) -> type[MethodOptions]:
    return OPTIONS.get((function, method), MethodOptions)


def names(function: str, method: str) -> tuple[str, ...]:
    """The options of `method` for `function`, its own first."""
    return tuple(spec.name for spec in specs_of(options_class(function, method)))


def defaults(function: str, method: str) -> dict[str, Any]:
    """The method's default options as JSON data (`MethodOptions.as_dict`)."""
    return options_class(function, method)().as_dict()


def check(function: str, method: str, values: Any) -> MethodOptions:
    """`values` (a mapping of option name -> value, e.g. a config's or a peer's) as the
    method's typed options, the unset ones at their defaults; OptionError otherwise."""
    cls = options_class(function, method)
    if not isinstance(values, Mapping):
        raise OptionError(
            f"{function} options of method {method} must be an object of name: value, "
            f"not {_short(values)}"
        )
    known = {spec.name: spec for spec in specs_of(cls)}
    checked = {}
    for key, value in values.items():
        if key not in known:
            raise OptionError(
                f"{function} option {_short(key)} is not an option of method {method}; "
                f"options: {', '.join(known)}"
            )
        checked[key] = _value(function, method, known[key], value)
    return cls(**checked)


def complete(function: str, method: str, values: Any) -> dict[str, Any]:
    """`check`ed and back to JSON data: every option of the method (unset common ones
    left out), the given values in their declared type."""
    return check(function, method, values).as_dict()


def comparisons_of(choice: Any) -> str:
    """Who computes the comparisons of `choice`'s mpc kernel: its `comparisons` option,
    else MPC_COMPARISONS."""
    chosen = options_for(choice).comparisons if choice is not None else None
    return chosen or MPC_COMPARISONS


def options_for(choice: Any, kind: type[T] = MethodOptions) -> T:  # type: ignore[assignment]
    """A plan choice's typed options (`choice.function`, `.method`, `.options`): how a
    kernel reads them, `kind` being the class the kernel expects. OptionError for options
    the method does not allow, or a method whose options are not `kind`."""
    options = check(choice.function, choice.method, choice.options)
    if not isinstance(options, kind):
        raise OptionError(
            f"{choice.function} method {choice.method} takes {type(options).__name__}, "
            f"not {kind.__name__}"
        )
    return options


# --- checking -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """One declared option: its name, type (and whether null is allowed), default, what it
    allows and what it does."""

    name: str
    kind: type
    nullable: bool
    default: Any
    allowed: Allowed
    doc: str

    def describe(self) -> str:
        """What the option allows, e.g. "an integer from 1 to 64"."""
        return _allowed_text(self.kind, self.nullable, self.allowed)


@cache
def specs_of(cls: type[MethodOptions]) -> tuple[Spec, ...]:
    """The options `cls` declares, its own first, then the common ones."""
    hints = get_type_hints(cls)
    common = {f.name for f in fields(MethodOptions)}
    ordered = [f for f in fields(cls) if f.name not in common]
    ordered += [f for f in fields(cls) if f.name in common]
    out = []
    for f in ordered:
        hint, nullable = hints[f.name], False
        if isinstance(hint, types.UnionType):
            (hint,) = (t for t in hint.__args__ if t is not type(None))
            nullable = True
        out.append(
            Spec(f.name, hint, nullable, f.default, f.metadata["allowed"], f.metadata["doc"])
        )
    return tuple(out)


def _value(function: str, method: str, spec: Spec, value: Any) -> Any:
    if value is None and spec.nullable:
        return None
    if value is None or not _fits(spec.kind, spec.allowed, value):
        raise OptionError(
            f"{function} option '{spec.name}' of method {method} must be "
            f"{spec.describe()}, not {_short(value)}"
        )
    return float(value) if spec.kind is float else value


def _fits(kind: type, allowed: Allowed, value: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is str:
        return isinstance(value, str) and (not allowed.choices or value in allowed.choices)
    if kind is int and not isinstance(value, int):
        return False
    if kind is float and not (isinstance(value, int | float) and math.isfinite(value)):
        return False
    if allowed.choices:
        return value in allowed.choices
    if allowed.low is not None and not value >= allowed.low:
        return False
    if allowed.above is not None and not value > allowed.above:
        return False
    if allowed.high is not None and not value <= allowed.high:
        return False
    return not allowed.even or value % 2 == 0


def _allowed_text(kind: type, nullable: bool, allowed: Allowed) -> str:
    if kind is bool:
        text = "true or false"
    elif allowed.choices:
        text = "one of " + ", ".join(str(c) for c in allowed.choices)
    else:
        noun = {int: "an even integer" if allowed.even else "an integer", float: "a number"}
        text = noun.get(kind, "a string")
        if allowed.low is not None and allowed.high is not None:
            text += f" from {allowed.low:g} to {allowed.high:g}"
        elif allowed.above is not None:
            text += f" above {allowed.above:g}"
            if allowed.high is not None:
                text += f" up to {allowed.high:g}"
    return text + (", or null" if nullable else "")


def _short(value: Any) -> str:
    """A value as the config wrote it (JSON), cut to 40 characters; a key in quotes."""
    try:
        text = repr(value) if isinstance(value, str) else json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


__all__ = [
    "COMPARISONS",
    "MAX_COUNT",
    "MAX_NUMBER",
    "MPC_COMPARISONS",
    "OPTIONS",
    "Allowed",
    "ChebyshevFit",
    "ExpCalibrated",
    "ExpSquaring",
    "GeluPiecewise",
    "LayerNormMinimaxNewton",
    "MethodOptions",
    "OptionError",
    "SoftmaxExpLimit",
    "SoftmaxExpMax",
    "SoftmaxPower",
    "SoftmaxTwoQuad",
    "Spec",
    "check",
    "comparisons_of",
    "complete",
    "defaults",
    "names",
    "options_class",
    "options_for",
    "setting",
    "specs_of",
]
