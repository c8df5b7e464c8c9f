"""Stage probe: run VaL probing on one model, write results/probe/<model>/ and log an MLflow run.

`--model base` probes models/base, `--model in2` the IN2-trained models/in2 (local runner,
in2.probing.local); `--model api` probes the model behind the OpenAI-compatible endpoint of
`probe.openai` (API runner, in2.probing.api; not in the default pipeline, see docs/probing.md).
All read the same data/probes/ and write the same files, so their curves compare position by
position. The MLflow run names what it evaluated: `input.<path>` md5 tags, `checkpoint_md5`, and
for models/in2 the `train_run_id` that made it (from its trainer_state.json; docs/lineage.md).
"""

import json
from dataclasses import asdict
from pathlib import Path

from in2 import layout
from in2.lineage.fingerprint import path_md5
from in2.lineage.tracking import input_tags, log_dataset, mlflow_run, stage_inputs
from in2.model import load_model, load_tokenizer
from in2.outputs import atomic_dir, write_json, write_jsonl
from in2.probing.api import probe_endpoint
from in2.probing.local import probe_model
from in2.probing.results import log_scores, scores_summary
from in2.stage import log, run_stage

PROBES = layout.PROBES
MAKER = {"base": "base_model", "in2": "train"}
"""Model name -> the DVC stage that builds models/<name>/ (probed by the local runner)."""
API = "api"
"""Model name of the endpoint in `probe.openai` (probed by the API runner)."""


def main(params, args) -> None:
    model_dir = layout.model_dir(args.model)
    if args.model != API and not model_dir.is_dir():
        raise FileNotFoundError(
            f"{model_dir} does not exist; run `dvc repro {MAKER[args.model]}` first"
        )
    if not PROBES.is_dir():
        raise FileNotFoundError(f"{PROBES} does not exist; run `dvc repro probe_data` first")
    api = None
    if args.model == API:
        runs, api = probe_endpoint(params.probe, PROBES, layout.BASE_MODEL / "tokenizer.json")
        tags = {"model": API, "runner": "openai", "api_model": params.probe.openai.model}
        logged = params.probe.model_dump()
    else:
        runs = probe_model(load_model(model_dir), load_tokenizer(model_dir), params.probe, PROBES)
        tags = {"model": args.model, "runner": "local"}
        logged = params.probe.model_dump(exclude={"openai"})
    scores = scores_summary(runs)

    out = layout.probe_results(args.model)
    with atomic_dir(out) as tmp:
        for task, run in runs.items():
            write_jsonl(tmp / f"{task}.predictions.jsonl", run.predictions)
        write_json(tmp / "scores.json", scores)
    log.info("wrote %s", out)

    tags |= lineage(args.model, model_dir) | {
        f"output.{out.as_posix()}/scores.json": path_md5(out / "scores.json")
    }
    with mlflow_run(f"probe-{args.model}", params=logged, tags=tags) as mlflow:
        log_dataset(mlflow, PROBES, context="evaluation")
        log_scores(mlflow, runs, scores)  # the report stage adds this run's figures
        if api is not None:  # what the endpoint was asked and what it cost
            mlflow.log_dict(asdict(api), "api.json")
            for name in ("requests", "cached", "refusals", "cost_usd", "retry_wait_s"):
                mlflow.log_metric(f"api_{name}", getattr(api, name))


def lineage(model: str, model_dir: Path) -> dict[str, str]:
    """Tags naming what this run evaluated: the md5 of each input (as `dvc.lock` records it),
    the checkpoint's md5 and, for a trained checkpoint, the MLflow run that trained it."""
    if model == API:
        return input_tags([PROBES])
    tags = input_tags(stage_inputs(f"probe@{model}") or [PROBES, model_dir])
    tags["checkpoint_md5"] = tags[f"input.{model_dir.as_posix()}"]
    state = model_dir / "trainer_state.json"
    if state.is_file() and (run_id := json.loads(state.read_text()).get("mlflow_run_id")):
        tags["train_run_id"] = run_id
    return tags


if __name__ == "__main__":
    run_stage(
        main,
        __doc__,
        lambda p: p.add_argument("--model", required=True, choices=[*sorted(MAKER), API]),
    )
