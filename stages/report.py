"""Stage report: compare the probed models in reports/ (curves, the paper's Table 1, JSON, the
paired bootstrap of in2 − base) and render the report page reports/index.html (in2.report.page).

Reads results/probe/base/ and results/probe/in2/ (scores.json and the predictions of every task,
see in2.report.tables and in2.report.bootstrap), the data card's inputs metrics/synthesize.json
and reports/data_quality/summary.json, and the MLflow store for the run ids of the train and
probe runs, to which it attaches each model's figures. Logs the MLflow run `report`: per task
the Avg and the Gap differences and their intervals.
"""

import json
from pathlib import Path

from in2 import layout
from in2.lineage.tracking import input_tags, mlflow_run, stage_inputs, tracking_uri
from in2.report.bootstrap import compare_models
from in2.report.page import PageContent, write_page
from in2.report.runs import attach_figures, find_run_ids
from in2.report.tables import load_scores, read_predictions, table1_scores, write_report
from in2.stage import log, run_stage

MODELS = ("base", "in2")
OUT = layout.REPORTS
DATA_CARD = {"synthesize": layout.SYNTHESIZE_METRICS, "validate": layout.GATE_SUMMARY}
"""Stage -> the file of it the data card reads."""


def read_json(stage: str, path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `dvc repro {stage}` first")
    return json.loads(path.read_text())


def main(params, args) -> None:
    scores = load_scores({m: layout.probe_results(m) / "scores.json" for m in MODELS})
    card = {stage: read_json(stage, path) for stage, path in DATA_CARD.items()}
    tasks = params.probe.tasks
    probe = params.probe
    predictions = read_predictions(layout.PROBE_RESULTS, MODELS, tasks)
    comparison = compare_models(predictions, tasks, probe.bin_size, probe.binning)
    table1 = table1_scores(predictions, MODELS, tasks, probe.bin_size)
    write_report(scores, tasks, OUT, comparison)
    uri = tracking_uri()
    run_ids = find_run_ids(uri)
    attach_figures(uri, run_ids, scores, tasks)
    content = PageContent(
        scores, tasks, card["synthesize"], card["validate"], run_ids, uri, comparison, table1
    )
    figures = [OUT / "probe_curves.png", *(OUT / f"heatmap_{m}.png" for m in MODELS)]
    write_page(content, figures, OUT / "index.html")

    tags = input_tags(stage_inputs("report") or [layout.probe_results(m) for m in MODELS])
    tags |= {f"{name}_run_id": run_id for name, run_id in run_ids.items() if run_id}
    logged = {"bin_size": probe.bin_size, "binning": probe.binning}
    with mlflow_run("report", params=logged, tags=tags) as mlflow:
        for variant, by_task in comparison.items():
            prefix = "" if variant == "paper" else "strict_"
            for task, c in by_task.items():
                for name in ("diff", "ci_low", "ci_high"):
                    mlflow.log_metric(f"{task}_{prefix}avg_{name}", c[name])
                    mlflow.log_metric(f"{task}_{prefix}gap_{name}", c[f"gap_{name}"])
        mlflow.log_dict(comparison, "comparison.json")
    for task, c in comparison["strict"].items():
        log.info(
            "%s (strict): Avg base %.3f, in2 %.3f, diff %+.3f, 95%% CI [%+.3f, %+.3f]; "
            "Gap diff %+.3f, 95%% CI [%+.3f, %+.3f]",
            *(task, c["base"], c["trained"], c["diff"], c["ci_low"], c["ci_high"]),
            *(c["gap_diff"], c["gap_ci_low"], c["gap_ci_high"]),
        )
    written = ("probe_curves.png", "scores.md", "comparison.json", "index.html")
    log.info("wrote %s", ", ".join(str(OUT / name) for name in written))


if __name__ == "__main__":
    run_stage(main, __doc__)
