"""Statistics over seeds: Student's t distribution, Welch's t-test and confidence intervals, no SciPy needed.

The t distribution's CDF goes through the regularized incomplete beta function, evaluated with
its continued fraction (Numerical Recipes, 3rd ed., Sec. 6.4); quantiles invert it by bisection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

SIGNIFICANCE = 0.05
# How a run's curve is summarised in one number: its last value, its lowest, or its value at a given iteration.
FINAL, BEST, AT_ITERATION = "final", "best", "at iteration"
SUMMARIES = (FINAL, BEST, AT_ITERATION)


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for x in [0, 1]."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return regularized_beta(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(probability: float, df: float) -> float:
    """The t value below which Student's t with `df` degrees of freedom falls with `probability` (> 0.5)."""
    low, high = 0.0, 1e6
    for _ in range(200):
        middle = (low + high) / 2
        if 1.0 - t_two_sided_p(middle, df) / 2.0 < probability:
            low = middle
        else:
            high = middle
    return (low + high) / 2


@dataclass(frozen=True)
class Summary:
    """n values summarised: mean, sample standard deviation (0 for one value), min and max."""

    n: int
    mean: float
    std: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        n = len(values)
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        return cls(n, mean, std, min(values), max(values))

    def text(self, unit: str = "") -> str:
        """"12.34 ± 0.56% (n=3)", or "12.34%" for one value."""
        if self.n == 1:
            return f"{self.mean:.2f}{unit}"
        return f"{self.mean:.2f} ± {self.std:.2f}{unit} (n={self.n})"


@dataclass(frozen=True)
class WelchTest:
    """Welch's unequal-variance t-test of mean(b) - mean(a): t, degrees of freedom and the two-sided p-value."""

    t: float
    df: float
    p: float

    @property
    def significant(self) -> bool:
        return self.p < SIGNIFICANCE


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> WelchTest | None:
    """Welch's t-test of two samples; None unless both have at least two values."""
    if len(a) < 2 or len(b) < 2:
        return None
    first, second = Summary.of(a), Summary.of(b)
    va, vb = first.std ** 2 / first.n, second.std ** 2 / second.n
    difference = second.mean - first.mean
    if va + vb == 0.0:
        return WelchTest(math.copysign(math.inf, difference) if difference else 0.0, first.n + second.n - 2.0,
                         0.0 if difference else 1.0)
    t = difference / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (first.n - 1) + vb ** 2 / (second.n - 1))
    return WelchTest(t, df, t_two_sided_p(t, df))
