"""Stage report: compare the probed models in reports/ (curves, the paper's Table 1, JSON) and
render the report page reports/index.html (in2.report_page).

Reads results/probe/base/scores.json and results/probe/in2/scores.json (see in2.report), the data
card's inputs metrics/synthesize.json and reports/data_quality/summary.json, and the MLflow store
for the run ids of the train and probe runs.
"""

import json
from pathlib import Path

from in2.report import load_scores, write_report
from in2.report_page import find_run_ids, write_page
from in2.stage import log, run_stage
from in2.tracking import tracking_uri

MODELS = ("base", "in2")
OUT = Path("reports")
DATA_CARD = {
    "synthesize": Path("metrics/synthesize.json"),
    "validate": OUT / "data_quality/summary.json",
}
"""Stage -> the file of it the data card reads."""


def read_json(stage: str, path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `dvc repro {stage}` first")
    return json.loads(path.read_text())


def main(params, args) -> None:
    scores = load_scores({m: Path("results/probe") / m / "scores.json" for m in MODELS})
    card = {stage: read_json(stage, path) for stage, path in DATA_CARD.items()}
    tasks = params.probe.tasks
    write_report(scores, tasks, OUT)
    uri = tracking_uri()
    figures = [OUT / "probe_curves.png", *(OUT / f"heatmap_{m}.png" for m in MODELS)]
    write_page(
        scores,
        tasks,
        figures,
        card["synthesize"],
        card["validate"],
        find_run_ids(uri),
        uri,
        OUT / "index.html",
    )
    log.info(
        "wrote %s", ", ".join(str(OUT / n) for n in ("probe_curves.png", "scores.md", "index.html"))
    )


if __name__ == "__main__":
    run_stage(main, __doc__)
