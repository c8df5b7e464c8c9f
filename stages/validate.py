"""Stage validate: the data quality gate between synthesize and train (data/in2 -> reports/).

Runs the Great Expectations suites of in2.gate.suites over train + val and the QA pairs (with the
segment text for grounding and the probe contexts for leakage), writes the Data Docs site and
summary.json (both atomically, also when the gate fails, so the failure can be read), logs the
summary to MLflow, and exits 1 when any expectation fails, so `dvc repro` stops before train.
"""

import argparse
import logging
import sys

from in2.gate.inputs import load_inputs
from in2.gate.runner import validate_dataset
from in2.layout import GATE_DOCS, GATE_SUMMARY, IN2_TRAIN, IN2_VAL
from in2.lineage.fingerprint import dataset_fingerprint
from in2.lineage.tracking import mlflow_run, stage_inputs
from in2.outputs import atomic_dir, write_json
from in2.params import Params
from in2.stage import run_stage

log = logging.getLogger("in2.validate")


def main(params: Params, args: argparse.Namespace) -> None:
    inputs = load_inputs()
    fingerprint = dataset_fingerprint([IN2_TRAIN, IN2_VAL])
    log.info(
        "validating %d train + %d val examples (md5 %s)",
        len(inputs.train),
        len(inputs.val),
        fingerprint["md5"],
    )
    with atomic_dir(GATE_DOCS) as docs:
        report = validate_dataset(inputs, params, docs)
    summary = {**report.to_summary(), "dataset": fingerprint}
    write_json(GATE_SUMMARY, summary)
    if power := report.settings["position_power"]:
        log.info("resolution: %s", power["statement"])
    log.info(
        "%d expectations, %d failed; Data Docs in %s",
        len(report.results),
        len(report.failed),
        GATE_DOCS / "index.html",
    )

    logged = {
        "validate": params.gate.model_dump(),
        "synthesize": {
            "mix": params.synthesize.mix,
            "context_tokens": params.synthesize.context_tokens.model_dump(),
            "decontam_ngram": params.synthesize.decontam_ngram,
        },
    }
    with mlflow_run(
        "validate",
        params=logged,
        tags={"dataset_md5": fingerprint["md5"]},
        inputs=stage_inputs("validate"),
    ) as mlflow:
        mlflow.log_dict(summary, "data_quality_summary.json")
        mlflow.log_metrics(report.metrics())

    if not report.success:
        print(report.failures_text(), file=sys.stderr)
        print(f"Details: {GATE_DOCS / 'index.html'}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_stage(main, __doc__)
