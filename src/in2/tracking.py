"""MLflow runs for the stages that learn or measure something.

The store is anchored at the repository root (`DVC_ROOT`, which DVC sets for every stage, also
under `dvc exp run --temp` and queued experiments), so every run of every experiment lands in the
same `mlflow.db` and compares in one UI. `MLFLOW_TRACKING_URI` overrides it (a team server).
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` if set, else a SQLite store at the repository root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=repo_root(), capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def lineage_tags() -> dict[str, str]:
    """Git commit, dirty flag and the DVC stage / experiment this process runs in."""
    tags = {
        "git_commit": _git("rev-parse", "HEAD") or "unknown",
        "git_dirty": str(bool(_git("status", "--porcelain"))).lower(),
        "dvc_stage": os.environ.get("DVC_STAGE", "manual"),
    }
    if exp := os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = exp
    return tags


@contextmanager
def mlflow_run(
    run_name: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None
) -> Iterator[Any]:
    """Start an MLflow run with lineage tags and flattened params; yields the `mlflow` module."""
    import mlflow

    own_store = not os.environ.get("MLFLOW_TRACKING_URI")  # set_tracking_uri exports it
    mlflow.set_tracking_uri(tracking_uri())
    if own_store:
        _create_experiment_at_root(mlflow)
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name=run_name, tags={**lineage_tags(), **(tags or {})}):
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
