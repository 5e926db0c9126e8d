"""exp(x) for x <= 0 on secret shares: (1 + x/2^n)^(2^n), zero below a cutoff."""

from __future__ import annotations

from protocols.mpc.compare import stacked_indicators
from protocols.mpc.polynomial import Secret


def exp_by_squaring(x: Secret, squarings: int = 8, cutoff: float | None = 14.0) -> Secret:
    """exp(x) ~ (1 + x/2^n)^(2^n) for x <= 0, n = `squarings`; 0 where x < -cutoff.

    Math: (1 + x/2^n)^(2^n) = exp(x - x^2/2^(n+1) + ...), so the approximation error is
    about x^2 e^x / 2^(n+1) <= 2 e^-2 / 2^n (largest near x = -2; 1.06e-3 for n = 8). With
    a cutoff T, inputs below -T give exactly 0 (error e^-T: 8.3e-7 for T = 14), which makes
    every x <= 0 valid: without it the base 1 + x/2^n is negative below -2^n and the powers
    grow and wrap around the ring (CrypTen's `exp` returns garbage there, e.g. -1.7e9 for
    exp(-600)). The cutoff product is by an exact 0/1 indicator, so it erases such garbage.

    Fixed point: 1 + x/2^n is held to 2^-16, and the n squarings multiply its relative
    error by 2^n, so expect up to about 2^n 2^-16 relative error (0.4 % for n = 8) on top
    of the approximation error. x may be positive too (then it approximates e^x, the
    relative error growing like x^2/2^(n+1)) as long as the result stays below about 2^15.

    Rounds: n squarings, plus one comparison (8 rounds) and one product with a cutoff.
    Bytes per element and party: 8 n, plus 216 + 16 with a cutoff.
    """
    if isinstance(squarings, bool) or not isinstance(squarings, int) or squarings < 0:
        raise ValueError(f"squarings={squarings!r}: expected an integer >= 0")
    if cutoff is not None and not cutoff > 0:
        raise ValueError(f"cutoff={cutoff!r}: must be positive (inputs below -cutoff give 0)")
    y = x.div(2**squarings) + 1.0
    for _ in range(squarings):
        y = y.square()
    if cutoff is None:
        return y
    keep = stacked_indicators(x, [-float(cutoff)])[0]
    return y * keep


__all__ = ["exp_by_squaring"]
