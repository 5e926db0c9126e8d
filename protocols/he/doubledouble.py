"""Double-double arithmetic on numpy arrays: about 104 bits of mantissa from float64 only.

A value is the unevaluated sum hi + lo of two float64 arrays with |lo| <= ulp(hi) / 2
(Dekker 1971; the error-free transforms below are Knuth's TwoSum and Dekker's TwoProduct,
in the forms of Hida, Li and Bailey's QD library):

    two_sum(a, b)   = (s, e): s = fl(a + b), s + e = a + b exactly (6 flops)
    two_prod(a, b)  = (p, e): p = fl(a b),   p + e = a b   exactly (Dekker's split at
                      2^27 + 1; |a|, |b| < 2^995)

`DD` sums and products are the "sloppy" ones: relative error at most about 4 u^2 with
u = 2^-53 of |a| + |b| (sums) and |a b| (products), u^2 = 2^-106. That bound is against the
magnitudes, not the result, so a sum that cancels keeps an absolute error of 2^-104 of its
operands: what a linear map such as the FFT needs (its error is stated against the input's
norm). `ComplexDD` is a pair of `DD`. Everything is elementwise and broadcasts like numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLITTER = 134217729.0  # 2^27 + 1


def two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """s + e = a + b exactly, s = fl(a + b) (Knuth)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def quick_two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """s + e = a + b exactly when |a| >= |b| (or a = 0), s = fl(a + b) (Dekker)."""
    s = a + b
    return s, b - (s - a)


def split(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a = hi + lo exactly, each with at most 26 significant bits (Dekker)."""
    t = SPLITTER * a
    hi = t - (t - a)
    return hi, a - hi


def two_prod(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """p + e = a b exactly, p = fl(a b) (Dekker)."""
    p = a * b
    ah, al = split(a)
    bh, bl = split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


@dataclass(frozen=True)
class DD:
    """hi + lo, |lo| <= ulp(hi) / 2: float64 arrays of one shape (module docstring)."""

    hi: np.ndarray
    lo: np.ndarray

    @classmethod
    def of(cls, value: np.ndarray | float) -> DD:
        """A float64 value (array) as a double-double (exact)."""
        hi = np.asarray(value, dtype=np.float64)
        return cls(hi, np.zeros_like(hi))

    @classmethod
    def from_int(cls, value: int) -> DD:
        """A Python integer to about 106 bits (exact below 2^106)."""
        hi = float(value)
        return cls(np.float64(hi), np.float64(float(value - int(hi))))  # type: ignore[arg-type]

    def __add__(self, other: DD) -> DD:
        s, e = two_sum(self.hi, other.hi)
        s, e = quick_two_sum(s, e + (self.lo + other.lo))
        return DD(s, e)

    def __neg__(self) -> DD:
        return DD(-self.hi, -self.lo)

    def __sub__(self, other: DD) -> DD:
        return self + (-other)

    def __mul__(self, other: DD) -> DD:
        p, e = two_prod(self.hi, other.hi)
        s, e = quick_two_sum(p, e + (self.hi * other.lo + self.lo * other.hi))
        return DD(s, e)

    def ldexp(self, power: int) -> DD:
        """Times 2^power (exact)."""
        return DD(np.ldexp(self.hi, power), np.ldexp(self.lo, power))

    def take(self, index: np.ndarray | slice | tuple, axis: int = -1) -> DD:
        """Entries `index` along `axis` (numpy `take` semantics for an index array)."""
        if isinstance(index, np.ndarray):
            return DD(np.take(self.hi, index, axis=axis), np.take(self.lo, index, axis=axis))
        return DD(self.hi[index], self.lo[index])

    def rounded(self) -> tuple[np.ndarray, np.ndarray]:
        """The nearest integer as two integer-valued float64 arrays a + b (exact sum)."""
        whole = np.round(self.hi)
        return whole, np.round((self.hi - whole) + self.lo)

    def to_float(self) -> np.ndarray:
        return self.hi + self.lo


@dataclass(frozen=True)
class ComplexDD:
    """re + i im, each a `DD`."""

    re: DD
    im: DD

    def __add__(self, other: ComplexDD) -> ComplexDD:
        return ComplexDD(self.re + other.re, self.im + other.im)

    def __sub__(self, other: ComplexDD) -> ComplexDD:
        return ComplexDD(self.re - other.re, self.im - other.im)

    def __mul__(self, other: ComplexDD) -> ComplexDD:
        return ComplexDD(
            self.re * other.re - self.im * other.im, self.re * other.im + self.im * other.re
        )

    def parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The four float64 arrays (re.hi, re.lo, im.hi, im.lo)."""
        return self.re.hi, self.re.lo, self.im.hi, self.im.lo

    @classmethod
    def from_parts(cls, parts: tuple[np.ndarray, ...] | list[np.ndarray]) -> ComplexDD:
        re_hi, re_lo, im_hi, im_lo = parts
        return cls(DD(re_hi, re_lo), DD(im_hi, im_lo))

    def to_complex(self) -> np.ndarray:
        return self.re.to_float() + 1j * self.im.to_float()


__all__ = ["DD", "ComplexDD", "quick_two_sum", "split", "two_prod", "two_sum"]
