"""The core: a model's graph, the one op registry, plans, calibration and the executor.

Nothing here knows a cryptographic library: the plain and approx kernels register here,
a secure backend's kernels when its package (`secinfer.backends.mpc`, `.he`) is imported.
"""
