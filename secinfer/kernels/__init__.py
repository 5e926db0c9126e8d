"""Kernels of every backend; importing this package registers them.

`plain` runs every op exactly as torch does. `approx` runs the same graph in float64 with
the approximations the plan chose, isolating approximation error from the fixed-point and
encryption errors of the secure backends. `mpc` runs it on CrypTen secret shares (CrypTen
is imported only when an mpc kernel runs). `he` runs it on CKKS ciphertexts (TenSEAL).
"""

from secinfer.kernels import approx, he, mpc, mpc_nonlinear, plain

__all__ = ["approx", "he", "mpc", "mpc_nonlinear", "plain"]
