"""approximations: MPC/HE-friendly approximations of transformer nonlinearities.

Pure torch + numpy; no cryptography. The pieces:

- `fit(fn, interval, degree, method)` -> `Polynomial` with a certified `max_error`
- `Piecewise` (e.g. PUMA's GeLU), iterative methods `ExpBySquaring`, `Reciprocal`,
  `InverseSqrt`, `Log`
- `catalog`: every named approximation with interval, degree, depth and max error
- function forms `gelu`, `softmax`, `power_softmax`, `layer_norm`
- modules `PolyGELU`, `PowerSoftmax`, `PolyLayerNorm` and `convert(model, ...)`
"""

from approximations.errors import ApproximationError, ConversionError
from approximations.fitting import fit
from approximations.functions import gelu, layer_norm, power_softmax, softmax
from approximations.iterative import ExpBySquaring, InverseSqrt, Log, Reciprocal
from approximations.library import Catalog, Entry, Formula, catalog
from approximations.modules import PolyGELU, PolyLayerNorm, PowerSoftmax
from approximations.piecewise import Piecewise, Segment
from approximations.polynomial import Polynomial

__all__ = [
    "ApproximationError",
    "Catalog",
    "ConversionError",
    "Entry",
    "ExpBySquaring",
    "Formula",
    "InverseSqrt",
    "Log",
    "Piecewise",
    "PolyGELU",
    "PolyLayerNorm",
    "Polynomial",
    "PowerSoftmax",
    "Reciprocal",
    "Segment",
    "catalog",
    "convert",
    "fit",
    "gelu",
    "layer_norm",
    "power_softmax",
    "softmax",
]


def __getattr__(name: str):
    # `convert` (and its Replacement record) live in their own module, imported on demand
    # so that a missing optional piece never breaks `import approximations`.
    if name in ("convert", "Replacement"):
        import importlib

        # import_module, not `from approximations import convert`: that form looks the
        # name up on this package first and would re-enter this function forever. Loading
        # the submodule binds the package attribute `convert` to the MODULE; rebinding it
        # (and Replacement) here keeps `approximations.convert` the function from then on.
        module = importlib.import_module("approximations.convert")
        globals().update(convert=module.convert, Replacement=module.Replacement)
        return getattr(module, name)
    raise AttributeError(f"module 'approximations' has no attribute {name!r}")
