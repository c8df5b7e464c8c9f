"""What every probe runner produces, built in one place so the runners' outputs are identical.

A runner only turns each query into an answer text: the local runner (in2.probing.local) by
decoding the model, the API runner (in2.probing.api) by asking an endpoint. `task_run` scores
the answers into the rows of `results/probe/<model>/<task>.predictions.jsonl`
(`context_tokens`, `set_id`, `position_id`, `prediction`, `score`, `strict_score`) and the task's
position curves (all lengths together, each length, and the strict variant: see
`TaskSpec.strict_metric`), with the Avg and Gap intervals and the Gap's noise floor of the
all-lengths curve and of the strict one (in2.probing.uncertainty); `scores_summary` is
`scores.json`. `scored_rows` reads prediction rows back as the curves' (set, position, score).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from in2.probing.metrics import Bins, PositionCurve, position_curve, score, summary
from in2.probing.uncertainty import CurveUncertainty, curve_uncertainty
from in2.registry import PROBE_TASKS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskRun:
    """Predictions of one task (rows of `<task>.predictions.jsonl`), their curves and wall time."""

    predictions: list[dict[str, object]]
    curve: PositionCurve
    """The paper's metric, over every set of every length (a bin averages the sets reaching it)."""
    by_length: dict[int, PositionCurve]
    """Target context length -> the curve of that length's sets."""
    strict: PositionCurve
    """The strict variant of the metric (`TaskSpec.strict_metric`), over every set."""
    uncertainty: CurveUncertainty
    """Intervals and Gap noise floor of `curve`."""
    strict_uncertainty: CurveUncertainty
    """The same for `strict`."""
    seconds: float
    empty_answers: int | None = None
    """API runner: answers without text (content "" or a refusal); in scores.json per task."""


def by_context(contexts: list[dict], queries: list[dict]) -> Iterator[tuple[dict, list[dict]]]:
    """Each context with its queries, in file order: the order of the prediction rows."""
    for context in contexts:
        yield context, [q for q in queries if q["context_id"] == context["context_id"]]


Scored = list[tuple[tuple[int, int], int, float]]
"""(set key, position_id, score) per query; the set key is (context_tokens, set_id)."""


def scored_rows(
    rows: Iterable[Mapping[str, Any]], key: str = "score", length: int | None = None
) -> Scored:
    """Prediction rows as position_curve takes them. Sets of different lengths are different
    contexts: (length, set) identifies one. `length`: only that length's rows."""
    return [
        ((r["context_tokens"], r["set_id"]), int(r["position_id"]), float(r[key]))
        for r in rows
        if length is None or r["context_tokens"] == length
    ]


def task_run(
    task: str, queries: list[dict], answers: list[str], bins: Bins, seconds: float
) -> TaskRun:
    """Score each query's answer (stripped of surrounding whitespace) and bin the scores."""
    spec = PROBE_TASKS[task]
    predictions: list[dict[str, object]] = []
    for query, answer in zip(queries, answers, strict=True):
        text = answer.strip()
        gold = {out: query[out] for out in spec.answer} | {"keyword": query["keyword"]}
        predictions.append(
            {
                "context_tokens": query["context_tokens"],
                "set_id": query["set_id"],
                "position_id": query["position_id"],
                "prediction": text,
                "score": score(spec.metric, gold, text),
                "strict_score": score(spec.strict_metric, gold, text),
            }
        )

    paper_metric = scored_rows(predictions)
    curve = position_curve(paper_metric, bins)
    lengths = sorted({p["context_tokens"] for p in predictions})
    by_length = {
        length: position_curve(scored_rows(predictions, length=length), bins) for length in lengths
    }
    uncertainty = curve_uncertainty(paper_metric, bins)
    log.info(
        "%s: %d queries in %.1f s (%.2f s/query), Avg %.3f, Gap %.3f (95%% CI %.3f-%.3f; "
        "noise floor %.3f)",
        task,
        len(predictions),
        seconds,
        seconds / max(len(predictions), 1),
        curve.avg,
        curve.gap,
        *uncertainty.gap_ci,
        uncertainty.gap_noise_floor,
    )
    strict = scored_rows(predictions, "strict_score")
    return TaskRun(
        predictions,
        curve,
        by_length,
        position_curve(strict, bins),
        uncertainty,
        curve_uncertainty(strict, bins),
        seconds,
    )


def scores_summary(runs: Mapping[str, TaskRun]) -> dict[str, object]:
    """`scores.json`: each task's curve, Avg and Gap with its `uncertainty` (with those of each
    context length under `by_length`, the strict variant under `strict` and, from the API
    runner, `empty_answers`), plus the paper's "All" column: the mean of the tasks' Avgs and
    the mean of their Gaps."""
    scores = summary(
        {task: run.curve for task, run in runs.items()},
        by_length={task: run.by_length for task, run in runs.items()},
        strict={task: run.strict for task, run in runs.items()},
    )
    for task, run in runs.items():
        entry: dict[str, Any] = scores[task]  # type: ignore[assignment]
        entry["uncertainty"] = run.uncertainty.to_dict()
        entry["strict"]["uncertainty"] = run.strict_uncertainty.to_dict()
        if run.empty_answers is not None:
            entry["empty_answers"] = run.empty_answers
    return scores


def log_scores(mlflow: Any, runs: Mapping[str, TaskRun], scores: Mapping[str, Any]) -> None:
    """Log a probe run's scores to the active MLflow run: `<task>_bin_score` as a series with
    step = position bin (so the UI overlays the curves of two models), Avg, Gap, their strict
    variants, the Gap's interval and noise floor (`<task>_gap_ci_low`, `_gap_ci_high`,
    `_gap_noise_floor`, and `<task>_strict_...`), the wall time per task, the "All" columns
    and scores.json itself."""
    for task, run in runs.items():
        for step, value in enumerate(run.curve.bins):
            if value is not None:  # a bin of only ambiguous (skipped) positions
                mlflow.log_metric(f"{task}_bin_score", value, step=step)
        for step, value in enumerate(run.strict.bins):
            if value is not None:
                mlflow.log_metric(f"{task}_strict_bin_score", value, step=step)
        mlflow.log_metric(f"{task}_avg", run.curve.avg)
        mlflow.log_metric(f"{task}_gap", run.curve.gap)
        mlflow.log_metric(f"{task}_strict_avg", run.strict.avg)
        mlflow.log_metric(f"{task}_strict_gap", run.strict.gap)
        for prefix, u in ((task, run.uncertainty), (f"{task}_strict", run.strict_uncertainty)):
            mlflow.log_metric(f"{prefix}_gap_ci_low", u.gap_ci[0])
            mlflow.log_metric(f"{prefix}_gap_ci_high", u.gap_ci[1])
            mlflow.log_metric(f"{prefix}_gap_noise_floor", u.gap_noise_floor)
        mlflow.log_metric(f"{task}_seconds", run.seconds)
    for column in ("all", "all_strict"):
        mlflow.log_metric(f"{column}_avg", scores[column]["avg"])
        mlflow.log_metric(f"{column}_gap", scores[column]["gap"])
    mlflow.log_dict(dict(scores), "scores.json")
