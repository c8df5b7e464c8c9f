"""Stage validate: the data quality gate between synthesize and train (data/in2 -> reports/).

Runs the Great Expectations suites of in2.gate.quality over train + val and the QA pairs (with the
segment text for grounding and the probe contexts for leakage), writes the Data Docs site and
summary.json (both atomically, also when the gate fails, so the failure can be read), logs the
summary to MLflow, and exits 1 when any expectation fails, so `dvc repro` stops before train.
"""

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

from in2.data.segments import SegmentStore
from in2.gate.quality import validate_dataset
from in2.lineage.fingerprint import dataset_fingerprint
from in2.lineage.tracking import mlflow_run, stage_inputs
from in2.model import BASE_DIR, load_tokenizer
from in2.outputs import atomic_dir, read_jsonl, write_json
from in2.params import Params
from in2.stage import run_stage

log = logging.getLogger("in2.validate")
DATA = [Path("data/in2/train.parquet"), Path("data/in2/val.parquet")]
SEGMENTS = Path("data/segments")
QA = Path("data/qa/qa.parquet")
PROBES = Path("data/probes")
OUT = Path("reports/data_quality")


def main(params: Params, args: argparse.Namespace) -> None:
    train, val = (pd.read_parquet(p) for p in DATA)
    fingerprint = dataset_fingerprint(DATA)
    log.info(
        "validating %d train + %d val examples (md5 %s)", len(train), len(val), fingerprint["md5"]
    )
    store = SegmentStore.open(SEGMENTS)
    probe_texts = [
        r["text"] for f in sorted(PROBES.glob("*/contexts.jsonl")) for r in read_jsonl(f)
    ]
    with atomic_dir(OUT / "docs") as docs:
        report = validate_dataset(
            train,
            val,
            params,
            docs,
            segments=store.index,
            qa=pd.read_parquet(QA),
            segment_text=store.texts(load_tokenizer(BASE_DIR)),
            probe_texts=probe_texts,
        )
    summary = {**report.to_summary(), "dataset": fingerprint}
    write_json(OUT / "summary.json", summary)
    log.info(
        "%d expectations, %d failed; Data Docs in %s",
        len(report.results),
        len(report.failed),
        OUT / "docs" / "index.html",
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
        print(f"Details: {OUT / 'docs' / 'index.html'}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_stage(main, __doc__)
