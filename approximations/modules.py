"""`torch.nn` modules that replace GELU, softmax and LayerNorm with MPC/HE-friendly forms.

They are ordinary modules: autograd flows through them, they train, and they keep working
with `torch.export` (no data-dependent Python control flow). `approximations.convert`
swaps them into existing models.
"""

from __future__ import annotations

import torch
from torch import nn

from approximations import functions


class PolyGELU(nn.Module):
    """GELU replaced by a named approximation.

    `method` is any name accepted by `approximations.gelu`. The default, "puma_refit", is
    PUMA's piecewise form (breakpoints -4, -1.95, 3; degrees 3 and 6) with Remez
    coefficients: max error 0.0075 against 0.0199 for the published ones, at the same
    secure cost. It needs comparisons (MPC); for HE use a pure polynomial ("minimax",
    "quad").
    """

    def __init__(self, method: str = "puma_refit") -> None:
        super().__init__()
        functions.prepare_gelu(method)  # fit now: never inside a torch.export trace
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functions.gelu(x, method=self.method)

    def extra_repr(self) -> str:
        return f"method={self.method!r}"


class PowerSoftmax(nn.Module):
    """Power-softmax (Zimerman et al. 2024): weights x_j^p / normaliser, p a positive even integer.

    forward(x, mask=None): `mask` is multiplicative (1 keeps a position, 0 drops it) and
    broadcastable to x. See `approximations.power_softmax` for the math and options.
    """

    def __init__(
        self,
        p: int = 4,
        dim: int = -1,
        normalizer: str = "sum",
        eps: float = 1e-6,
        scale: bool = True,
    ) -> None:
        super().__init__()
        functions.check_power_softmax_args(p, normalizer, eps)
        self.p = p
        self.dim = dim
        self.normalizer = normalizer
        self.eps = eps
        self.scale = scale

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return functions.power_softmax(
            x,
            dim=self.dim,
            p=self.p,
            normalizer=self.normalizer,
            eps=self.eps,
            scale=self.scale,
            mask=mask,
        )

    def extra_repr(self) -> str:
        return f"p={self.p}, dim={self.dim}, normalizer={self.normalizer!r}, eps={self.eps:g}"


class PolyLayerNorm(nn.Module):
    """LayerNorm whose inverse square root is an approximation from the catalog.

    y = (x - mean) * rsqrt(var + eps) * weight + bias, with rsqrt one of the methods of
    `approximations.layer_norm` ("exact", "newton", "poly"). "poly" is polynomial-only
    (HE-friendly) and is accurate on `interval`, the calibrated range of var + eps.
    """

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        rsqrt: str = "newton",
        interval: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps
        functions.check_rsqrt_method(rsqrt, interval)
        functions.rsqrt_approximation(rsqrt, tuple(interval) if interval else None)  # fit now
        self.rsqrt = rsqrt
        self.interval = interval
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(self.normalized_shape))
            self.bias = nn.Parameter(torch.zeros(self.normalized_shape))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    @classmethod
    def from_layer_norm(
        cls,
        layer_norm: nn.LayerNorm,
        rsqrt: str = "newton",
        interval: tuple[float, float] | None = None,
    ) -> PolyLayerNorm:
        """A PolyLayerNorm carrying `layer_norm`'s shape, eps, weight and bias."""
        affine = layer_norm.weight is not None
        new = cls(layer_norm.normalized_shape, layer_norm.eps, affine, rsqrt, interval)
        if affine:
            with torch.no_grad():
                new.weight.copy_(layer_norm.weight)
                if layer_norm.bias is not None:
                    new.bias.copy_(layer_norm.bias)
                else:
                    new.bias.zero_()
        return new.to(
            device=layer_norm.weight.device if affine else None,
            dtype=layer_norm.weight.dtype if affine else None,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functions.layer_norm(
            x,
            self.normalized_shape,
            weight=self.weight,
            bias=self.bias,
            eps=self.eps,
            rsqrt=self.rsqrt,
            interval=self.interval,
        )

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps:g}, rsqrt={self.rsqrt!r}"
