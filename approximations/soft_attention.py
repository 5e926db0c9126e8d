"""SOFT, softmax-free attention (Lu et al., NeurIPS 2021), with its symmetric normalisation.

Queries and keys share one projection (q_i = k_i), and the attention matrix is the Gaussian
kernel of the (head-wise) queries, scaled so that the exponent is that of the paper:

    S_ij = exp(-||q_i - q_j||^2 / (2 sqrt(d))),   d the head width

S is symmetric positive semi-definite, so it has a Nystrom approximation from m landmarks
l_1..l_m (here the means of m groups of n / m consecutive tokens' queries):

    S ~ P A^+ P^T,   P_ia = exp(-||q_i - l_a||^2 / (2 sqrt(d)))   (n x m),
                     A_ab = exp(-||l_a - l_b||^2 / (2 sqrt(d)))   (m x m)

with A^+ the Moore-Penrose inverse by Newton-Schulz iterations, products only:

    V_0 = A / m^2,   V_(k+1) = 2 V_k - V_k (A V_k)

A is symmetric with entries in (0, 1] and a unit diagonal, so its eigenvalues lie in
[0, m] and V_0 = A / m^2 starts inside the iteration's basin (||I - A V_0|| < 1 on A's
range); an eigenvalue lambda's error falls as (1 - lambda^2 / m^2)^(2^k): with m = 4 and
lambda >= 1, below 7e-8 after 8 iterations. Small eigenvalues (near-duplicate landmarks)
converge last, which acts as a truncated pseudo-inverse. The squared distances are
expanded, ||a||^2 + ||b||^2 - 2 a.b, into sums and one matrix product.

Symmetric normalisation (SOFT's follow-up, Lu et al., IJCV 2024): with D = diag(S~ 1),

    out = D^(-1/2) S~ D^(-1/2) V,    S~ 1 = P (A^+ (P^T 1))

in one of two orders (`order`): "linear" right to left in O(n m d), never an n x n matrix
(training, mpc); "kernel" forms S~ = (P A^+) P^T and then S~ V, O(n^2 m), the products of
ordinary attention. Both compute the same function and both run under he; the kernel
order sends less there (`secinfer/zoo/soft.py`), the default of a target "he"
conversion. 1 / sqrt of the row sums is the only nonlinear step besides the exponentials
(both have MPC and HE kernels: exp by squaring on the calibrated interval, whose
exponents are <= 0 here; rsqrt by Newton). No softmax, no maximum, no comparison.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from approximations.errors import ApproximationError

NS_ITERATIONS = 8
"""Newton-Schulz iterations of A's pseudo-inverse (module docstring)."""
ORDERS = ("linear", "kernel")
"""The orders of the normalised products (module docstring)."""


def gaussian_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """exp(-||a_i - b_j||^2 / 2) over the last two axes (rows of a against rows of b), the
    distance expanded into sums and one product."""
    squares_a = (a * a).sum(-1, keepdim=True)
    squares_b = (b * b).sum(-1, keepdim=True).transpose(-2, -1)
    distances = squares_a + squares_b - 2.0 * (a @ b.transpose(-2, -1))
    return torch.exp(-0.5 * distances)


def newton_schulz_pseudo_inverse(a: torch.Tensor, iterations: int) -> torch.Tensor:
    """A^+ for symmetric A (last two axes) with entries in [0, 1] and a unit diagonal:
    V_0 = A / m^2, V_(k+1) = 2 V_k - V_k (A V_k) (module docstring). Products only: depth
    2 per iteration."""
    v = a * (1.0 / a.shape[-1] ** 2)
    for _ in range(iterations):
        v = 2.0 * v - v @ (a @ v)
    return v


class SoftAttention(nn.Module):
    """Multi-head SOFT attention over (B, n, d_model) inputs (module docstring).

    `landmarks` must divide the sequence length; `normalise` applies the symmetric
    normalisation (else the output is S~ V / n); `order` one of ORDERS. Parameters: `q`
    (queries = keys), `v`, `out`, named like `secinfer.zoo.digits.SelfAttention`'s."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        landmarks: int,
        iterations: int = NS_ITERATIONS,
        normalise: bool = True,
        order: str = "linear",
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ApproximationError(f"n_heads {n_heads} does not divide d_model {d_model}")
        if landmarks < 1 or iterations < 1:
            raise ApproximationError(
                f"SOFT landmarks={landmarks}, iterations={iterations}: expected both >= 1"
            )
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        if order not in ORDERS:
            raise ApproximationError(f"SOFT order={order!r}: choose from {', '.join(ORDERS)}")
        self.landmarks, self.iterations, self.normalise = landmarks, iterations, normalise
        self.order = order
        self.q = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    @classmethod
    def from_attention(
        cls,
        attention: nn.Module,
        landmarks: int,
        iterations: int = NS_ITERATIONS,
        order: str = "linear",
    ) -> SoftAttention:
        """A SOFT module initialised from softmax attention with `q`, `v`, `out` linear
        projections and `n_heads` (its keys' projection is dropped: SOFT shares the
        queries')."""
        d_model = attention.q.in_features
        new = cls(d_model, attention.n_heads, landmarks, iterations, order=order)
        new.load_state_dict(
            {k: v for k, v in attention.state_dict().items() if not k.startswith("k.")},
            strict=True,
        )
        return new.to(attention.q.weight.dtype).train(attention.training)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.n_heads, self.d_head).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        if n % self.landmarks:
            raise ApproximationError(
                f"SOFT attention with {self.landmarks} landmarks needs a sequence length "
                f"divisible by them; got {n}"
            )
        q = self._split(self.q(x)) * (1.0 / math.sqrt(math.sqrt(self.d_head)))
        v = self._split(self.v(x))
        group = n // self.landmarks
        marks = q.reshape(b, self.n_heads, self.landmarks, group, self.d_head).mean(-2)
        p = gaussian_kernel(q, marks)  # (B, H, n, m)
        inverse = newton_schulz_pseudo_inverse(gaussian_kernel(marks, marks), self.iterations)
        pt = p.transpose(-2, -1)
        if self.order == "kernel":
            kernel = (p @ inverse) @ pt  # S~: (B, H, n, n)
            if self.normalise:
                scale = torch.rsqrt(kernel.sum(-1, keepdim=True))
                ctx = scale * (kernel @ (scale * v))
            else:
                ctx = (kernel @ v) * (1.0 / n)
        elif self.normalise:
            row_sums = p @ (inverse @ pt.sum(-1, keepdim=True))  # S~ 1: (B, H, n, 1)
            scale = torch.rsqrt(row_sums)
            ctx = scale * (p @ (inverse @ (pt @ (scale * v))))
        else:
            ctx = (p @ (inverse @ (pt @ v))) * (1.0 / n)
        return self.out(ctx.transpose(1, 2).reshape(b, n, d))


__all__ = [
    "NS_ITERATIONS",
    "ORDERS",
    "SoftAttention",
    "gaussian_kernel",
    "newton_schulz_pseudo_inverse",
]
