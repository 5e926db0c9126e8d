"""Kernels of the two local backends: `plain` (torch as exported) and `approx` (float64
with the plan's approximations). Importing this package registers them."""

from secinfer.core.kernels import approx, plain  # noqa: F401 - registers the kernels
