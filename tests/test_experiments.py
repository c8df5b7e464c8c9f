"""`dvc exp run -S` sweeps on the smoke profile, compared with DVC and in a real MLflow server.

After `dvc repro` (the baseline, committed), experiments change `train.learning_rate`, which
re-runs train and probe@in2 only: one in the workspace, then two queued and run by
`dvc queue start -j 2` at once (each in a temporary executor, as `--temp` runs). All must show up
in `dvc exp show`, `dvc metrics diff`, `dvc plots diff`, and as MLflow runs of the repository's
one mlflow.db, read through a `mlflow server`'s REST API, with the per-position series and the
training set's DVC version; the parallel pair must land intact in the one SQLite store. See
docs/experiments.md.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import free_port, git_commit, run_ok, smoke_repo_copy, wait_until_healthy

pytestmark = pytest.mark.e2e

WORKSPACE = "lr-3e-4"
"""The experiment run in the workspace; an experiment's name is also its learning rate."""
QUEUED = ("lr-5e-4", "lr-2e-4")
"""Experiments queued and run in parallel by `dvc queue start -j 2` (temporary executors)."""
EXPERIMENTS = (WORKSPACE, *QUEUED)
COMPARED = (WORKSPACE, QUEUED[0])
"""A workspace and a queued experiment, compared by `dvc metrics diff` and `dvc plots diff`."""
POSITION_PLOTS = [f"reports/positions/{task}.csv" for task in ("document", "code", "database")]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The smoke repository after `dvc repro` (committed), the workspace experiment and the
    queued pair."""
    repo, env = smoke_repo_copy(tmp_path_factory.mktemp("exp"))
    run_ok(["dvc", "repro"], repo, env)
    git_commit(repo, env, "dvc repro")
    command = ["dvc", "exp", "run", "-n", WORKSPACE, "-S", f"train.learning_rate={_lr(WORKSPACE)}"]
    log = run_ok(command, repo, env).stdout
    assert "Running stage 'train'" in log and "Running stage 'probe@in2'" in log
    assert "Stage 'probe@base' didn't change, skipping" in log
    return repo, env


def _lr(name: str) -> str:
    return name.removeprefix("lr-")


@pytest.fixture(scope="module")
def queued(sweep: tuple[Path, dict[str, str]]) -> dict[str, str]:
    """Queue two experiments, run them with `dvc queue start -j 2`; name -> `dvc queue status`."""
    repo, env = sweep
    for name in QUEUED:
        command = ["dvc", "exp", "run", "--queue", "-n", name]
        run_ok([*command, "-S", f"train.learning_rate={_lr(name)}"], repo, env)
    run_ok(["dvc", "queue", "start", "-j", "2"], repo, env)
    deadline = time.monotonic() + 600
    while True:
        status = _queue_status(repo, env)
        if all(status.get(name) in ("Success", "Failed") for name in QUEUED):
            return status
        assert time.monotonic() < deadline, f"queued experiments not done in 600 s: {status}"
        time.sleep(2)


def _queue_status(repo: Path, env: dict[str, str]) -> dict[str, str]:
    """Name -> status column of `dvc queue status` (Queued, Running, Success, Failed)."""
    out = run_ok(["dvc", "queue", "status"], repo, env).stdout
    rows = (line.split() for line in out.splitlines())
    return {row[1]: row[-1] for row in rows if len(row) >= 3 and row[1] in QUEUED}


@pytest.fixture(scope="module")
def experiments(
    sweep: tuple[Path, dict[str, str]], queued: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """Experiment name -> its entry in `dvc exp show --json` (rev, params, metrics, deps)."""
    repo, env = sweep
    (baseline,) = [
        row
        for row in json.loads(run_ok(["dvc", "exp", "show", "--json"], repo, env).stdout)
        if row["rev"] != "workspace"
    ]
    return {exp["name"]: exp["revs"][0] for exp in baseline["experiments"] or []}


@pytest.fixture(scope="module")
def position_plots(
    sweep: tuple[Path, dict[str, str]], queued: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """`dvc plots diff <exp> <exp> --json` of the per-position CSVs: path -> its vega plot."""
    repo, env = sweep
    out = run_ok(["dvc", "plots", "diff", *COMPARED, "--json"], repo, env)
    data = json.loads(out.stdout)["data"]
    plots = {}
    for path in POSITION_PLOTS:
        (plots[path],) = data[path]  # one chart per CSV, both revisions on it
    return plots


def test_two_experiments_with_their_params_and_scores(experiments):
    assert set(experiments) == set(EXPERIMENTS)
    for name, exp in experiments.items():
        params = exp["data"]["params"]["params.yaml"]["data"]
        assert params["train"]["learning_rate"] == float(_lr(name))
        scores = exp["data"]["metrics"]["results/probe/in2/scores.json"]["data"]
        assert 0.0 <= scores["document"]["avg"] <= 1.0


def test_metrics_diff_baseline_and_experiments(sweep, queued):
    repo, env = sweep
    diff = json.loads(
        run_ok(["dvc", "metrics", "diff", *COMPARED, "--all", "--json"], repo, env).stdout
    )
    for key in ("document.avg", "document.gap", "code.avg", "database.avg", "all.avg"):
        assert key in diff["results/probe/in2/scores.json"]
        assert f"base.{key}" in diff["reports/scores.json"]  # base and trained side by side
        assert f"in2.{key}" in diff["reports/scores.json"]
    val_loss = diff["metrics/train.json"]["val_loss"]
    assert val_loss["old"] != val_loss["new"]  # another learning rate, another model
    # The baseline commit (learning rate 1e-4) against an experiment: only what changed.
    changed = json.loads(
        run_ok(["dvc", "metrics", "diff", "HEAD", QUEUED[1], "--json"], repo, env).stdout
    )
    assert "val_loss" in changed["metrics/train.json"]
    assert "results/probe/base/scores.json" not in changed  # the base model was not re-probed


def test_plots_diff_overlays_both_experiments(position_plots):
    for path, plot in position_plots.items():
        assert plot["type"] == "vega" and plot["revisions"] == list(COMPARED), path
        rows = plot["content"]["data"]["values"]
        lines = {(row["rev"], row["field"]) for row in rows}
        fields = ("base", "in2", "base_strict", "in2_strict")
        assert lines == {(rev, field) for rev in COMPARED for field in fields}, path


def _rest(base: str, endpoint: str, body: dict[str, Any] | None = None, **query: str) -> Any:
    url = f"{base}/api/2.0/mlflow/{endpoint}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def mlflow_server(
    sweep: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`mlflow server` (this venv's) on a free loopback port over the repository's mlflow.db;
    yields its URL. Skips the tests that use it only if it cannot start here."""
    repo, env = sweep
    folder = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri"]
    command += [f"sqlite:///{repo / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1"]
    with (folder / "server.log").open("wb") as log:
        # Its own process group: the server runs uvicorn (and a job runner) as children.
        proc = subprocess.Popen(
            command,
            cwd=folder,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(
            proc,
            url,
            "mlflow server",
            120,
            lambda: (folder / "server.log").read_text(errors="replace")[-2000:],
        )
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_mlflow_server_shows_both_experiments_runs(
    sweep, experiments, position_plots, mlflow_server
):
    repo, env = sweep
    experiment_id = _rest(mlflow_server, "experiments/get-by-name", experiment_name="in2")[
        "experiment"
    ]["experiment_id"]
    document = position_plots["reports/positions/document.csv"]["content"]["data"]["values"]
    for name in COMPARED:  # a workspace and a queued experiment: the curves of the plots diff
        exp = experiments[name]
        found = _rest(
            mlflow_server,
            "runs/search",
            {"experiment_ids": [experiment_id], "filter": f"tags.dvc_exp_name = '{name}'"},
        )
        runs = {run["info"]["run_name"]: run for run in found["runs"]}
        # Only the stages the sweep re-ran; `report` too when the new predictions differ.
        assert {"train", "probe-in2"} <= set(runs) <= {"train", "probe-in2", "report"}, name
        assert all(run["info"]["status"] == "FINISHED" for run in runs.values())

        # The per-position series, one point per bin, is the curve DVC plots for this experiment.
        probe_id = runs["probe-in2"]["info"]["run_id"]
        history = _rest(
            mlflow_server, "metrics/get-history", run_id=probe_id, metric_key="document_bin_score"
        )["metrics"]
        curve = {
            int(row["bin"]): float(row["in2"])
            for row in document
            if row["rev"] == name and row["field"] == "in2"
        }
        assert {point["step"]: point["value"] for point in history} == pytest.approx(curve)
        assert len(curve) >= 2
        strict = _rest(
            mlflow_server,
            "metrics/get-history",
            run_id=probe_id,
            metric_key="document_strict_bin_score",
        )["metrics"]
        assert [point["step"] for point in strict] == sorted(curve)
        artifacts = {
            f["path"] for f in _rest(mlflow_server, "artifacts/list", run_id=probe_id)["files"]
        }
        assert "scores.json" in artifacts
        if "report" in runs:  # the report draws the figures and attaches them to this probe run
            assert {"probe_curves.png", "heatmap.png"} <= artifacts

        # The training set: its digest is the DVC md5 of data/in2 in this experiment's dvc.lock.
        lock = yaml.safe_load(run_ok(["git", "show", f"{exp['rev']}:dvc.lock"], repo, env).stdout)
        (data_in2,) = [d for d in lock["stages"]["train"]["deps"] if d["path"] == "data/in2"]
        (dataset_input,) = runs["train"]["inputs"]["dataset_inputs"]
        assert dataset_input["dataset"]["digest"] == data_in2["md5"]
        assert dataset_input["dataset"]["name"] == "data/in2/train.parquet"
        train_params = {p["key"]: p["value"] for p in runs["train"]["data"]["params"]}
        assert float(train_params["train.learning_rate"]) == float(_lr(name))


def test_two_queued_experiments_run_in_parallel_into_one_store(sweep, queued):
    """`dvc queue start -j 2`: both experiments succeed, their runs overlapped in time, and each
    one's runs are in the one mlflow.db, finished, with their own params and curves."""
    repo, env = sweep
    assert queued == dict.fromkeys(QUEUED, "Success"), queued
    db = sqlite3.connect(repo / "mlflow.db")
    runs: dict[str, dict[str, tuple[str, str, int, int]]] = {}
    for name in QUEUED:
        rows = db.execute(
            "select r.name, r.run_uuid, r.status, r.start_time, r.end_time from runs r"
            " join tags t on t.run_uuid = r.run_uuid"
            " where t.key = 'dvc_exp_name' and t.value = ?",
            (name,),
        ).fetchall()
        runs[name] = {run: (uuid, status, start, end) for run, uuid, status, start, end in rows}
        assert {"probe-in2", "train"} <= set(runs[name]) <= {"probe-in2", "report", "train"}
        assert {status for _, status, _, _ in runs[name].values()} == {"FINISHED"}
        train_id = runs[name]["train"][0]
        (lr,) = db.execute(
            "select value from params where run_uuid = ? and key = 'train.learning_rate'",
            (train_id,),
        ).fetchone()
        assert float(lr) == float(_lr(name))
        steps = db.execute(
            "select count(*) from metrics where run_uuid = ? and key = 'loss'", (train_id,)
        ).fetchone()[0]
        probe_id = runs[name]["probe-in2"][0]
        bins = db.execute(
            "select count(*) from metrics where run_uuid = ? and key = 'document_bin_score'",
            (probe_id,),
        ).fetchone()[0]
        assert steps >= 2 and bins >= 2, (name, steps, bins)
    # Each experiment's span, from its first run's start to its last run's end: the two executors
    # ran at the same time (a tiny training alone may end before the other one starts).
    (a_start, a_end), (b_start, b_end) = (
        (min(r[2] for r in runs[name].values()), max(r[3] for r in runs[name].values()))
        for name in QUEUED
    )
    assert a_start < b_end and b_start < a_end
    failed = db.execute("select count(*) from runs where status != 'FINISHED'").fetchone()[0]
    assert failed == 0
    shown = json.loads(run_ok(["dvc", "exp", "show", "--json"], repo, env).stdout)
    names = {exp["name"] for row in shown for exp in row.get("experiments") or []}
    assert set(QUEUED) <= names
