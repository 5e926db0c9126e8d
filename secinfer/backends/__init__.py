"""The backends, behind one interface (`secinfer.backends.base`): `plain` and `approx` run
in this process (`local.py`); `mpc` (CrypTen, two parties and a dealer) and `he` (TenSEAL
CKKS, a server and a client) are packages of their own, each holding its kernels, its
parties' sessions, their entry points, its local launcher and its private evaluation.

`get(name)` is the one registration: a new backend is a new package plus one line in
`_WHERE`. Importing a secure backend's package registers its kernels in the core's op
registry; `load` does it for a caller that only knows the name.
"""

from __future__ import annotations

import importlib
from typing import Any

NAMES = ("plain", "approx", "mpc", "he")
"""Every backend, in the order the CLI and the reports list them."""

_WHERE = {
    "plain": ("secinfer.backends.local", "PLAIN"),
    "approx": ("secinfer.backends.local", "APPROX"),
    "mpc": ("secinfer.backends.mpc.backend", "MPC"),
    "he": ("secinfer.backends.he.backend", "HE"),
}
PACKAGES = {"mpc": "secinfer.backends.mpc", "he": "secinfer.backends.he"}


def get(name: str) -> Any:
    """The backend called `name` (a `Backend`; a `SecureBackend` when `.secure`), its
    kernels registered."""
    if name not in _WHERE:
        raise ValueError(f"unknown backend {name!r}; backends are {', '.join(NAMES)}")
    module, attribute = _WHERE[name]
    return getattr(importlib.import_module(module), attribute)


def load(backend: str) -> None:
    """Register `backend`'s kernels (a no-op for the local backends)."""
    if backend in PACKAGES:
        importlib.import_module(PACKAGES[backend])


def load_all() -> None:
    """Register every backend's kernels (what `secinfer inspect` reports coverage for)."""
    for backend in PACKAGES:
        load(backend)
