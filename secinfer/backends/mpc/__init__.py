"""The `mpc` backend: the model owner, the data owner and the dealer (`protocols.mpc`).

Importing the package registers its kernels (CrypTen itself loads on first use)."""

from secinfer.backends.mpc import kernels  # noqa: F401 - registers the mpc kernels
