"""How sure are a probe's Avg and Gap? Query resampling within cells, and the Gap's noise floor.

A curve is built from cells: the queries of one set in one position bin. Avg is linear in the
cell means — mean over bins of (mean over the bin's sets of the cell mean) — and Gap is the
largest bin mean minus the smallest.

**Intervals.** The bootstrap resamples queries with replacement inside each cell, so every
replicate has the cells, and hence the weights, of the real probe. Cells are small (a bin's
positions of one set: 5 by default, often 2-5), and a plain resample of n values has variance
s²(n-1)/n² instead of s²/n, an interval too narrow by sqrt((n-1)/n), 0.71 for a cell of 2. Each
resampled cell mean m* is therefore replaced by m + sqrt(n/(n-1)) (m* - m) (the rescaled
bootstrap of Rao and Wu, 1988), whose variance is the textbook stratified one; a cell of one
query carries no estimate of its own noise and adds none. Cells are visited in sorted order, so
two files of the same probe (two models) draw the very same resamples from the same seed: the
report's paired intervals (in2.report.bootstrap) and each model's own come from one resampling.

Avg is linear and unbiased: its interval is the percentile interval of the replicates. Gap is
not: the max minus the min of noisy bin means is biased upward by the noise, and a replicate
adds its own resampling noise on top of the probe's, so the replicates' Gaps run higher still
(for a position-flat model with 10 bins, by ~40%). The Gap's interval is therefore the
percentile interval of the replicates shifted by their mean excess over the measured Gap,
`q - (mean(G*) - G)`: the spread of the Gap a probe of this size shows for this model, centred
on the Gap measured. It stays on the scale of a measured Gap, noise included, which is the
scale of the noise floor.

**Noise floor.** A model whose accuracy does not depend on position still shows a Gap, larger
the fewer queries a bin holds. The floor is that Gap, computed rather than assumed: each set's
scores are shuffled over the set's binned positions (a position-flat model with the same scores,
so the same Avg up to the bins' weights, and the same bin sizes), and the floor is the mean Gap
over the shuffles. A Gap is told from noise when its interval lies above the floor (a flat model
passes this about 1 time in 40).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from in2.probing.metrics import Bins

N_RESAMPLES = 10_000
N_SHUFFLES = 2_000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Cells:
    """A probe's binned queries grouped into (set, bin) cells, in sorted order."""

    members: list[np.ndarray]
    """Row numbers (into the scored queries) of each cell's queries."""
    set_of: np.ndarray
    """Each cell's set, as a number."""
    weights: np.ndarray
    """[cells, bins]: a cell's share of its bin's mean (1 / the sets in that bin)."""

    @classmethod
    def of(cls, keys: Sequence[tuple[Hashable, int]], bins: Bins) -> Cells:
        """Cells of queries keyed (set key, position); queries outside every bin are left out."""
        grouped: dict[tuple[Hashable, int], list[int]] = defaultdict(list)
        for row, (b, (set_key, _)) in enumerate(
            zip(bins.assign([p for _, p in keys]), keys, strict=True)
        ):
            if b is not None:
                grouped[set_key, b].append(row)
        if not grouped:
            raise ValueError(f"no query falls in a bin of {bins.size} ({bins.binning})")
        order = sorted(grouped, key=lambda k: (repr(k[0]), k[1]))
        bin_ids = sorted({b for _, b in order})
        column = {b: i for i, b in enumerate(bin_ids)}
        sets = {s: i for i, s in enumerate(sorted({s for s, _ in order}, key=repr))}
        sets_in_bin = defaultdict(int)
        for _, b in order:
            sets_in_bin[b] += 1
        weights = np.zeros((len(order), len(bin_ids)))
        for c, (_, b) in enumerate(order):
            weights[c, column[b]] = 1.0 / sets_in_bin[b]
        return cls(
            members=[np.array(sorted(grouped[k], key=lambda r: keys[r][1])) for k in order],
            set_of=np.array([sets[s] for s, _ in order]),
            weights=weights,
        )

    def means(self, values: np.ndarray) -> np.ndarray:
        """[cells, ...] mean of `values` ([queries, ...]) in each cell."""
        return np.stack([values[m].mean(axis=0) for m in self.members])

    def resampled_means(self, values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
        """[n_resamples, cells, ...]: rescaled bootstrap means of `values` ([queries, ...]) in
        each cell; columns of `values` (models) are resampled with the same draws."""
        rng = np.random.default_rng(seed)
        out = np.empty((n_resamples, len(self.members), *values.shape[1:]))
        for c, rows in enumerate(self.members):
            v = values[rows]
            mean = v.mean(axis=0)
            draws = rng.integers(len(v), size=(n_resamples, len(v)))
            rescale = np.sqrt(len(v) / (len(v) - 1)) if len(v) > 1 else 0.0
            out[:, c] = mean + rescale * (v[draws].mean(axis=1) - mean)
        return out


def bin_means(cell_means: np.ndarray, cells: Cells) -> np.ndarray:
    """Bin means from cell means: [..., cells] -> [..., bins] (the cells axis last)."""
    return cell_means @ cells.weights


def gaps(bin_values: np.ndarray) -> np.ndarray:
    """Gap (max - min over the bins axis, the last) of each curve."""
    return bin_values.max(axis=-1) - bin_values.min(axis=-1)


def interval(
    replicates: np.ndarray,
    confidence: float,
    low: float,
    high: float,
    centre_on: float | None = None,
) -> list[float]:
    """Percentile interval of the replicates, clipped to the statistic's range [low, high];
    with `centre_on` (the measured value of a biased statistic: a Gap), shifted by the
    replicates' mean excess over it."""
    tail = (1 - confidence) / 2
    quantiles = np.quantile(replicates, [tail, 1 - tail])
    if centre_on is not None:
        quantiles -= replicates.mean() - centre_on
    return [float(x) for x in np.clip(quantiles, low, high)]


def noise_floor(values: np.ndarray, cells: Cells, n_shuffles: int, seed: int) -> np.ndarray:
    """Gaps of `n_shuffles` position-flat versions of one model's scores (each set's binned
    scores shuffled over its positions); their mean is the noise floor."""
    rows = np.concatenate(cells.members)
    cell_id = np.repeat(np.arange(len(cells.members)), [len(m) for m in cells.members])
    set_id = cells.set_of[cell_id]
    by_set = np.argsort(set_id, kind="stable")  # the binned queries, grouped by set
    counts = np.bincount(cell_id)
    rng = np.random.default_rng(seed)
    out = np.empty(n_shuffles)
    for i in range(n_shuffles):
        shuffled = np.lexsort((rng.random(len(rows)), set_id))  # grouped by set, random within
        permuted = np.empty(len(rows))
        permuted[by_set] = values[rows[shuffled]]
        out[i] = gaps(bin_means(np.bincount(cell_id, permuted) / counts, cells))
    return out


@dataclass(frozen=True)
class CurveUncertainty:
    """One curve's Avg and Gap intervals and its Gap's noise floor (see the module docstring)."""

    avg_ci: list[float]
    gap_ci: list[float]
    gap_noise_floor: float
    """Mean Gap of a position-flat model with these scores and bin sizes."""
    gap_noise_95: float
    """95th percentile of those Gaps: a flat model's Gap stays below it 19 times in 20."""
    confidence: float
    n_resamples: int
    n_shuffles: int

    @property
    def gap_above_noise(self) -> bool:
        """The Gap's interval lies entirely above the noise floor."""
        return self.gap_ci[0] > self.gap_noise_floor

    def to_dict(self) -> dict[str, object]:
        return {
            "avg_ci": self.avg_ci,
            "gap_ci": self.gap_ci,
            "gap_noise_floor": self.gap_noise_floor,
            "gap_noise_95": self.gap_noise_95,
            "gap_above_noise": self.gap_above_noise,
            "confidence": self.confidence,
            "n_resamples": self.n_resamples,
            "n_shuffles": self.n_shuffles,
        }


def curve_uncertainty(
    scored: Sequence[tuple[Hashable, int, float]],
    bins: Bins,
    seed: int = 0,
    n_resamples: int = N_RESAMPLES,
    n_shuffles: int = N_SHUFFLES,
    confidence: float = CONFIDENCE,
) -> CurveUncertainty:
    """Intervals and noise floor of the curve `position_curve(scored, bins)`."""
    cells = Cells.of([(s, p) for s, p, _ in scored], bins)
    values = np.array([v for _, _, v in scored], dtype=float)
    measured = float(gaps(bin_means(cells.means(values), cells)))
    curves = bin_means(cells.resampled_means(values, n_resamples, seed), cells)
    floor = noise_floor(values, cells, n_shuffles, seed)
    return CurveUncertainty(
        avg_ci=interval(curves.mean(axis=-1), confidence, 0.0, 1.0),
        gap_ci=interval(gaps(curves), confidence, 0.0, 1.0, centre_on=measured),
        gap_noise_floor=float(floor.mean()),
        gap_noise_95=float(np.quantile(floor, 0.95)),
        confidence=confidence,
        n_resamples=n_resamples,
        n_shuffles=n_shuffles,
    )
