"""Values on the `mpc` backend: secret (CrypTen shares) or public, and their conversions.

A value is secret when it is a CrypTen `CrypTensor` (arithmetic shares held by the model
owner and the data owner) or a `OneHot` (the data owner's token ids as shares of one-hot
rows); anything else (torch tensors, numbers, shapes) is public: both parties know it.

Public sentinels (torch.finfo.min in attention masks, |v| >= SENTINEL) become
-MASK_LIMIT (-200) before they meet shares (`secinfer.core.masks`): the fixed-point ring
(16 fractional bits in 64 bits) holds about +-1.4e14, and exp(-200) is 0 on its grid.
CrypTen is imported only when a value is inspected, so the registry knows the backend's
coverage without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from secinfer.core.masks import MASK_LIMIT, SENTINEL

_CRYPTENSOR: list[type] = []


@dataclass
class OneHot:
    """The data owner's token ids as shares of their one-hot rows, shape (..., vocab).

    An embedding lookup is then one product with the (secret) table: the ids never leave
    the data owner, at the cost of a (tokens x vocab) by (vocab x hidden) Beaver matmul.
    Shape ops act on the leading dimensions.
    """

    shares: Any

    @property
    def vocab(self) -> int:
        return int(self.shares.size()[-1])

    def dim(self) -> int:
        return self.shares.dim() - 1

    def size(self) -> torch.Size:
        return self.shares.size()[:-1]

    def with_shape(self, shape: list[int]) -> OneHot:
        return OneHot(self.shares.reshape([*shape, self.vocab]))


MASK_KEY = "_secinfer_mask_key"
"""Attribute naming the `protocols.mpc.reuse` key of a secret whose Beaver mask is kept
(the model owner's weights: opened once per model, see `secinfer.backends.mpc.kernels.weights`)."""


def keep_mask(value: Any, key: str) -> Any:
    """Mark a secret so that products open it once under `key` and reuse the mask."""
    setattr(value, MASK_KEY, key)
    return value


def mask_key(value: Any) -> str | None:
    return getattr(value, MASK_KEY, None)


def _cryptensor_type() -> type:
    if not _CRYPTENSOR:
        from protocols.mpc.crypten_setup import import_crypten

        _CRYPTENSOR.append(import_crypten().CrypTensor)
    return _CRYPTENSOR[0]


def is_secret(value: Any) -> bool:
    return isinstance(value, _cryptensor_type())


def _any_secret(values: Any) -> bool:
    if isinstance(values, list | tuple):
        return any(_any_secret(v) for v in values)
    if isinstance(values, dict):
        return any(_any_secret(v) for v in values.values())
    return isinstance(values, OneHot) or is_secret(values)


def _public(value: Any) -> Any:
    """Public booleans as 0/1 floats, so that they can meet shares."""
    if isinstance(value, torch.Tensor) and value.dtype == torch.bool:
        return value.float()
    return value


def _crypten() -> Any:
    from protocols.mpc.crypten_setup import import_crypten

    return import_crypten()


def share_public(value: Any, like: Any = None) -> Any:
    """A public tensor as shares (both parties know it: the model owner holds it all)."""
    if is_secret(value):
        return value
    tensor = torch.as_tensor(value, dtype=torch.float32)
    if like is not None:
        tensor = tensor.expand(like.size()).contiguous() if tensor.dim() == 0 else tensor
    return _crypten().cryptensor(tensor, src=0)


def _clamped(value: Any) -> Any:
    """Sentinel values (|v| >= SENTINEL, infinities) as -+MASK_LIMIT; others unchanged."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        huge = value.abs() >= SENTINEL
        return torch.where(huge, value.sign() * MASK_LIMIT, value) if huge.any() else value
    if isinstance(value, float) and abs(value) >= SENTINEL:
        return math.copysign(MASK_LIMIT, value)
    return value


def one_hot_shape(name: str, ids: OneHot, args: tuple[Any, ...]) -> OneHot | int:
    """view/reshape/unsqueeze/copies and sizes of secret token ids (leading dimensions)."""
    if name == "aten.sym_size":
        return int(ids.size()[args[0]])
    if name in ("aten.view", "aten._unsafe_view", "aten.reshape"):
        shape = list(args[0])
        if -1 in shape:
            known = math.prod(s for s in shape if s != -1)
            shape[shape.index(-1)] = math.prod(ids.size()) // known
        return ids.with_shape(shape)
    if name == "aten.unsqueeze":
        d = args[0] if args[0] >= 0 else args[0] + ids.dim() + 1
        return OneHot(ids.shares.unsqueeze(d))
    if name in ("aten.clone", "aten.alias", "aten.detach", "aten._to_copy", "aten.contiguous"):
        return ids
    raise NotImplementedError(f"{name} on secret token ids has no mpc kernel")


def plain_containers(value: Any) -> Any:
    """torch.fx's immutable lists and dicts as plain ones: CrypTen sends some arguments (sizes,
    strides) to the dealer, whose restricted unpickler accepts only builtin containers."""
    if isinstance(value, list):
        return [plain_containers(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain_containers(v) for v in value)
    if isinstance(value, dict):
        return {k: plain_containers(v) for k, v in value.items()}
    return value


__all__ = [
    "MASK_KEY",
    "MASK_LIMIT",
    "SENTINEL",
    "OneHot",
    "is_secret",
    "keep_mask",
    "mask_key",
    "one_hot_shape",
    "plain_containers",
    "share_public",
]
