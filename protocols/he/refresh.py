"""Refresh: the client re-encrypts a masked ciphertext so the server regains every level.

One round trip per refresh (all ciphertexts of one tensor travel together). Two ways of
masking, chosen by the statistical hiding asked for (`plan_refresh`):

SLOT mode (`MaskingRefresher`, the bottom level, no level reserved):

    server:  c' = c + r, a plain mask (r uniform in [-R, R] in every slot, fresh)
             mod-switch c' to the last level (fewer bytes), send it with the tensor's
             layout (public: which slots hold entries)
    client:  m' = Dec(c') = x + r + e; keep the layout's slots, zero the others;
             send Enc(m') at the top level
    server:  Enc(m') - r (r on the layout's slots) = Enc(x + e + e'), zero elsewhere

COEFFICIENT mode (`CoefficientRefresher`, `plan.reserve` levels kept for it):

    server:  zero the junk slots (one plain product by the layout's 0/1 mask: one level),
             mod-switch to the room level l (primes q_0 .. q_l, Q_l = their product), add
             an integer polynomial u with coefficients uniform on [-U, U) (U = 2^mask_bits)
             to the plaintext polynomial exactly (`protocols.he.coefficients`), send
    client:  decrypt to the integer polynomial w = m + u (exact, mod Q_l, centred), check
             |w| < 2U, encrypt w itself at the top level (its residues modulo every prime of
             the top level: no decoding, no rounding), send
    server:  subtract u at the top level: Enc(m), the junk slots zero

The masking argument (semi-honest client). Slot mode: slot by slot the client sees x + r
with r uniform on [-R, R] and independent of everything else; for |x| <= B the
distribution of x + r is within statistical distance B / (2R) of that of r alone. R is
bounded by the message space at the last level, |x + r| < 2^(q_0 bits - scale bits - 1)
(2^19 for the chain [60, 40, 40, 60]), so R = 2^17 hides |x| <= 2^6 to within 2^-12 per
slot (`hiding_bits` 12). Raising R further is no way out: the client decodes and encodes
doubles, and x + r of magnitude R keeps only 52 bits, so |x| is known to R 2^-52 at best
(measured: 0.05 absolute error at R = 2^46).

Coefficient mode: coefficient by coefficient the client sees m_j + u_j, and for
|m_j| <= M the statistical distance to u_j alone is at most M / (2U). The plaintext of
slot values z at scale Delta has m = Delta sigma^-1(z) + e, and the inverse canonical
embedding is an average over the N roots, so |m_j| <= Delta max|z| + |e|: after the
server's zeroing the junk slots hold only noise, so M = Delta B (B the bound on the
tensor's values), and the distance is Delta B / (2U) per coefficient (N coefficients per
ciphertext): `hiding_bits` = mask_bits + 1 - scale_bits - log2 B. Room: the client
decrypts correctly while |m + u| < Q_l / 2; mask_bits = (bits of q_0 .. q_l) - 4 gives
U <= Q_l / 8, so |m| may reach 3U. With scale 2^40 and B = 2^6, 40 bits need
mask_bits >= 85, i.e. Q_l of at least 89 bits: two primes of [60, 40, ...] (100 bits,
mask_bits 96, hiding_bits 51), plus one level for the zeroing: three levels of every
context are the price (`reserve`). The client's view is exact integers: no precision is
lost, whatever U.

Noise: the fresh encryption adds the encryption noise (about 2^-30 at scale 2^40), the
decryption at the room level that of the level's noise; the masks do not enter the error
(CKKS noise is absolute, and the coefficient mode adds and removes u exactly). The random
source is the OS's (`secrets`), not a seeded generator.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocols.he import coefficients
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


SLOT, COEFFICIENT = "slot", "coefficient"
DEFAULT_HIDING_BITS = 40
"""The statistical security parameter a refresh hides values with unless told otherwise."""


class HidingError(ValueError):
    """No refresh of this chain hides values to the statistical distance asked for."""


@dataclass(frozen=True)
class RefreshPlan:
    """How refreshes mask (module docstring), agreed by server and client.

    `mode` SLOT or COEFFICIENT; `mask_bits` log2 of the mask bound (R on slot values, U on
    integer coefficients); `room_level` the chain index the client decrypts at (0 in slot
    mode); `scale_bits` s; `value_bound` B, the bound on the refreshed values the hiding is
    stated for. `reserve`: the levels of every context kept for the refresh (room above the
    bottom, plus the zeroing product), which products may not use."""

    mode: str
    mask_bits: int
    room_level: int
    scale_bits: int
    value_bound: float

    def __post_init__(self) -> None:
        if self.mode not in (SLOT, COEFFICIENT):
            raise ValueError(f"refresh mode {self.mode!r}: expected {SLOT!r} or {COEFFICIENT!r}")
        if self.mode == SLOT and self.room_level != 0:
            raise ValueError("a slot-mode refresh decrypts at the bottom level")
        if not self.value_bound > 0:
            raise ValueError(f"value bound {self.value_bound!r}: expected > 0")

    @property
    def reserve(self) -> int:
        return 0 if self.mode == SLOT else self.room_level + 1

    @property
    def hiding_bits(self) -> float:
        """-log2 of the statistical distance per slot (slot mode: B / 2R) or per coefficient
        (coefficient mode: Delta B / 2U)."""
        shift = 0 if self.mode == SLOT else self.scale_bits
        return self.mask_bits + 1 - shift - math.log2(self.value_bound)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "mask_bits": self.mask_bits,
            "room_level": self.room_level,
            "scale_bits": self.scale_bits,
            "value_bound": self.value_bound,
        }

    @classmethod
    def from_dict(cls, data: Any) -> RefreshPlan:
        keys = {"mode", "mask_bits", "room_level", "scale_bits", "value_bound"}
        if not isinstance(data, dict) or set(data) != keys:
            raise ValueError(f"refresh plan: expected keys {sorted(keys)}")
        return cls(
            str(data["mode"]),
            int(data["mask_bits"]),
            int(data["room_level"]),
            int(data["scale_bits"]),
            float(data["value_bound"]),
        )

    def explain(self) -> str:
        b = math.log2(self.value_bound)
        if self.mode == SLOT:
            how = (
                f"slot masks r uniform on +-2^{self.mask_bits} at the bottom level: |x| <= "
                f"2^{b:g} hidden to 2^-{self.hiding_bits:.1f} per slot"
            )
        else:
            how = (
                f"integer masks uniform on +-2^{self.mask_bits} on the plaintext coefficients "
                f"at level {self.room_level} (junk slots zeroed first): |x| <= 2^{b:g} hidden "
                f"to 2^-{self.hiding_bits:.1f} per coefficient; {self.reserve} levels of "
                "every context reserved"
            )
        return f"refresh: {how}"


def chain_primes(poly_modulus_degree: int, bit_sizes: list[int]) -> list[int]:
    """The primes SEAL makes for a chain (`CoeffModulus.Create`, what TenSEAL uses)."""
    from tenseal import sealapi

    return [m.value() for m in sealapi.CoeffModulus.Create(poly_modulus_degree, bit_sizes)]


def coefficient_mask_bits(primes: list[int], room_level: int) -> int:
    """log2 U = floor(log2 Q_l) - 3, Q_l = q_0 ... q_l: U <= Q_l / 8 (module docstring)."""
    return math.prod(primes[: room_level + 1]).bit_length() - 1 - 3


def plan_refresh(
    primes: list[int], scale_bits: int, value_bound: float, hiding: float
) -> RefreshPlan:
    """The cheapest refresh hiding |x| <= value_bound to 2^-hiding: the slot mode when it
    suffices (no level reserved), else the coefficient mode at the lowest room level that
    does. `primes`: q_0 .. q_L of the chain (the special prime excluded). At least 2 bits
    are always asked: then the mask is at least twice the value (R >= 2B, U >= 2 Delta B),
    so |value + mask| <= 1.5 x the mask's bound, inside the client's check (twice the bound)
    and the message space. Raises `HidingError` when even the top level's room falls
    short."""
    if not value_bound > 0:
        raise ValueError(f"value bound {value_bound!r}: expected > 0")
    hiding = max(hiding, 2.0)
    slot = RefreshPlan(
        SLOT, default_mask_bits(primes[0].bit_length(), scale_bits), 0, scale_bits, value_bound
    )
    if slot.hiding_bits >= hiding:
        return slot
    best = slot
    for level in range(1, len(primes)):
        plan = RefreshPlan(
            COEFFICIENT, coefficient_mask_bits(primes, level), level, scale_bits, value_bound
        )
        if plan.hiding_bits >= hiding:
            return plan
        best = plan
    raise HidingError(
        f"hiding {hiding:g} bits of values up to {value_bound:g} needs more room than this "
        f"chain's {len(primes)} primes give (at most {best.hiding_bits:.1f} bits)"
    )


@dataclass
class RefreshStats:
    refreshes: int = 0
    ciphertexts: int = 0
    seconds: float = 0.0
    per_refresh: list[int] = field(default_factory=list)

    def count(self, ciphertexts: int, seconds: float) -> None:
        """One round trip of `ciphertexts` sent ciphertexts taking `seconds`."""
        self.refreshes += 1
        self.ciphertexts += ciphertexts
        self.per_refresh.append(ciphertexts)
        self.seconds += seconds


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
        self.stats.count(ciphertexts, seconds)


class CoefficientRefresher:
    """The server side of a coefficient-mode refresh (module docstring); `transport` does
    the round trip. The engine must keep `plan.reserve` levels (`Engine(..., reserve=)`):
    a tensor reaches the refresh at chain index >= room_level + 1."""

    def __init__(self, engine: Engine, transport: Transport, plan: RefreshPlan) -> None:
        if plan.mode != COEFFICIENT:
            raise ValueError("CoefficientRefresher needs a coefficient-mode plan")
        if engine.reserve != plan.reserve:
            raise ValueError(
                f"the engine keeps {engine.reserve} levels, the refresh needs {plan.reserve}"
            )
        self.engine = engine
        self.transport = transport
        self.plan = plan
        self.bound = math.ldexp(1.0, plan.mask_bits)
        self.stats = RefreshStats()
        data = engine.data
        context_data = data.first_context_data()
        while context_data.chain_index() > plan.room_level:
            context_data = context_data.next_context_data()
        self.room = context_data.parms_id()
        self.room_primes = coefficients.primes(data, self.room)
        self.top_primes = coefficients.primes(data, data.first_parms_id())

    def _zero_junk(self, ct: Ciphertext, mask: np.ndarray) -> Ciphertext:
        """ct times the layout's 0/1 slot mask, rescaled: one level of the reserve."""
        engine = self.engine
        data = engine.data
        index = data.get_context_data(ct.parms_id()).chain_index()
        if index < self.plan.room_level + 1:
            raise ValueError(
                f"refresh: a ciphertext at chain index {index} has no level left to zero its "
                f"junk slots above the room level {self.plan.room_level}"
            )
        prime = data.get_context_data(ct.parms_id()).parms().coeff_modulus()[-1].value()
        out = Ciphertext()
        engine.evaluator.multiply_plain(ct, engine.encode(mask, ct, float(prime)), out)
        engine.evaluator.rescale_to_next_inplace(out)
        out.scale = engine.scale
        engine.cost.ct_pt_mults += 1
        return out

    def __call__(self, cts: list[Ciphertext], layout: Layout) -> list[Ciphertext]:
        began = time.perf_counter()
        masked, masks = self.mask(cts, layout)
        fresh = self.transport(masked, layout)
        if len(fresh) != len(cts):
            raise ValueError(f"refresh: sent {len(cts)} ciphertexts, got {len(fresh)} back")
        out = self.unmask(fresh, [negated(top, self.top_primes) for _, top in masks])
        self.record(len(cts), time.perf_counter() - began)
        return out

    def mask(
        self, cts: list[Ciphertext], layout: Layout
    ) -> tuple[list[Ciphertext], list[tuple[np.ndarray, np.ndarray]]]:
        """The server's first half: each ciphertext's junk slots (those its entries in
        `layout` do not use, replicas included) zeroed,
        at the room level, a fresh integer mask u added (what is sent); and each u's
        residues modulo the room's primes and modulo the top level's."""
        engine = self.engine
        placement = layout.placement()
        masked, drawn = [], []
        for g, ct in enumerate(cts):
            clean = self._zero_junk(ct, placement.used(g, engine.slots).astype(np.float64))
            if clean.parms_id() != self.room:
                clean = engine.mod_switch(clean, self.room)
            low, high = coefficients.uniform_residues(
                2 * engine.slots, self.plan.mask_bits, [self.room_primes, self.top_primes]
            )
            masked.append(coefficients.add_residues(engine.data, engine.evaluator, clean, low))
            drawn.append((low, high))
        return masked, drawn

    def unmask(self, fresh: list[Ciphertext], removals: list[np.ndarray]) -> list[Ciphertext]:
        """The second half: each of the client's fresh ciphertexts (at the top level) with
        the integers `removals` (residues modulo the top level's primes: the mask's
        negation, as the client's ciphertext holds it) added."""
        data = self.engine.data
        out = []
        for ct, removal in zip(fresh, removals, strict=True):
            if ct.parms_id() != data.first_parms_id():
                raise ValueError("refresh: the client's ciphertext is not at the top level")
            out.append(coefficients.add_residues(data, self.engine.evaluator, ct, removal))
        return out

    def record(self, ciphertexts: int, seconds: float) -> None:
        """Count one round trip of `ciphertexts` sent ciphertexts taking `seconds`."""
        self.stats.count(ciphertexts, seconds)


def negated(res: np.ndarray, primes: list[int]) -> np.ndarray:
    """The residues of -x from those of x (`res`, (k, N)) modulo `primes`."""
    rows = [(np.uint64(q) - r) % np.uint64(q) for q, r in zip(primes, res, strict=True)]
    return np.stack(rows).astype(np.uint64)


def make_refresher(
    engine: Engine, transport: Transport, plan: RefreshPlan
) -> MaskingRefresher | CoefficientRefresher:
    """The server side of `plan`'s refresh."""
    if plan.mode == SLOT:
        return MaskingRefresher(engine, transport, plan.mask_bits)
    return CoefficientRefresher(engine, transport, plan)


class ClientRefresh:
    """The client side of a refresh under `plan` (module docstring): decrypt, check,
    re-encrypt at the top level. `check_slots(values)` vets slot-mode values (and returns
    them); `seeded`: slot-mode answers in SEAL's seeded form, for sending (coefficient-mode
    answers are full ciphertexts: an encryption of zero plus the integers); a
    coefficient-mode ciphertext must arrive at the room level and decrypt below
    2^(mask_bits + 1), else `messages.MessageError`."""

    def __init__(
        self,
        codec: Any,
        plan: RefreshPlan,
        check_slots: Callable[[np.ndarray], np.ndarray],
        *,
        seeded: bool = True,
    ) -> None:
        from tenseal import sealapi

        self.seeded = seeded
        self.codec = codec
        self.plan = plan
        self.check_slots = check_slots
        self.data = codec.context.seal_context().data
        self.evaluator = sealapi.Evaluator(self.data)
        self.top_primes = coefficients.primes(self.data, self.data.first_parms_id())

    def __call__(self, cts: list[Any], layout: Layout) -> list[Any]:
        if self.plan.mode == SLOT:
            return [self._slot(ct, layout) for ct in cts]
        return [self._coefficients(ct) for ct in cts]

    def _slot(self, ct: Any, layout: Layout) -> Any:
        used = layout.positions().reshape(-1)
        values = np.zeros(self.codec.slots)
        values[used] = self.check_slots(self.codec.decrypt_slots(ct)[used])
        return self.codec.encrypt_slots(values, seeded=self.seeded)

    def _coefficients(self, ct: Any) -> Any:
        values = self.masked_integers(ct)
        return self.encrypt_integers(values.residues(self.top_primes), ct.scale)

    def masked_integers(self, ct: Any) -> coefficients.Integers:
        """The integer polynomial w = m + u of a coefficient-mode ciphertext (module
        docstring), checked: at the agreed room level, |w| below 2^(mask_bits + 1)."""
        from tenseal import sealapi

        from protocols.he.messages import MessageError

        index = self.data.get_context_data(ct.parms_id()).chain_index()
        if index != self.plan.room_level:
            raise MessageError(
                f"a refresh arrived at chain index {index}, not at the agreed room level "
                f"{self.plan.room_level}"
            )
        plain = sealapi.Plaintext()
        self.codec.decryptor.decrypt(ct, plain)
        values = coefficients.plaintext_integers(self.data, self.evaluator, plain, ct.parms_id())
        worst = float(values.magnitude().max())
        limit = math.ldexp(1.0, self.plan.mask_bits + 1)
        if not worst < limit:
            raise MessageError(
                f"a refresh decrypted to a coefficient of 2^{math.log2(worst):.1f}, beyond "
                f"the mask's 2^{self.plan.mask_bits + 1}: a ciphertext not made under this "
                "key, damaged on the way, or a value far outside the calibrated range"
            )
        return values

    def encrypt_integers(self, residues: np.ndarray, scale: float) -> Any:
        """A fresh encryption at the top level, at `scale`, of the integer polynomial with
        `residues` modulo the top level's primes (no encoding, no rounding)."""
        from tenseal import sealapi

        zero = sealapi.Ciphertext()
        self.codec.encryptor.encrypt_zero_symmetric(self.data.first_parms_id(), zero)
        zero.scale = scale
        return coefficients.add_residues(self.data, self.evaluator, zero, residues)
