"""approximations: MPC/HE-friendly approximations of transformer nonlinearities.

Pure torch + numpy; no cryptography. The pieces:

- `fit(fn, interval, degree, method)` -> `Polynomial` with a certified `max_error`
- `Piecewise` (e.g. PUMA's GeLU), iterative methods `ExpBySquaring`, `Reciprocal`,
  `InverseSqrt`, `Log`
- `catalog`: every named approximation with interval, degree, depth and max error
- function forms `gelu`, `softmax`, `power_softmax`, `layer_norm`
- modules `PolyGELU`, `PowerSoftmax`, `PolyLayerNorm` and `convert(model, ...)`
  (`convert(model, target="he", samples=batch)` calibrates every interval)
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
    "calibration_record",
    "catalog",
    "convert",
    "fit",
    "gelu",
    "layer_norm",
    "power_softmax",
    "softmax",
]


def __getattr__(name: str):
    # `convert` (and its Replacement record) live in `approximations.conversion`, imported
    # on demand so that a missing optional piece never breaks `import approximations`. (The
    # module is not called `convert`: importing it would rebind this package's attribute
    # `convert` from the function to the module.)
    if name in ("convert", "Replacement", "calibration_record"):
        from approximations import conversion

        return getattr(conversion, name)
    raise AttributeError(f"module 'approximations' has no attribute {name!r}")
