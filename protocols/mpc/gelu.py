"""GELU without comparisons: x/2 + q(x^2) on a calibrated interval (see
`approximations.even_gelu`). The piecewise forms (PUMA, BOLT) are in `piecewise.gelu`.

Cost per element and party: one squaring (8 bytes, 1 round), then q in Chebyshev form on
s in [0, B^2] (`polynomial.chebyshev_terms`: ceil(log2 k) rounds, about 8-16 bytes per
term), and local additions: for k = 10, 5 rounds and about 130 bytes, against about 750
bytes for PUMA's three comparisons. Error: q's certified error on [0, B^2] plus fixed
point (a few units of 2^-16 per term); wrong beyond |x| > B, where q diverges.
"""

from __future__ import annotations

from approximations.polynomial import Polynomial
from protocols.mpc.polynomial import Secret, chebyshev_terms, combine, degree_of, unit_variable


def even_gelu(x: Secret, q: Polynomial) -> Secret:
    """x/2 + q(x^2) for q fitted on s in q.interval = [0, B^2]."""
    s = x.square()
    degree = degree_of(q.chebyshev)
    terms = chebyshev_terms(unit_variable(s, q.interval), degree) if degree >= 1 else []
    return x * 0.5 + combine(terms, q.chebyshev[: degree + 1], like=x)


__all__ = ["even_gelu"]
