"""A convolution of the client's image as a linear layer: the client sends it unfolded.

The client owns the pixels, so it can encrypt its image (B, C, H, W) already cut into
the patches a convolution reads (im2col): entry (b, i, j, f) of the unfolded tensor
(B, Ho, Wo, C kh kw) is pixel (c, i s_h - p_h + u d_h, j s_w - p_w + v d_w) of image b,
f = (c, u, v) in C order (zero where the padding reaches outside the image). Then

    conv(x, W, bias)[b, o, i, j] = sum_f W[o, f] patches[b, i, j, f] + bias[o],

one linear layer (W reshaped to (D, C kh kw); groups make it block diagonal): d_in d_out
plain-scalar products, 1 level, no rotation. With stride = kernel (ViT's patch embedding)
every pixel is sent once; overlapping kernels send a pixel once per patch that reads it.

Layout of the unfolded tensor (`PatchConv.layout`): the patches in slots, row-major
(Wo stride 1, Ho stride Wo, so that the model's flatten of (Ho, Wo) into tokens is a
view: the layout is meant for the convolution and that flatten, since Wo's padding
reaches the next row when Wo is not a power of two), one token of room in front of each
image's tokens (offset 1: a class token concatenated in front lands there without moving
a slot), images P = 2 next_power_of_two(Ho Wo) slots apart (room for the tokens' padding
and for the class token); the C kh kw features are ciphertexts.

An image input is unfolded only when every use of it (through copies and casts) is a 2-d
convolution of one geometry (`image_inputs`); the server then seeds the run with a
`PatchImage`, which only such a convolution reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from protocols.he.layout import Layout, LayoutError, next_power_of_two
from protocols.he.tensor import HeTensor
from secinfer.core.graph import Graph, op_name
from secinfer.errors import UserError

CONVOLUTIONS = frozenset({"aten.convolution", "aten.conv2d"})
PASS_THROUGH = frozenset(
    {
        "aten.clone",
        "aten._to_copy",
        "aten.to",
        "aten.contiguous",
        "aten.alias",
        "aten.detach",
        "aten.lift_fresh_copy",
        "aten.dropout",
    }
)
"""Ops that hand an image on unchanged (under he: float casts and copies)."""
SHAPE_ONLY = frozenset({"aten.sym_size", "aten._assert_tensor_metadata"})


@dataclass(frozen=True)
class PatchConv:
    """The geometry of a 2-d convolution: kernel, stride, padding, dilation (h, w)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @classmethod
    def of_call(cls, op: str, args: tuple[Any, ...], weight_shape: tuple[int, ...]) -> PatchConv:
        """From an `aten.convolution` or `aten.conv2d` call's arguments; ValueError for a
        transposed, string-padded or non-2-d convolution."""
        if len(weight_shape) != 4:
            raise ValueError(f"a {len(weight_shape) - 2}-d convolution (only 2-d is unfolded)")
        defaults = [None, None, None, [1, 1], [0, 0], [1, 1]]
        values = [*args, *defaults[len(args) :]] if len(args) < 6 else list(args)
        stride, padding, dilation = values[3], values[4], values[5]
        if op == "aten.convolution" and len(values) > 6 and values[6]:
            raise ValueError("a transposed convolution")
        if isinstance(padding, str):
            raise ValueError(f"padding={padding!r} (give the padding in pixels)")

        def pair(value: Any) -> tuple[int, int]:
            items = [int(v) for v in (value if isinstance(value, list | tuple) else [value])]
            return (items[0], items[-1])

        return cls(
            (int(weight_shape[2]), int(weight_shape[3])),
            pair(stride),
            pair(padding),
            pair(dilation),
        )

    def to_dict(self) -> dict[str, list[int]]:
        return {k: list(getattr(self, k)) for k in ("kernel", "stride", "padding", "dilation")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PatchConv:
        keys = {"kernel", "stride", "padding", "dilation"}
        if not isinstance(data, dict) or set(data) != keys:
            raise ValueError(f"patches: expected keys {sorted(keys)}")
        return cls(
            *(tuple(int(v) for v in data[k]) for k in ("kernel", "stride", "padding", "dilation"))
        )  # type: ignore[arg-type]

    def out_size(self, height: int, width: int) -> tuple[int, int]:
        sizes = []
        for n, k, s, p, d in zip(
            (height, width), self.kernel, self.stride, self.padding, self.dilation, strict=True
        ):
            sizes.append((n + 2 * p - d * (k - 1) - 1) // s + 1)
        return sizes[0], sizes[1]

    def unfolded_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        batch, channels, height, width = (int(n) for n in image_shape)
        out_h, out_w = self.out_size(height, width)
        return batch, out_h, out_w, channels * self.kernel[0] * self.kernel[1]

    def unfold(self, image: torch.Tensor | np.ndarray) -> np.ndarray:
        """The client's unfolding (module docstring): (B, C, H, W) -> (B, Ho, Wo, C kh kw)."""
        x = torch.as_tensor(np.asarray(image, dtype=np.float64))
        columns = torch.nn.functional.unfold(
            x, self.kernel, dilation=self.dilation, padding=self.padding, stride=self.stride
        )
        shape = self.unfolded_shape(tuple(x.shape))
        return columns.transpose(1, 2).reshape(shape).numpy()

    def layout(self, image_shape: tuple[int, ...]) -> Layout:
        """The unfolded tensor's layout (module docstring)."""
        batch, out_h, out_w, features = self.unfolded_shape(image_shape)
        per_image = 2 * next_power_of_two(out_h * out_w)
        return Layout((batch, out_h, out_w, features), (per_image, out_w, 1, None), 1)


def image_inputs(graph: Graph) -> dict[str, PatchConv]:
    """Float user inputs read only by 2-d convolutions of one geometry (through copies and
    casts; shape queries allowed), with that geometry: what the client sends unfolded."""
    placeholders = {n.name: n for n in graph.fx_graph.nodes if n.op == "placeholder"}
    found: dict[str, PatchConv] = {}
    for name in graph.user_inputs:
        val = placeholders[name].meta.get("val")
        if val is None or not val.dtype.is_floating_point or val.dim() != 4:
            continue
        geometries = _reading_convolutions(placeholders[name])
        if geometries and len(set(geometries)) == 1:
            found[name] = geometries[0]
    return found


def _reading_convolutions(node: torch.fx.Node) -> list[PatchConv] | None:
    """The geometries of the convolutions that read `node` as their input, or None when
    something else reads it."""
    found: list[PatchConv] = []
    for user in node.users:
        op = op_name(user.target) if user.op == "call_function" else user.op
        if op in SHAPE_ONLY:
            continue
        if op in PASS_THROUGH and user.args and user.args[0] is node:
            inner = _reading_convolutions(user)
            if inner is None:
                return None
            found += inner
            continue
        if op in CONVOLUTIONS and user.args[0] is node and node not in user.args[1:]:
            weight = user.args[1].meta["val"].shape
            try:
                found.append(PatchConv.of_call(op, tuple(user.args), tuple(weight)))
            except ValueError:
                return None
            continue
        return None
    return found


class PatchImage:
    """The client's image (B, C, H, W) as the server holds it: `patches`, the encrypted
    unfolded tensor (B, Ho, Wo, C kh kw) in `PatchConv.layout`, for the convolution of
    geometry `conv`. Its shape is the image's; anything but that convolution (and copies,
    casts, shape queries) reading it is refused with `LayoutError`."""

    __array_ufunc__ = None

    def __init__(self, patches: HeTensor, image_shape: tuple[int, ...], conv: PatchConv) -> None:
        expected = conv.unfolded_shape(image_shape)
        if tuple(patches.shape) != expected:
            raise ValueError(f"patches of shape {tuple(patches.shape)}, expected {expected}")
        self.patches = patches
        self.image_shape = tuple(int(n) for n in image_shape)
        self.conv = conv

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.image_shape)

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return len(self.image_shape)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("patches", "image_shape", "conv"):
            raise AttributeError(name)
        raise LayoutError(
            f"the image {self.image_shape} was sent unfolded into the patches of its "
            f"convolution (kernel {self.conv.kernel}, stride {self.conv.stride}), which only "
            f"that convolution reads (asked for {name!r})"
        )

    def __repr__(self) -> str:
        return f"PatchImage(shape={self.image_shape}, patches={self.patches!r})"


def convolution_weight(weight: torch.Tensor, channels: int, groups: int) -> np.ndarray:
    """The conv weight (D, C / groups, kh, kw) as the linear layer's (D, C kh kw): block
    diagonal over the groups (zero weights cost no product)."""
    w = np.asarray(weight.detach().double().numpy() if isinstance(weight, torch.Tensor) else weight)
    out_channels, per_group, kh, kw = w.shape
    if per_group * groups != channels or out_channels % groups:
        raise ValueError(f"weight {w.shape} with {groups} groups for {channels} channels")
    full = np.zeros((out_channels, channels, kh, kw))
    outs = out_channels // groups
    for g in range(groups):
        full[g * outs : (g + 1) * outs, g * per_group : (g + 1) * per_group] = w[
            g * outs : (g + 1) * outs
        ]
    return full.reshape(out_channels, channels * kh * kw)


def check_room(spec_name: str, image_shape: tuple[int, ...], conv: PatchConv, slots: int) -> None:
    """UserError when the unfolded image does not fit a ciphertext's slots."""
    span = conv.layout(image_shape).span()
    if span > slots:
        batch = image_shape[0]
        raise UserError(
            f"input {spec_name} of shape {tuple(image_shape)} unfolds into {span} slots "
            f"per ciphertext ({batch} images of {math.ceil(span / max(batch, 1))} slots), "
            f"a ciphertext has {slots}: send fewer images per query"
        )


__all__ = [
    "CONVOLUTIONS",
    "PatchConv",
    "PatchImage",
    "check_room",
    "convolution_weight",
    "image_inputs",
]
