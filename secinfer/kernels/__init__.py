"""Kernels of the local backends; importing this package registers them.

`plain` runs every op exactly as torch does. `approx` runs the same graph in float64 with
the approximations the plan chose, isolating approximation error from the fixed-point and
encryption errors of the secure backends.
"""

from secinfer.kernels import approx, plain

__all__ = ["approx", "plain"]
