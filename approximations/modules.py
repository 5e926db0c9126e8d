"""`torch.nn` modules that replace GELU, softmax and LayerNorm with MPC/HE-friendly forms.

They are ordinary modules: autograd flows through them, they train, and they keep working
with `torch.export` (no data-dependent Python control flow). `approximations.convert`
swaps them into existing models.
"""

from __future__ import annotations

import torch
from torch import nn

from approximations import functions
from approximations.polynomial import Polynomial


class PolyGELU(nn.Module):
    """GELU replaced by a named approximation.

    `method` is any name accepted by `approximations.gelu`. The default, "puma_refit", is
    PUMA's piecewise form (breakpoints -4, -1.95, 3; degrees 3 and 6) with Remez
    coefficients: max error 0.0075 against 0.0199 for the published ones, at the same
    secure cost. It needs comparisons (MPC); for HE use a pure polynomial ("minimax",
    "quad"). `interval` (method "minimax" only) fits the polynomial on the symmetric
    [-B, B] covering it, B = max(|lo|, |hi|): x/2 + q(x^2) with a certified error
    (`approximations.functions.gelu_minimax_on`); without it "minimax" is the catalog's
    degree-20 polynomial on [-8, 8]. Either diverges outside its interval.
    """

    def __init__(
        self, method: str = "puma_refit", interval: tuple[float, float] | None = None
    ) -> None:
        super().__init__()
        if interval is not None:
            bound = functions.gelu_bound(method, interval)
            interval = (-bound, bound)
        functions.prepare_gelu(method, interval)  # fit now: never inside a torch.export trace
        self.method = method
        self.interval = interval

    @property
    def polynomial(self) -> Polynomial | None:
        """q of x/2 + q(x^2) when fitted on an interval (its `max_error` is GELU's), else
        None (the catalog entry `gelu.<method>` describes the approximation)."""
        if self.interval is None:
            return None
        return functions.gelu_minimax_on(self.interval[1])

    @property
    def max_error(self) -> float:
        """Certified max |approximation - GELU| on the interval it holds on."""
        poly = self.polynomial
        if poly is not None:
            return float(poly.max_error)  # type: ignore[arg-type]
        from approximations.library import catalog

        return catalog[f"gelu.{self.method}"].max_error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functions.gelu(x, method=self.method, interval=self.interval)

    def extra_repr(self) -> str:
        if self.interval is None:
            return f"method={self.method!r}"
        poly = self.polynomial
        assert poly is not None
        return (
            f"method={self.method!r}, interval=({self.interval[0]:g}, {self.interval[1]:g}), "
            f"degree={2 * poly.degree}, max_error={poly.max_error:.2g}"
        )


class PowerSoftmax(nn.Module):
    """Power-softmax (Zimerman et al. 2024): weights x_j^p / normaliser, p a positive even integer.

    forward(x, mask=None): `mask` is multiplicative (1 keeps a position, 0 drops it) and
    broadcastable to x. See `approximations.power_softmax` for the math and options;
    `scale` is True (the row's max |x|, comparisons), False, or a positive constant c (x / c:
    HE-friendly, calibrated by `approximations.convert(..., samples=...)`). `interval`, when
    calibrated, is the range of the reciprocal's input (the normaliser + eps) that the
    calibration samples produced, widened: informational, since the reciprocal itself is a
    division that each backend approximates on its own calibrated interval.
    """

    def __init__(
        self,
        p: int = 4,
        dim: int = -1,
        normalizer: str = "sum",
        eps: float = 1e-6,
        scale: bool | float = True,
        interval: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        functions.check_power_softmax_args(p, normalizer, eps)
        functions.check_power_softmax_scale(scale)
        self.p = p
        self.dim = dim
        self.normalizer = normalizer
        self.eps = eps
        self.scale = scale if isinstance(scale, bool) else float(scale)
        self.interval = tuple(interval) if interval is not None else None

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

    def normaliser(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """What the reciprocal sees for scores `x` (one value per row)."""
        return functions.power_softmax_normaliser(
            x,
            dim=self.dim,
            p=self.p,
            normalizer=self.normalizer,
            eps=self.eps,
            scale=self.scale,
            mask=mask,
        )

    def extra_repr(self) -> str:
        text = f"p={self.p}, dim={self.dim}, normalizer={self.normalizer!r}, eps={self.eps:g}"
        if self.scale is not True:
            text += f", scale={self.scale if self.scale is False else format(self.scale, 'g')}"
        if self.interval is not None:
            text += f", interval=({self.interval[0]:.3g}, {self.interval[1]:.3g})"
        return text


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

    @property
    def max_error(self) -> float | None:
        """Certified relative error of the inverse square root on `interval` (None for
        "exact")."""
        approx = functions.rsqrt_approximation(
            self.rsqrt, tuple(self.interval) if self.interval is not None else None
        )
        return None if approx is None else float(approx.max_error)

    def extra_repr(self) -> str:
        text = f"{self.normalized_shape}, eps={self.eps:g}, rsqrt={self.rsqrt!r}"
        if self.interval is not None:
            text += f", interval=({self.interval[0]:.3g}, {self.interval[1]:.3g})"
        return text
