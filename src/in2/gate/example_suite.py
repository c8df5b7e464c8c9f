"""The suite over the one-row-per-example table (see `tables.example_table`), by theme.

What every IN2 example must be: ids and kinds, the configured mix, each kind's shape (context
length, gold count), the row's own consistency, how the rows spread (lengths over the length
bins, documents over the splits), and, with the optional inputs, no probe n-grams and agreement
with the segment index.
"""

from __future__ import annotations

import great_expectations.expectations as gxe
from great_expectations.expectations.row_conditions import Column

from in2.gate.contract import LONG, MIN_PER_BIN
from in2.gate.expectations import (
    ExpectColumnValueFractionsToMatch,
    ExpectColumnValuesToBeBalancedOverBins,
)
from in2.gate.suites import expect, gold_count, where_kind
from in2.params import Params
from in2.registry import EXAMPLE_KINDS, LONG_KINDS


def example_expectations(
    params: Params, with_segments: bool, with_leakage: bool = False
) -> list[gxe.Expectation]:
    """Checks on the one-row-per-example table (see `example_table`)."""
    out = [
        *_kind_and_mix_checks(params),
        *_long_context_checks(params),
        *_short_and_general_checks(),
        *_row_checks(),
        *_spread_checks(params),
    ]
    if with_leakage:
        out.append(_leakage_check(params))
    if with_segments:
        out += _segment_index_checks()
    return out


def _kind_and_mix_checks(params: Params) -> list[gxe.Expectation]:
    """Ids unique, kinds known, and the train split's share of each kind as configured."""
    return [
        expect(
            gxe.ExpectColumnValuesToBeUnique,
            "example_id.unique",
            "example_id is unique over train and val.",
            column="example_id",
        ),
        expect(
            gxe.ExpectColumnValuesToBeInSet,
            "kind.in_set",
            f"kind is one of {', '.join(EXAMPLE_KINDS.names())}.",
            column="kind",
            value_set=list(EXAMPLE_KINDS.names()),
        ),
        expect(
            ExpectColumnValueFractionsToMatch,
            "kind.mix.train",
            f"The train split's share of each kind is within {params.gate.mix_tolerance:g} "
            "(+ 1/n for rounding) of synthesize.mix.",
            column="kind",
            expected=dict(params.synthesize.mix),
            tolerance=params.gate.mix_tolerance,
            row_condition=Column("split") == "train",
        ),
    ]


def _long_context_checks(params: Params) -> list[gxe.Expectation]:
    """The long-context kinds: contexts within the configured token range, gold counts."""
    c = params.synthesize.context_tokens
    lo, hi = c.min, c.max
    long_kinds = where_kind(*LONG_KINDS)
    return [
        expect(
            gxe.ExpectColumnValuesToBeBetween,
            "n_tokens.long_range",
            f"Long-context examples have {lo} to {hi} context tokens.",
            column="n_tokens",
            min_value=lo,
            max_value=hi,
            kind=LONG,
            row_condition=long_kinds,
        ),
        gold_count(
            "fine_grained.one_gold",
            "A fine-grained example has exactly one gold segment.",
            "fine_grained",
            min_value=1,
            max_value=1,
        ),
        gold_count(
            "integration.several_gold",
            "An integration example has two or more gold segments.",
            "integration",
            min_value=2,
        ),
    ]


def _short_and_general_checks() -> list[gxe.Expectation]:
    """Short-context examples are their gold segments only; general ones have no context."""
    return [
        gold_count(
            "short.has_gold",
            "A short-context example has at least one gold segment.",
            "short",
            min_value=1,
        ),
        expect(
            gxe.ExpectColumnPairValuesToBeEqual,
            "short.context_is_gold",
            "A short-context example's context is its gold segment(s) only.",
            kind="short",
            column_A="n_context",
            column_B="n_gold",
            row_condition=where_kind("short"),
        ),
        expect(
            gxe.ExpectColumnValuesToBeBetween,
            "general.no_context",
            "General instruction data has no context segments.",
            kind="general",
            column="n_context",
            min_value=0,
            max_value=0,
            row_condition=where_kind("general"),
        ),
        expect(
            gxe.ExpectColumnValuesToBeBetween,
            "general.no_tokens",
            "General instruction data has n_tokens 0.",
            kind="general",
            column="n_tokens",
            min_value=0,
            max_value=0,
            row_condition=where_kind("general"),
        ),
    ]


def _row_checks() -> list[gxe.Expectation]:
    """Each row's own consistency: a slot per gold segment, a question, an answer, new content."""
    return [
        expect(
            gxe.ExpectColumnPairValuesToBeEqual,
            "gold_slots.aligned",
            "gold_slots has one entry per gold segment.",
            column_A="n_gold_slots",
            column_B="n_gold",
        ),
        expect(
            gxe.ExpectColumnValuesToBeBetween,
            "question.non_empty",
            "Every question is non-empty.",
            column="question_chars",
            min_value=1,
        ),
        expect(
            gxe.ExpectColumnValuesToBeBetween,
            "answer.non_empty",
            "Every answer is non-empty.",
            column="answer_chars",
            min_value=1,
        ),
        expect(
            gxe.ExpectColumnValuesToBeUnique,
            "example.content_unique",
            "No two examples have the same kind, question, answer and context.",
            column="content_key",
        ),
    ]


def _spread_checks(params: Params) -> list[gxe.Expectation]:
    """Across the rows: train lengths balanced over the length bins, splits share no document."""
    c = params.synthesize.context_tokens
    lo, hi = c.min, c.max
    long_kinds = where_kind(*LONG_KINDS)
    return [
        expect(
            ExpectColumnValuesToBeBalancedOverBins,
            "n_tokens.balanced.train",
            f"Long-context lengths of the train split spread evenly over the "
            f"{c.bins} bins of {lo}-{hi} tokens (chi-square p >= {params.gate.alpha:g}).",
            kind=LONG,
            column="n_tokens",
            low=lo,
            high=hi,
            bins=c.bins,
            alpha=params.gate.alpha,
            min_n=MIN_PER_BIN * c.bins,
            row_condition=long_kinds & (Column("split") == "train"),
        ),
        expect(
            gxe.ExpectColumnValuesToBeBetween,
            "splits.disjoint_by_document",
            "Train and val share no document (source or context).",
            column="n_docs_in_other_split",
            min_value=0,
            max_value=0,
        ),
    ]


def _leakage_check(params: Params) -> gxe.Expectation:
    """No example shares an n-gram with a probe context, or the probes would test seen text."""
    return expect(
        gxe.ExpectColumnValuesToBeBetween,
        "leakage.probe_ngrams",
        f"No example shares a word {params.synthesize.decontam_ngram}-gram with a probe "
        "context (question, answer or context text).",
        column="n_probe_ngrams",
        min_value=0,
        max_value=0,
    )


def _segment_index_checks() -> list[gxe.Expectation]:
    """What only the segment index tells: ids known, token counts, documents of gold and fillers."""
    long_kinds = where_kind(*LONG_KINDS)
    return [
        expect(
            gxe.ExpectColumnValuesToBeBetween,
            "segments.known",
            "Every context segment id exists in data/segments.",
            column="n_unknown_segments",
            min_value=0,
            max_value=0,
        ),
        expect(
            gxe.ExpectColumnPairValuesToBeEqual,
            "n_tokens.matches_segments",
            "n_tokens equals the sum of the context segments' token counts.",
            column_A="n_tokens",
            column_B="n_tokens_from_segments",
        ),
        expect(
            gxe.ExpectColumnValuesToBeBetween,
            "gold.from_source_doc",
            "Every gold segment comes from the example's source_doc.",
            column="n_gold_from_other_docs",
            min_value=0,
            max_value=0,
        ),
        expect(
            gxe.ExpectColumnValuesToBeBetween,
            "fillers.from_other_docs",
            "No filler of a long-context example comes from the answer's own document.",
            column="n_fillers_from_source_doc",
            min_value=0,
            max_value=0,
            kind=LONG,
            row_condition=long_kinds,
        ),
    ]
