"""What every probe runner produces, built in one place so the runners' outputs are identical.

A runner only turns each query into an answer text: the local runner (in2.probe_runner) by
decoding the model, the API runner (in2.probe_openai) by asking an endpoint. `task_run` scores
the answers into the rows of `results/probe/<model>/<task>.predictions.jsonl` (`set_id`,
`position_id`, `prediction`, `score`) and the task's position curve; `scores_summary` is
`scores.json`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from in2.probe_metrics import PositionCurve, overall, position_curve, score
from in2.probes import TASKS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskRun:
    """Predictions of one task (rows of `<task>.predictions.jsonl`), their curve and wall time."""

    predictions: list[dict[str, object]]
    curve: PositionCurve
    seconds: float


def by_context(contexts: list[dict], queries: list[dict]) -> Iterator[tuple[dict, list[dict]]]:
    """Each context with its queries, in file order: the order of the prediction rows."""
    for context in contexts:
        yield context, [q for q in queries if q["context_id"] == context["context_id"]]


def task_run(
    task: str, queries: list[dict], answers: list[str], bin_size: int, seconds: float
) -> TaskRun:
    """Score each query's answer (stripped of surrounding whitespace) and bin the scores."""
    spec = TASKS[task]
    predictions: list[dict[str, object]] = []
    for query, answer in zip(queries, answers, strict=True):
        text = answer.strip()
        gold = {out: query[out] for out in spec.answer}
        predictions.append(
            {
                "set_id": query["set_id"],
                "position_id": query["position_id"],
                "prediction": text,
                "score": score(spec.metric, gold, text),
            }
        )
    curve = position_curve(
        ((p["set_id"], p["position_id"], p["score"]) for p in predictions), bin_size
    )
    log.info(
        "%s: %d queries in %.1f s (%.2f s/query), Avg %.3f, Gap %.3f",
        task,
        len(predictions),
        seconds,
        seconds / max(len(predictions), 1),
        curve.avg,
        curve.gap,
    )
    return TaskRun(predictions, curve, seconds)


def scores_summary(runs: Mapping[str, TaskRun]) -> dict[str, object]:
    """`scores.json`: each task's curve, Avg and Gap, plus the paper's "All" column."""
    summary: dict[str, object] = {task: run.curve.to_dict() for task, run in runs.items()}
    summary["all"] = overall({task: run.curve for task, run in runs.items()})
    return summary
