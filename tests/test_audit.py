"""`in2 audit` on a small real git + DVC repository with a real MLflow SQLite store.

The stages' commands are placeholders: the files are written here and recorded with
`dvc commit`, so dvc.lock and the DVC cache are DVC's own; the runs are recorded through
in2.lineage.tracking's `mlflow_run` (and the probe stage's `lineage`) as the stages record them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from in2.cli import main as cli
from in2.lineage.fingerprint import path_md5
from in2.lineage.tracking import mlflow_run, stage_inputs

REPO = Path(__file__).resolve().parents[1]
SYNTH = """\
import json, pathlib, yaml
from in2.lineage.tracking import lineage_tags, stage_inputs
version = yaml.safe_load(open("params.yaml"))["synthesize"]["version"]
pathlib.Path("data/in2").mkdir(parents=True, exist_ok=True)
pathlib.Path("data/in2/train.parquet").write_text(f"train rows v{version}")
pathlib.Path("data/in2/val.parquet").write_text(f"val rows v{version}")
counts = {"train": {"fine_grained": 6 * version, "integration": 2}, "val": {"general": 1}}
stats = {"counts": counts, "lineage": lineage_tags(), "inputs": stage_inputs("synthesize")}
pathlib.Path("metrics/synthesize.json").write_text(json.dumps(stats))
"""
DVC_YAML = f"""\
stages:
  synthesize:
    cmd: {sys.executable} synth.py
    params: [synthesize.version]
    deps: [synth.py, data/corpus/train.parquet, data/segments, data/qa]
    outs: [data/in2]
    metrics: [metrics/synthesize.json]
  validate:
    cmd: "true"
    deps: [data/in2, data/qa, data/segments]
    metrics: [reports/data_quality/summary.json]
  train:
    cmd: "true"
    deps: [data/in2, data/segments, reports/data_quality/summary.json]
    outs: [models/in2]
  probe:
    foreach: [in2]
    do:
      cmd: "true"
      deps:
        - data/probes
        - models/${{item}}
      metrics:
        - results/probe/${{item}}/scores.json
"""
IGNORED = "/data/\n/models/\n/results/\n/metrics/\n/reports/\nmlflow.db\n"


def _sh(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"{cmd}: {out.stdout}{out.stderr}"
    return out.stdout


def _dvc(repo: Path, *args: str) -> str:
    return _sh([sys.executable, "-m", "dvc", *args], repo)


def _git(repo: Path, *args: str) -> str:
    return _sh(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], repo)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _dataset(repo: Path, version: int, passed: bool) -> None:
    """data/in2 (version `version`), its mix statistics and a gate summary naming it."""
    _write(repo / "data/in2/train.parquet", f"train rows v{version}")
    _write(repo / "data/in2/val.parquet", f"val rows v{version}")
    counts = {"train": {"fine_grained": 6 * version, "integration": 2}, "val": {"general": 1}}
    _write(repo / "metrics/synthesize.json", json.dumps({"counts": counts}))
    summary = {"success": passed, "dataset": {"md5": path_md5(repo / "data/in2")}}
    _write(repo / "reports/data_quality/summary.json", json.dumps(summary))


def _probe_stage() -> ModuleType:
    spec = importlib.util.spec_from_file_location("probe_stage", REPO / "stages/probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git + DVC repo with dataset v1 committed and validate, train and probe-in2 runs."""
    for name in ("DVC_ROOT", "MLFLOW_TRACKING_URI", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "repo"
    root.mkdir()
    monkeypatch.chdir(root)
    _git(root, "init", "-q")
    _dvc(root, "init", "-q")
    _write(root / "dvc.yaml", DVC_YAML)
    _write(root / ".gitignore", IGNORED)
    _write(root / "synth.py", SYNTH)
    _write(root / "params.yaml", "synthesize:\n  version: 1\n")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "pipeline")
    _write(root / "data/corpus/train.parquet", "corpus")
    _write(root / "data/segments/tokens.npy", "tokens")
    _write(root / "data/segments/index.parquet", "index")
    _write(root / "data/qa/qa.parquet", "qa pairs")
    _write(root / "data/probes/document/contexts.jsonl", '{"text": "a probe"}\n')
    _dataset(root, 1, passed=True)
    dataset_md5 = path_md5(root / "data/in2")
    with mlflow_run("validate", {}, {"dataset_md5": dataset_md5}, stage_inputs("validate")) as m:
        m.log_metric("dq.success", 1.0)
    with mlflow_run("train", {}, {"dataset_md5": dataset_md5}, stage_inputs("train")) as m:
        train_id = m.active_run().info.run_id
        _write(root / "models/in2/model.safetensors", "weights")
        _write(root / "models/in2/trainer_state.json", json.dumps({"mlflow_run_id": train_id}))
        m.set_tag("checkpoint_md5", path_md5(root / "models/in2"))
        m.set_tag("checkpoint_path", "models/in2")
    _write(root / "results/probe/in2/scores.json", json.dumps({"all": {"avg": 0.5}}))
    _dvc(root, "commit", "-f", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "dataset v1")
    scores = {
        "output.results/probe/in2/scores.json": path_md5(root / "results/probe/in2/scores.json")
    }
    tags = _probe_stage().lineage("in2", Path("models/in2")) | scores
    with mlflow_run("probe-in2", {}, tags) as m:
        m.log_metrics({"all_avg": 0.5, "all_gap": 0.25})
        (root / "probe_run_id").write_text(m.active_run().info.run_id)
    return root


def _audit(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    cli(["audit", *args])
    return capsys.readouterr().out


def test_tags_match_dvc_lock(repo: Path) -> None:
    """input.* tags and the checkpoint md5 equal the md5s DVC recorded; the probe run names
    the train run that made its checkpoint."""
    from mlflow.tracking import MlflowClient

    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    deps = {d["path"]: d["md5"] for d in lock["train"]["deps"]}
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    probe = client.get_run((repo / "probe_run_id").read_text()).data.tags
    train = client.get_run(probe["train_run_id"]).data.tags
    assert train["input.data/in2"] == deps["data/in2"]
    assert train["input.data/segments"] == deps["data/segments"]
    assert probe["checkpoint_md5"] == lock["train"]["outs"][0]["md5"] == train["checkpoint_md5"]
    assert probe["input.data/probes"] == path_md5(repo / "data/probes")
    assert train["git_commit"] == _git(repo, "rev-parse", "HEAD~1").strip()  # before dvc.lock
    assert train["dvc_stage"] == "manual"


def test_audit_run_reports_a_tampered_dataset(repo: Path, capsys) -> None:
    probe_id = (repo / "probe_run_id").read_text()
    intact = _audit(capsys, "run", probe_id)
    assert "OK: every link's md5 is in the workspace or the DVC cache" in intact
    assert "gate passed (validate run" in intact

    (repo / "data/in2/train.parquet").write_text("edited after training")
    text = _audit(capsys, "run", probe_id)
    report = json.loads(_audit(capsys, "run", probe_id, "--json"))

    dataset = next(a for a in report["chain"] if a["step"] == "IN2 dataset")
    assert dataset["workspace"] == "MISMATCH" and dataset["cache"] == "present"
    assert dataset["workspace_md5"] == path_md5(repo / "data/in2") != dataset["md5"]
    steps = [a["step"] for a in report["chain"]]
    assert steps == ["corpus", "segments", "qa", "IN2 dataset", "checkpoint", "probe scores"]
    assert all(a["workspace"] == "match" for a in report["chain"] if a["step"] != "IN2 dataset")
    assert "1 problem(s):" in text
    assert (
        f"IN2 dataset (data/in2): the workspace copy has md5 {dataset['workspace_md5']}, not the "
        f"{dataset['md5']} the run recorded; the DVC cache holds it: "
        "`git checkout REV -- dvc.lock && dvc checkout data/in2`"
    ) in text


def test_audit_data_lists_committed_versions(repo: Path, capsys) -> None:
    _dataset(repo, 2, passed=False)
    _dvc(repo, "commit", "-f", "-q")
    _git(repo, "commit", "-q", "-am", "dataset v2")

    report = json.loads(_audit(capsys, "data", "--json"))
    text = _audit(capsys, "data")

    workspace, v2, v1 = report["versions"]
    assert [v["source"] for v in report["versions"]] == ["workspace", "commit", "commit"]
    assert report["distinct"] == 2 and workspace["dataset_md5"] == v2["dataset_md5"]
    assert v2["label"].endswith("dataset v2") and v1["label"].endswith("dataset v1")
    assert v1["mix"]["train"]["fine_grained"] == 6  # v1's metrics read back from the DVC cache
    assert v2["mix"]["train"]["fine_grained"] == 12
    assert v1["gate"].startswith("gate passed (validate run")
    assert v2["gate"].startswith("gate FAILED (reports/data_quality/summary.json")
    assert "data/in2: 2 distinct version(s)" in text
    assert "mix train 14 (fine_grained 12, integration 2); val 1 (general 1)" in text


def test_audit_data_lists_experiments(repo: Path, capsys) -> None:
    """A real `dvc exp run`: its stage sees DVC_EXP_NAME / DVC_EXP_BASELINE_REV (the lineage
    tags), reads its deps from DVC while DVC runs it, and its dataset version is listed from
    the experiment's commit."""
    baseline = _git(repo, "rev-parse", "HEAD").strip()
    _dvc(repo, "exp", "run", "-n", "more-fine", "-S", "synthesize.version=3", "synthesize")

    report = json.loads(_audit(capsys, "data", "--json"))

    stats = json.loads((repo / "metrics/synthesize.json").read_text())
    assert stats["lineage"]["dvc_exp_name"] == "more-fine"
    assert stats["lineage"]["dvc_exp_baseline_rev"] == baseline
    assert stats["lineage"]["dvc_stage"] == "synthesize"
    assert stats["inputs"] == ["synth.py", "data/corpus/train.parquet", "data/segments", "data/qa"]
    exp = next(v for v in report["versions"] if v["source"] == "experiment")
    assert exp["label"] == f"exp more-fine (baseline {baseline[:7]})"
    assert exp["dataset_md5"] == path_md5(repo / "data/in2")
    assert exp["mix"]["train"]["fine_grained"] == 18
    assert report["distinct"] == 2


def test_audit_data_without_history_says_so(repo: Path, capsys) -> None:
    _git(repo, "reset", "-q", "--soft", "HEAD~1")
    _git(repo, "rm", "-q", "--cached", "dvc.lock")

    text = _audit(capsys, "data")

    assert "data/in2: 1 distinct version(s)" in text
    assert "note: dvc.lock has no git history (it is not committed)" in text


def test_audit_run_errors_name_what_to_do(repo: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli(["audit", "run", "0123abcd"])
    assert exit_info.value.code == 2
    assert "error: no MLflow run '0123abcd' in sqlite:///" in capsys.readouterr().err

    (repo / "mlflow.db").unlink()
    with pytest.raises(SystemExit):
        cli(["audit", "run", "0123abcd"])
    err = capsys.readouterr().err
    assert f"error: no MLflow store at {repo / 'mlflow.db'}" in err
    assert "run `dvc repro` first" in err
