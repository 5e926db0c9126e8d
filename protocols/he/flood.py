"""Noise flooding of a decrypted result (circuit privacy), as an option.

A CKKS ciphertext's noise e depends on the computation that made it (the model's weights
among others); the client that decrypts the output learns m + e, so e is a channel from
the server's circuit to the client. Flooding adds, before the output is sent, an integer
polynomial f with coefficients uniform on [-2^F, 2^F) to the plaintext polynomial
(exactly, `protocols.he.coefficients`): for |e_j| <= 2^n the distribution of e_j + f_j is
within 2^(n - F - 1) of that of f_j alone, per coefficient (N per ciphertext).

Cost: room and precision, no level. The output is mod-switched to the bottom level first
(q_0: |m + f| < q_0 / 2 needs 2^F well below q_0 / 2 - Delta |x|; `max_flood_bits`), and
every slot gains the error sum_j f_j zeta^(jk) / Delta: a sum of N independent terms of
magnitude <= 2^F, so by Hoeffding |error| <= 2^F sqrt(2 N ln(2 S / delta)) / Delta for all S
slots with probability 1 - delta (`slot_error_bound`, delta = 2^-40): at N = 8192, scale
2^40, F = 20 that is 7.4e-4. So flooding to hide a noise of 2^n costs about F - n bits of
precision: CKKS's own noise after a few products (n about 10 to 15 here) leaves room for a
modest F at scale 2^40; a strong flood needs a larger scale.
"""

from __future__ import annotations

import math

from protocols.he import coefficients
from protocols.he.engine import Ciphertext, Engine

FAILURE_BITS = 40  # delta = 2^-40 for `slot_error_bound`


def slot_error_bound(flood_bits: int, poly_modulus_degree: int, scale_bits: int) -> float:
    """The bound on the error flooding adds to every slot, with probability 1 - 2^-40."""
    slots = poly_modulus_degree // 2
    log_term = math.log(2 * slots) + FAILURE_BITS * math.log(2)
    return math.ldexp(math.sqrt(2 * poly_modulus_degree * log_term), flood_bits - scale_bits)


def max_flood_bits(first_prime_bits: int) -> int:
    """The largest F the bottom level holds: with 2^F and Delta |x| both below q_0 / 8 (the
    client's own bound on |x|, 2^(q_0 bits - s - 3)), |m + f| < q_0 / 4."""
    return first_prime_bits - 4


def flood(engine: Engine, cts: list[Ciphertext], flood_bits: int) -> list[Ciphertext]:
    """`cts` mod-switched to the bottom level, each plaintext plus a fresh uniform integer
    polynomial on [-2^flood_bits, 2^flood_bits) (module docstring)."""
    data = engine.data
    bottom = data.last_parms_id()
    primes = coefficients.primes(data, bottom)
    count = 2 * engine.slots
    out = []
    for ct in cts:
        low = engine.mod_switch(ct, bottom) if ct.parms_id() != bottom else ct
        (noise,) = coefficients.uniform_residues(count, flood_bits, [primes])
        out.append(coefficients.add_residues(data, engine.evaluator, low, noise))
    return out


__all__ = ["flood", "max_flood_bits", "slot_error_bound"]
