"""MLflow runs for the stages that learn or measure something.

The store is anchored at the repository root (`DVC_ROOT`, which DVC sets for every stage, also
under `dvc exp run --temp` and queued experiments), so every run of every experiment lands in the
same `mlflow.db` and compares in one UI. `MLFLOW_TRACKING_URI` overrides it (a team server).

Every run is tagged with what it ran on (git commit, dirty flag, DVC stage and experiment) and
with `input.<path>` = DVC's md5 of each file or folder it read, equal to the md5 `dvc.lock`
records for that dep, so `in2 audit run` can walk back from a run to its data (docs/lineage.md).
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from in2.lineage.fingerprint import dir_md5, folder_listing, path_md5

log = logging.getLogger(__name__)

EXPERIMENT = "in2"


def repo_root() -> Path:
    """The DVC repository root: `DVC_ROOT` inside a stage, else the nearest folder with `.dvc/`."""
    if root := os.environ.get("DVC_ROOT"):
        return Path(root)
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return here


def tracking_uri(root: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI` if set, else a SQLite store at the repository root."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root or repo_root()) / 'mlflow.db'}"
    )


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=repo_root(), capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def lineage_tags() -> dict[str, str]:
    """Git commit, dirty flag and the DVC stage / experiment this process runs in.

    DVC 3.67 sets `DVC_STAGE` for every stage command (dvc/stage/run.py, `prepare_kwargs`) and,
    for `dvc exp run` (also --temp and --queue), `DVC_EXP_NAME` and `DVC_EXP_BASELINE_REV`, the
    commit the experiment is based on (dvc/repo/experiments/queue/base.py; names in dvc/env.py).
    """
    tags = {
        "git_commit": _git("rev-parse", "HEAD") or "unknown",
        "git_dirty": str(bool(_git("status", "--porcelain"))).lower(),
        "dvc_stage": os.environ.get("DVC_STAGE", "manual"),
    }
    if exp := os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = exp
    if baseline := os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc_exp_baseline_rev"] = baseline
    return tags


def stage_inputs(stage: str) -> list[str]:
    """The file and folder deps of a `dvc.yaml` stage (e.g. "train", "probe@in2"), as DVC
    resolves them (foreach items included); params are logged as MLflow params instead.

    Read from the working directory, not `DVC_ROOT`: DVC runs a stage in its wdir, which under
    `dvc exp run --temp` / `--queue` is the executor's copy of the repo, while `DVC_ROOT` names
    the main repo (dvc/repo/experiments/queue/base.py), whose files may differ.
    """
    from dvc.dependency.param import ParamsDependency
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo() as repo:  # the repo around the working directory
            (resolved,) = repo.stage.collect(stage)
    except DvcException as err:  # a script run by hand outside the repo: nothing to tag
        log.warning("no input.* tags: stage %s not found in a DVC repo (%s)", stage, err)
        return []
    return [d.def_path for d in resolved.deps if not isinstance(d, ParamsDependency)]


def input_tags(paths: Iterable[str | Path]) -> dict[str, str]:
    """`input.<path>` = DVC's md5 of each path that exists, relative to the working directory
    (where the stage read it; see `stage_inputs`)."""
    return {f"input.{Path(p).as_posix()}": path_md5(Path(p)) for p in paths if Path(p).exists()}


@contextmanager
def mlflow_run(
    run_name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
    inputs: Iterable[str | Path] = (),
) -> Iterator[Any]:
    """Start an MLflow run with lineage tags, the md5 of each of `inputs` and flattened params;
    yields the `mlflow` module."""
    # MLflow 3 sends usage telemetry unless told not to: the pipeline reports to nobody (as DVC's
    # and GX's analytics, which are off too); an explicit setting of the user's wins.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    own_store = not os.environ.get("MLFLOW_TRACKING_URI")  # set_tracking_uri exports it
    mlflow.set_tracking_uri(tracking_uri())
    if own_store:
        _create_experiment_at_root(mlflow)
    mlflow.set_experiment(EXPERIMENT)
    all_tags = {**lineage_tags(), **input_tags(inputs), **(tags or {})}
    with mlflow.start_run(run_name=run_name, tags=all_tags):
        mlflow.log_params(flatten(params))
        yield mlflow


def _create_experiment_at_root(mlflow: Any) -> None:
    """Create the experiment, its artifacts under `<repo root>/mlruns/in2/`, unless it exists.

    Left to `set_experiment`, the artifact location would be `./mlruns` of the current folder:
    under `dvc exp run --temp` or a queued run that is a temporary copy of the repository,
    deleted afterwards, and every later run's figures would go there too.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    if mlflow.get_experiment_by_name(EXPERIMENT) is not None:
        return
    try:
        location = str(repo_root() / "mlruns" / EXPERIMENT)
        mlflow.create_experiment(EXPERIMENT, artifact_location=location)
    except MlflowException as err:  # a concurrent queued run created it first
        if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: MLflow params are flat."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def log_dataset(mlflow: Any, path: str | Path, context: str) -> None:
    """Log a DVC-tracked folder as an MLflow dataset input: one row per file (relpath, md5,
    bytes), digest = DVC's md5 of the folder (MLflow's own digest would not match dvc.lock)."""
    import pandas as pd

    folder = Path(path)
    listing = folder_listing(folder)  # each file hashed once, for its row and the digest
    frame = pd.DataFrame(
        {
            "relpath": list(listing),
            "md5": list(listing.values()),
            "bytes": [(folder / rel).stat().st_size for rel in listing],
        }
    )
    with warnings.catch_warnings():
        # MLflow warns that a local path matches two equivalent source classes and that integer
        # columns cannot hold missing values; neither matters for a record of the input.
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(
            frame, source=str(path), name=str(path), digest=dir_md5(listing)
        )
        mlflow.log_input(dataset, context=context)
