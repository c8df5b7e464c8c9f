"""The MLflow runs behind a report: which runs wrote the numbers shown, and their figures.

The probe stage logs numbers only; drawing is the report's job (in2.report.plots), so the report
attaches each model's curves and heatmap to the probe run that wrote that model's scores, where
the MLflow UI shows them beside the run's metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from in2 import layout
from in2.lineage.fingerprint import path_md5
from in2.lineage.tracking import EXPERIMENT
from in2.report.plots import Scores, plot_curves, plot_heatmap

RUN_NAMES = ("train", "probe-base", "probe-in2")
"""MLflow run names of the stages whose runs the page links (stages/train.py, stages/probe.py)."""


def find_run_ids(tracking_uri: str, results: Path = layout.PROBE_RESULTS) -> dict[str, str | None]:
    """The MLflow runs behind the numbers shown: run name -> id (None: no such run).

    A probe run tags the md5 of the scores.json it wrote (`output.<path>`), so the page names the
    run that wrote the very file it shows, not merely the newest run of that name: with
    experiments queued in parallel into one store, the newest can be another experiment's. The
    train run is the one the in2 probe run names (`train_run_id`: the run that made the model).
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    ids: dict[str, str | None] = dict.fromkeys(RUN_NAMES)
    if experiment is None:
        return ids
    for model in ("base", "in2"):
        scores = results / model / "scores.json"
        if not scores.is_file():
            continue
        tag = f"output.{scores.as_posix()}"
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"attributes.run_name = 'probe-{model}' and attributes.status = "
            f"'FINISHED' and tags.`{tag}` = '{path_md5(scores)}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if runs:
            ids[f"probe-{model}"] = runs[0].info.run_id
            if model == "in2":
                ids["train"] = runs[0].data.tags.get("train_run_id")
    return ids


def attach_figures(
    tracking_uri: str, run_ids: Mapping[str, str | None], scores: Scores, tasks: Sequence[str]
) -> None:
    """Log each probed model's curves and heatmap into its probe run (`probe-<model>`)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    for model, entry in scores.items():
        if run_id := run_ids.get(f"probe-{model}"):
            client.log_figure(run_id, plot_curves({model: entry}, tasks), "probe_curves.png")
            client.log_figure(run_id, plot_heatmap(entry, tasks), "heatmap.png")
