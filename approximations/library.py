"""The catalog: every named approximation with its interval, degree or iterations, depth
and certified max error.

`catalog` (exported as `approximations.catalog`) is a read-only mapping from names such as
"gelu.puma" to `Entry` objects. Approximations are built on first use and cached; every
`max_error` is certified against torch's float64 function (see `approximations.certify`).
`catalog.markdown()` renders the table shown in the README.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F

from approximations.certify import Certificate, certify, check_interval
from approximations.fitting import fit
from approximations.iterative import ExpBySquaring, InverseSqrt, Log, Reciprocal
from approximations.minimax_newton import MinimaxNewtonInverseSqrt
from approximations.piecewise import Piecewise
from approximations.polynomial import Polynomial
from approximations.shifted_exp import ShiftedExp
from approximations.target_fit import fit_function

# PUMA's GeLU segments (Dong et al., PUMA 2023), power-basis coefficients, lowest first.
PUMA_GELU_CUBIC = (
    -0.5054031199708174,
    -0.42226581151983866,
    -0.11807612951181953,
    -0.011034134030615728,
)
PUMA_GELU_SEXTIC = (
    0.008526321541038084,
    0.5,
    0.3603292692789629,
    0.0,
    -0.037688200365904236,
    0.0,
    0.0018067462606141187,
)
MPCFORMER_QUAD = (0.5, 0.25, 0.125)
BOLT_EDGE = 2.7


def exact_gelu(x: torch.Tensor) -> torch.Tensor:
    """x Phi(x) = x/2 (1 + erf(x / sqrt 2))."""
    return F.gelu(x)


@dataclass(frozen=True, eq=False)
class Formula:
    """A closed-form surrogate that is neither a polynomial nor iterative (e.g. the tanh
    form of GELU), with its error certified against the exact function on `interval`."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    exact: Callable[[torch.Tensor], torch.Tensor]
    interval: tuple[float, float]
    error_kind: str = "absolute"
    he_compatible = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    @cached_property
    def certificate(self) -> Certificate:
        return certify(self.fn, self.exact, check_interval(self.interval))

    @property
    def max_error(self) -> float:
        return self.certificate.max_error

    def to_dict(self) -> dict[str, Any]:
        return {"type": "Formula", "interval": list(self.interval)}


Approximation = (
    Polynomial
    | Piecewise
    | ExpBySquaring
    | Reciprocal
    | InverseSqrt
    | MinimaxNewtonInverseSqrt
    | Log
    | Formula
)


@dataclass(frozen=True, eq=False)
class Entry:
    """One named approximation: what it approximates, how, and its certified figures."""

    name: str
    function: str
    method: str
    source: str
    build: Callable[[], Approximation]
    exact: Callable[[torch.Tensor], torch.Tensor]

    @cached_property
    def approximation(self) -> Approximation:
        return self.build()

    @property
    def interval(self) -> tuple[float, float]:
        return tuple(self.approximation.interval)  # type: ignore[return-value]

    @property
    def degree(self) -> int | None:
        a = self.approximation
        return a.degree if isinstance(a, (Polynomial, Piecewise, Log)) else None

    @property
    def iterations(self) -> int | None:
        a = self.approximation
        iterative = (ExpBySquaring, Reciprocal, InverseSqrt, MinimaxNewtonInverseSqrt, ShiftedExp)
        return a.iterations if isinstance(a, iterative) else None

    @property
    def depth(self) -> int | None:
        a = self.approximation
        return None if isinstance(a, Formula) else a.depth

    @property
    def max_error(self) -> float:
        return float(self.approximation.max_error)  # type: ignore[arg-type]

    @property
    def error_kind(self) -> str:
        return self.approximation.error_kind

    @property
    def he_compatible(self) -> bool:
        a = self.approximation
        if isinstance(a, Polynomial):
            return True
        if isinstance(a, Piecewise):
            return False
        return bool(a.he_compatible)

    def row(self) -> dict[str, Any]:
        """The catalog table's row for this entry."""
        return {
            "name": self.name,
            "function": self.function,
            "method": self.method,
            "interval": list(self.interval),
            "degree": self.degree,
            "iterations": self.iterations,
            "depth": self.depth,
            "max_error": self.max_error,
            "error_kind": self.error_kind,
            "he": self.he_compatible,
            "source": self.source,
        }


class Catalog(Mapping[str, Entry]):
    """Read-only mapping name -> Entry, in a stable order."""

    def __init__(self, entries: list[Entry]) -> None:
        self._entries = {e.name: e for e in entries}

    def __getitem__(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self._entries)
            raise KeyError(f"no approximation named {name!r}; known: {known}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def rows(self) -> list[dict[str, Any]]:
        return [e.row() for e in self._entries.values()]

    def markdown(self) -> str:
        """The catalog as a markdown table (certifies every entry: a few seconds)."""
        head = (
            "| name | approximates | method | interval | degree / iterations | depth "
            "| max error | HE |"
        )
        lines = [head, "|---|---|---|---|---|---|---|---|"]
        for e in self._entries.values():
            lo, hi = e.interval
            size = (
                f"degree {e.degree}"
                if e.degree is not None
                else (f"{e.iterations} iterations" if e.iterations is not None else "-")
            )
            depth = "-" if e.depth is None else str(e.depth)
            kind = " (rel.)" if e.error_kind == "relative" else ""
            lines.append(
                f"| `{e.name}` | {e.function} | {e.method} | [{_num(lo)}, {_num(hi)}] | {size} "
                f"| {depth} | {e.max_error:.2e}{kind} | {'yes' if e.he_compatible else 'no'} |"
            )
        return "\n".join(lines)


def _num(v: float) -> str:
    if math.isinf(v):
        return "-inf" if v < 0 else "inf"
    return f"{v:g}"


# --- builders -----------------------------------------------------------------------------
def puma_gelu() -> Piecewise:
    """PUMA's GeLU: 0 | cubic on [-4, -1.95) | even-plus-linear sextic on [-1.95, 3] | x."""
    whole = (-8.0, 8.0)
    return Piecewise.build(
        [
            ((-math.inf, -4.0), Polynomial.constant(0.0, whole)),
            ((-4.0, -1.95), Polynomial.from_coefficients(PUMA_GELU_CUBIC, (-4.0, -1.95))),
            ((-1.95, 3.0), Polynomial.from_coefficients(PUMA_GELU_SEXTIC, (-1.95, 3.0))),
            ((3.0, math.inf), Polynomial.identity(whole)),
        ],
        exact_gelu,
        whole,
        name="gelu",
        method="puma",
    )


def puma_gelu_refit() -> Piecewise:
    """PUMA's segments and degrees with coefficients refit by Remez on each segment.

    Same cost as `puma_gelu` (same breakpoints, degrees 3 and 6), smaller error: the
    published sextic overshoots to 0.0199 just below x = 3.
    """
    whole = (-8.0, 8.0)
    return Piecewise.build(
        [
            ((-math.inf, -4.0), Polynomial.constant(0.0, whole)),
            ((-4.0, -1.95), fit(exact_gelu, (-4.0, -1.95), 3, "remez", name="gelu")),
            ((-1.95, 3.0), fit(exact_gelu, (-1.95, 3.0), 6, "remez", name="gelu")),
            ((3.0, math.inf), Polynomial.identity(whole)),
        ],
        exact_gelu,
        whole,
        name="gelu",
        method="puma_refit",
    )


def bolt_gelu() -> Piecewise:
    """BOLT-style GeLU: 0 below -2.7, x above 2.7, a degree-4 minimax polynomial between
    (fitted here by Remez; BOLT's own coefficients are not reproduced)."""
    whole = (-8.0, 8.0)
    inner = fit(exact_gelu, (-BOLT_EDGE, BOLT_EDGE), 4, "remez", name="gelu")
    return Piecewise.build(
        [
            ((-math.inf, -BOLT_EDGE), Polynomial.constant(0.0, whole)),
            ((-BOLT_EDGE, BOLT_EDGE), inner),
            ((BOLT_EDGE, math.inf), Polynomial.identity(whole)),
        ],
        exact_gelu,
        whole,
        name="gelu",
        method="bolt",
    )


def _remez(
    fn: Callable, interval: tuple[float, float], degree: int, name: str
) -> Callable[[], Polynomial]:
    return lambda: fit(fn, interval, degree, "remez", name=name)


def _entries() -> list[Entry]:
    gelu_interval = (-8.0, 8.0)
    return [
        Entry(
            "gelu.exact",
            "gelu",
            "erf form (reference)",
            "Hendrycks & Gimpel 2016",
            lambda: Formula(exact_gelu, exact_gelu, gelu_interval),
            exact_gelu,
        ),
        Entry(
            "gelu.tanh",
            "gelu",
            "tanh form",
            "torch approximate='tanh'",
            lambda: Formula(lambda x: F.gelu(x, approximate="tanh"), exact_gelu, gelu_interval),
            exact_gelu,
        ),
        Entry(
            "gelu.sigmoid",
            "gelu",
            "x sigmoid(1.702 x)",
            "CrypTen-style",
            lambda: Formula(lambda x: x * torch.sigmoid(1.702 * x), exact_gelu, gelu_interval),
            exact_gelu,
        ),
        Entry("gelu.puma", "gelu", "piecewise degrees 3 and 6", "PUMA 2023", puma_gelu, exact_gelu),
        Entry(
            "gelu.puma_refit",
            "gelu",
            "PUMA's segments, Remez coefficients",
            "ours",
            puma_gelu_refit,
            exact_gelu,
        ),
        Entry(
            "gelu.bolt",
            "gelu",
            "ReLU outside +-2.7, degree-4 minimax inside",
            "after BOLT 2024",
            bolt_gelu,
            exact_gelu,
        ),
        Entry(
            "gelu.minimax",
            "gelu",
            "single minimax polynomial",
            "Remez (ours)",
            _remez(exact_gelu, gelu_interval, 20, "gelu"),
            exact_gelu,
        ),
        Entry(
            "gelu.quad",
            "gelu",
            "0.125x^2 + 0.25x + 0.5",
            "MPCFormer 2023",
            lambda: Polynomial.from_coefficients(
                MPCFORMER_QUAD, (-4.0, 4.0), method="quad"
            ).certified(exact_gelu, reference="gelu"),
            exact_gelu,
        ),
        Entry(
            "gelu.chebyshev_he",
            "gelu",
            "one polynomial to 1e-4, GELU's parity",
            "HE default (ours)",
            lambda: fit_function("gelu", (-21.25, 21.25), 1e-4),
            exact_gelu,
        ),
        Entry(
            "silu.minimax",
            "silu",
            "minimax polynomial",
            "Remez (ours)",
            _remez(F.silu, (-8.0, 8.0), 16, "silu"),
            F.silu,
        ),
        Entry(
            "sigmoid.minimax",
            "sigmoid",
            "minimax polynomial",
            "Remez (ours)",
            _remez(torch.sigmoid, (-8.0, 8.0), 13, "sigmoid"),
            torch.sigmoid,
        ),
        Entry(
            "tanh.minimax",
            "tanh",
            "minimax polynomial",
            "Remez (ours)",
            _remez(torch.tanh, (-4.0, 4.0), 13, "tanh"),
            torch.tanh,
        ),
        Entry(
            "erf.minimax",
            "erf",
            "minimax polynomial",
            "Remez (ours)",
            _remez(torch.erf, (-4.0, 4.0), 15, "erf"),
            torch.erf,
        ),
        Entry(
            "softplus.minimax",
            "softplus",
            "minimax polynomial",
            "Remez (ours)",
            _remez(F.softplus, (-8.0, 8.0), 16, "softplus"),
            F.softplus,
        ),
        Entry(
            "exp.minimax",
            "exp",
            "minimax polynomial",
            "Remez (ours)",
            _remez(torch.exp, (-8.0, 0.0), 8, "exp"),
            torch.exp,
        ),
        Entry(
            "exp.squaring",
            "exp",
            "(1 + x/2^8)^(2^8), 0 below -14",
            "PUMA / CrypTen",
            lambda: ExpBySquaring(squarings=8, interval=(-14.0, 0.0), cutoff=14.0),
            torch.exp,
        ),
        Entry(
            "exp.squaring6",
            "exp",
            "(1 + x/2^6)^(2^6), 0 below -14",
            "PUMA (small t)",
            lambda: ExpBySquaring(squarings=6, interval=(-14.0, 0.0), cutoff=14.0),
            torch.exp,
        ),
        Entry(
            "exp2.two_pass_mantissa",
            "2^x",
            "Remez, the Two-Pass softmax's mantissa 2^(t - floor t)",
            "Dukhan & Ablavatski 2020",
            _remez(torch.exp2, (-0.02, 2.02), 5, "exp2"),
            torch.exp2,
        ),
        Entry(
            "exp.shifted_he",
            "exp",
            "e^s exp(x - s) by squaring, sized to 1e-4 on the interval",
            "HE exp (ours)",
            lambda: ShiftedExp.for_interval((-40.0, 0.0), 1e-4),
            torch.exp,
        ),
        Entry(
            "log.normalised",
            "log",
            "octave normalisation + degree-8 minimax",
            "ours",
            lambda: Log(interval=(1e-4, 1e4), degree=8),
            torch.log,
        ),
        Entry(
            "log.minimax",
            "log",
            "minimax polynomial",
            "Remez (ours)",
            _remez(torch.log, (1.0, 16.0), 8, "log"),
            torch.log,
        ),
        Entry(
            "reciprocal.goldschmidt",
            "1/x",
            "normalised, linear guess, Goldschmidt",
            "SPU",
            lambda: Reciprocal(interval=(1e-4, 1e4), iterations=2, method="goldschmidt"),
            lambda x: 1.0 / x,
        ),
        Entry(
            "reciprocal.newton",
            "1/x",
            "normalised, linear guess, Newton",
            "ours",
            lambda: Reciprocal(interval=(1e-4, 1e4), iterations=3, method="newton"),
            lambda x: 1.0 / x,
        ),
        Entry(
            "reciprocal.goldschmidt_he",
            "1/x",
            "linear guess on the interval, Goldschmidt",
            "HE (no normalisation)",
            lambda: Reciprocal(
                interval=(1.0, 128.0), iterations=8, method="goldschmidt", normalise=False
            ),
            lambda x: 1.0 / x,
        ),
        Entry(
            "rsqrt.newton",
            "1/sqrt(x)",
            "normalised, degree-2 guess, Newton",
            "ours",
            lambda: InverseSqrt(interval=(1e-5, 1e5), iterations=2, initial_degree=2),
            torch.rsqrt,
        ),
        Entry(
            "rsqrt.spu",
            "1/sqrt(x)",
            "normalised, degree-4 polynomial, no Newton",
            "SPU",
            lambda: InverseSqrt(interval=(1e-5, 1e5), iterations=0, initial_degree=4),
            torch.rsqrt,
        ),
        Entry(
            "rsqrt.poly_he",
            "1/sqrt(x)",
            "shallowest guess + Newton reaching 1e-3",
            "HE (no normalisation)",
            lambda: InverseSqrt.polynomial_only((0.1, 10.0)),
            torch.rsqrt,
        ),
        Entry(
            "rsqrt.minimax_newton",
            "1/sqrt(x)",
            "guess + Newton steps with minimax coefficients, 1e-4",
            "HE LayerNorm (ours)",
            lambda: MinimaxNewtonInverseSqrt.for_interval((1e-3, 1e3), 1e-4),
            torch.rsqrt,
        ),
    ]


catalog = Catalog(_entries())
