"""The MLflow store of the pipeline stays at the repository root under `dvc exp run --temp`."""

from __future__ import annotations

from pathlib import Path

import pytest

from in2.lineage.tracking import mlflow_run


def test_a_run_in_a_temporary_copy_keeps_its_store_and_artifacts_at_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, executor = tmp_path / "repo", tmp_path / "repo/.dvc/tmp/exps/tmp1234"
    executor.mkdir(parents=True)
    # Empty: in2's own store. Set (not deleted) so that the value mlflow.set_tracking_uri
    # exports is undone after the test.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.setenv("DVC_ROOT", str(root))  # as DVC sets it for a --temp or queued run
    monkeypatch.setenv("DVC_EXP_NAME", "lr-3e-4")
    monkeypatch.chdir(executor)  # where the stage runs

    with mlflow_run("probe-in2", {"probe": {"bin_size": 4}}) as mlflow:
        mlflow.log_dict({"avg": 0.5}, "scores.json")
        run_id = mlflow.active_run().info.run_id

    assert (root / "mlflow.db").is_file()
    assert (root / "mlruns/in2" / run_id / "artifacts/scores.json").is_file()
    assert not (executor / "mlruns").exists()  # deleted with the copy after the run
    run = mlflow.get_run(run_id)
    assert run.data.tags["dvc_exp_name"] == "lr-3e-4"
    assert run.data.params == {"probe.bin_size": "4"}
