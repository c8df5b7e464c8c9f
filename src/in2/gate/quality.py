"""The data quality gate: a Great Expectations suite over the synthesized IN2 data (`data/in2/`).

`train` must not start on data that breaks the recipe, so the gate checks the contract written by
`synthesize` (schema, kinds, mix, context lengths, gold segments where the example says they are)
and, above all, the property IN2 training is about: **the answer-bearing segments sit at uniformly
random positions of the context**. A pipeline bug that puts answers near the start (or end) of
every context would train exactly the lost-in-the-middle bias the paper removes, and no loss
curve shows it.

Uniformity is tested on a randomized probability integral transform of each gold slot of the
long-context kinds: `u = (slot + v) / n_slots` with `v ~ U(0, 1)`. If the slot is uniform on
`{0, ..., n_slots - 1}`, `u` is exactly Uniform(0, 1) whatever the context sizes, so one
Kolmogorov–Smirnov test and one chi-square test over `validate.position_bins` equal bins cover
contexts of every length at once. `v` comes from a hash of the example id, so the same data always
gives the same p-values. The tests need `5 × position_bins` positions (the chi-square rule of
five expected counts per bin); with fewer, the check passes and reports "insufficient data" and
the observed n rather than pretending to know. The gold slots of one integration example are
distinct (drawn without replacement), which if anything makes the tests conservative.

The checks run as three GX suites, one per derived table, each through a `Checkpoint` that
updates Data Docs: the raw examples (schema), one row per example (counts and lengths), one row
per gold slot (slot consistency and positions). The GX project lives in a temporary folder;
only the built Data Docs site is copied out.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
from great_expectations.checkpoint import UpdateDataDocsAction
from great_expectations.core.expectation_validation_result import ExpectationValidationResult
from great_expectations.data_context import AbstractDataContext
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import (
    ColumnAggregateExpectation,
    ColumnMapExpectation,
)
from great_expectations.expectations.metrics import (
    ColumnAggregateMetricProvider,
    ColumnMapMetricProvider,
    column_aggregate_value,
    column_condition_partial,
)
from great_expectations.expectations.row_conditions import Column
from scipy import stats

from in2.data.leakage import ngrams, probe_ngrams
from in2.params import KINDS, Params
from in2.qa.lookup import QUOTING_GENERATORS

LONG_KINDS = ("fine_grained", "integration")
LONG = "+".join(LONG_KINDS)
"""The `kind` of checks over both long-context kinds in summary.json."""
MIN_PER_BIN = 5
"""Fewest expected positions per bin before the uniformity tests are run (chi-square rule)."""

CONTRACT: dict[str, str] = {
    "example_id": "str",
    "qa_id": "str",
    "kind": "str",
    "context_segments": "int_list",
    "gold_segments": "int_list",
    "gold_slots": "int_list",
    "source_doc": "str",
    "question": "str",
    "answer": "str",
    "n_tokens": "int64",
}
"""Columns of data/in2/{train,val}.parquet and their types, as written by `synthesize`."""
NULLABLE = ("source_doc",)
"""General instruction data has no gold segments, so it need not name a source document."""

_RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 10}
ID_COLUMNS = ("example_id", "qa_id")
"""Columns that name a row in failure messages: the first one a suite's table has."""


# ---------------------------------------------------------------- custom metrics and expectations


def uniformity_tests(u: np.ndarray, bins: int) -> dict[str, Any]:
    """KS and chi-square tests of `u` against Uniform(0, 1); p-values are None when `u` is empty."""
    u = np.asarray(u, dtype=float)
    if len(u) == 0:
        return {"n": 0, "ks_statistic": None, "ks_p": None, "chi2_statistic": None, "chi2_p": None}
    ks = stats.kstest(u, "uniform")
    counts, _ = np.histogram(u, bins=bins, range=(0.0, 1.0))
    chi2 = stats.chisquare(counts)  # equal expected counts; values outside [0, 1] fail the KS
    return {
        "n": len(u),
        "ks_statistic": float(ks.statistic),
        "ks_p": float(ks.pvalue),
        "chi2_statistic": float(chi2.statistic),
        "chi2_p": float(chi2.pvalue),
        "bin_counts": [int(c) for c in counts],
    }


class ColumnUniformityTests(ColumnAggregateMetricProvider):
    """Metric `column.in2_uniformity_tests`: KS and chi-square p-values of a column vs U(0, 1)."""

    metric_name = "column.in2_uniformity_tests"
    value_keys = ("bins",)
    filter_column_isnull = True

    @column_aggregate_value(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, bins: int, **kwargs: Any) -> dict[str, Any]:
        return uniformity_tests(column.to_numpy(dtype=float), bins)


class ExpectColumnValuesToBeUniformlyDistributed(ColumnAggregateExpectation):
    """Expect a column to be a sample of Uniform(0, 1): KS and chi-square p-values >= alpha.

    Below `min_n` values the tests say little; the expectation then passes and reports
    "insufficient data" with the observed n.
    """

    alpha: float = 0.001
    bins: int = 10
    min_n: int = 50

    metric_dependencies = ("column.in2_uniformity_tests",)
    success_keys = ("alpha", "bins", "min_n")
    args_keys = ("column", "alpha", "bins", "min_n")

    def _validate(
        self,
        metrics: dict,
        runtime_configuration: dict | None = None,
        execution_engine: Any = None,
    ) -> dict[str, Any]:
        tests = metrics["column.in2_uniformity_tests"]
        settings = {"alpha": self.alpha, "min_n": self.min_n}
        if tests["n"] < self.min_n:  # p-values of so few points would only look like evidence
            details = {"n": tests["n"], **settings, "status": "insufficient data"}
            observed = f"insufficient data: n={tests['n']}, fewer than {self.min_n}; not tested"
            return {"success": True, "result": {"observed_value": observed, "details": details}}
        details = {**tests, **settings, "status": "tested"}
        success = tests["ks_p"] >= self.alpha and tests["chi2_p"] >= self.alpha
        observed = (
            f"n={tests['n']}, KS p={tests['ks_p']:.3g}, chi-square p={tests['chi2_p']:.3g} "
            f"(alpha {self.alpha:g}); counts per bin {tests['bin_counts']}"
        )
        return {"success": success, "result": {"observed_value": observed, "details": details}}


class ColumnValueFractions(ColumnAggregateMetricProvider):
    """Metric `column.in2_value_fractions`: the share of rows holding each value of a column."""

    metric_name = "column.in2_value_fractions"

    @column_aggregate_value(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, **kwargs: Any) -> dict[str, Any]:
        n = len(column)
        counts = column.value_counts()
        return {"n": n, "fractions": {str(k): float(c) / n for k, c in sorted(counts.items())}}


class ExpectColumnValueFractionsToMatch(ColumnAggregateExpectation):
    """Expect the share of each value to be within `tolerance` + 1/n of `expected` (absolute).

    The 1/n is rounding: n rows can only hit shares that are multiples of 1/n, and a mix
    realised by largest remainders is always within 1/n of the target. Values missing from
    `expected` count as expected share 0, missing values as observed 0.
    """

    expected: dict[str, float]
    tolerance: float = 0.02

    metric_dependencies = ("column.in2_value_fractions",)
    success_keys = ("expected", "tolerance")
    args_keys = ("column", "expected", "tolerance")

    def _validate(
        self,
        metrics: dict,
        runtime_configuration: dict | None = None,
        execution_engine: Any = None,
    ) -> dict[str, Any]:
        got = metrics["column.in2_value_fractions"]
        observed = got["fractions"]
        values = sorted(set(observed) | set(self.expected))
        diff = {v: observed.get(v, 0.0) - self.expected.get(v, 0.0) for v in values}
        worst = max(values, key=lambda v: abs(diff[v])) if values else None
        max_dev = abs(diff[worst]) if worst is not None else 0.0
        allowed = self.tolerance + 1 / got["n"] if got["n"] else 0.0
        success = got["n"] > 0 and max_dev <= allowed + 1e-12
        text = ", ".join(
            f"{v} {observed.get(v, 0.0):.3f} (expected {self.expected.get(v, 0.0):.3f})"
            for v in values
        )
        if worst is not None:
            text += (
                f"; largest difference {diff[worst]:+.3f} ({worst}), allowed ±{allowed:.3f} "
                f"(tolerance + 1/n, n={got['n']})"
            )
        details = {
            "n": got["n"],
            "observed": observed,
            "expected": dict(self.expected),
            "difference": diff,
            "max_abs_difference": max_dev,
            "tolerance": self.tolerance,
            "allowed": allowed,
        }
        return {"success": success, "result": {"observed_value": text, "details": details}}


def balance_test(values: np.ndarray, low: float, high: float, bins: int) -> dict[str, Any]:
    """Chi-square test of equal counts over `bins` equal-width bins of [low, high]."""
    counts, _ = np.histogram(np.asarray(values, dtype=float), bins=bins, range=(low, high))
    test = stats.chisquare(counts) if counts.sum() else None
    return {
        "n": int(counts.sum()),
        "bin_counts": [int(c) for c in counts],
        "chi2_statistic": float(test.statistic) if test else None,
        "chi2_p": float(test.pvalue) if test else None,
    }


class ColumnBinBalance(ColumnAggregateMetricProvider):
    """Metric `column.in2_bin_balance`: counts over equal-width bins and a chi-square p-value."""

    metric_name = "column.in2_bin_balance"
    value_keys = ("low", "high", "bins")
    filter_column_isnull = True

    @column_aggregate_value(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, low: float, high: float, bins: int, **kwargs: Any) -> dict:
        return balance_test(column.to_numpy(dtype=float), low, high, bins)


class ExpectColumnValuesToBeBalancedOverBins(ColumnAggregateExpectation):
    """Expect a column's values to spread evenly over equal-width bins of [low, high]:
    chi-square p >= alpha against equal counts (from `min_n` values; below, "insufficient data").
    """

    low: float
    high: float
    bins: int
    alpha: float = 0.001
    min_n: int = 20

    metric_dependencies = ("column.in2_bin_balance",)
    success_keys = ("low", "high", "bins", "alpha", "min_n")
    args_keys = ("column", "low", "high", "bins", "alpha", "min_n")

    def _validate(
        self,
        metrics: dict,
        runtime_configuration: dict | None = None,
        execution_engine: Any = None,
    ) -> dict[str, Any]:
        got = metrics["column.in2_bin_balance"]
        details = {**got, "alpha": self.alpha, "min_n": self.min_n}
        if got["n"] < self.min_n:
            observed = f"insufficient data: n={got['n']}, fewer than {self.min_n}; not tested"
            return {"success": True, "result": {"observed_value": observed, "details": details}}
        success = got["chi2_p"] >= self.alpha
        observed = (
            f"n={got['n']}, counts per bin {got['bin_counts']}, chi-square p={got['chi2_p']:.3g} "
            f"(alpha {self.alpha:g})"
        )
        return {"success": success, "result": {"observed_value": observed, "details": details}}


def _is_integer_list(value: Any) -> bool:
    if not isinstance(value, (list, tuple, np.ndarray)):
        return False
    arr = np.asarray(value)
    return arr.ndim == 1 and (arr.size == 0 or arr.dtype.kind in "iu")


class ColumnValuesIntegerList(ColumnMapMetricProvider):
    """Map metric `column_values.in2_integer_list`: the value is a flat list of integers."""

    condition_metric_name = "column_values.in2_integer_list"

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, **kwargs: Any) -> pd.Series:
        return column.map(_is_integer_list)


class ExpectColumnValuesToBeIntegerLists(ColumnMapExpectation):
    """Expect every value to be a flat list of integers (segment ids, slots)."""

    map_metric = "column_values.in2_integer_list"
    success_keys = ("mostly",)
    args_keys = ("column",)


# ------------------------------------------------------------------------------ derived tables


def relative_position(example_id: str, gold_index: int, slot: int, n_slots: int) -> float:
    """Randomized PIT of a slot: Uniform(0, 1) exactly when the slot is uniform over n_slots.

    The jitter `v` is a hash of (example id, gold index), so it is reproducible and independent of
    the slot itself.
    """
    digest = hashlib.blake2b(f"{example_id}\x1f{gold_index}".encode(), digest_size=8).digest()
    v = int.from_bytes(digest, "big") / 2.0**64
    return (slot + v) / n_slots


def _with_split(train: pd.DataFrame, val: pd.DataFrame) -> pd.DataFrame:
    data = pd.concat([train, val], ignore_index=True)
    data["split"] = ["train"] * len(train) + ["val"] * len(val)
    return data


def example_table(
    train: pd.DataFrame,
    val: pd.DataFrame,
    segments: pd.DataFrame | None = None,
    leakage: Leakage | None = None,
) -> pd.DataFrame:
    """One row per example with the counts the checks need (list columns reduced to numbers).

    With `segments` (seg_id, doc_id, n_tokens) it also counts what only the segment index knows:
    unknown ids, the context's real token count, gold segments from another document than
    `source_doc`, fillers from the answer's own document (which the recipe forbids) and documents
    the other split uses too. With `leakage`, the probe n-grams in the example's text.
    """
    data = _with_split(train, val)
    table = pd.DataFrame(
        {
            "example_id": data["example_id"],
            "split": data["split"],
            "kind": data["kind"],
            "n_tokens": data["n_tokens"].astype("int64"),
            "n_context": data["context_segments"].map(len).astype("int64"),
            "n_gold": data["gold_segments"].map(len).astype("int64"),
            "n_gold_slots": data["gold_slots"].map(len).astype("int64"),
            "question_chars": data["question"].str.strip().str.len(),
            "answer_chars": data["answer"].str.strip().str.len(),
            "content_key": [
                hashlib.sha1(repr((k, q, a, [int(s) for s in c])).encode()).hexdigest()
                for k, q, a, c in zip(
                    data["kind"],
                    data["question"],
                    data["answer"],
                    data["context_segments"],
                    strict=True,
                )
            ],
        }
    )
    if leakage is not None:
        table["n_probe_ngrams"] = [
            leakage.hits(f"{q}\n{a}\n" + " ".join(leakage.segment_text[int(s)] for s in c))
            for q, a, c in zip(
                data["question"], data["answer"], data["context_segments"], strict=True
            )
        ]
    if segments is None:
        table["n_docs_in_other_split"] = _docs_in_other_split(data, None)
        return table

    index = segments.set_index("seg_id")
    seg_doc = index["doc_id"].astype(str)
    source = data["source_doc"].astype(str)
    ctx = data["context_segments"].explode().dropna().astype("int64")
    gold = data["gold_segments"].explode().dropna().astype("int64")
    ctx_doc = ctx.map(seg_doc)
    gold_doc = gold.map(seg_doc)
    is_gold = pd.MultiIndex.from_arrays([ctx.index, ctx.to_numpy()]).isin(
        pd.MultiIndex.from_arrays([gold.index, gold.to_numpy()])
    )

    def per_example(flags: pd.Series) -> pd.Series:
        return flags.groupby(level=0).sum().reindex(table.index, fill_value=0).astype("int64")

    table["n_unknown_segments"] = per_example(ctx_doc.isna())
    table["n_tokens_from_segments"] = per_example(ctx.map(index["n_tokens"]).fillna(0))
    other_doc = gold_doc.to_numpy() != source.loc[gold.index].to_numpy()
    same_doc = ctx_doc.to_numpy() == source.loc[ctx.index].to_numpy()
    table["n_gold_from_other_docs"] = per_example(pd.Series(other_doc, index=gold.index))
    table["n_fillers_from_source_doc"] = per_example(
        pd.Series(~is_gold & same_doc, index=ctx.index)
    )
    table["n_docs_in_other_split"] = _docs_in_other_split(data, ctx_doc)
    return table


def _docs_in_other_split(data: pd.DataFrame, ctx_doc: pd.Series | None) -> list[int]:
    """Per example: how many of its documents (source and, if known, context) the other split
    uses too. Train and val must not share a document, or val measures memorisation."""
    docs = pd.DataFrame({"doc": data["source_doc"].astype(str), "split": data["split"]})
    if ctx_doc is not None:
        from_ctx = pd.DataFrame({"doc": ctx_doc.astype(str), "split": data["split"][ctx_doc.index]})
        docs = pd.concat([docs, from_ctx.dropna()])
    splits_of = docs.groupby("doc")["split"].agg(set)
    shared = {d for d, splits in splits_of.items() if len(splits) > 1}
    per_example = docs[docs["doc"].isin(shared)].groupby(level=0)["doc"].nunique()
    return per_example.reindex(data.index, fill_value=0).astype("int64").tolist()


@dataclass(frozen=True)
class Leakage:
    """What the leakage check compares: segment text and the probe contexts' n-grams."""

    segment_text: dict[int, str]
    probe: set[int]
    n: int

    @classmethod
    def of(cls, segment_text: dict[int, str], probe_texts: list[str], n: int) -> Leakage:
        return cls(segment_text, probe_ngrams(probe_texts, n), n)

    def hits(self, text: str) -> int:
        """Number of distinct probe n-grams in a text."""
        return len(ngrams(text, self.n) & self.probe)


def template_grounded(answer: str, cues: list[str], gold_text: str) -> bool:
    """Is a template answer recoverable from the gold text: each cue followed by its part?

    Fine-grained: "<cue> <answer>" occurs in the gold text. Integration: the answer is
    "1. <part> 2. <part> ...", and "<cue i> <part i>" occurs for every i (each split point of the
    numbering is tried, so a part that itself contains " 2. " does not break the check).
    """
    text = " ".join(gold_text.split())
    answer = " ".join(answer.split())
    if len(cues) == 1:
        return f"{cues[0]} {answer}" in text

    def rest_ok(i: int, rest: str) -> bool:
        head = f"{i + 1}. "
        if not rest.startswith(head):
            return False
        body = rest[len(head) :]
        if i == len(cues) - 1:
            return f"{cues[i]} {body}" in text
        marker = f" {i + 2}. "
        cuts = [j for j in range(len(body)) if body.startswith(marker, j)]
        return any(f"{cues[i]} {body[:j]}" in text and rest_ok(i + 1, body[j + 1 :]) for j in cuts)

    return bool(cues) and rest_ok(0, answer)


def quoted_grounded(answer: str, cues: list[str], gold_text: str) -> bool:
    """Is a quoting answer (sentence quote, record lookup) a verbatim piece of the gold text,
    and does every cue of its question occur there?"""
    text = " ".join(gold_text.split())
    return bool(cues) and all(" ".join(c.split()) in text for c in [answer, *cues])


def grounded(generator: str, answer: str, cues: list[str], gold_text: str) -> bool:
    """Grounding of one QA pair by its generator's rule; True for LLM pairs (an LLM answer
    need not quote its text)."""
    if generator in QUOTING_GENERATORS:
        return quoted_grounded(answer, cues, gold_text)
    if generator.startswith("template"):
        return template_grounded(answer, cues, gold_text)
    return True


def qa_table(
    qa: pd.DataFrame, segments: pd.DataFrame | None, segment_text: dict[int, str] | None
) -> pd.DataFrame:
    """One row per QA pair of data/qa: counts, and grounding of template pairs in gold text
    (`grounded` is True for other generators: an LLM answer need not quote its text)."""
    gold = qa["gold_segments"].map(lambda g: [int(s) for s in g])
    table = pd.DataFrame(
        {
            "qa_id": qa["qa_id"].astype(str),
            "kind": qa["kind"].astype(str),
            "generator": qa["generator"].astype(str),
            "n_gold": gold.map(len).astype("int64"),
            "question_chars": qa["question"].str.strip().str.len(),
            "answer_chars": qa["answer"].str.strip().str.len(),
        }
    )
    if segment_text is not None:
        table["grounded"] = [
            grounded(generator, a, list(cues), " ".join(segment_text.get(s, "") for s in g))
            for a, cues, g, generator in zip(
                qa["answer"], qa["keywords"], gold, table["generator"], strict=True
            )
        ]
    if segments is not None:
        doc_of = segments.set_index("seg_id")["doc_id"].astype(str)
        table["n_gold_from_other_docs"] = [
            sum(doc_of.get(s) != doc for s in g)
            for g, doc in zip(gold, qa["source_doc"].astype(str), strict=True)
        ]
    return table


def gold_slot_table(train: pd.DataFrame, val: pd.DataFrame) -> pd.DataFrame:
    """One row per gold segment: its recorded slot, what the context holds there, and `u`.

    `segment_at_slot` is -1 and `u` is NaN when the slot is outside the context.
    """
    data = _with_split(train, val)
    rows = []
    for eid, split, kind, ctx, gold, slots in zip(
        data["example_id"],
        data["split"],
        data["kind"],
        data["context_segments"],
        data["gold_segments"],
        data["gold_slots"],
        strict=True,
    ):
        n = len(ctx)
        for i, (segment, slot) in enumerate(zip(gold, slots, strict=False)):
            inside = 0 <= slot < n
            rows.append(
                (
                    eid,
                    split,
                    kind,
                    i,
                    int(segment),
                    int(slot),
                    n,
                    int(ctx[slot]) if inside else -1,
                    relative_position(eid, i, int(slot), n) if inside else np.nan,
                )
            )
    columns = {
        "example_id": "str",
        "split": "str",
        "kind": "str",
        "gold_index": "int64",
        "gold_segment": "int64",
        "slot": "int64",
        "n_slots": "int64",
        "segment_at_slot": "int64",
        "u": "float64",
    }
    return pd.DataFrame(rows, columns=list(columns)).astype(columns)


# ------------------------------------------------------------------------------------ the suites


def _expect(
    cls: type[gxe.Expectation], check: str, description: str, kind: str | None = None, **kwargs: Any
) -> gxe.Expectation:
    meta = {"check": check} if kind is None else {"check": check, "kind": kind}
    return cls(description=description, meta=meta, **kwargs)


def _where_kind(*kinds: str) -> Any:
    return Column("kind") == kinds[0] if len(kinds) == 1 else Column("kind").is_in(list(kinds))


def schema_expectations() -> list[gxe.Expectation]:
    """The contract of the raw train/val tables: column set, types, no missing values."""
    out = [
        _expect(
            gxe.ExpectTableColumnsToMatchSet,
            "schema.columns",
            f"Columns are exactly {', '.join(CONTRACT)}.",
            column_set=list(CONTRACT),
            exact_match=True,
        )
    ]
    for column, dtype in CONTRACT.items():
        if dtype == "int_list":
            exp = _expect(
                ExpectColumnValuesToBeIntegerLists,
                f"schema.type.{column}",
                f"{column} holds lists of integers.",
                column=column,
            )
        else:
            exp = _expect(
                gxe.ExpectColumnValuesToBeOfType,
                f"schema.type.{column}",
                f"{column} is of type {dtype}.",
                column=column,
                type_=dtype,
            )
        out.append(exp)
        if column not in NULLABLE:
            out.append(
                _expect(
                    gxe.ExpectColumnValuesToNotBeNull,
                    f"schema.not_null.{column}",
                    f"{column} is never missing.",
                    column=column,
                )
            )
    return out


def example_expectations(
    params: Params, with_segments: bool, with_leakage: bool = False
) -> list[gxe.Expectation]:
    """Checks on the one-row-per-example table (see `example_table`)."""
    c = params.synthesize.context_tokens
    lo, hi = c.min, c.max
    long_kinds = _where_kind(*LONG_KINDS)
    out = [
        _expect(
            gxe.ExpectColumnValuesToBeUnique,
            "example_id.unique",
            "example_id is unique over train and val.",
            column="example_id",
        ),
        _expect(
            gxe.ExpectColumnValuesToBeInSet,
            "kind.in_set",
            f"kind is one of {', '.join(KINDS)}.",
            column="kind",
            value_set=list(KINDS),
        ),
        _expect(
            ExpectColumnValueFractionsToMatch,
            "kind.mix.train",
            f"The train split's share of each kind is within {params.gate.mix_tolerance:g} "
            "(+ 1/n for rounding) of synthesize.mix.",
            column="kind",
            expected=dict(params.synthesize.mix),
            tolerance=params.gate.mix_tolerance,
            row_condition=Column("split") == "train",
        ),
        _expect(
            gxe.ExpectColumnValuesToBeBetween,
            "n_tokens.long_range",
            f"Long-context examples have {lo} to {hi} context tokens.",
            column="n_tokens",
            min_value=lo,
            max_value=hi,
            kind=LONG,
            row_condition=long_kinds,
        ),
        _expect(
            gxe.ExpectColumnValuesToBeBetween,
            "fine_grained.one_gold",
            "A fine-grained example has exactly one gold segment.",
            kind="fine_grained",
            column="n_gold",
            min_value=1,
            max_value=1,
            row_condition=_where_kind("fine_grained"),
        ),
        _expect(
            gxe.ExpectColumnValuesToBeBetween,
            "integration.several_gold",
            "An integration example has two or more gold segments.",
            kind="integration",
            column="n_gold",
            min_value=2,
            row_condition=_where_kind("integration"),
        ),
        _expect(
            gxe.ExpectColumnValuesToBeBetween,
            "short.has_gold",
            "A short-context example has at least one gold segment.",
            kind="short",
            column="n_gold",
            min_value=1,
            row_condition=_where_kind("short"),
        ),
        _expect(
            gxe.ExpectColumnPairValuesToBeEqual,
            "short.context_is_gold",
            "A short-context example's context is its gold segment(s) only.",
            kind="short",
            column_A="n_context",
            column_B="n_gold",
            row_condition=_where_kind("short"),
        ),
        _expect(
            gxe.ExpectColumnValuesToBeBetween,
            "general.no_context",
            "General instruction data has no context segments.",
            kind="general",
            column="n_context",
            min_value=0,
            max_value=0,
            row_condition=_where_kind("general"),
        ),
        _expect(
            gxe.ExpectColumnValuesToBeBetween,
            "general.no_tokens",
            "General instruction data has n_tokens 0.",
            kind="general",
            column="n_tokens",
            min_value=0,
            max_value=0,
            row_condition=_where_kind("general"),
        ),
        _expect(
            gxe.ExpectColumnPairValuesToBeEqual,
            "gold_slots.aligned",
            "gold_slots has one entry per gold segment.",
            column_A="n_gold_slots",
            column_B="n_gold",
        ),
        _expect(
            gxe.ExpectColumnValuesToBeBetween,
            "question.non_empty",
            "Every question is non-empty.",
            column="question_chars",
            min_value=1,
        ),
        _expect(
            gxe.ExpectColumnValuesToBeBetween,
            "answer.non_empty",
            "Every answer is non-empty.",
            column="answer_chars",
            min_value=1,
        ),
    ]
    out += [
        _expect(
            gxe.ExpectColumnValuesToBeUnique,
            "example.content_unique",
            "No two examples have the same kind, question, answer and context.",
            column="content_key",
        ),
        _expect(
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
        _expect(
            gxe.ExpectColumnValuesToBeBetween,
            "splits.disjoint_by_document",
            "Train and val share no document (source or context).",
            column="n_docs_in_other_split",
            min_value=0,
            max_value=0,
        ),
    ]
    if with_leakage:
        out.append(
            _expect(
                gxe.ExpectColumnValuesToBeBetween,
                "leakage.probe_ngrams",
                f"No example shares a word {params.synthesize.decontam_ngram}-gram with a probe "
                "context (question, answer or context text).",
                column="n_probe_ngrams",
                min_value=0,
                max_value=0,
            )
        )
    if with_segments:
        out += [
            _expect(
                gxe.ExpectColumnValuesToBeBetween,
                "segments.known",
                "Every context segment id exists in data/segments.",
                column="n_unknown_segments",
                min_value=0,
                max_value=0,
            ),
            _expect(
                gxe.ExpectColumnPairValuesToBeEqual,
                "n_tokens.matches_segments",
                "n_tokens equals the sum of the context segments' token counts.",
                column_A="n_tokens",
                column_B="n_tokens_from_segments",
            ),
            _expect(
                gxe.ExpectColumnValuesToBeBetween,
                "gold.from_source_doc",
                "Every gold segment comes from the example's source_doc.",
                column="n_gold_from_other_docs",
                min_value=0,
                max_value=0,
            ),
            _expect(
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
    return out


def qa_expectations(with_segments: bool, with_text: bool) -> list[gxe.Expectation]:
    """Checks on the QA pairs of data/qa (see `qa_table`)."""
    out = [
        _expect(
            gxe.ExpectColumnValuesToBeUnique, "qa.qa_id.unique", "qa_id is unique.", column="qa_id"
        ),
        _expect(
            gxe.ExpectColumnValuesToBeInSet,
            "qa.kind.in_set",
            f"A QA pair is one of {', '.join(LONG_KINDS)}.",
            column="kind",
            value_set=list(LONG_KINDS),
        ),
        _expect(
            gxe.ExpectColumnValuesToBeBetween,
            "qa.question.non_empty",
            "Every QA pair has a question.",
            column="question_chars",
            min_value=1,
        ),
        _expect(
            gxe.ExpectColumnValuesToBeBetween,
            "qa.answer.non_empty",
            "Every QA pair has an answer.",
            column="answer_chars",
            min_value=1,
        ),
        _expect(
            gxe.ExpectColumnValuesToBeBetween,
            "qa.fine_grained.one_gold",
            "A fine-grained pair needs exactly one segment.",
            kind="fine_grained",
            column="n_gold",
            min_value=1,
            max_value=1,
            row_condition=_where_kind("fine_grained"),
        ),
        _expect(
            gxe.ExpectColumnValuesToBeBetween,
            "qa.integration.several_gold",
            "An integration pair needs two or more segments.",
            kind="integration",
            column="n_gold",
            min_value=2,
            row_condition=_where_kind("integration"),
        ),
    ]
    if with_text:
        out.append(
            _expect(
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
            _expect(
                gxe.ExpectColumnValuesToBeBetween,
                "qa.gold.from_source_doc",
                "Every gold segment of a QA pair comes from its source_doc.",
                column="n_gold_from_other_docs",
                min_value=0,
                max_value=0,
            )
        )
    return out


def gold_slot_expectations(params: Params) -> list[gxe.Expectation]:
    """Checks on the one-row-per-gold-segment table (see `gold_slot_table`)."""
    gate = params.gate
    out = [
        _expect(
            gxe.ExpectColumnValuesToBeBetween,
            "gold_slot.not_negative",
            "Every gold slot is >= 0.",
            column="slot",
            min_value=0,
        ),
        _expect(
            gxe.ExpectColumnPairValuesAToBeGreaterThanB,
            "gold_slot.inside_context",
            "Every gold slot is < the number of context segments.",
            column_A="n_slots",
            column_B="slot",
        ),
        _expect(
            gxe.ExpectColumnPairValuesToBeEqual,
            "gold_slot.holds_gold_segment",
            "context_segments[gold_slot] is the gold segment.",
            column_A="segment_at_slot",
            column_B="gold_segment",
        ),
    ]
    for kind in ("all", *LONG_KINDS):
        kinds = LONG_KINDS if kind == "all" else (kind,)
        out.append(
            _expect(
                ExpectColumnValuesToBeUniformlyDistributed,
                f"gold_positions_uniform.{kind}",
                f"Gold relative positions of {' + '.join(kinds)} examples are Uniform(0, 1): "
                f"KS and chi-square ({gate.position_bins} bins) p >= {gate.alpha:g}; "
                f"tested from n >= {MIN_PER_BIN * gate.position_bins}.",
                kind="+".join(kinds),
                column="u",
                alpha=gate.alpha,
                bins=gate.position_bins,
                min_n=MIN_PER_BIN * gate.position_bins,
                row_condition=_where_kind(*kinds),
            )
        )
    return out


# ------------------------------------------------------------------------------------ the report


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one expectation, in the terms summary.json and the console use."""

    check: str
    """Stable id, e.g. `gold_positions_uniform.fine_grained` (the key in summary.json)."""
    description: str
    expectation: str
    """GX expectation type, e.g. `expect_column_values_to_be_uniformly_distributed`."""
    suite: str
    column: str | None
    kind: str | None
    success: bool
    observed: dict[str, Any]
    """The numbers behind the verdict: p-values, fractions, unexpected rows, or an error."""
    brief: str
    """One line for people: the observed value or the offending example ids."""


@dataclass(frozen=True)
class QualityReport:
    """All check results of one validation run; `success` is the gate."""

    results: list[CheckResult]
    rows: dict[str, int]
    settings: dict[str, Any]
    skipped: list[str] = field(default_factory=list)
    """Suites not run because the schema was broken (their checks would only crash)."""

    @property
    def success(self) -> bool:
        return not self.skipped and all(r.success for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.success]

    def to_summary(self) -> dict[str, Any]:
        """JSON-ready summary (DVC metrics file); the stage adds the dataset fingerprint."""
        return {
            "success": self.success,
            "n_expectations": len(self.results),
            "n_failed": len(self.failed),
            "failed": [r.check for r in self.failed],
            "skipped_suites": list(self.skipped),
            "rows": dict(self.rows),
            "settings": dict(self.settings),
            "expectations": {
                r.check: {
                    "expectation": r.expectation,
                    "suite": r.suite,
                    "description": r.description,
                    "column": r.column,
                    "kind": r.kind,
                    "success": r.success,
                    "observed": r.observed,
                }
                for r in self.results
            },
        }

    def metrics(self) -> dict[str, float]:
        """Numbers worth a metric in MLflow: the verdict, each p-value and the observed mix."""
        out = {"dq.success": float(self.success), "dq.n_failed": float(len(self.failed))}
        for r in self.results:
            for key in ("ks_p", "chi2_p"):
                if key in r.observed:
                    out[f"dq.{r.check}.{key}"] = float(r.observed[key])
            if r.expectation == ExpectColumnValueFractionsToMatch.expectation_type:
                for value, share in r.observed["observed"].items():
                    out[f"dq.{r.check}.{value}"] = float(share)
        return out

    def failures_text(self) -> str:
        """What failed and what was seen, for stderr; empty when the gate passes."""
        if self.success:
            return ""
        lines = [
            f"data quality gate FAILED: {len(self.failed)} of {len(self.results)} "
            "expectation(s) failed"
        ]
        lines += [f"  - {r.check}: {r.description} Observed: {r.brief}" for r in self.failed]
        if self.skipped:
            lines.append(f"  (suites {', '.join(self.skipped)} not run: fix the schema first)")
        return "\n".join(lines)


def _observed(result: dict[str, Any], column: str | None) -> tuple[dict[str, Any], str]:
    """(numbers for summary.json, one line for people) from a GX result dict."""
    if isinstance(result.get("observed_value"), str) and "details" in result:
        return result["details"], result["observed_value"]  # our own expectations
    observed = {k: result[k] for k in ("observed_value", "details") if k in result}
    observed |= {k: result[k] for k in ("element_count", "unexpected_count") if k in result}
    rows = result.get("partial_unexpected_index_list") or []
    id_column = next((c for c in ID_COLUMNS if rows and c in rows[0]), None)
    ids = [row[id_column] for row in rows] if id_column else []
    if ids:
        observed[f"{id_column}s"] = ids
    if result.get("unexpected_count"):
        observed["values"] = result.get("partial_unexpected_list", [])
    if "observed_value" in observed:
        return observed, " ".join(
            str(observed[k]) for k in ("observed_value", "details") if k in observed
        )
    brief = f"{observed.get('unexpected_count', 0)} of {observed.get('element_count', '?')} rows"
    if ids:
        brief += f", e.g. {id_column} {ids[:5]}"
    if observed.get("values"):
        brief += f" with {column} {observed['values'][:5]}"
    return observed, brief


def _exception_message(info: dict[str, Any]) -> str | None:
    """GX reports an exception flat or keyed by the metric that raised it."""
    if "raised_exception" in info:
        return info.get("exception_message") if info["raised_exception"] else None
    messages = [v.get("exception_message") for v in info.values() if isinstance(v, dict)]
    return "; ".join(dict.fromkeys(m for m in messages if m)) or None


def _check_result(suite: str, evr: ExpectationValidationResult) -> CheckResult:
    config = evr.expectation_config
    data = evr.to_json_dict()
    kwargs = config.kwargs
    column = kwargs.get("column") or (
        f"{kwargs['column_A']},{kwargs['column_B']}" if "column_A" in kwargs else None
    )
    observed, brief = _observed(data.get("result") or {}, column)
    if error := _exception_message(data.get("exception_info") or {}):
        observed["error"] = error
        brief = f"error: {error}"
    return CheckResult(
        check=config.meta["check"],
        description=config.description or config.type,
        expectation=config.type,
        suite=suite,
        column=column,
        kind=config.meta.get("kind"),
        success=bool(evr.success),
        observed=observed,
        brief=brief,
    )


# ----------------------------------------------------------------------------------- running GX


@contextmanager
def _gx_project() -> Iterator[AbstractDataContext]:
    """A throwaway file-backed GX project (file mode so Data Docs are built to disk)."""
    # GX reads this when the context starts; the pipeline runs offline and reports to nobody.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    # At INFO, GX logs every save of its throwaway config; our own log says what matters.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="in2-gx-") as root:
        context = gx.get_context(mode="file", project_root_dir=root)
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        context.variables.save()
        yield context


def _run_suite(
    context: AbstractDataContext,
    name: str,
    frame: pd.DataFrame,
    expectations: Iterable[gxe.Expectation],
    build_docs: bool,
) -> list[CheckResult]:
    suite = context.suites.add(gx.ExpectationSuite(name=name))
    for expectation in expectations:
        suite.add_expectation(expectation)
    batch = (
        context.data_sources.add_pandas(name)
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe(name)
    )
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch, suite=suite)
    )
    fmt = dict(_RESULT_FORMAT)
    if id_column := next((c for c in ID_COLUMNS if c in frame.columns), None):
        fmt["unexpected_index_column_names"] = [id_column]
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=name,
            validation_definitions=[validation],
            actions=[UpdateDataDocsAction(name="update_data_docs")] if build_docs else [],
            result_format=fmt,
        )
    )
    outcome = checkpoint.run(batch_parameters={"dataframe": frame})
    (suite_result,) = outcome.run_results.values()
    by_check = {r.check: r for r in (_check_result(name, e) for e in suite_result.results)}
    return [by_check[e.meta["check"]] for e in suite.expectations]


def validate_dataset(
    train: pd.DataFrame,
    val: pd.DataFrame,
    params: Params,
    docs_dir: Path | None,
    segments: pd.DataFrame | None = None,
    qa: pd.DataFrame | None = None,
    segment_text: dict[int, str] | None = None,
    probe_texts: list[str] | None = None,
) -> QualityReport:
    """Run the quality suites on the train and val tables; build Data Docs into `docs_dir`.

    `segments` (data/segments/segments.parquet) enables the checks that need the segment index;
    `qa` (data/qa/qa.parquet) the suite of QA pairs; `segment_text` their grounding and, with
    `probe_texts`, the leakage check. `docs_dir=None` skips Data Docs (faster, for tests).
    """
    leakage = None
    if segment_text is not None and probe_texts is not None:
        leakage = Leakage.of(segment_text, probe_texts, params.synthesize.decontam_ngram)
    build_docs = docs_dir is not None
    settings = {
        "alpha": params.gate.alpha,
        "position_bins": params.gate.position_bins,
        "mix_tolerance": params.gate.mix_tolerance,
        "uniformity_min_n": MIN_PER_BIN * params.gate.position_bins,
        "segment_checks": segments is not None,
        "qa_checks": qa is not None,
        "leakage_check": leakage is not None,
    }
    rows = {"train": len(train), "val": len(val)}
    with _gx_project() as context:
        raw = pd.concat([train, val], ignore_index=True)
        results = _run_suite(context, "in2_schema", raw, schema_expectations(), build_docs)
        skipped: list[str] = []
        if all(r.success for r in results):
            results += _run_suite(
                context,
                "in2_examples",
                example_table(train, val, segments, leakage),
                example_expectations(params, segments is not None, leakage is not None),
                build_docs,
            )
            results += _run_suite(
                context,
                "in2_gold_slots",
                gold_slot_table(train, val),
                gold_slot_expectations(params),
                build_docs,
            )
        else:
            skipped = ["in2_examples", "in2_gold_slots"]
        if qa is not None:
            results += _run_suite(
                context,
                "in2_qa_pairs",
                qa_table(qa, segments, segment_text),
                qa_expectations(segments is not None, segment_text is not None),
                build_docs,
            )
        if docs_dir is not None:
            site = Path(context.root_directory) / "uncommitted" / "data_docs" / "local_site"
            shutil.copytree(site, docs_dir, dirs_exist_ok=True)
    return QualityReport(results=results, rows=rows, settings=settings, skipped=skipped)
