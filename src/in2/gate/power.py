"""What a PASS of the position test rules out: the smallest first-half bias it detects.

The gate fails when the KS or the chi-square test of the gold positions' `u` has p < alpha
(`expectations.uniformity_tests`). The bias that matters is the lost-in-the-middle kind: a share
`s` > 1/2 of the answers in the first half of their contexts, uniform within each half (as
bench/gate_power.py simulates). For n positions this module finds, by bisection, the smallest
`s` that the gate rejects with probability >= `power`, from two lower bounds on the rejection
probability, so the stated share is safe (the gate detects it at least that often):

- chi-square over k bins: the statistic is noncentral chi-square with k - 1 degrees of freedom
  and noncentrality n * sum((p_i - 1/k)^2 * k) (asymptotic; exact in the limit of large n);
  with k even, p_i = 2s/k or 2(1-s)/k, so the noncentrality is n(2s - 1)^2;
- KS: the statistic is at least |F_n(1/2) - 1/2|, and n F_n(1/2) ~ Binomial(n, s) exactly.

It also states the ceiling: the share no level-alpha test could detect with that power, from the
most powerful test of s = 1/2 against s (one-sided binomial, Neyman-Pearson), so a reader sees
how close the gate's two tests come to the best possible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

POWER = 0.99


@dataclass(frozen=True)
class PositionPower:
    """The answer-position test's resolving power for one sample size (summary.json, MLflow)."""

    n: int
    """Gold positions tested (both long kinds)."""
    alpha: float
    power: float
    detected_first_half_share: float
    """The gate fails data with this share (or more) of answers in the first half of their
    contexts with probability >= `power`."""
    best_possible_share: float
    """No level-alpha test on n positions detects a smaller share with that power."""
    min_n: int = 0
    """Fewer positions than this and the test does not run (`validate.position_bins` x 5)."""

    def sentence(self) -> str:
        if self.n < self.min_n:
            return (
                f"with {self.n:,} gold positions (fewer than {self.min_n}) the position test "
                "does not run: a PASS says nothing about where the answers sit"
            )
        share, best = 100 * self.detected_first_half_share, 100 * self.best_possible_share
        size = "a large bias: more positions narrow it" if share >= 55 else "a small bias"
        return (
            f"with {self.n:,} gold positions, the position test detects a first-half share of "
            f"{share:.2f}% or more (instead of 50%) with {self.power:.0%} power at alpha "
            f"{self.alpha:g} ({size}; no test could detect less than {best:.2f}%)"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "statement": self.sentence()}


def _bin_probabilities(share: float, bins: int) -> np.ndarray:
    """P(u in each of `bins` equal bins) when a `share` of u is uniform on [0, 1/2), the rest on
    [1/2, 1)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    first = np.clip(np.minimum(edges[1:], 0.5) - edges[:-1], 0.0, None)
    second = (edges[1:] - edges[:-1]) - first
    return 2 * share * first + 2 * (1 - share) * second


def rejection_probability(share: float, n: int, alpha: float, bins: int) -> float:
    """A lower bound on P(the gate fails | first-half share `share`) for n positions."""
    p = _bin_probabilities(share, bins)
    noncentrality = n * float(np.sum((p - 1 / bins) ** 2 * bins))
    critical = stats.chi2.isf(alpha, bins - 1)
    chi2_power = float(stats.ncx2.sf(critical, bins - 1, noncentrality))
    d = float(stats.kstwo.isf(alpha, n))  # KS rejects when D_n > d; D_n >= |F_n(1/2) - 1/2|
    binomial = stats.binom(n, share)
    ks_power = float(
        binomial.sf(np.floor(n * (0.5 + d))) + binomial.cdf(np.ceil(n * (0.5 - d)) - 1)
    )
    return max(chi2_power, ks_power)


def best_possible_power(share: float, n: int, alpha: float) -> float:
    """Power of the most powerful level-alpha test of share 1/2 against `share` (one-sided)."""
    critical = stats.binom.isf(alpha, n, 0.5)  # reject when more than this many are early
    return float(stats.binom.sf(critical, n, share))


def _smallest_share(detects, power: float) -> float:
    low, high = 0.5, 1.0
    if detects(high) < power:
        return 1.0
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (low, mid) if detects(mid) >= power else (mid, high)
    return high


def position_power(
    n: int, alpha: float, bins: int, min_n: int = 1, power: float = POWER
) -> PositionPower:
    """The smallest first-half share the gate detects with `power` on n positions (1.0 when
    fewer than `min_n` positions are tested)."""
    if n < max(min_n, 1):
        return PositionPower(n, alpha, power, 1.0, 1.0, min_n)
    return PositionPower(
        n=n,
        alpha=alpha,
        power=power,
        detected_first_half_share=_smallest_share(
            lambda s: rejection_probability(s, n, alpha, bins), power
        ),
        best_possible_share=_smallest_share(lambda s: best_possible_power(s, n, alpha), power),
        min_n=min_n,
    )
