"""Is the trained model better than the base, and is its Gap different? A paired bootstrap.

Both models answer the very same queries (same probe sets, same positions), so the comparison is
paired: each replicate resamples the same queries for both models, inside each (set, bin) cell
(in2.probing.uncertainty: the rescaled bootstrap, the cells' weights of the curve). Avg is
linear in the query scores, so Avg(in2) - Avg(base) is the Avg of the per-query differences;
Gap is not, and the Gap difference is taken replicate by replicate: Gap(in2*) - Gap(base*).

The 95% intervals are percentile intervals (for the Gap difference, centred on the measured one
as in2.probing.uncertainty centres a Gap's), clipped to [-1, 1], the range of a difference. They
reflect query-level noise on these probe sets: more sets (probe.sets_per_task) narrow them. Each
model's own Gap interval and noise floor are in its scores.json (the probe stage draws the same
resamples from the same seed).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from in2.probing.metrics import Binning, Bins
from in2.probing.results import scored_rows
from in2.probing.uncertainty import CONFIDENCE, N_RESAMPLES, Cells, bin_means, gaps, interval

Key = tuple[Hashable, int]
"""(set key, position_id): one query of a probe."""


@dataclass(frozen=True)
class PairedDifference:
    """The trained model minus the base model on one task: Avg and Gap, with their intervals."""

    base: float
    trained: float
    diff: float
    """trained - base Avg (equals the difference of the two curves' Avg)."""
    ci_low: float
    ci_high: float
    base_gap: float
    trained_gap: float
    gap_diff: float
    """trained - base Gap."""
    gap_ci_low: float
    gap_ci_high: float
    confidence: float
    n_queries: int
    n_resamples: int

    @property
    def excludes_zero(self) -> bool:
        """The Avg difference's interval lies entirely above or below 0."""
        return self.ci_low > 0 or self.ci_high < 0

    @property
    def gap_excludes_zero(self) -> bool:
        """The Gap difference's interval lies entirely above or below 0."""
        return self.gap_ci_low > 0 or self.gap_ci_high < 0

    def to_dict(self) -> dict[str, float | int | bool]:
        return {
            **asdict(self),
            "excludes_zero": self.excludes_zero,
            "gap_excludes_zero": self.gap_excludes_zero,
        }


def pair_scores(
    base: Iterable[tuple[Key, float]], trained: Iterable[tuple[Key, float]]
) -> dict[Key, tuple[float, float]]:
    """Join two models' query scores by (set, position); both must have answered the same ones."""
    a, b = dict(base), dict(trained)
    if a.keys() != b.keys():
        only = sorted(map(str, a.keys() ^ b.keys()))[:3]
        raise ValueError(
            f"the two models were probed on different queries (e.g. {only}); probe both on the "
            "same data/probes (`dvc repro probe`)"
        )
    return {k: (a[k], b[k]) for k in a}


def paired_bootstrap(
    pairs: Mapping[Key, tuple[float, float]],
    bin_size: int | Bins,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> PairedDifference:
    """Avg and Gap differences (second score - first score) with percentile intervals."""
    if not pairs:
        raise ValueError("no paired queries to compare")
    bins = bin_size if isinstance(bin_size, Bins) else Bins(bin_size)
    keys = list(pairs)
    cells = Cells.of(keys, bins)
    values = np.array([pairs[k] for k in keys], dtype=float)  # [queries, 2]: base, trained
    curves = bin_means(cells.means(values).T, cells)  # [2, bins]
    # [resamples, cells, 2] -> [resamples, 2, cells] -> curves [resamples, 2, bins]
    replicates = bin_means(
        np.moveaxis(cells.resampled_means(values, n_resamples, seed), 1, -1), cells
    )
    avg, gap = curves.mean(axis=-1), gaps(curves)
    avg_low, avg_high = interval(np.diff(replicates.mean(axis=-1))[:, 0], confidence, -1.0, 1.0)
    gap_diff = float(gap[1] - gap[0])
    gap_low, gap_high = interval(
        np.diff(gaps(replicates))[:, 0], confidence, -1.0, 1.0, centre_on=gap_diff
    )
    return PairedDifference(
        base=float(avg[0]),
        trained=float(avg[1]),
        diff=float(avg[1] - avg[0]),
        ci_low=avg_low,
        ci_high=avg_high,
        base_gap=float(gap[0]),
        trained_gap=float(gap[1]),
        gap_diff=gap_diff,
        gap_ci_low=gap_low,
        gap_ci_high=gap_high,
        confidence=confidence,
        n_queries=sum(len(m) for m in cells.members),
        n_resamples=n_resamples,
    )


def compare_predictions(
    base_rows: Iterable[Mapping[str, object]],
    trained_rows: Iterable[Mapping[str, object]],
    bin_size: int | Bins,
    score_key: str = "strict_score",
    **kwargs: object,
) -> PairedDifference:
    """`paired_bootstrap` over two `<task>.predictions.jsonl` files' rows (see in2.probing.results);
    `score_key` is `strict_score` (the strict variant) or `score` (the paper's metric)."""

    def scored(rows: Iterable[Mapping[str, object]]) -> list[tuple[Key, float]]:
        return [((s, p), v) for s, p, v in scored_rows(rows, score_key)]

    return paired_bootstrap(
        pair_scores(scored(base_rows), scored(trained_rows)), bin_size, **kwargs
    )


VARIANTS = {"strict": "strict_score", "paper": "score"}
"""Comparison variant -> the prediction rows' score it compares (in2.probing.results)."""


def compare_models(
    predictions: Mapping[tuple[str, str], list[dict]],
    tasks: Sequence[str],
    bin_size: int,
    binning: Binning,
) -> dict[str, dict[str, dict]]:
    """Variant -> task -> the paired bootstrap of in2 − base over the prediction rows of
    (model, task) (in2.report.tables.read_predictions), binned as the probe stage bins."""
    bins = Bins(bin_size, binning)
    return {
        variant: {
            task: compare_predictions(
                predictions["base", task], predictions["in2", task], bins, key
            ).to_dict()
            for task in tasks
        }
        for variant, key in VARIANTS.items()
    }
