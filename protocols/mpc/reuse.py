"""Beaver products whose operands keep their masks: a secret is opened once, then reused.

CrypTen's Beaver product z = x op y takes a fresh triple (a, b, c = a op b) from the
dealer and opens both dx = x - a and dy = y - b: every product sends both operands'
sizes, even when x was already opened for an earlier product. Here a secret may carry a
**key**; the first product that uses it opens x - a once and both parties (and the
dealer, who made a) keep the mask. Every later product with the same key reuses a and the
public dx, and opens only its other, fresh operand:

    z = c + dx op b + a op dy + dx op dy      (one party adds the last term)

with the dealer's c = a op b for the kept a and a fresh b. A square of a kept x opens
nothing: x^2 = a^2 + 2 dx a + dx^2 with shares of a^2 from the dealer.

Security (semi-honest, dealer trusted as in CrypTen's TTP): every opened value is one
secret minus a uniformly random mask that is opened **once**, so the views are the same
uniform values as with fresh triples; c is fresh for every product. What is saved is
only repetition: opening x - a a second time with a new a tells nothing new, but costs
bytes. (SecretFlow-SPU's "Beaver cache" is the same idea.)

Costs per product, bytes per party: 8 per element of each operand not yet opened (a
kept operand costs nothing); one round when something is opened, none otherwise. The
dealer sends the same c share as for a fresh triple (dealer traffic, counted apart), and
keeps the masks of the session's keys in memory.

Where it is used: model weights (opened once per model, before the input exists; every
query's products with them open only the activations) and LayerNorm's centred input
(one opening for its square and for its product with the row scale).

Needs the dealer (provider "dealer"); with CrypTen's trusted-first-party provider
`available()` is False and callers use CrypTen's own products.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch

from protocols.mpc.crypten_setup import import_crypten

OPS = ("mul", "matmul")


@dataclass
class Opened:
    """This party's share of a kept mask and the public opened difference x - a (ring)."""

    mask: torch.Tensor
    delta: torch.Tensor


_kept: dict[str, Opened] = {}
_counter = itertools.count()


def available() -> bool:
    """True when the dealer serves triples (the only provider that can keep masks)."""
    crypten = import_crypten()
    return crypten.mpc.get_default_provider().NAME == "TTP"


def reset() -> None:
    """Forget every kept mask (a new session; the dealer starts empty too)."""
    _kept.clear()


def new_key(prefix: str) -> str:
    """A key no earlier call returned in this process (same sequence on both parties)."""
    return f"{prefix}#{next(_counter)}"


def is_kept(key: str | None) -> bool:
    return key is not None and key in _kept


def open_all(items: list[tuple[Any, str]]) -> None:
    """Open x - a under each key now (e.g. the weights before the input arrives), all in
    one round; later products with these keys open only their other operand. 8 bytes per
    element and party; keys already kept are skipped."""
    items = [(x, key) for x, key in items if not is_kept(key)]
    if items:
        sizes = [(key, tuple(x.size())) for x, key in items]
        _operands(items, request=("reuse_open", sizes))


def product(
    x: Any,
    y: Any,
    op: str = "mul",
    *,
    x_key: str | None = None,
    y_key: str | None = None,
    release: tuple[str, ...] = (),
) -> Any:
    """x op y (op "mul" with broadcasting, or "matmul") for MPCTensors, keeping the mask of
    each keyed operand; `release` names keys not needed after this product (both parties
    and the dealer drop them). Fixed point: one truncation, as CrypTen's product."""
    if op not in OPS:
        raise ValueError(f"op={op!r}: one of {OPS}")
    if x_key is not None and x_key == y_key and not is_kept(x_key):
        raise ValueError(f"x_key = y_key = {x_key!r} before it is kept: use square()")
    size = getattr(torch, op)(
        torch.empty(tuple(x.size()), device="meta"), torch.empty(tuple(y.size()), device="meta")
    ).shape
    request = ("reuse_product", op, (x_key, tuple(x.size())), (y_key, tuple(y.size())), release)
    [(a, dx), (b, dy)], c = _operands([(x, x_key), (y, y_key)], request=request, c_size=size)
    f = getattr(torch, op)
    z = c + f(dx, b) + f(a, dy)
    if _rank() == 0:
        z = z + f(dx, dy)
    _release(release)
    return _truncated(z, x)


def square(x: Any, *, key: str | None = None, release: tuple[str, ...] = ()) -> Any:
    """x * x keeping x's mask under `key` (nothing opened when it is already kept)."""
    size = tuple(x.size())
    [(a, dx)], a2 = _operands(
        [(x, key)], request=("reuse_square", (key, size), release), c_size=size
    )
    z = a2 + 2 * dx * a
    if _rank() == 0:
        z = z + dx * dx
    _release(release)
    return _truncated(z, x)


# --- the steps ---------------------------------------------------------------------------
def _rank() -> int:
    return import_crypten().communicator.get().get_rank()


def _operands(
    pairs: list[tuple[Any, str | None]],
    *,
    request: tuple[Any, ...],
    c_size: torch.Size | tuple[int, ...] | None = None,
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """(mask share, public delta) of each operand: kept ones as they are, fresh masks drawn
    from this party's generator shared with the dealer (in the order the dealer draws
    them), their deltas opened together in one round; and this party's share of the
    dealer's correlated value of `c_size` (a op b, or a^2): party 0 asks the dealer for
    it, party 1 draws it from its generator, as in CrypTen's TTP provider."""
    from crypten.common.rng import generate_random_ring_element
    from crypten.mpc.provider.ttp_provider import TTPClient

    client = TTPClient.get()
    generator = client.get_generator()
    masks: list[torch.Tensor | None] = []
    for x, key in pairs:
        if is_kept(key):
            kept_shape = tuple(_kept[key].mask.shape)  # type: ignore[index]
            if kept_shape != tuple(x.size()):
                raise ValueError(f"mask key {key!r} was kept for shape {kept_shape}")
            masks.append(None)
            continue
        masks.append(generate_random_ring_element(tuple(x.size()), generator=generator))
    fresh = [i for i, m in enumerate(masks) if m is not None]
    if fresh:
        differences = [pairs[i][0]._tensor.share - masks[i] for i in fresh]
        opened = import_crypten().communicator.get().all_reduce(differences, batched=True)
    else:
        opened = []
    if _rank() == 0:
        correlated = client.ttp_request(request[0], None, *request[1:])
    elif c_size is not None:
        correlated = generate_random_ring_element(tuple(c_size), generator=generator)
    else:
        correlated = torch.empty(0, dtype=torch.long)
    out = []
    deltas = iter(opened)
    for (_, key), mask in zip(pairs, masks, strict=True):
        if mask is None:
            kept = _kept[key]  # type: ignore[index]
            out.append((kept.mask, kept.delta))
            continue
        delta = next(deltas)
        if key is not None:
            _kept[key] = Opened(mask, delta)
        out.append((mask, delta))
    return out, correlated


def _release(keys: tuple[str, ...]) -> None:
    for key in keys:
        _kept.pop(key, None)


def _truncated(z: torch.Tensor, like: Any) -> Any:
    """The product's shares back at the operands' scale (CrypTen's local truncation)."""
    crypten = import_crypten()
    scale = int(like._tensor.encoder.scale)
    result = crypten.mpc.MPCTensor.from_shares(z, precision=scale.bit_length() - 1)
    result._tensor.div_(scale)
    return result


# --- the dealer's side -------------------------------------------------------------------
def masking_dealer_class() -> type:
    """CrypTen's TTPServer with the three requests above. Its masks live as long as the
    session; the plaintext masks are what CrypTen's dealer knows anyway."""
    from crypten.mpc.provider.ttp_provider import TTPServer

    class MaskingDealer(TTPServer):  # type: ignore[misc]
        def __init__(self) -> None:
            self.kept: dict[str, torch.Tensor] = {}
            super().__init__()  # serves requests until "terminate"

        def _mask(self, key: str | None, size: tuple[int, ...]) -> torch.Tensor:
            if key is not None and key in self.kept:
                return self.kept[key]
            mask = self._get_additive_PRSS(size)
            if key is not None:
                self.kept[key] = mask
            return mask

        def _share_for_party_0(self, value: torch.Tensor) -> torch.Tensor:
            return value - self._get_additive_PRSS(value.size(), remove_rank=True)

        def reuse_open(self, sizes: list[tuple[str, tuple[int, ...]]]) -> torch.Tensor:
            for key, size in sizes:
                self._mask(key, size)
            return torch.empty(0, dtype=torch.long)

        def reuse_product(
            self,
            op: str,
            first: tuple[str | None, tuple[int, ...]],
            second: tuple[str | None, tuple[int, ...]],
            release: tuple[str, ...] = (),
        ) -> torch.Tensor:
            a, b = self._mask(*first), self._mask(*second)
            out = self._share_for_party_0(getattr(torch, op)(a, b))
            for key in release:
                self.kept.pop(key, None)
            return out

        def reuse_square(
            self, first: tuple[str | None, tuple[int, ...]], release: tuple[str, ...] = ()
        ) -> torch.Tensor:
            a = self._mask(*first)
            out = self._share_for_party_0(a * a)
            for key in release:
                self.kept.pop(key, None)
            return out

    return MaskingDealer


__all__ = [
    "OPS",
    "available",
    "is_kept",
    "masking_dealer_class",
    "new_key",
    "open_all",
    "product",
    "reset",
    "square",
]
