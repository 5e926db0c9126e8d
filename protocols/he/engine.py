"""CKKS arithmetic on SEAL ciphertexts, with level, scale and cost bookkeeping.

`Engine` wraps one TenSEAL context's SEAL objects (evaluator, encoder, relinearisation and
Galois keys) and gives the server the few operations an encrypted tensor needs, each on
single `sealapi.Ciphertext`s and never in place on an argument:

    add, sub, negate, add_plain               no level
    mul_plain, dot_plain (sum of c_i x_i)      one level (one rescale for the whole sum)
    mul, square, dot (sum of x_i y_i)          one level (one relinearise and rescale)
    rotate                                     no level, one Galois automorphism

Scale. Every ciphertext is kept at the global scale Delta = 2^s. A plain factor is encoded
at the scale q of the prime the following rescale drops, so Delta q / q = Delta exactly. A
ciphertext product has scale Delta^2 / q after rescaling; it is reset to Delta, which
multiplies the message by Delta / q: SEAL's s-bit primes are the primes = 1 mod 2N closest
below 2^s: |Delta / q - 1| is 6.7e-7 at N = 8192, s = 40 (primes 2^40 - 147455 and
2^40 - 737279), but 2.4e-4 at s = 30, where such primes are sparser (`scale_drift` gives
the bound of a context).

Levels. `level(ct)` is the SEAL chain index minus the engine's `reserve`: the rescales still
possible for products (0: none left). A coefficient-mode refresh (`protocols.he.refresh`)
keeps the lowest `reserve` levels of every context for itself (room for its mask above the
bottom prime, and the product that zeroes junk slots), so products never use them.
Operands at different levels are aligned by mod-switching a copy of the higher one down.
An operation that needs a level on a ciphertext at level 0 raises `LevelError`; the caller
(`protocols.he.tensor`) refreshes first.

Counts go to `engine.cost` (`HeCost`): ct-ct and ct-pt products, additions, rotations
(logical rotations; key switches are counted apart in `key_switches`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tenseal as ts
from tenseal import sealapi

from protocols.he.polynomial import HeCost
from protocols.he.rotation import key_switches

Ciphertext = sealapi.Ciphertext


class LevelError(ValueError):
    """A product was asked of a ciphertext with no level left."""


class Engine:
    """SEAL arithmetic for one CKKS context (module docstring)."""

    def __init__(self, context: ts.Context, reserve: int = 0) -> None:
        self.context = context
        data = context.seal_context().data
        chain = data.first_context_data().chain_index()
        if not 0 <= reserve <= chain:
            raise ValueError(f"reserve {reserve}: expected 0 .. {chain} (the chain's levels)")
        self.reserve = reserve
        self.data = data
        self.evaluator = sealapi.Evaluator(data)
        self.encoder = sealapi.CKKSEncoder(data)
        self.slots = self.encoder.slot_count()
        self.scale = float(context.global_scale)
        self.relin_keys = context.relin_keys().data
        self.galois_keys = context.galois_keys().data if context.has_galois_keys() else None
        self.top_level = chain - reserve
        self.cost = HeCost()
        self.key_switches = 0
        self._plain_cache: dict[tuple, sealapi.Plaintext] = {}
        self._zero_encryptor = sealapi.Encryptor(data, context.public_key().data)

    # --- levels and primes ------------------------------------------------------------------
    def level(self, ct: Ciphertext) -> int:
        return self.data.get_context_data(ct.parms_id()).chain_index() - self.reserve

    def _last_prime(self, ct: Ciphertext) -> float:
        parms = self.data.get_context_data(ct.parms_id()).parms()
        return float(parms.coeff_modulus()[-1].value())

    def scale_drift(self) -> float:
        """max |Delta / q - 1| over the primes a product can drop (module docstring)."""
        drift = 0.0
        context_data = self.data.first_context_data()
        while context_data is not None and context_data.chain_index() > 0:
            q = float(context_data.parms().coeff_modulus()[-1].value())
            drift = max(drift, abs(self.scale / q - 1.0))
            context_data = context_data.next_context_data()
        return drift

    def _aligned(self, a: Ciphertext, b: Ciphertext) -> tuple[Ciphertext, Ciphertext]:
        la, lb = self.level(a), self.level(b)
        if la == lb:
            return a, b
        if la > lb:
            return self.mod_switch(a, b.parms_id()), b
        return a, self.mod_switch(b, a.parms_id())

    def mod_switch(self, ct: Ciphertext, parms_id: object) -> Ciphertext:
        out = Ciphertext()
        self.evaluator.mod_switch_to(ct, parms_id, out)
        return out

    def lowest(self, cts: Sequence[Ciphertext]) -> list[Ciphertext]:
        """The ciphertexts, those above the lowest level mod-switched (copies) down to it."""
        low = min(cts, key=self.level)
        return [
            ct if ct.parms_id() == low.parms_id() else self.mod_switch(ct, low.parms_id())
            for ct in cts
        ]

    def _need_level(self, ct: Ciphertext) -> None:
        if self.level(ct) < 1:
            raise LevelError("a product needs one level; the ciphertext has none left")

    # --- plaintexts ----------------------------------------------------------------------------
    def encode(
        self, values: float | np.ndarray, ct: Ciphertext, scale: float, *, cache: bool = True
    ) -> sealapi.Plaintext:
        """A plaintext at `ct`'s level and `scale`: a scalar in every slot, or a vector of at
        most `slots` values (the rest zero). Vectors are cached by content unless `cache` is
        False (one-time masks)."""
        plain = sealapi.Plaintext()
        if isinstance(values, float | int):
            self.encoder.encode(float(values), ct.parms_id(), scale, plain)
            return plain
        if not cache:
            self.encoder.encode(values.tolist(), ct.parms_id(), scale, plain)
            return plain
        key = (values.tobytes(), self.level(ct), scale)
        cached = self._plain_cache.get(key)
        if cached is not None:
            return cached
        self.encoder.encode(values.tolist(), ct.parms_id(), scale, plain)
        if len(self._plain_cache) > 4096:
            self._plain_cache.clear()
        self._plain_cache[key] = plain
        return plain

    # --- no level -------------------------------------------------------------------------------
    def add(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        a, b = self._aligned(a, b)
        out = Ciphertext()
        try:
            self.evaluator.add(a, b, out)
        except RuntimeError:  # a + (-a): SEAL refuses the transparent result
            return self._zero_at(a)
        self.cost.additions += 1
        return out

    def add_many(self, cts: Sequence[Ciphertext]) -> Ciphertext:
        if len(cts) == 1:
            return cts[0]
        aligned = self.lowest(cts)
        out = Ciphertext()
        self.evaluator.add_many(aligned, out)
        self.cost.additions += len(cts) - 1
        return out

    def sub(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        a, b = self._aligned(a, b)
        out = Ciphertext()
        try:
            self.evaluator.sub(a, b, out)
        except RuntimeError:  # a - a: SEAL refuses the transparent result
            return self._zero_at(a)
        self.cost.additions += 1
        return out

    def negate(self, a: Ciphertext) -> Ciphertext:
        out = Ciphertext()
        self.evaluator.negate(a, out)
        return out

    def add_plain(
        self, a: Ciphertext, values: float | np.ndarray, *, cache: bool = True
    ) -> Ciphertext:
        out = Ciphertext()
        self.evaluator.add_plain(a, self.encode(values, a, a.scale, cache=cache), out)
        self.cost.additions += 1
        return out

    def rotate(self, a: Ciphertext, steps: int) -> Ciphertext:
        """Cyclic left rotation of the slots: out[i] = in[(i + steps) mod S]."""
        if self.galois_keys is None:
            raise ValueError("rotation needs Galois keys; this context has none")
        steps %= self.slots
        if steps > self.slots // 2:
            steps -= self.slots
        out = Ciphertext()
        self.evaluator.rotate_vector(a, steps, self.galois_keys, out)
        self.cost.rotations += 1
        self.key_switches += key_switches(steps) if steps else 0
        return out

    # --- one level -------------------------------------------------------------------------------
    def _rescale(self, ct: Ciphertext) -> Ciphertext:
        """Drop the last prime q and set the scale to Delta (module docstring: exact after
        plain products, a drift of |Delta / q - 1| after ciphertext products)."""
        self.evaluator.rescale_to_next_inplace(ct)
        ct.scale = self.scale
        return ct

    def mul_plain(self, a: Ciphertext, values: float | np.ndarray) -> Ciphertext:
        """a * values (scalar or slot vector): one level, scale kept exactly."""
        if isinstance(values, float | int) and values == -1.0:
            return self.negate(a)
        return self.dot_plain([a], [values])

    def _zero_at(self, like: Ciphertext, parms_id: object = None) -> Ciphertext:
        """A fresh encryption of 0 (public key) at `like`'s level (or `parms_id`'s), at the
        scale ciphertexts have there: what SEAL refuses to form as a + (-a) or a * 0 (a
        transparent ciphertext)."""
        out = Ciphertext()
        self._zero_encryptor.encrypt_zero(parms_id or like.parms_id(), out)
        out.scale = like.scale if parms_id is None else self.scale
        return out

    def zero(self, like: Ciphertext) -> Ciphertext:
        """0 one level below `like`: the product of `like` by zero."""
        below = self.data.get_context_data(like.parms_id()).next_context_data().parms_id()
        return self._zero_at(like, below)

    def dot_plain(
        self, cts: Sequence[Ciphertext], factors: Sequence[float | np.ndarray]
    ) -> Ciphertext:
        """sum_i cts[i] * factors[i], one rescale for the sum (zero factors are skipped)."""
        aligned = self.lowest(cts)
        self._need_level(aligned[0])
        q = self._last_prime(aligned[0])
        # a factor below 1 / (2q) encodes to the zero plaintext, whose product SEAL refuses
        # ("transparent"): it is a zero term
        terms = [(ct, f) for ct, f in zip(aligned, factors, strict=True) if not _is_zero(f, q)]
        if not terms:
            return self.zero(aligned[0])
        acc: Ciphertext | None = None
        term = Ciphertext()
        for ct, factor in terms:
            plain = self.encode(factor, ct, q)
            self.cost.ct_pt_mults += 1
            if acc is None:
                acc = Ciphertext()
                self.evaluator.multiply_plain(ct, plain, acc)
            else:
                self.evaluator.multiply_plain(ct, plain, term)
                self.evaluator.add_inplace(acc, term)
                self.cost.additions += 1
        assert acc is not None, "dot_plain of no terms"
        return self._rescale(acc)  # scale Delta q / q: exactly Delta

    def mul(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        return self.dot([a], [b])

    def square(self, a: Ciphertext) -> Ciphertext:
        self._need_level(a)
        out = Ciphertext()
        self.evaluator.square(a, out)
        self.evaluator.relinearize_inplace(out, self.relin_keys)
        self.cost.ct_ct_mults += 1
        return self._rescale(out)

    def dot(self, xs: Sequence[Ciphertext], ys: Sequence[Ciphertext]) -> Ciphertext:
        """sum_i xs[i] * ys[i]: products summed before one relinearisation and rescale."""
        aligned = self.lowest([*xs, *ys])
        self._need_level(aligned[0])
        n = len(xs)
        acc: Ciphertext | None = None
        term = Ciphertext()
        for x, y in zip(aligned[:n], aligned[n:], strict=True):
            self.cost.ct_ct_mults += 1
            if acc is None:
                acc = Ciphertext()
                if x is y:
                    self.evaluator.square(x, acc)
                else:
                    self.evaluator.multiply(x, y, acc)
            else:
                self.evaluator.multiply(x, y, term)
                self.evaluator.add_inplace(acc, term)
                self.cost.additions += 1
        assert acc is not None, "dot of no terms"
        self.evaluator.relinearize_inplace(acc, self.relin_keys)
        return self._rescale(acc)


def message_bound(scale_bits: int, first_prime_bits: int) -> float:
    """|m| below which a message at level 0 decodes correctly: 2^(q_0 bits - s - 1)."""
    return math.ldexp(1.0, first_prime_bits - scale_bits - 1)


def _is_zero(factor: float | np.ndarray, q: float = math.inf) -> bool:
    """Whether `factor` encodes to the zero plaintext at scale q (every entry below 1/(2q))."""
    if isinstance(factor, float | int):
        return abs(factor) * q < 0.5 if math.isfinite(q) else factor == 0.0
    return not np.any(np.abs(factor) * q >= 0.5) if math.isfinite(q) else not np.any(factor)
