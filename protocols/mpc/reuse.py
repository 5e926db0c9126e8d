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
keeps the masks of the session's keys in memory (`protocols.mpc.dealer.Dealer`, asked over
the dealer link's JSON requests: `reuse_products`).

Where it is used: model weights (opened once per session, before the input exists;
every query's products with them open only the activations), LayerNorm's centred input
(one opening for its square and for its product with the row scale), polynomial terms
(`polynomial.powers` / `chebyshev_terms`: each term opened once over all levels) and
sign_exp GELU's |x| (for |x|^2 and |x| e). `products` batches several products into one
round.

Needs the dealer (provider "dealer"); with CrypTen's trusted-first-party provider
`available()` is False, and `product` and `square` are CrypTen's own products (keys are
then ignored); `products` and `open_all` need the dealer.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch

from protocols.mpc import dealer
from protocols.mpc.crypten_setup import communicator, import_crypten

OPS = tuple(dealer.REUSE_OPS)


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
    """Forget every kept mask: only when the session ends (`runtime.stop_party`), as the
    dealer's kept masks end with its own process; forgetting them mid-session would make
    the parties draw fresh masks where the dealer reuses old ones."""
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
        _exchange([_Operand(x, key) for x, key in items], [])


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
    and the dealer drop them). Fixed point: one truncation, as CrypTen's product. Without
    the dealer (`available()` False) this is CrypTen's own product and keys are ignored."""
    if not available():
        return x * y if op == "mul" else x.matmul(y)
    return products([(x, y, x_key, y_key)], op, release=release)[0]


def square(x: Any, *, key: str | None = None, release: tuple[str, ...] = ()) -> Any:
    """x * x keeping x's mask under `key` (nothing opened when it is already kept); without
    the dealer, CrypTen's own square."""
    if not available():
        return x.square()
    if key is None:
        key = new_key("square")
        release = (*release, key)
    return products([(x, x, key, key)], release=release)[0]


def products(
    items: list[tuple[Any, Any, str | None, str | None]],
    op: str = "mul",
    *,
    release: tuple[str, ...] = (),
) -> list[Any]:
    """[x_i op y_i] for items (x_i, y_i, x_key_i, y_key_i), all in ONE round: each
    operand not yet kept is opened once, a key met twice in the batch (x * x, or T_h
    times several T_j) is opened once and its mask shared, so x * x with one key is a
    square (the dealer's c = a a). Keys named in `release` are dropped afterwards."""
    if op not in OPS:
        raise ValueError(f"op={op!r}: one of {OPS}")
    operands: list[_Operand] = []
    pairs: list[tuple[int, int]] = []
    index: dict[str, int] = {}
    for x, y, x_key, y_key in items:
        slots = []
        for value, key in ((x, x_key), (y, y_key)):
            if key is not None and key in index:
                slots.append(index[key])
                continue
            if key is not None:
                index[key] = len(operands)
            slots.append(len(operands))
            operands.append(_Operand(value, key))
        pairs.append((slots[0], slots[1]))
    f = dealer.REUSE_OPS[op]
    sizes = [
        tuple(f(*(torch.empty(operands[i].size, device="meta") for i in pair)).shape)
        for pair in pairs
    ]
    opened, correlated = _exchange(operands, [(op, i, j) for i, j in pairs], sizes, release)
    out = []
    for (i, j), c in zip(pairs, correlated, strict=True):
        (a, dx), (b, dy) = opened[i], opened[j]
        z = c + f(dx, b) + f(a, dy)
        if _rank() == 0:
            z = z + f(dx, dy)
        out.append(_truncated(z, operands[i].value))
    _release(release)
    return out


# --- the steps ---------------------------------------------------------------------------
@dataclass
class _Operand:
    value: Any
    key: str | None

    @property
    def size(self) -> tuple[int, ...]:
        return tuple(self.value.size())


def _rank() -> int:
    return communicator().get_rank()


def _exchange(
    operands: list[_Operand],
    products: list[tuple[str, int, int]],
    sizes: list[tuple[int, ...]] | None = None,
    release: tuple[str, ...] = (),
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[torch.Tensor]]:
    """(mask share, public delta) of each operand, and this party's share of the dealer's
    c = a op b for each (op, i, j) of `products` (of the given sizes).

    Kept operands come as they are; fresh masks are drawn from this party's generator
    shared with the dealer, in operand order (the dealer draws in the same order), and
    their deltas opened together in one round. Party 0 asks the dealer for its c shares
    (one flat tensor); party 1 draws its own from the generator after the masks, as in
    CrypTen's TTP provider. Keyed fresh operands are kept afterwards."""
    from crypten.common.rng import generate_random_ring_element

    generator = dealer.party_generator()
    masks: list[torch.Tensor | None] = []
    for operand in operands:
        if is_kept(operand.key):
            kept_shape = tuple(_kept[operand.key].mask.shape)  # type: ignore[index]
            if kept_shape != operand.size:
                raise ValueError(f"mask key {operand.key!r} was kept for shape {kept_shape}")
            masks.append(None)
        else:
            masks.append(generate_random_ring_element(operand.size, generator=generator))
    fresh = [i for i, m in enumerate(masks) if m is not None]
    opened: list[torch.Tensor] = []
    if fresh:
        differences = [operands[i].value._tensor.share - masks[i] for i in fresh]
        opened = communicator().all_reduce(differences, batched=True)
    sizes = sizes or []
    if _rank() == 0:
        spec = [(o.key, o.size) for o in operands]
        flat = dealer.client().reuse_products(spec, products, release)
        pieces = torch.split(flat, [math.prod(size) for size in sizes]) if sizes else []
        correlated = [c.reshape(size) for c, size in zip(pieces, sizes, strict=True)]
    else:
        correlated = [generate_random_ring_element(size, generator=generator) for size in sizes]
    out = []
    deltas = iter(opened)
    for operand, mask in zip(operands, masks, strict=True):
        if mask is None:
            kept = _kept[operand.key]  # type: ignore[index]
            out.append((kept.mask, kept.delta))
            continue
        delta = next(deltas)
        if operand.key is not None:
            _kept[operand.key] = Opened(mask, delta)
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


__all__ = [
    "OPS",
    "available",
    "is_kept",
    "new_key",
    "open_all",
    "product",
    "products",
    "reset",
    "square",
]
