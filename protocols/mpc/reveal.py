"""Open a secret to one party and decode it exactly.

CrypTen 0.4.1's `FixedPointEncoder.decode` (behind `get_plain_text`) divides the integer
part of a negative value by 2^16 - 1 instead of 2^16, so some negative values come back
exactly 1.0 too low (-39.99998 as -40.99998), with probability about |x| / 2^16 per
element. Here the ring value is opened (`reveal`, no decoding) and divided by the scale in
float64. Opening costs what `get_plain_text(dst)` costs: one reduce to `dst`.
"""

from __future__ import annotations

from typing import Any

import torch

from protocols.mpc.crypten_setup import communicator


def decode(ring: torch.Tensor, scale: int) -> torch.Tensor:
    """Exact fixed-point decoding: the ring integer over the scale, in float64."""
    return ring.double() / scale


def reveal_to(x: Any, dst: int) -> torch.Tensor | None:
    """x's value (float64) on party `dst`; None on the other party. Both must call it."""
    ring = x.reveal(dst=dst)
    if communicator().get_rank() != dst:
        return None
    return decode(ring, int(x.encoder.scale))


__all__ = ["decode", "reveal_to"]
