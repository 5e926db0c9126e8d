"""GELU as relu minus a clipped tail polynomial: exact form, valid on the whole line.

GELU(x) = relu(x) - g(|x|) with g(t) = t Phi(-t) (see `approximations.sign_exp_gelu`).
g is smooth on [0, inf), peaks at 0.17 near t = 0.75 and decays like e^(-t^2/2): g(4) =
1.3e-4. So with t_c = min(|x|, c) and p a minimax polynomial for g on [0, c]:

    GELU(x) ~ relu(x) - p(min(|x|, c))

Error on EVERY real x: at most max_[0, c] |p - g| + g(c) (beyond c, g(t) lies in
[0, g(c)] because g decreases there, and p(c) is within p's error of g(c)). Degree 8 on
[0, 4]: about 3.6e-4 + 1.3e-4. No interval from calibration is needed for accuracy: the
clip keeps p's input in [0, c] whatever x is, so outliers (GELU inputs of +-40) are as
accurate as the bulk.

Secure cost (`protocols.mpc.gelu.tail_gelu`): the three indicators [x >= -c], [x >= 0],
[x >= c] and two selects of x: relu(x) = [x >= 0] x, and t_c = ([0 <= x < c] -
[-c <= x < 0]) x + c [|x| >= c]. With the dealer's FSS keys the three comparisons come
from ONE opening of x + r (8 bytes per element and party) and the selects from three
opened bits (3/8 byte), two rounds; then p's Chebyshev terms T_1..T_8 of the unit
variable (three rounds, four 8-byte openings): about 40 bytes and 5 rounds per element,
against about 96 bytes and 14 rounds for `SignExpGELU` with FSS and 320 bytes and 20
rounds with CrypTen's comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from approximations.certify import certify
from approximations.fitting import fit
from approximations.polynomial import Polynomial

CLIP = 4.0
"""c: |x| is clipped to [0, 4] before the tail polynomial (g(4) = 1.3e-4)."""
DEGREE = 8
"""The tail polynomial's degree: T_1..T_8 cost the same four openings as T_1..T_5."""


def tail(t: torch.Tensor) -> torch.Tensor:
    """g(t) = t Phi(-t) = relu(t) - GELU(t) for t >= 0, in the input's dtype."""
    return t * 0.5 * torch.erfc(t / math.sqrt(2.0))


@dataclass(frozen=True)
class TailGELU:
    """relu(x) - p(min(|x|, clip)), p on [0, clip]; `max_error` certified on the whole
    line (module docstring)."""

    poly: Polynomial
    clip: float
    max_error: float

    @classmethod
    def default(cls) -> TailGELU:
        """The form of degree DEGREE on [0, CLIP]."""
        return _form(CLIP, DEGREE)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        t = x.abs().clamp_max(self.clip)
        return F.relu(x) - self.poly(t)


@lru_cache(maxsize=8)
def _form(clip: float, degree: int) -> TailGELU:
    poly = fit(tail, (0.0, clip), degree, "remez", name="gelu_tail")
    beyond = float(tail(torch.tensor(clip, dtype=torch.float64)))
    assert poly.max_error is not None
    draft = TailGELU(poly, clip, poly.max_error + beyond)
    # Check the stated bound where the pieces meet and far out (no interval is needed).
    cert = certify(draft, F.gelu, (-4.0 * clip, 4.0 * clip), extra_points=(0.0, -clip, clip))
    if cert.max_error > draft.max_error * (1 + 1e-6):
        raise AssertionError(f"tail GELU: {cert.max_error:.3g} above its bound")
    return draft


__all__ = ["CLIP", "DEGREE", "TailGELU", "tail"]
