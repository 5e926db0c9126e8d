"""Refresh: the client re-encrypts a masked ciphertext so the server regains every level.

One round trip per refresh (all ciphertexts of one tensor travel together):

    server:  c' = c + r, a plain mask (r uniform in [-R, R] in every slot, fresh)
             mod-switch c' to the last level (fewer bytes), send it with the tensor's
             layout (public: which slots hold entries)
    client:  m' = Dec(c') = x + r + e; keep the layout's slots, zero the others;
             send Enc(m') at the top level
    server:  Enc(m') - r (r on the layout's slots) = Enc(x + e + e'), zero elsewhere

The masking argument (semi-honest client). Slot by slot the client sees x + r with r
uniform on [-R, R] and independent of everything else; for |x| <= B the distribution of
x + r is within statistical distance B / (2R) of the distribution of r alone, whatever x
is. So the client learns about each masked value at most what a B / (2R) advantage gives.
R is bounded by the message space at the last level: |x + r| must stay below
2^(q_0 bits - scale bits - 1) (2^19 for the chain [60, 40, 40, 60]), so the default
R = 2^17 hides values up to B = 2^6 = 64 to within 2^-12 per slot (`hiding_bits`). Unused
slots are masked as well, then zeroed by the client: their junk (partial sums left by
rotations) never grows across refreshes, and a refreshed tensor is clean.

Noise: the fresh encryption adds the encryption noise (about 2^-30 at scale 2^40), the
decryption at the last level that of the level's noise; R does not enter the
error (CKKS noise is absolute), only the room above it. The random source is the OS's
(`secrets`), not a seeded generator.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from protocols.he.engine import Ciphertext, Engine
from protocols.he.layout import Layout

Transport = Callable[[list[Ciphertext], Layout], list[Ciphertext]]
"""Sends masked ciphertexts and their layout to the client; returns its fresh encryptions."""


def uniform_mask(slots: int, bound: float) -> np.ndarray:
    """`slots` values uniform on [-bound, bound] from the OS's random source (53 bits each)."""
    raw = np.frombuffer(secrets.token_bytes(8 * slots), dtype=np.uint64) >> np.uint64(11)
    return (raw.astype(np.float64) / float(1 << 53) * 2.0 - 1.0) * bound


def default_mask_bits(first_prime_bits: int, scale_bits: int) -> int:
    """log2 R: two bits below the message space of the last level (module docstring)."""
    return first_prime_bits - scale_bits - 3


def hiding_bits(mask_bits: int, value_bound: float) -> float:
    """-log2 of the statistical distance B / (2R) per slot."""
    return mask_bits + 1 - math.log2(value_bound)


@dataclass
class RefreshStats:
    refreshes: int = 0
    ciphertexts: int = 0
    seconds: float = 0.0
    per_refresh: list[int] = field(default_factory=list)


class MaskingRefresher:
    """The server side of a refresh (module docstring); `transport` does the round trip."""

    def __init__(self, engine: Engine, transport: Transport, mask_bits: int) -> None:
        self.engine = engine
        self.transport = transport
        self.bound = math.ldexp(1.0, mask_bits)
        self.stats = RefreshStats()

    def __call__(self, cts: list[Ciphertext], layout: Layout) -> list[Ciphertext]:
        began = time.perf_counter()
        masked, masks = self.mask(cts)
        fresh = self.transport(masked, layout)
        if len(fresh) != len(cts):
            raise ValueError(f"refresh: sent {len(cts)} ciphertexts, got {len(fresh)} back")
        used = np.zeros(self.engine.slots, dtype=bool)
        used[layout.positions().reshape(-1)] = True
        out = self.unmask(fresh, [np.where(used, mask, 0.0) for mask in masks])
        self.record(len(cts), time.perf_counter() - began)
        return out

    def mask(self, cts: list[Ciphertext]) -> tuple[list[Ciphertext], list[np.ndarray]]:
        """The server's first half: c + r with a fresh mask r per ciphertext, mod-switched to
        the last level (what is sent), and the masks."""
        engine = self.engine
        masks = [uniform_mask(engine.slots, self.bound) for _ in cts]
        masked = [
            engine.add_plain(ct, mask, cache=False) for ct, mask in zip(cts, masks, strict=True)
        ]
        bottom = engine.data.last_parms_id()
        masked = [engine.mod_switch(ct, bottom) if ct.parms_id() != bottom else ct for ct in masked]
        return masked, masks

    def unmask(self, fresh: list[Ciphertext], masks: list[np.ndarray]) -> list[Ciphertext]:
        """The second half: Enc(m') - r for the client's fresh ciphertexts, each mask laid out
        where the client wrote masked values (zero elsewhere); they must be at the top."""
        out = []
        for ct, mask in zip(fresh, masks, strict=True):
            if self.engine.level(ct) != self.engine.top_level:
                raise ValueError("refresh: the client's ciphertext is not at the top level")
            out.append(self.engine.add_plain(ct, -mask, cache=False))
        return out

    def record(self, ciphertexts: int, seconds: float) -> None:
        """Count one round trip of `ciphertexts` sent ciphertexts taking `seconds`."""
        self.stats.refreshes += 1
        self.stats.ciphertexts += ciphertexts
        self.stats.per_refresh.append(ciphertexts)
        self.stats.seconds += seconds
