"""VaL probing metrics on hand-computed cases (the paper's evaluation script is the reference)."""

from __future__ import annotations

import pytest

from in2.probing.metrics import (
    SCORERS,
    label_match,
    name_match,
    overall,
    position_curve,
    relaxed_match,
    score,
    word_recall,
    word_recall_beyond_keyword,
)
from in2.registry import PROBE_TASKS


def test_word_recall_counts_distinct_lowercased_words() -> None:
    # gold words {the, cat, sat, on, mat} (5, "the" twice); found: the, cat, mat
    assert word_recall("The cat sat on the mat", "the CAT is on a mat") == pytest.approx(4 / 5)
    assert word_recall("The cat sat.", "The cat sat.") == 1.0


def test_word_recall_keeps_punctuation_on_words() -> None:
    # whitespace split only, as the paper: "sat." and "sat" are different words
    assert word_recall("The cat sat.", "the cat sat") == pytest.approx(2 / 3)


def test_word_recall_empty_prediction_scores_zero() -> None:
    assert word_recall("The cat sat.", "") == 0.0
    assert word_recall("The cat sat.", "   \n") == 0.0


def test_empty_gold_is_an_error_not_a_score() -> None:
    with pytest.raises(ValueError, match="empty"):
        word_recall("  ", "anything")
    with pytest.raises(ValueError, match="empty"):
        name_match("...", "anything")


def test_name_match_is_case_sensitive_substring_with_dots_stripped() -> None:
    assert name_match("get_value", "The function is `get_value`.") == 1.0
    assert name_match("get_value.", "get_value") == 1.0
    assert name_match("get_value", "Get_Value") == 0.0
    assert name_match("get_value", "") == 0.0


def test_relaxed_match_label_or_description() -> None:
    assert relaxed_match("Lightning", "Weather phenomenon.", "it is LIGHTNING, a storm") == 1.0
    assert relaxed_match("Lightning", "Weather phenomenon.", "a weather phenomenon!") == 1.0
    assert relaxed_match("Lightning", "Weather phenomenon", "thunder") == 0.0
    assert relaxed_match("Lightning", "Weather phenomenon", "") == 0.0


def test_strict_document_recall_ignores_the_echoed_keyword() -> None:
    gold = "The river Thames flows through London to reach North Sea"  # 10 distinct words
    keyword = "flows through London to reach"
    echo = "Answer: flows through London to reach"
    # paper rule: flows, through, london, to, reach = 5 of 10 words for an echo
    assert word_recall(gold, echo) == 0.5
    # strict: only {the, river, thames, north, sea} count (the keyword's words are given)
    assert word_recall_beyond_keyword(gold, keyword, echo) == 0.0
    assert word_recall_beyond_keyword(gold, keyword, "the Thames ... North Sea") == 0.8
    # no word outside the keyword: plain recall
    assert word_recall_beyond_keyword("a b", "b a", "a") == 0.5


def test_strict_database_match_needs_the_label() -> None:
    wrong_record = "Q99: scientific article"
    assert relaxed_match("Quantum dots", "scientific article", wrong_record) == 1.0
    assert label_match("Quantum dots", wrong_record) == 0.0
    assert label_match("Quantum dots.", "label: QUANTUM DOTS") == 1.0


def test_every_metric_has_a_registered_strict_variant() -> None:
    specs = {name: PROBE_TASKS[name] for name in PROBE_TASKS}
    strict = {spec.metric: spec.strict_metric for spec in specs.values()}
    assert set(strict) == {"word_recall", "name_match", "relaxed_match"}
    assert set(strict.values()) <= set(SCORERS)
    gold = {"completion": "a b c", "keyword": "a", "label": "L", "description": "d"}
    assert score(strict["word_recall"], gold, "a b") == 0.5
    assert score(strict["relaxed_match"], gold, "d") == 0.0


def test_score_dispatches_by_metric_name() -> None:
    assert score("word_recall", {"completion": "a b"}, "a") == 0.5
    assert score("name_match", {"completion": "foo"}, "foo()") == 1.0
    assert score("relaxed_match", {"label": "X1", "description": "d"}, "x1") == 1.0
    with pytest.raises(ValueError, match="unknown metric"):
        score("bleu", {"completion": "a"}, "a")


def test_position_curve_bins_per_set_then_averages_over_sets() -> None:
    # bin_size 2; set 0: positions 0..3, set 1: positions 0..3
    scored = [
        (0, 0, 1.0), (0, 1, 0.0), (0, 2, 1.0), (0, 3, 1.0),
        (1, 0, 0.0), (1, 1, 0.0), (1, 2, 1.0), (1, 3, 0.0),
    ]  # fmt: skip
    curve = position_curve(scored, bin_size=2)
    # bin 0: set means 0.5 and 0.0 -> 0.25, std 0.25; bin 1: 1.0 and 0.5 -> 0.75, std 0.25
    assert curve.bins == [0.25, 0.75]
    assert curve.bins_std == [0.25, 0.25]
    assert curve.avg == 0.5
    assert curve.gap == 0.5
    assert curve.n_queries == 8
    assert curve.bin_size == 2


def test_position_curve_sets_of_different_sizes_and_partial_last_bin() -> None:
    # set 0 has 5 positions (last bin partial: only position 4), set 1 has 3
    scored = [(0, p, 1.0) for p in range(5)] + [(1, 0, 0.0), (1, 1, 1.0), (1, 2, 0.0)]
    curve = position_curve(scored, bin_size=2)
    # bin 0: 1.0 and 0.5 -> 0.75; bin 1: set 0 1.0, set 1 (position 2 only) 0.0 -> 0.5;
    # bin 2: only set 0 reaches it -> 1.0, std 0
    assert curve.bins == [0.75, 0.5, 1.0]
    assert curve.bins_std == [0.25, 0.5, 0.0]
    assert curve.avg == pytest.approx(0.75)
    assert curve.gap == 0.5


def test_position_curve_bin_with_only_skipped_queries_is_none() -> None:
    # positions 2 and 3 were skipped as ambiguous in the only set: bin 1 has no point
    curve = position_curve([(0, 0, 1.0), (0, 1, 1.0), (0, 4, 0.0)], bin_size=2)
    assert curve.bins == [1.0, None, 0.0]
    assert curve.bins_std == [0.0, None, 0.0]
    assert curve.avg == 0.5
    assert curve.gap == 1.0


def test_position_curve_rejects_empty_input_and_bad_bin_size() -> None:
    with pytest.raises(ValueError, match="no scored"):
        position_curve([], bin_size=5)
    with pytest.raises(ValueError, match="bin_size"):
        position_curve([(0, 0, 1.0)], bin_size=0)


def test_overall_is_the_mean_of_task_avgs_and_gaps() -> None:
    a = position_curve([(0, 0, 1.0), (0, 1, 0.0)], bin_size=1)  # avg 0.5, gap 1
    b = position_curve([(0, 0, 0.5)], bin_size=1)  # avg 0.5, gap 0
    assert overall({"document": a, "code": b}) == {"avg": 0.5, "gap": 0.5}
