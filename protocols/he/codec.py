"""Client side: encrypt a tensor into a `Layout`, decrypt a grid of ciphertexts back.

Only the client runs these: they need the secret key. Encryption is symmetric (SEAL's
seeded form: about half the bytes of a public-key encryption on the wire). Unused slots
are encrypted as zeros, so a fresh tensor is `clean`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tenseal as ts
from tenseal import sealapi

from protocols.he.layout import Layout


class Codec:
    """Encoder, symmetric encryptor and decryptor of a private TenSEAL context."""

    def __init__(self, context: ts.Context) -> None:
        if not context.is_private():
            raise ValueError("the codec needs the private context (it decrypts)")
        data = context.seal_context().data
        secret = context.secret_key().data
        self.context = context
        self.encoder = sealapi.CKKSEncoder(data)
        self.encryptor = sealapi.Encryptor(data, secret)
        self.decryptor = sealapi.Decryptor(data, secret)
        self.slots = self.encoder.slot_count()
        self.scale = float(context.global_scale)
        self.top = data.first_parms_id()

    def encrypt_slots(self, slots: np.ndarray, *, seeded: bool = False) -> Any:
        """One fresh ciphertext at the top level holding `slots` (at most S values).

        `seeded`: SEAL's `Serializable` form, whose second polynomial is replaced by the
        seed that generated it (half the bytes: 162 KB against 331 KB at N = 8192, chain
        [60, 40, 40, 60]); it can only be sent, and the receiver loads a full ciphertext."""
        plain = sealapi.Plaintext()
        values = np.asarray(slots, dtype=np.float64).tolist()
        self.encoder.encode(values, self.top, self.scale, plain)
        if seeded:
            return self.encryptor.encrypt_symmetric(plain)
        out = sealapi.Ciphertext()
        self.encryptor.encrypt_symmetric(plain, out)
        return out

    def decrypt_slots(self, ct: sealapi.Ciphertext) -> np.ndarray:
        plain = sealapi.Plaintext()
        self.decryptor.decrypt(ct, plain)
        return np.asarray(self.encoder.decode_double(plain), dtype=np.float64)

    def encrypt(self, values: np.ndarray, layout: Layout, *, seeded: bool = False) -> np.ndarray:
        """A grid (object array, `layout.grid_shape`) of ciphertexts holding `values`
        (`seeded`: for sending, see `encrypt_slots`); any layout (`Layout.placement`:
        replicas are written too)."""
        values = np.asarray(values, dtype=np.float64)
        if tuple(values.shape) != layout.shape:
            raise ValueError(f"values of shape {values.shape} for a layout of {layout.shape}")
        if layout.span() > self.slots:
            raise ValueError(f"layout needs {layout.span()} slots, a ciphertext has {self.slots}")
        if not layout.simple:
            placement, flat = layout.placement(), values.reshape(-1)
            cts = [
                self.encrypt_slots(placement.vector(flat, g, self.slots), seeded=seeded)
                for g in range(len(placement.groups))
            ]
            grid = np.empty(len(cts), dtype=object)
            grid[:] = cts
            return grid.reshape(layout.grid_shape)
        positions = layout.positions().reshape(-1)
        arranged = np.transpose(values, list(layout.ct_axes) + list(layout.slot_axes))
        arranged = arranged.reshape((*layout.grid_shape, -1))
        grid = np.empty(layout.grid_shape, dtype=object)
        for index in np.ndindex(layout.grid_shape):
            slots = np.zeros(self.slots)
            slots[positions] = arranged[index]
            grid[index] = self.encrypt_slots(slots, seeded=seeded)
        return grid

    def decrypt(self, grid: np.ndarray, layout: Layout) -> np.ndarray:
        """The values of `layout` read from the decrypted ciphertexts of `grid` (first
        copies of replicated entries)."""
        if not layout.simple:
            vectors = [self.decrypt_slots(ct) for ct in np.asarray(grid).flat]
            return layout.placement().gather(vectors).reshape(layout.shape)
        positions = layout.positions().reshape(-1)
        out = np.empty((*layout.grid_shape, positions.size))
        for index in np.ndindex(layout.grid_shape):
            out[index] = self.decrypt_slots(grid[index])[positions]
        slot_shape = [layout.shape[a] for a in layout.slot_axes]
        out = out.reshape(layout.grid_shape + tuple(slot_shape))
        order = list(layout.ct_axes) + list(layout.slot_axes)
        return np.transpose(out, np.argsort(order))
