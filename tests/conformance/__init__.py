"""The conformance suite: every op each backend claims, against the plain reference.

`cases.py` holds one builder per registered op (a tiny module calling it and its inputs
on a realistic and an outlier range); `bounds.py` the tolerances; `mpc_session.py` and
`he_session.py` run the one-op graphs on the secure backends as their parties do. The
test modules walk `secinfer.core.registry.REGISTRY`: an op without a builder fails.
"""
