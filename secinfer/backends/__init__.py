"""The secure backends, one package each: `mpc` (CrypTen, two parties and a dealer) and
`he` (TenSEAL CKKS, a server and a client). Each holds its kernels, its parties' sessions,
their entry points and their private evaluation.

Importing a backend's package registers its kernels in the core's op registry; the local
backends (`plain`, `approx`) are the core's own. `load` is how a caller that only knows a
backend's name makes its kernels available before planning or running.
"""

from __future__ import annotations

import importlib

PACKAGES = {"mpc": "secinfer.backends.mpc", "he": "secinfer.backends.he"}


def load(backend: str) -> None:
    """Register `backend`'s kernels (a no-op for the local backends)."""
    if backend in PACKAGES:
        importlib.import_module(PACKAGES[backend])


def load_all() -> None:
    """Register every backend's kernels (what `secinfer inspect` reports coverage for)."""
    for backend in PACKAGES:
        load(backend)
