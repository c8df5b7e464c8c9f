"""Paired bootstrap of the Avg difference: hand-checkable cases and agreement with the curves."""

import numpy as np
import pytest

from in2.probing.metrics import position_curve
from in2.report.bootstrap import compare_predictions, pair_scores, paired_bootstrap


def test_two_queries_one_cell_gives_the_hand_computed_interval():
    # one cell, d = [0, 1]: a resample's mean is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4;
    # rescaled by sqrt(2/1) around 0.5 that is -0.21, 0.5 or 1.21, so the 2.5th and 97.5th
    # percentiles are -0.21 and 1.21, clipped to the range of a difference: [-0.21, 1]
    pairs = {(("s", 0), 0): (0.0, 0.0), (("s", 0), 1): (0.0, 1.0)}
    r = paired_bootstrap(pairs, bin_size=5, n_resamples=4000)
    assert (r.base, r.trained, r.diff) == (0.0, 0.5, 0.5)
    assert r.ci_low == pytest.approx(0.5 - np.sqrt(2) / 2) and r.ci_high == 1.0
    assert not r.excludes_zero


def test_interval_has_the_stratified_variance_even_with_small_cells():
    # cells of 2 and 3 queries: a plain resample would shrink the spread by sqrt((n-1)/n)
    rng = np.random.default_rng(3)
    keys = [((s, 0), p) for s in range(6) for p in range(13)]  # bins of 5, 5, 3 queries per set
    pairs = {k: (float(rng.random() < 0.4), float(rng.random() < 0.5)) for k in keys}
    cells: dict = {}
    for (set_key, p), (a, b) in pairs.items():
        cells.setdefault((set_key, p // 5), []).append(b - a)
    w = 1 / (6 * 3)  # 6 sets in each of 3 bins
    sd = np.sqrt(sum(w**2 * np.var(d, ddof=1) / len(d) for d in cells.values()))
    r = paired_bootstrap(pairs, bin_size=5, n_resamples=20_000)
    assert (r.ci_high - r.ci_low) / (2 * 1.96 * sd) == pytest.approx(1.0, abs=0.05)


def test_constant_differences_give_a_point_interval_above_zero():
    # every query gains exactly 0.25: every replicate is 0.25
    pairs = {((s, 0), p): (0.5, 0.75) for s in range(3) for p in range(10)}
    r = paired_bootstrap(pairs, bin_size=5, n_resamples=500)
    assert r.diff == pytest.approx(0.25)
    assert r.ci_low == pytest.approx(0.25) and r.ci_high == pytest.approx(0.25)
    assert r.excludes_zero and r.n_queries == 30


def test_weights_follow_the_curve_not_the_query_count():
    # bin 0 has 5 queries (gain 1), bin 1 one query (gain 0): Avg weighs the bins equally
    pairs = {(("s", 0), p): (0.0, 1.0) for p in range(5)} | {(("s", 0), 5): (0.0, 0.0)}
    r = paired_bootstrap(pairs, bin_size=5, n_resamples=200)
    assert r.diff == pytest.approx(0.5)  # not 5/6


def test_point_estimate_is_the_difference_of_the_curves_avg():
    rng = np.random.default_rng(1)
    keys = [((s, 0), p) for s in range(4) for p in range(rng.integers(20, 36))]
    base = {k: float(rng.random() < 0.3) for k in keys}
    trained = {k: float(rng.random() < 0.6) for k in keys}
    r = paired_bootstrap(pair_scores(base.items(), trained.items()), bin_size=5, n_resamples=2000)

    def avg(scores):
        return position_curve(((k[0], k[1], v) for k, v in scores.items()), 5).avg

    assert r.diff == pytest.approx(avg(trained) - avg(base))
    assert r.ci_low < r.diff < r.ci_high
    assert r.excludes_zero  # 0.3 -> 0.6 on ~110 queries is far from noise


def test_unpaired_queries_are_an_error():
    with pytest.raises(ValueError, match="different queries"):
        pair_scores([((("a", 0), 0), 1.0)], [((("a", 0), 1), 1.0)])


def test_compare_predictions_reads_prediction_rows():
    rows = [
        {"context_tokens": 1024, "set_id": s, "position_id": p, "score": 1.0, "strict_score": 0.0}
        for s in range(2)
        for p in range(5)
    ]
    better = [{**r, "strict_score": 1.0} for r in rows]
    r = compare_predictions(rows, better, bin_size=5, n_resamples=100)
    assert (r.base, r.trained, r.diff, r.ci_low) == (0.0, 1.0, 1.0, 1.0)
    same = compare_predictions(rows, better, bin_size=5, score_key="score", n_resamples=100)
    assert same.diff == 0.0
