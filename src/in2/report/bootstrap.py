"""Is the trained model better than the base? A paired bootstrap of the Avg difference per task.

Both models answer the very same queries (same probe sets, same positions), so the comparison is
paired: per query d = score(in2) - score(base). The paper's Avg is linear in the query scores —
mean over position bins of (mean over sets of the set's mean in that bin) — so
Avg(in2) - Avg(base) = Avg(d), computed with the same (set, bin) cells as
in2.probing.metrics.position_curve.

The bootstrap resamples queries (set × position units) with replacement inside each (set, bin)
cell, so every replicate has the cells, and hence the weights, of the real probe: a replicate's
statistic is sum over cells of (rescaled cell mean of resampled d) × w_cell, with
w_cell = 1 / (sets in the cell's bin × bins).

The rescaling matters because cells are small (bin_size queries at most, often 2-5): a plain
resample of n values has variance s²(n-1)/n² instead of s²/n, an interval too narrow by a factor
sqrt((n-1)/n) — 0.71 for a cell of 2. Each cell's resampled mean m* is therefore replaced by
m + sqrt(n/(n-1)) (m* - m) (the rescaled bootstrap of Rao and Wu, 1988), whose variance is the
textbook stratified one, sum over cells of w² s² / n. A cell of one query carries no estimate
of its own noise and adds none. The 95% interval is the 2.5th and 97.5th percentile of the
replicates (percentile bootstrap), clipped to [-1, 1], the range of a score difference. It
reflects query-level noise on these probe sets: more sets (probe.sets_per_task) narrow it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from in2.outputs import read_jsonl

Key = tuple[Hashable, int]
"""(set key, position_id): one query of a probe."""


@dataclass(frozen=True)
class PairedDifference:
    """Avg of the trained model minus Avg of the base model on one task, with its interval."""

    base: float
    trained: float
    diff: float
    """trained - base (equals the difference of the two curves' Avg)."""
    ci_low: float
    ci_high: float
    confidence: float
    n_queries: int
    n_resamples: int

    @property
    def excludes_zero(self) -> bool:
        """The interval lies entirely above or below 0."""
        return self.ci_low > 0 or self.ci_high < 0

    def to_dict(self) -> dict[str, float | int | bool]:
        return {**asdict(self), "excludes_zero": self.excludes_zero}


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
    bin_size: int,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """Avg difference (second score - first score) with a percentile bootstrap interval."""
    if not pairs:
        raise ValueError("no paired queries to compare")
    if bin_size <= 0:
        raise ValueError(f"bin_size must be > 0, got {bin_size}")
    cells: dict[tuple[Hashable, int], list[tuple[float, float]]] = defaultdict(list)
    for (set_key, position), scores in pairs.items():
        cells[(set_key, position // bin_size)].append(scores)
    sets_in_bin: dict[int, int] = defaultdict(int)
    for _, b in cells:
        sets_in_bin[b] += 1
    n_bins = len(sets_in_bin)
    weights = np.array([1.0 / (sets_in_bin[b] * n_bins) for _, b in cells])
    values = [np.asarray(v, dtype=float) for v in cells.values()]  # [n, 2] per cell

    rng = np.random.default_rng(seed)
    replicates = np.zeros(n_resamples)
    for w, v in zip(weights, values, strict=True):
        d = v[:, 1] - v[:, 0]
        draws = rng.integers(len(d), size=(n_resamples, len(d)))
        rescale = np.sqrt(len(d) / (len(d) - 1)) if len(d) > 1 else 0.0
        replicates += w * (d.mean() + rescale * (d[draws].mean(axis=1) - d.mean()))
    base = float(sum(w * v[:, 0].mean() for w, v in zip(weights, values, strict=True)))
    trained = float(sum(w * v[:, 1].mean() for w, v in zip(weights, values, strict=True)))
    tail = (1 - confidence) / 2
    low, high = np.clip(np.quantile(replicates, [tail, 1 - tail]), -1.0, 1.0)
    return PairedDifference(
        base=base,
        trained=trained,
        diff=trained - base,
        ci_low=float(low),
        ci_high=float(high),
        confidence=confidence,
        n_queries=len(pairs),
        n_resamples=n_resamples,
    )


def compare_predictions(
    base_rows: Iterable[Mapping[str, object]],
    trained_rows: Iterable[Mapping[str, object]],
    bin_size: int,
    score_key: str = "strict_score",
    **kwargs: object,
) -> PairedDifference:
    """`paired_bootstrap` over two `<task>.predictions.jsonl` files' rows (see in2.probing.results);
    `score_key` is `strict_score` (the strict variant) or `score` (the paper's metric)."""

    def scored(rows: Iterable[Mapping[str, object]]) -> list[tuple[Key, float]]:
        return [
            (((r["context_tokens"], r["set_id"]), int(r["position_id"])), float(r[score_key]))
            for r in rows
        ]

    return paired_bootstrap(
        pair_scores(scored(base_rows), scored(trained_rows)), bin_size, **kwargs
    )


VARIANTS = {"strict": "strict_score", "paper": "score"}
"""Comparison variant -> the prediction rows' score it compares (in2.probing.results)."""


def compare_models(
    results: Path, tasks: Sequence[str], bin_size: int, seed: int
) -> dict[str, dict[str, dict]]:
    """Variant -> task -> the paired bootstrap of in2 − base over the predictions in `results`
    (`results/probe/<model>/<task>.predictions.jsonl`)."""
    rows = {
        (model, task): read_jsonl(results / model / f"{task}.predictions.jsonl")
        for model in ("base", "in2")
        for task in tasks
    }
    return {
        variant: {
            task: compare_predictions(
                rows["base", task], rows["in2", task], bin_size, key, seed=seed
            ).to_dict()
            for task in tasks
        }
        for variant, key in VARIANTS.items()
    }
