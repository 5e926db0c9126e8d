"""Public sentinels and the value they become on a secure backend.

Attention masks carry sentinels such as torch.finfo.min. A fixed-point ring cannot hold
them (16 fractional bits in 64 bits hold about +-1.4e14), so every value with
|v| >= SENTINEL becomes -+MASK_LIMIT before it meets shares: exp(-MASK_LIMIT) is 0 on the
fixed-point grid, and softmax's exp by squaring stays valid down to -2^squarings without a
cut-off comparison. The plan (`secinfer.core.plan.mpc_softmax_exp`), the `approx` kernels
(which stand for the mpc backend) and the mpc kernels all read these two numbers here.
"""

from __future__ import annotations

MASK_LIMIT = 200.0
"""What a public sentinel becomes (with its sign) before meeting shares."""
SENTINEL = 1e9
"""|v| >= SENTINEL (and infinities) is a sentinel, not a value."""

__all__ = ["MASK_LIMIT", "SENTINEL"]
