"""Per-example losses on secret-shared logits with a secret-shared one-hot label.

Logits o (N, C) and the label's one-hot t (N, C) are both shares; every function returns
an (N,) sharing of the per-example value, whose sum over a data set is the only thing a
caller reveals. Definitions as `approximations.losses` (the plaintext references).

    o_y      = sum_k o_k t_k                               1 round, 8 B per entry
    lse      = m + log s,  m = max_k o_k (tournament),      ceil(log2 C) (8 + 1) rounds for m,
               s = sum_k exp(o_k - m) in [1, C],            exp by squaring (order 2, cutoff),
               log by a minimax polynomial on [1, C]        the polynomial's depth
    ce       = lse - o_y
    square   = sum_k (o_k - t_k)^2                          1 round
    zloss    = (1/a) softplus(a (b - z_y)), z_y = (o_y - mu) / sigma: mu and sigma over the
               C logits (population), 1/sigma by `inverse.inv_sqrt` on VARIANCE_INTERVAL;
               |z_y| <= sqrt(C - 1) for any logits, so softplus is a minimax polynomial on
               a (b -+ sqrt(C - 1)): no comparison
    gce      = (1 - p_y^q) / q,  p_y^q = exp(q (o_y - lse)) (an exponent <= 0)
    mae      = 1 - p_y,          p_y   = exp(o_y - lse)
    hit      = [o_y >= m]: the label's logit is the largest (ties count as hits, where
               torch's argmax takes the first maximum)
    sparsemax, entmax15 through their duals (`approximations.losses`): positive parts
               (x [x >= 0], one comparison and one product) and the threshold: by
               bisection (FY_STEPS steps, each C + 1 comparisons in 2 comparison rounds),
               or for sparsemax exactly by a sort network up to FY_SORT_MAX_CLASSES
               classes (`protocols.mpc.sorting`); `make bench` measures both

Errors: fixed point (2^-16) plus each approximation's: the log polynomial on [1, C]
(`approximations.losses.softmax_log_polynomial`, certified), exp by squaring (order 2, 6 squarings:
an approximation error below 6e-5 and 2^6 units of 2^-16 of fixed point relative; 8
squarings doubled the fixed-point part twice: 1.2e-3 on ce, 5e-3 on p_y near 1), and
softplus's polynomial (`zloss_softplus_polynomial`). Measured on logits within +-15 (10 classes, 3
runs): per example within 5e-4 (ce), 1.7e-3 (gce, mae), 1.5e-4 (zloss), 7e-5 (square);
sums over 64 examples within 1e-4 relative.
"""

from __future__ import annotations

from dataclasses import dataclass

from approximations.losses import (
    DEFAULT_OPTIONS,
    LossOptions,
    SharedTerms,
    bisection_threshold,
    secure_per_example,
    softmax_log_polynomial,
    zloss_softplus_polynomial,
)
from approximations.polynomial import Polynomial
from protocols.mpc.compare import indicators, linear_combination, maximum, relu
from protocols.mpc.exp import exp_by_squaring
from protocols.mpc.inverse import inv_sqrt
from protocols.mpc.polynomial import Secret, chebyshev_terms, combine, unit_variable
from protocols.mpc.sorting import sparsemax_threshold_sorted

SQUARINGS = 6
CUTOFF = 14.0
VARIANCE_INTERVAL = (1e-4, 1e6)
"""Where the variance of one example's logits may lie (1/sigma's comparisons cover it)."""
FY_SORT_MAX_CLASSES = 16
"""Up to this many classes the sparsemax threshold comes from the sort network (exact),
beyond them by bisection. Measured on 100 rows (sparsemax alone; sort / bisection):
10 classes 1.45 / 2.25 MB and 146 / 166 rounds, 24 classes 4.79 / 5.22 MB but 200 / 175
rounds, 40 classes 9.96 / 8.61 MB and 263 / 184, 100 classes 32.9 / 21.3 MB and 335 / 193:
the network's 10 layers up to 16 entries beat 7 bisection steps; its layers then grow as
log2(C)^2 / 2 and its comparisons as C log2(C)^2 / 4, bisection's as 8 C."""


def _evaluate(x: Secret, poly: Polynomial) -> Secret:
    """`poly` from its own Chebyshev coefficients in t = (x - mid) / half."""
    cheb = list(poly.chebyshev[: poly.degree + 1])
    terms = chebyshev_terms(unit_variable(x, poly.interval), poly.degree)
    return combine(terms, cheb, like=x)


def label_logit(logits: Secret, onehot: Secret) -> Secret:
    return (logits * onehot).sum(-1)


def log_sum_exp(logits: Secret, fss_bits: int | None = None) -> tuple[Secret, Secret]:
    """(lse, m) per example: m the largest logit, lse = m + log sum exp(o - m)."""
    m = maximum(logits, -1, keepdim=True, fss_bits=fss_bits)
    e = exp_by_squaring(logits - m, SQUARINGS, CUTOFF, order=2, fss_bits=fss_bits)
    s = e.sum(-1)
    m = m.squeeze(-1)
    return m + _evaluate(s, softmax_log_polynomial(logits.size(-1))), m


def square(logits: Secret, onehot: Secret) -> Secret:
    d = logits - onehot
    return (d * d).sum(-1)


def z_loss(logits: Secret, onehot: Secret, a: float, b: float) -> Secret:
    classes = logits.size(-1)
    mu = logits.mean(-1)
    centred = logits - mu.unsqueeze(-1)
    variance = (centred * centred).mean(-1)
    z_y = label_logit(centred, onehot) * inv_sqrt(variance, VARIANCE_INTERVAL)
    return _evaluate((z_y * -a) + a * b, zloss_softplus_polynomial(a, b, classes)) * (1.0 / a)


def label_probability_power(o_y: Secret, lse: Secret, q: float) -> Secret:
    """p_y^q = exp(q (o_y - lse)), the exponent <= 0."""
    return exp_by_squaring((o_y - lse) * q, SQUARINGS, CUTOFF, order=2)


def positive_part(x: Secret, fss_bits: int | None = None) -> Secret:
    """x [x >= 0]: exact (`compare.relu`: 8 + 1 rounds, or 2 with `fss_bits`)."""
    return relu(x, fss_bits)


def step(x: Secret, fss_bits: int | None = None) -> Secret:
    """[x >= 0] as a fixed-point 0 or 1 (like x's), exact: one comparison, then local."""
    (positive,) = indicators(x, [0.0], fss_bits)
    return linear_combination(positive.unsqueeze(0), [1.0], 0.0, like=x)


@dataclass(frozen=True)
class MpcLossKernels:
    """The losses' building blocks on CrypTen sharings
    (`approximations.losses.SecureLossKernels`); `sort_sparsemax`: the sparsemax
    threshold by the sort network (True), by bisection (False), or by the network up to
    FY_SORT_MAX_CLASSES classes (None); `fss_bits`: the comparisons (maximum, cut-off,
    positive part, step, hit) from the dealer's FSS keys of that width (the logits'
    differences must fit: `fss_compare.RING_BITS` holds any), else CrypTen's. The sort
    network keeps CrypTen's comparisons."""

    sort_sparsemax: bool | None = None
    fss_bits: int | None = None

    square = staticmethod(square)
    z_loss = staticmethod(z_loss)

    def positive_part(self, x: Secret) -> Secret:
        return positive_part(x, self.fss_bits)

    def shared(
        self,
        logits: Secret,
        onehot: Secret,
        *,
        needs_log_sum_exp: bool,
        needs_maximum: bool,
        accuracy: bool,
    ) -> SharedTerms[Secret]:
        """o_y; then (lse, m) if a loss needs log-sum-exp, else m alone if `accuracy` or
        a loss needs it."""
        o_y = label_logit(logits, onehot)
        if needs_log_sum_exp:
            lse, m = log_sum_exp(logits, self.fss_bits)
            return SharedTerms(o_y, lse, m)
        wanted = accuracy or needs_maximum
        m = maximum(logits, -1, fss_bits=self.fss_bits) if wanted else None
        return SharedTerms(o_y, None, m)

    def step_of_excess(self, excess: Secret, power: int) -> Secret:
        return step(excess, self.fss_bits)

    def threshold(self, z: Secret, maximum: Secret, power: int) -> Secret:
        """The sort network's exact threshold (power 1, `sort_sparsemax`), else bisection."""
        sort = self.sort_sparsemax
        if sort is None:
            sort = z.size(-1) <= FY_SORT_MAX_CLASSES
        if power == 1 and sort:
            return sparsemax_threshold_sorted(z)
        return bisection_threshold(self, z, maximum, power)

    def label_probability_power(self, terms: SharedTerms[Secret], q: float) -> Secret:
        return label_probability_power(terms.label_logit, terms.log_sum_exp, q)

    def hit(self, logits: Secret, terms: SharedTerms[Secret]) -> Secret:
        """[o_y >= m] comes as a scale-1 (integer) sharing; its product with a
        standard-scale sharing of ones brings it to the scale of the losses, so that all
        can be summed and stacked together (one product round)."""
        o_y = terms.label_logit
        (hit,) = indicators(o_y - terms.maximum, [0.0], self.fss_bits)
        return (o_y * 0.0 + 1.0) * hit


KERNELS = MpcLossKernels()


def per_example(
    logits: Secret,
    onehot: Secret,
    names: list[str],
    *,
    a: float,
    b: float,
    q: float,
    tau: float = DEFAULT_OPTIONS.compsum_tau,
    accuracy: bool = True,
    kernels: MpcLossKernels = KERNELS,
) -> dict[str, Secret]:
    """Each requested loss per example, plus "hit" (accuracy) unless `accuracy` is False,
    sharing the common terms (o_y, the maximum, log-sum-exp)
    (`approximations.losses.secure_per_example` on `KERNELS`)."""
    options = LossOptions(zloss_a=a, zloss_b=b, gce_q=q, compsum_tau=tau)
    return secure_per_example(kernels, logits, onehot, names, options, accuracy=accuracy)
