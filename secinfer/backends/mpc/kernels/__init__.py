"""The `mpc` backend's kernels on secret shares. Importing this package registers them."""

from secinfer.backends.mpc.kernels import nonlinear, shares  # noqa: F401 - registers the kernels
