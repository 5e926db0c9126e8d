"""GELU forms cheaper than PUMA's three comparisons (the piecewise forms are in
`piecewise.gelu`).

`even_gelu`: x/2 + q(x^2) on a calibrated interval, no comparison
(`approximations.even_gelu`); wrong beyond its bound.
`tail_gelu`: relu(x) - p(min(|x|, 4)) (`approximations.tail_gelu`), three comparisons
from one FSS opening and a degree-8 polynomial on [0, 4]: error 2.4e-4 on every input,
about 40 bytes per element with the dealer's FSS keys.
`sign_exp_gelu`: relu(x) - (|x|/2) exp(-u(|x|)) with one comparison and the exponential
by squaring (`approximations.sign_exp_gelu`); valid on wide intervals (|x| <= 34 with 9
squarings), error 7.8e-4 plus fixed point (about 2^n 2^-16 relative on the exponential).

Cost per element and party: one squaring (8 bytes, 1 round), then q in Chebyshev form on
s in [0, B^2] (`polynomial.chebyshev_terms`: ceil(log2 k) rounds; with the dealer each
term used as an operand is opened once, 8 bytes: T_1..T_4 and T_8 for k = 10), and local
additions: for k = 10, 5 rounds and about 48 bytes (about 130 with CrypTen's own
products), against about 720 bytes for PUMA's three comparisons. Error: q's certified
error on [0, B^2] plus fixed point (a few units of 2^-16 per term); wrong beyond |x| > B,
where q diverges.
"""

from __future__ import annotations

from approximations.polynomial import Polynomial
from approximations.sign_exp_gelu import SignExpGELU
from approximations.tail_gelu import TailGELU
from protocols.mpc import reuse
from protocols.mpc.compare import relu, relu_and_clipped_abs
from protocols.mpc.polynomial import Secret, chebyshev_terms, combine, degree_of, unit_variable


def even_gelu(x: Secret, q: Polynomial) -> Secret:
    """x/2 + q(x^2) for q fitted on s in q.interval = [0, B^2]."""
    s = x.square()
    degree = degree_of(q.chebyshev)
    terms = chebyshev_terms(unit_variable(s, q.interval), degree) if degree >= 1 else []
    return x * 0.5 + combine(terms, q.chebyshev[: degree + 1], like=x)


def sign_exp_gelu(x: Secret, form: SignExpGELU, fss_bits: int | None = None) -> Secret:
    """relu(x) - (t/2) (1 - u(t)/2^n)^(2^n) with t = |x|.

    Rounds: one comparison (8), relu = [x >= 0] x (1; t = 2 relu - x is local), t^2 (1),
    n squarings, one product: 20 for n = 9. Bytes per element and party: about 216 + 16 +
    8 + 8 n + 8 = 320 for n = 9 (with the dealer t's mask is kept from t^2 for t e, which
    then opens only e; 328 with CrypTen's own products).

    With `fss_bits` (|X| < 2^(fss_bits - 1) for x's fixed-point integers X, from the
    calibrated bound), relu comes from the dealer's FSS keys (`compare.relu`: 8 + 1/8
    bytes, 2 rounds) instead of the comparison and its product: about 96 bytes and 14
    rounds for n = 9.
    """
    rectified = relu(x, fss_bits)
    t = rectified * 2 - x
    c0, c1, c2 = form.u
    scale = 2.0**-form.squarings
    key = reuse.new_key("gelu.t")
    t2 = reuse.square(t, key=key)
    e = (t2 * (-c2 * scale) + t * (-c1 * scale)) + (1.0 - c0 * scale)
    for _ in range(form.squarings):
        e = e.square()
    te = reuse.product(t, e, x_key=key, release=(key,))
    return rectified - te * 0.5


def tail_gelu(x: Secret, form: TailGELU, fss_bits: int | None = None) -> Secret:
    """relu(x) - p(min(|x|, c)) (`approximations.tail_gelu`): accurate on every input.

    relu(x) and min(|x|, c) from the three indicators at -c, 0, c (`compare.
    relu_and_clipped_abs`), then p's Chebyshev terms of the unit variable on [0, c] and
    local sums. With `fss_bits` (|X| + C < 2^(fss_bits - 1), X, C the fixed-point
    integers of x and c) per element and party: 8 + 3/8 bytes and 2 rounds for the
    comparisons and selects, then T_1..T_8 (3 rounds; T_1..T_4 each opened once with the
    dealer, 32 bytes): about 40 bytes and 5 rounds. With CrypTen's comparison: about 650
    + 32 + 32 bytes and 12 rounds (the form is for FSS; `sign_exp_gelu` is cheaper there).
    """
    rectified, t = relu_and_clipped_abs(x, form.clip, fss_bits)
    degree = degree_of(form.poly.chebyshev)
    terms = chebyshev_terms(unit_variable(t, form.poly.interval), degree)
    return rectified - combine(terms, form.poly.chebyshev[: degree + 1], like=x)


__all__ = ["even_gelu", "sign_exp_gelu", "tail_gelu"]
