"""Stage report: compare the probed models in reports/ (curves, the paper's Table 1, JSON, the
paired bootstrap of in2 − base) and render the report page reports/index.html (in2.report.page).

Reads results/probe/base/ and results/probe/in2/ (scores.json and the predictions of every task,
see in2.report.tables and in2.report.bootstrap), the data card's inputs metrics/synthesize.json and
reports/data_quality/summary.json, and the MLflow store for the run ids of the train and probe
runs. Logs the MLflow run `report`: per task the Avg difference and its interval.
"""

import json
from pathlib import Path

from in2.lineage.tracking import input_tags, mlflow_run, stage_inputs, tracking_uri
from in2.outputs import read_jsonl
from in2.report.bootstrap import compare_predictions
from in2.report.page import RESULTS, find_run_ids, write_page
from in2.report.tables import load_scores, write_report
from in2.stage import log, run_stage

MODELS = ("base", "in2")
OUT = Path("reports")
DATA_CARD = {
    "synthesize": Path("metrics/synthesize.json"),
    "validate": OUT / "data_quality/summary.json",
}
"""Stage -> the file of it the data card reads."""
VARIANTS = {"strict": "strict_score", "paper": "score"}
"""Comparison variant -> the prediction rows' score it compares (in2.probing.results)."""


def read_json(stage: str, path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `dvc repro {stage}` first")
    return json.loads(path.read_text())


def compare(tasks: list[str], bin_size: int, seed: int) -> dict[str, dict[str, dict]]:
    """Variant -> task -> the paired bootstrap of in2 − base over the tasks' predictions."""
    rows = {
        (m, t): read_jsonl(RESULTS / m / f"{t}.predictions.jsonl") for m in MODELS for t in tasks
    }
    return {
        variant: {
            t: compare_predictions(
                rows["base", t], rows["in2", t], bin_size, key, seed=seed
            ).to_dict()
            for t in tasks
        }
        for variant, key in VARIANTS.items()
    }


def main(params, args) -> None:
    scores = load_scores({m: RESULTS / m / "scores.json" for m in MODELS})
    card = {stage: read_json(stage, path) for stage, path in DATA_CARD.items()}
    tasks = params.probe.tasks
    comparison = compare(tasks, params.probe.bin_size, params.seed)
    write_report(scores, tasks, OUT, comparison)
    uri = tracking_uri()
    figures = [OUT / "probe_curves.png", *(OUT / f"heatmap_{m}.png" for m in MODELS)]
    run_ids = find_run_ids(uri)
    write_page(
        scores,
        tasks,
        figures,
        card["synthesize"],
        card["validate"],
        run_ids,
        uri,
        OUT / "index.html",
        comparison,
    )
    tags = input_tags(stage_inputs("report") or [RESULTS / m for m in MODELS])
    tags |= {f"{name}_run_id": run_id for name, run_id in run_ids.items() if run_id}
    with mlflow_run("report", params={"bin_size": params.probe.bin_size}, tags=tags) as mlflow:
        for variant, by_task in comparison.items():
            prefix = "" if variant == "paper" else "strict_"
            for task, c in by_task.items():
                for name in ("diff", "ci_low", "ci_high"):
                    mlflow.log_metric(f"{task}_{prefix}avg_{name}", c[name])
        mlflow.log_dict(comparison, "comparison.json")
    for task, c in comparison["strict"].items():
        log.info(
            "%s (strict): base %.3f, in2 %.3f, diff %+.3f, 95%% CI [%+.3f, %+.3f]",
            task,
            c["base"],
            c["trained"],
            c["diff"],
            c["ci_low"],
            c["ci_high"],
        )
    log.info(
        "wrote %s",
        ", ".join(
            str(OUT / n) for n in ("probe_curves.png", "scores.md", "comparison.json", "index.html")
        ),
    )


if __name__ == "__main__":
    run_stage(main, __doc__)
