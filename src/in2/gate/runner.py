"""The data quality gate: Great Expectations suites over the synthesized IN2 data (`data/in2/`).

`train` must not start on data that breaks the recipe, so the gate checks the contract written by
`synthesize` (schema, kinds, mix, context lengths, gold segments where the example says they are)
and, above all, the property IN2 training is about: **the answer-bearing segments sit at uniformly
random positions of the context**. A pipeline bug that puts answers near the start (or end) of
every context would train exactly the lost-in-the-middle bias the paper removes, and no loss
curve shows it.

The checks run as four GX suites, one per table, each through a `Checkpoint` that updates Data
Docs: the raw examples (schema), one row per example (counts and lengths), one row per gold slot
(slot consistency and positions), one row per QA pair of data/qa (counts and grounding). If the
schema fails, the two suites over the examples are skipped (their checks would only crash). The
GX project lives in a temporary folder; only the built Data Docs site is copied out.

This module runs the gate; the rest of `in2.gate` is what it runs: `contract` (the columns,
types and kinds of data/in2), `inputs` (what the gate reads), `tables` (the tables derived from
the data), `suites` and `example_suite` (the expectations over each table), `expectations` (the
custom GX metrics and expectations) and `report` (the verdict, for summary.json, MLflow and the
console).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd
from great_expectations.checkpoint import UpdateDataDocsAction
from great_expectations.data_context import AbstractDataContext
from great_expectations.data_context.types.base import ProgressBarsConfig

from in2.gate.contract import CONTRACT, ID_COLUMNS, MIN_PER_BIN
from in2.gate.example_suite import example_expectations
from in2.gate.inputs import GateInputs
from in2.gate.power import PositionPower, position_power
from in2.gate.report import CheckResult, QualityReport, check_result
from in2.gate.suites import gold_slot_expectations, qa_expectations, schema_expectations
from in2.gate.tables import Leakage, example_table, gold_slot_table, qa_table, schema_frame
from in2.params import Params
from in2.registry import LONG_KINDS

_RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 10}


def validate_dataset(inputs: GateInputs, params: Params, docs_dir: Path | None) -> QualityReport:
    """Run the quality suites on the inputs; build Data Docs into `docs_dir`.

    Each optional input enables its checks (see `GateInputs`). `docs_dir=None` skips Data Docs
    (faster, for tests).
    """
    leakage = None
    if inputs.segment_text is not None and inputs.probe_texts is not None:
        leakage = Leakage.of(
            inputs.segment_text, inputs.probe_texts, params.synthesize.decontam_ngram
        )
    build_docs = docs_dir is not None
    with _gx_project() as context:
        results, skipped, power = _run_example_suites(context, inputs, params, leakage, build_docs)
        if inputs.qa is not None:
            results += _run_suite(
                context,
                "in2_qa_pairs",
                qa_table(inputs.qa, inputs.segments, inputs.segment_text),
                qa_expectations(inputs.segments is not None, inputs.segment_text is not None),
                build_docs,
            )
        if docs_dir is not None:
            site = Path(context.root_directory) / "uncommitted" / "data_docs" / "local_site"
            shutil.copytree(site, docs_dir, dirs_exist_ok=True)
    return QualityReport(
        results=results,
        rows={"train": len(inputs.train), "val": len(inputs.val)},
        settings={
            **_settings(inputs, params, leakage),
            "position_power": power.to_dict() if power else None,
        },
        skipped=skipped,
    )


def _run_example_suites(
    context: AbstractDataContext,
    inputs: GateInputs,
    params: Params,
    leakage: Leakage | None,
    build_docs: bool,
) -> tuple[list[CheckResult], list[str], PositionPower | None]:
    """The schema suite, then (only if it passed) the example and gold-slot suites.

    Returns the results, the names of the suites skipped and the position test's power.
    """
    train, val, segments = inputs.train, inputs.val, inputs.segments
    lists = [c for c, dtype in CONTRACT.items() if dtype == "int_list"]
    raw = schema_frame(train, val, lists)
    results = _run_suite(context, "in2_schema", raw, schema_expectations(), build_docs)
    del raw  # a second copy of every list column: ~1.3 GB at paper scale
    if not all(r.success for r in results):
        return results, ["in2_examples", "in2_gold_slots"], None
    results += _run_suite(
        context,
        "in2_examples",
        example_table(train, val, segments, leakage),
        example_expectations(params, segments is not None, leakage is not None),
        build_docs,
    )
    slots = gold_slot_table(train, val)
    power = _position_power(slots, params)
    results += _run_suite(
        context, "in2_gold_slots", slots, gold_slot_expectations(params, power), build_docs
    )
    return results, [], power


def _position_power(slots: pd.DataFrame, params: Params) -> PositionPower:
    """What a PASS of the all-kinds position test rules out, for this many gold positions."""
    n = int((slots["kind"].isin(LONG_KINDS) & slots["u"].notna()).sum())
    bins = params.gate.position_bins
    return position_power(n, params.gate.alpha, bins, min_n=MIN_PER_BIN * bins)


def _settings(inputs: GateInputs, params: Params, leakage: Leakage | None) -> dict[str, Any]:
    """The settings the verdict was reached with, and which optional checks ran."""
    return {
        "alpha": params.gate.alpha,
        "position_bins": params.gate.position_bins,
        "mix_tolerance": params.gate.mix_tolerance,
        "uniformity_min_n": MIN_PER_BIN * params.gate.position_bins,
        "segment_checks": inputs.segments is not None,
        "qa_checks": inputs.qa is not None,
        "leakage_check": leakage is not None,
    }


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
    """Run one suite over `frame` through its checkpoint; the results in the suite's order."""
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
    by_check = {r.check: r for r in (check_result(name, e) for e in suite_result.results)}
    return [by_check[e.meta["check"]] for e in suite.expectations]
