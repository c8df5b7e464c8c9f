"""The expectation suites: what the gate asserts about each table (see `tables`).

Every expectation carries a stable check id (its key in summary.json) and a sentence for people;
the ones about one kind carry that kind too. The order of a suite is the order of summary.json's
`failed` list, the stage's stderr and Data Docs. Here: the schema of the raw tables, the QA pairs
and the gold slots; the suite over the examples, the largest, is `example_suite`.
"""

from __future__ import annotations

from typing import Any

import great_expectations.expectations as gxe
from great_expectations.expectations.row_conditions import Column

from in2.gate.contract import CONTRACT, MIN_PER_BIN, NULLABLE
from in2.gate.expectations import (
    ExpectColumnValuesToBeIntegerLists,
    ExpectColumnValuesToBeUniformlyDistributed,
)
from in2.gate.power import PositionPower
from in2.params import Params
from in2.registry import LONG_KINDS


def expect(
    cls: type[gxe.Expectation], check: str, description: str, kind: str | None = None, **kwargs: Any
) -> gxe.Expectation:
    """An expectation with its check id (and kind) in `meta`, where the report reads them."""
    meta = {"check": check} if kind is None else {"check": check, "kind": kind}
    return cls(description=description, meta=meta, **kwargs)


def where_kind(*kinds: str) -> Any:
    """The GX row condition that selects the rows of these kinds."""
    return Column("kind") == kinds[0] if len(kinds) == 1 else Column("kind").is_in(list(kinds))


def gold_count(check: str, description: str, kind: str, **bounds: int) -> gxe.Expectation:
    """`n_gold` of the rows of one kind within `bounds` (min_value, and max_value if any)."""
    return expect(
        gxe.ExpectColumnValuesToBeBetween,
        check,
        description,
        kind=kind,
        column="n_gold",
        **bounds,
        row_condition=where_kind(kind),
    )


def schema_expectations() -> list[gxe.Expectation]:
    """The contract of the raw train/val tables: column set, types, no missing values."""
    out = [
        expect(
            gxe.ExpectTableColumnsToMatchSet,
            "schema.columns",
            f"Columns are exactly {', '.join(CONTRACT)}.",
            column_set=list(CONTRACT),
            exact_match=True,
        )
    ]
    for column, dtype in CONTRACT.items():
        if dtype == "int_list":
            exp = expect(
                ExpectColumnValuesToBeIntegerLists,
                f"schema.type.{column}",
                f"{column} holds lists of integers.",
                column=column,
            )
        else:
            exp = expect(
                gxe.ExpectColumnValuesToBeOfType,
                f"schema.type.{column}",
                f"{column} is of type {dtype}.",
                column=column,
                type_=dtype,
            )
        out.append(exp)
        if column not in NULLABLE:
            out.append(
                expect(
                    gxe.ExpectColumnValuesToNotBeNull,
                    f"schema.not_null.{column}",
                    f"{column} is never missing.",
                    column=column,
                )
            )
    return out


def qa_expectations(with_segments: bool, with_text: bool) -> list[gxe.Expectation]:
    """Checks on the QA pairs of data/qa (see `qa_table`)."""
    out = _qa_pair_checks()
    if with_text:
        out.append(
            expect(
                gxe.ExpectColumnValuesToBeInSet,
                "qa.template.grounded",
                "Every template answer follows its cue(s) in the gold segments' text (quotes and "
                "lookups: the answer and the cue are verbatim pieces of it).",
                column="grounded",
                value_set=[True],
            )
        )
    if with_segments:
        out.append(
            expect(
                gxe.ExpectColumnValuesToBeBetween,
                "qa.gold.from_source_doc",
                "Every gold segment of a QA pair comes from its source_doc.",
                column="n_gold_from_other_docs",
                min_value=0,
                max_value=0,
            )
        )
    return out


def _qa_pair_checks() -> list[gxe.Expectation]:
    """What every QA pair needs: a unique id, a long kind, a question, an answer, gold counts."""
    return [
        expect(
            gxe.ExpectColumnValuesToBeUnique, "qa.qa_id.unique", "qa_id is unique.", column="qa_id"
        ),
        expect(
            gxe.ExpectColumnValuesToBeInSet,
            "qa.kind.in_set",
            f"A QA pair is one of {', '.join(LONG_KINDS)}.",
            column="kind",
            value_set=list(LONG_KINDS),
        ),
        expect(
            gxe.ExpectColumnValuesToBeBetween,
            "qa.question.non_empty",
            "Every QA pair has a question.",
            column="question_chars",
            min_value=1,
        ),
        expect(
            gxe.ExpectColumnValuesToBeBetween,
            "qa.answer.non_empty",
            "Every QA pair has an answer.",
            column="answer_chars",
            min_value=1,
        ),
        gold_count(
            "qa.fine_grained.one_gold",
            "A fine-grained pair needs exactly one segment.",
            "fine_grained",
            min_value=1,
            max_value=1,
        ),
        gold_count(
            "qa.integration.several_gold",
            "An integration pair needs two or more segments.",
            "integration",
            min_value=2,
        ),
    ]


def gold_slot_expectations(
    params: Params, power: PositionPower | None = None
) -> list[gxe.Expectation]:
    """Checks on the one-row-per-gold-segment table (see `gold_slot_table`); `power` adds what
    a PASS of the all-kinds position test rules out to its description (Data Docs show it)."""
    gate = params.gate
    out = [
        expect(
            gxe.ExpectColumnValuesToBeBetween,
            "gold_slot.not_negative",
            "Every gold slot is >= 0.",
            column="slot",
            min_value=0,
        ),
        expect(
            gxe.ExpectColumnPairValuesAToBeGreaterThanB,
            "gold_slot.inside_context",
            "Every gold slot is < the number of context segments.",
            column_A="n_slots",
            column_B="slot",
        ),
        expect(
            gxe.ExpectColumnPairValuesToBeEqual,
            "gold_slot.holds_gold_segment",
            "context_segments[gold_slot] is the gold segment.",
            column_A="segment_at_slot",
            column_B="gold_segment",
        ),
    ]
    for kind in ("all", *LONG_KINDS):
        kinds = LONG_KINDS if kind == "all" else (kind,)
        resolves = f" Resolution: {power.sentence()}." if power and kind == "all" else ""
        out.append(
            expect(
                ExpectColumnValuesToBeUniformlyDistributed,
                f"gold_positions_uniform.{kind}",
                f"Gold relative positions of {' + '.join(kinds)} examples are Uniform(0, 1): "
                f"KS and chi-square ({gate.position_bins} bins) p >= {gate.alpha:g}; "
                f"tested from n >= {MIN_PER_BIN * gate.position_bins}.{resolves}",
                kind="+".join(kinds),
                column="u",
                alpha=gate.alpha,
                bins=gate.position_bins,
                min_n=MIN_PER_BIN * gate.position_bins,
                row_condition=where_kind(*kinds),
            )
        )
    return out
