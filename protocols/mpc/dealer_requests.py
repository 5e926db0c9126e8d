"""The dealer link's messages: the allow-list, the JSON header codec and the checks.

Requests (the model owner, rank 0 -> the dealer), every field required, no other allowed:

    {"version": 1, "function": "additive", "op": OP, "sizes": [S0, S1], "options": {..}}
    {"version": 1, "function": "square" | "wraps" | "B2A", "size": S}
    {"version": 1, "function": "binary", "sizes": [S0, S1]}
    {"version": 1, "function": "reuse_products", "operands": [[KEY|null, S], ..],
     "products": [[OP, i, j], ..], "release": [KEY, ..]}
    {"version": 1, "function": "fss_sign", "size": S, "bits": N, "selects": K}
    {"version": 1, "function": "terminate", "outcome": "ok" | "failed"}

OP is a name of `ADDITIVE_OPS` (`REUSE_OPS` in products), options are those `OPTIONS`
lists for the op, a shape S is a list of at most MAX_DIMS ints in 0..MAX_ELEMENTS with at
most MAX_ELEMENTS elements, a KEY a string of 1..MAX_KEY_CHARS characters; lists hold at
most MAX_ITEMS items, and the result of every product must fit MAX_ELEMENTS too. fss_sign
asks for the keys of comparisons of S's elements on N-bit differences (2 <= N <= 64) with K
selects (0 <= K <= MAX_SELECTS) against the same mask (`protocols.mpc.fss.dealing`); its
reply, party 0's payload, must fit MAX_ELEMENTS words.

Replies (dealer -> rank 0): {"version": 1, "tensor": {"dtype": "int64", "shape": S}}
(followed by the tensor's raw bytes, see `protocols.mpc.dealer`), or
{"version": 1, "refused": REASON} before the dealer stops.

Guarantees: `decode_header` is `json` only (no pickle, no eval; duplicate keys, NaN and
Infinity refused, length bounded, nesting bounded); `parse_request` accepts exactly the
forms above and otherwise raises `RequestRefused`, one line naming the field. Op names
map to functions through the tables here; nothing is looked up by a received name.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from protocols.mpc.fss.dealing import payload_words

VERSION = 1
MAX_HEADER_BYTES = 1 << 20
MAX_DIMS = 8
MAX_ELEMENTS = 1 << 28  # 2 GiB of int64, per tensor and per reply
MAX_ITEMS = 4096  # operands, products or released keys in one request
MAX_KEY_CHARS = 512
MAX_OPTION = 1 << 16
MAX_REASON_CHARS = 400
MAX_SELECTS = 8  # selects against one comparison mask, in one fss_sign request

ADDITIVE_OPS: dict[str, Callable[..., torch.Tensor]] = {
    "mul": torch.mul,
    "matmul": torch.matmul,
    "conv1d": torch.conv1d,
    "conv2d": torch.conv2d,
    "conv_transpose1d": torch.conv_transpose1d,
    "conv_transpose2d": torch.conv_transpose2d,
}
"""The ops of CrypTen's Beaver protocol, each to the torch function the dealer applies."""

REUSE_OPS: dict[str, Callable[..., torch.Tensor]] = {"mul": torch.mul, "matmul": torch.matmul}

_CONV = ("stride", "padding", "dilation", "groups")
OPTIONS: dict[str, tuple[str, ...]] = {
    "mul": (),
    "matmul": (),
    "conv1d": _CONV,
    "conv2d": _CONV,
    "conv_transpose1d": (*_CONV, "output_padding"),
    "conv_transpose2d": (*_CONV, "output_padding"),
}
"""Keyword options each op accepts (ints, or lists of 1 to 3 ints, in 0..MAX_OPTION)."""

FIELDS: dict[str, tuple[str, ...]] = {
    "additive": ("op", "sizes", "options"),
    "square": ("size",),
    "wraps": ("size",),
    "B2A": ("size",),
    "binary": ("sizes",),
    "reuse_products": ("operands", "products", "release"),
    "fss_sign": ("size", "bits", "selects"),
    "terminate": ("outcome",),
}
"""The dealer's allow-list: each function and the fields its request carries."""

OUTCOMES = ("ok", "failed")


class DealerError(Exception):
    """The dealer link failed: a refused request or reply, or a run the model owner
    reports as failed. The message is one line."""


class RequestRefused(DealerError):
    """A header that is not in the allow-list; the message names the field."""


Shape = tuple[int, ...]


@dataclass(frozen=True)
class Request:
    """One checked request (only the fields of its function are meaningful)."""

    function: str
    op: str = ""
    sizes: tuple[Shape, ...] = ()
    options: dict[str, int | list[int]] = field(default_factory=dict)
    operands: tuple[tuple[str | None, Shape], ...] = ()
    products: tuple[tuple[str, int, int], ...] = ()
    release: tuple[str, ...] = ()
    outcome: str = "ok"
    bits: int = 0
    selects: int = 0

    def to_header(self) -> dict[str, Any]:
        """The JSON header of this request (the form `parse_request` reads back)."""
        header: dict[str, Any] = {"version": VERSION, "function": self.function}
        if self.function == "additive":
            header.update(op=self.op, sizes=[list(s) for s in self.sizes], options=self.options)
        elif self.function in ("square", "wraps", "B2A"):
            header["size"] = list(self.sizes[0])
        elif self.function == "binary":
            header["sizes"] = [list(s) for s in self.sizes]
        elif self.function == "reuse_products":
            header["operands"] = [[key, list(size)] for key, size in self.operands]
            header["products"] = [list(p) for p in self.products]
            header["release"] = list(self.release)
        elif self.function == "fss_sign":
            header.update(size=list(self.sizes[0]), bits=self.bits, selects=self.selects)
        elif self.function == "terminate":
            header["outcome"] = self.outcome
        return header


# --- the header codec --------------------------------------------------------------------
def show(value: Any) -> str:
    """A peer-supplied value for a one-line message: its repr, at most 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def refused(where: str, problem: str) -> RequestRefused:
    """The refusal naming the field `where`."""
    return RequestRefused(f"field {where}: {problem}")


def encode_header(header: dict[str, Any]) -> bytes:
    """The header as compact UTF-8 JSON (NaN and Infinity refused)."""
    data = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if not 1 <= len(data) <= MAX_HEADER_BYTES:
        raise refused("header", f"{len(data)} bytes, at most {MAX_HEADER_BYTES}")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise refused(show(key), "appears twice")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise refused("header", f"{name} is not a number JSON allows")


def decode_header(data: bytes) -> dict[str, Any]:
    """A JSON object from `data`, or `RequestRefused` (not UTF-8, not JSON, not an object,
    duplicate keys, NaN/Infinity, too long or too deeply nested)."""
    if not 1 <= len(data) <= MAX_HEADER_BYTES:
        raise refused("header", f"{len(data)} bytes, at most {MAX_HEADER_BYTES}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise refused(
            "header", "not UTF-8 (a JSON object is expected; pickle is refused)"
        ) from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError:
        raise refused("header", "nested too deeply") from None
    except ValueError as exc:  # json's own errors; the hooks raise RequestRefused
        raise refused("header", f"not JSON ({str(exc)[:80]})") from None
    if not isinstance(value, dict):
        raise refused("header", f"a JSON {type(value).__name__}, expected an object")
    return value


# --- checks ------------------------------------------------------------------------------
def _int(value: Any, where: str, low: int, high: int) -> int:
    if type(value) is not int:
        raise refused(where, f"{show(value)} is not an integer")
    if not low <= value <= high:
        raise refused(where, f"{value} is outside {low}..{high}")
    return value


def _list(value: Any, where: str, most: int) -> list[Any]:
    if not isinstance(value, list):
        raise refused(where, f"{show(value)} is not a list")
    if len(value) > most:
        raise refused(where, f"{len(value)} items, at most {most}")
    return value


def _shape(value: Any, where: str) -> Shape:
    dims = tuple(
        _int(d, f"{where}[{i}]", 0, MAX_ELEMENTS)
        for i, d in enumerate(_list(value, where, MAX_DIMS))
    )
    if math.prod(dims) > MAX_ELEMENTS:
        raise refused(where, f"{math.prod(dims)} elements, at most {MAX_ELEMENTS}")
    return dims


def _key(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise refused(where, f"{show(value)} is not a string")
    if not 1 <= len(value) <= MAX_KEY_CHARS:
        raise refused(where, f"{len(value)} characters, 1..{MAX_KEY_CHARS} allowed")
    return value


def _name(value: Any, where: str, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise refused(where, f"{show(value)} is not one of {', '.join(allowed)}")
    return value


def _options(value: Any, op: str) -> dict[str, int | list[int]]:
    if not isinstance(value, dict):
        raise refused("options", f"{show(value)} is not an object")
    out: dict[str, int | list[int]] = {}
    for name, option in value.items():
        if name not in OPTIONS[op]:
            allowed = ", ".join(OPTIONS[op]) or "none"
            raise refused("options", f"{show(name)} is not an option of {op} ({allowed})")
        where = f"options.{name}"
        low = 1 if name in ("stride", "dilation", "groups") else 0
        if isinstance(option, list):
            if not 1 <= len(option) <= 3:
                raise refused(where, f"{len(option)} values, 1 to 3 allowed")
            out[name] = [_int(v, f"{where}[{i}]", low, MAX_OPTION) for i, v in enumerate(option)]
        else:
            out[name] = _int(option, where, low, MAX_OPTION)
    return out


def output_shape(
    op: str, x: Shape, y: Shape, options: dict[str, int | list[int]] | None = None
) -> Shape:
    """The shape of `op(x, y, **options)` (an op of `ADDITIVE_OPS`), found on shapes only
    (no data); `RequestRefused` when the shapes do not fit or the result is too large."""
    f = ADDITIVE_OPS[op]
    meta = [torch.empty(s, dtype=torch.long, device="meta") for s in (x, y)]
    try:
        shape = tuple(f(*meta, **(options or {})).shape)
    except (RuntimeError, ValueError, TypeError, IndexError, NotImplementedError) as exc:
        first = str(exc).strip().splitlines()[0][:100] if str(exc).strip() else type(exc).__name__
        raise refused("sizes", f"{list(x)} and {list(y)} do not fit {op} ({first})") from None
    if math.prod(shape) > MAX_ELEMENTS:
        raise refused("sizes", f"{op} gives {math.prod(shape)} elements, at most {MAX_ELEMENTS}")
    return shape


def _broadcast(x: Shape, y: Shape) -> Shape:
    try:
        shape = tuple(torch.broadcast_shapes(x, y))
    except RuntimeError:
        raise refused("sizes", f"{list(x)} and {list(y)} do not broadcast") from None
    if math.prod(shape) > MAX_ELEMENTS:
        raise refused("sizes", f"{math.prod(shape)} elements, at most {MAX_ELEMENTS}")
    return shape


def parse_request(header: dict[str, Any]) -> Request:
    """A checked `Request` from a decoded header, or `RequestRefused` naming the field."""
    if "function" not in header:
        raise refused("function", "missing")
    function = _name(header["function"], "function", FIELDS)
    expected = {"version", "function", *FIELDS[function]}
    for name in header:
        if name not in expected:
            raise refused(show(name), f"not a field of {function}")
    for name in sorted(expected):
        if name not in header:
            raise refused(name, "missing")
    if type(header["version"]) is not int or header["version"] != VERSION:
        raise refused("version", f"{show(header['version'])}, this dealer speaks {VERSION}")
    if function == "terminate":
        return Request(function, outcome=_name(header["outcome"], "outcome", OUTCOMES))
    if function in ("square", "wraps", "B2A"):
        return Request(function, sizes=(_shape(header["size"], "size"),))
    if function == "fss_sign":
        size = _shape(header["size"], "size")
        bits = _int(header["bits"], "bits", 2, 64)
        selects = _int(header["selects"], "selects", 0, MAX_SELECTS)
        request = Request(function, sizes=(size,), bits=bits, selects=selects)
        if reply_shape(request)[0] > MAX_ELEMENTS:
            raise refused(
                "size", f"keys for {math.prod(size)} comparisons exceed {MAX_ELEMENTS} words"
            )
        return request
    if function in ("additive", "binary"):
        sizes = _list(header["sizes"], "sizes", 2)
        if len(sizes) != 2:
            raise refused("sizes", f"{len(sizes)} shapes, expected 2")
        pair = (_shape(sizes[0], "sizes[0]"), _shape(sizes[1], "sizes[1]"))
        if function == "binary":
            _broadcast(*pair)
            return Request(function, sizes=pair)
        op = _name(header["op"], "op", ADDITIVE_OPS)
        options = _options(header["options"], op)
        output_shape(op, *pair, options)
        return Request(function, op=op, sizes=pair, options=options)
    return _parse_reuse(header)


def _parse_reuse(header: dict[str, Any]) -> Request:
    operands: list[tuple[str | None, Shape]] = []
    for i, item in enumerate(_list(header["operands"], "operands", MAX_ITEMS)):
        where = f"operands[{i}]"
        if not isinstance(item, list) or len(item) != 2:
            raise refused(where, f"{show(item)} is not [key, shape]")
        key = None if item[0] is None else _key(item[0], f"{where}[0]")
        operands.append((key, _shape(item[1], f"{where}[1]")))
    products: list[tuple[str, int, int]] = []
    total = 0
    for k, item in enumerate(_list(header["products"], "products", MAX_ITEMS)):
        where = f"products[{k}]"
        if not isinstance(item, list) or len(item) != 3:
            raise refused(where, f"{show(item)} is not [op, i, j]")
        op = _name(item[0], f"{where}[0]", REUSE_OPS)
        i = _int(item[1], f"{where}[1]", 0, len(operands) - 1)
        j = _int(item[2], f"{where}[2]", 0, len(operands) - 1)
        total += math.prod(output_shape(op, operands[i][1], operands[j][1]))
        products.append((op, i, j))
    if total > MAX_ELEMENTS:
        raise refused("products", f"{total} elements together, at most {MAX_ELEMENTS}")
    release = tuple(
        _key(key, f"release[{i}]")
        for i, key in enumerate(_list(header["release"], "release", MAX_ITEMS))
    )
    return Request(
        "reuse_products", operands=tuple(operands), products=tuple(products), release=release
    )


def reply_shape(request: Request) -> Shape:
    """The shape of the tensor the dealer answers `request` with."""
    if request.function == "additive":
        return output_shape(request.op, *request.sizes, request.options)
    if request.function == "binary":
        return _broadcast(*request.sizes)
    if request.function == "fss_sign":
        count = math.prod(request.sizes[0])
        return (payload_words(count, request.bits, request.selects),)
    if request.function == "reuse_products":
        return (
            sum(
                math.prod(output_shape(op, request.operands[i][1], request.operands[j][1]))
                for op, i, j in request.products
            ),
        )
    return request.sizes[0]


def parse_reply(header: dict[str, Any], expected: Shape) -> Shape:
    """Check a reply header on rank 0: an int64 tensor of exactly the shape asked for.
    A `refused` reply becomes a `DealerError` carrying the dealer's (bounded) reason."""
    if set(header) == {"version", "refused"} and isinstance(header["refused"], str):
        reason = header["refused"][:MAX_REASON_CHARS]
        raise DealerError(f"the dealer refused the request: {show(reason)}")
    if set(header) != {"version", "tensor"} or header["version"] != VERSION:
        raise DealerError(f"the dealer's reply has fields {show(sorted(header))}")
    tensor = header["tensor"]
    if not isinstance(tensor, dict) or set(tensor) != {"dtype", "shape"}:
        raise DealerError(f"the dealer's reply field tensor is {show(tensor)}")
    if tensor["dtype"] != "int64":
        raise DealerError(f"the dealer's reply has dtype {show(tensor['dtype'])}, not int64")
    try:
        shape = _shape(tensor["shape"], "tensor.shape")
    except RequestRefused as exc:
        raise DealerError(f"the dealer's reply: {exc}") from None
    if shape != tuple(expected):
        raise DealerError(f"the dealer's reply has shape {list(shape)}, asked {list(expected)}")
    return shape


__all__ = [
    "ADDITIVE_OPS",
    "FIELDS",
    "MAX_DIMS",
    "MAX_ELEMENTS",
    "MAX_HEADER_BYTES",
    "MAX_ITEMS",
    "MAX_KEY_CHARS",
    "OPTIONS",
    "REUSE_OPS",
    "VERSION",
    "DealerError",
    "Request",
    "RequestRefused",
    "decode_header",
    "encode_header",
    "output_shape",
    "parse_reply",
    "parse_request",
    "refused",
    "reply_shape",
    "show",
]
