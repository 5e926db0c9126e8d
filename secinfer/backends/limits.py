"""The bound each backend puts on the data owner's values, by backend name.

`secinfer.load.values.check_values` applies a `ValueLimit`; the numbers are the backends'
own (`secinfer.backends.mpc.limits`, `secinfer.backends.he.limits`). The local backends
(plain, approx) take any finite number. A secure backend's module is imported only when
its limit is asked for.
"""

from __future__ import annotations

from secinfer.core.precision import DEFAULT_BITS
from secinfer.load.values import ValueLimit


def backend_limit(backend: str, precision_bits: int = DEFAULT_BITS) -> ValueLimit:
    """The limit of `backend` (plain, approx, mpc, he); `precision_bits` is the mpc run's."""
    if backend == "mpc":
        from secinfer.backends.mpc.limits import mpc_limit

        return mpc_limit(precision_bits)
    if backend == "he":
        from secinfer.backends.he.limits import he_limit

        return he_limit()
    return ValueLimit(backend)


__all__ = ["backend_limit"]
