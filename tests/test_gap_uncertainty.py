"""The Gap's interval and noise floor (in2.probing.uncertainty) and the paired Gap difference."""

import numpy as np
import pytest

from in2.probing.metrics import Bins, position_curve
from in2.probing.uncertainty import Cells, curve_uncertainty
from in2.report.bootstrap import paired_bootstrap

SETS, POSITIONS, BIN = 4, 100, 10


def model(accuracy_at, seed: int) -> list[tuple[tuple[int, int], int, float]]:
    """(set key, position, 0/1 score) of a model right with probability accuracy_at(position)."""
    rng = np.random.default_rng(seed)
    return [
        ((1024, s), p, float(rng.random() < accuracy_at(p)))
        for s in range(SETS)
        for p in range(POSITIONS)
    ]


def flat(p: int) -> float:
    return 0.5


def u_shaped(p: int) -> float:
    """0.9 at both ends of the context, 0.3 in its middle: lost in the middle."""
    return 0.3 + 0.6 * (2 * p / (POSITIONS - 1) - 1) ** 2


def test_a_flat_models_gap_interval_covers_its_noise_floor():
    scored = model(flat, seed=1)
    u = curve_uncertainty(scored, Bins(BIN), n_resamples=4000, n_shuffles=1000)
    curve = position_curve(scored, BIN)
    assert curve.gap > 0.05  # noise alone gives a Gap: 10 bins of 40 queries
    assert u.gap_ci[0] <= u.gap_noise_floor <= u.gap_ci[1]
    assert not u.gap_above_noise
    assert u.avg_ci[0] < 0.5 < u.avg_ci[1]


def test_a_u_shaped_models_gap_interval_excludes_its_noise_floor():
    scored = model(u_shaped, seed=2)
    u = curve_uncertainty(scored, Bins(BIN), n_resamples=4000, n_shuffles=1000)
    assert u.gap_ci[0] > u.gap_noise_95 > u.gap_noise_floor
    assert u.gap_above_noise


def test_the_noise_floor_is_computed_from_the_bin_sizes():
    # a flat model's Gap is noise, whose size goes as 1 / sqrt(queries per bin): 4x the sets
    # (4x the queries in every bin) halves the floor
    few = curve_uncertainty(model(flat, seed=3), Bins(BIN), n_resamples=10, n_shuffles=2000)
    rng = np.random.default_rng(4)
    many = [
        ((1024, s), p, float(rng.random() < 0.5)) for s in range(4 * SETS) for p in range(POSITIONS)
    ]
    more = curve_uncertainty(many, Bins(BIN), n_resamples=10, n_shuffles=2000)
    assert more.gap_noise_floor / few.gap_noise_floor == pytest.approx(0.5, abs=0.08)


def test_a_constant_model_has_no_noise():
    scored = [((1024, s), p, 0.75) for s in range(SETS) for p in range(POSITIONS)]
    u = curve_uncertainty(scored, Bins(BIN), n_resamples=200, n_shuffles=200)
    assert u.gap_ci == [0.0, 0.0] and u.gap_noise_floor == 0.0
    assert u.avg_ci == pytest.approx([0.75, 0.75])


def test_the_paired_gap_difference():
    base, trained = model(flat, seed=5), model(u_shaped, seed=6)
    pairs = {(s, p): (b, t) for (s, p, b), (_, _, t) in zip(base, trained, strict=True)}
    r = paired_bootstrap(pairs, BIN, n_resamples=4000)
    assert r.base_gap == pytest.approx(position_curve(base, BIN).gap)
    assert r.trained_gap == pytest.approx(position_curve(trained, BIN).gap)
    assert r.gap_diff == pytest.approx(r.trained_gap - r.base_gap)
    assert r.gap_ci_low > 0 and r.gap_excludes_zero
    same = paired_bootstrap({k: (b, b) for k, (b, _) in pairs.items()}, BIN, n_resamples=500)
    assert (same.gap_diff, same.gap_ci_low, same.gap_ci_high) == (0.0, 0.0, 0.0)


def test_one_model_and_a_pair_draw_the_same_resamples():
    # the probe stage resamples one model's scores, the report both models' at once: with the
    # same seed the first model's replicates are identical, whatever order the rows came in
    scored = model(u_shaped, seed=7)
    keys = [(s, p) for s, p, _ in scored]
    one = np.array([v for _, _, v in scored])
    pair = np.stack([one, 1 - one], axis=1)
    cells = Cells.of(keys, Bins(BIN))
    shuffled = np.random.default_rng(8).permutation(len(keys))
    cells_shuffled = Cells.of([keys[i] for i in shuffled], Bins(BIN))
    alone = cells.resampled_means(one, 50, seed=0)
    together = cells_shuffled.resampled_means(pair[shuffled], 50, seed=0)
    assert np.array_equal(alone, together[..., 0])


def test_paper_binning_cells_leave_out_the_last_position_of_each_bin():
    keys = [("s", p) for p in range(23)]
    cells = Cells.of(keys, Bins(5, "paper"))
    binned = sorted(int(r) for m in cells.members for r in m)
    assert binned == [p for p in range(20) if p % 5 != 4]
    assert cells.weights.shape == (4, 4)
