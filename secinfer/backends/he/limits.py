"""What the `he` backend can hold: the bound on the data owner's values (`ValueLimit`).

|x| <= R = 2^mask_bits (`protocols.he.refresh.default_mask_bits`: 2^17 for the default
chain [60, 40, 40, 60] at scale 2^40). After its last rescale a CKKS ciphertext holds
|m| < 2^(q_0 bits - scale bits - 1) = 4R; a refresh adds a mask of up to R, and the client
accepts a decrypted value only within 2R (`secinfer.backends.he.client._plausible`). An
input within R survives both; a value of 1e30 used to come back as "a ciphertext not made
under this key".
"""

from __future__ import annotations

import math

from protocols.he.params import CkksParams
from protocols.he.refresh import default_mask_bits
from secinfer.backends.he.server import DEFAULT_PARAMS
from secinfer.load.values import ValueLimit


def he_limit(params: CkksParams | None = None) -> ValueLimit:
    """|x| <= 2^mask_bits for CKKS `params` (default: the server's `DEFAULT_PARAMS`), the
    refresh mask's bound (module docstring)."""
    params = params or DEFAULT_PARAMS
    first, scale = params.coeff_mod_bit_sizes[0], params.scale_bits
    mask_bits = default_mask_bits(first, scale)
    return ValueLimit(
        "he",
        math.ldexp(1.0, mask_bits),
        reason=f"CKKS at scale 2^{scale} holds |x| < 2^{first - scale - 1} at its last level "
        f"and a refresh adds a mask of up to 2^{mask_bits}",
    )


__all__ = ["he_limit"]
