"""The client's side of an HE session (`ClientSession`): it owns the inputs and the secret
key. `open_client` answers the server's set-up (shapes, then the layouts and embedding
tables it is told; keys made here, the public context sent, no secret key); the session
then encrypts inputs, answers refreshes (it sees masked values only) and decrypts what the
server sends back, refusing a decryption beyond the message space (`_plausible`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from protocols.he import messages
from protocols.he.codec import Codec
from protocols.he.galois import public_context_with_steps
from protocols.he.layout import Layout
from protocols.he.params import CkksParams, make_context
from protocols.he.refresh import COEFFICIENT, ClientRefresh, RefreshPlan
from protocols.he.relayout import client_relayout, client_relayout_coefficients, read_parts
from secinfer.backends.he.channel import Channel, expect_kind, receive_grid
from secinfer.backends.he.inputs import client_values
from secinfer.errors import UserError


@dataclass
class ClientSession:
    """The client's side once its keys are made: encrypts, refreshes, decrypts."""

    channel: Channel
    codec: Codec
    specs: list[dict[str, Any]]
    tables: dict[str, np.ndarray]
    bound: float
    context_bytes: int
    refresh: ClientRefresh | None = None
    refreshes: int = 0
    layouts: dict[str, Any] = field(default_factory=dict)  # the server's layouts message

    def send_inputs(self, inputs: tuple[torch.Tensor, ...]) -> None:
        for spec, value in zip(self.specs, inputs, strict=True):
            if spec["mode"] == "public":
                self.channel.send_json({"values": value.reshape(-1).tolist()})
                continue
            self.send_values(_client_values(spec, value, self.tables), spec["layout"])

    def send_values(self, values: np.ndarray, layout: dict[str, Any]) -> None:
        cts = self.codec.encrypt(values, Layout.from_dict(layout), seeded=True)
        self.channel.send_cts(list(cts.flat))

    def await_message(self, kind: str) -> dict[str, Any]:
        """Answer refreshes until the server sends a message of `kind`; return it."""
        while True:
            message = self.channel.recv_json()
            if message.get("kind") == kind:
                return message
            if message.get("kind") == "relayout":
                self._relayout(message)
                continue
            if message.get("kind") != "refresh":
                raise messages.MessageError(f"unexpected message {message.get('kind')!r}")
            if self.refresh is None:
                raise messages.MessageError("the server asked for a refresh it announced off")
            masked = self.channel.recv_cts(int(message["count"]))
            self.channel.set_status(f"refreshing {len(masked)} ciphertexts")
            self.channel.send_cts(self.refresh(masked, Layout.from_dict(message["layout"])))
            self.refreshes += 1

    def _relayout(self, message: dict[str, Any]) -> None:
        """Re-encrypt masked tensors in the layouts the server asks for
        (`protocols.he.relayout`): one round trip, counted as a refresh, under the refresh
        agreed at the start (a slot-mode one moves slot values, a coefficient-mode one
        moves the integer polynomials through the canonical embedding: either way the
        client sees what that refresh shows it)."""
        if self.refresh is None:
            raise messages.MessageError(
                "the server asked for a re-layout, which needs refreshes; the refresh agreed is off"
            )
        parts = read_parts(message, self.codec.slots)
        masked = self.channel.recv_cts(sum(count for count, _, _ in parts))
        self.channel.set_status(f"re-laying out {len(masked)} ciphertexts")
        if self.refresh.plan.mode == COEFFICIENT:
            fresh = client_relayout_coefficients(parts, masked, self.refresh)
        else:
            fresh = client_relayout(
                parts,
                masked,
                self.codec.decrypt_slots,
                lambda values: self.codec.encrypt_slots(values, seeded=True),
                lambda values: _plausible(values, self.bound, "a re-layout"),
            )
        self.channel.send_cts(fresh)
        self.refreshes += 1

    def receive_values(self, message: dict[str, Any], what: str) -> np.ndarray:
        """Decrypt the tensor that follows `message` (which carries its layout)."""
        layout = Layout.from_dict(message["layout"])
        grid = receive_grid(self.channel, layout)
        return _plausible(self.codec.decrypt(grid, layout), self.bound, what)

    def record(self, began: float) -> dict[str, Any]:
        return {
            "role": "client",
            "refreshes_answered": self.refreshes,
            "bytes_sent": self.channel.counter.bytes_sent,
            "bytes_received": self.channel.counter.bytes_received,
            "public_context_bytes": self.context_bytes,
            "seconds": time.perf_counter() - began,
        }


def open_client(
    channel: Channel, inputs: tuple[torch.Tensor, ...], extra: dict[str, Any] | None = None
) -> ClientSession:
    """shapes (with the fields of `extra`: a generation's new tokens) -> layouts (and
    embedding tables) -> keys made here, public context sent."""
    channel.send_json(
        {
            "kind": "shapes",
            "shapes": [list(t.shape) for t in inputs],
            "dtypes": ["float" if t.is_floating_point() else "int" for t in inputs],
            **(extra or {}),
        }
    )
    plan = expect_kind(channel, "layouts")
    params = CkksParams.from_dict(plan["params"])
    specs = plan["inputs"]
    tables = {}
    for spec in specs:
        if spec["mode"] == "embedded":
            message = expect_kind(channel, "embedding")
            tables[message["name"]] = np.asarray(message["table"], dtype=np.float64)
    channel.set_status(f"making keys ({len(plan['galois_steps'])} rotation steps)")
    context = make_context(params, galois_steps=[])
    public = public_context_with_steps(context, plan["galois_steps"])
    digest = channel.send_context_bytes(public)
    context_bytes = channel.counter.bytes_sent
    channel.send_json(messages.handshake_message(digest))
    channel.context, channel.digest = context, digest
    bound = 2.0 ** (int(plan["mask_bits"]) + 1)
    codec = Codec(context)
    refresh = None
    if plan.get("refresh") is not None:
        refresh = ClientRefresh(
            codec,
            RefreshPlan.from_dict(plan["refresh"]),
            lambda values: _plausible(values, bound, "a refresh"),
        )
    return ClientSession(channel, codec, specs, tables, bound, context_bytes, refresh, layouts=plan)


FOREIGN = 1e15
"""Decrypted magnitude above which a ciphertext is taken as foreign or damaged (those decrypt
to about 1e31), not as a computed value that outgrew the message space."""


def _plausible(values: np.ndarray, bound: float, what: str) -> np.ndarray:
    """Decrypted values beyond twice the refresh mask's bound (itself a quarter of the
    message space) are refused. CKKS decrypts a ciphertext not made under this key, or
    damaged, to huge numbers (about 1e31) rather than failing; a moderately large value
    (below FOREIGN) is a value the model computed that outgrew the message space: an input
    far outside the range the plan was calibrated on."""
    worst = float(np.max(np.abs(values))) if values.size else 0.0
    if np.isfinite(worst) and bound < worst < FOREIGN:
        raise messages.MessageError(
            f"{what} decrypted to {worst:.3g}, beyond the message space (|x| <= {bound:g}): "
            "a value the model computed outgrew it, so the input lies far outside the range "
            "the plan was calibrated on; bring the input into that range"
        )
    if not np.isfinite(worst) or worst > bound:
        raise messages.MessageError(
            f"{what} decrypted to {worst:.3g}, beyond the message space (|x| <= {bound:g}): "
            "a ciphertext not made under this key, or damaged on the way"
        )
    return values


def _client_values(
    spec: dict[str, Any], value: torch.Tensor, tables: dict[str, np.ndarray]
) -> np.ndarray:
    values = client_values(spec, value)
    if values is not None:
        return values
    ids = value.detach().long().numpy()
    vocab = int(spec["vocab"])
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= vocab:
        raise UserError(f"input {spec['name']}: token ids outside [0, {vocab})")
    if spec["mode"] == "one_hot":
        return np.eye(vocab)[ids]
    return tables[spec["name"]][ids]


__all__ = ["FOREIGN", "ClientSession", "open_client"]
