"""The error of an op the he backend cannot evaluate on ciphertexts (one line, exit 2)."""

from __future__ import annotations

from secinfer.errors import UserError


class UnsupportedHeOp(UserError):
    """An op (or a plan method) that CKKS cannot evaluate."""


__all__ = ["UnsupportedHeOp"]
