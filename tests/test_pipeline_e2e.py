"""The real `dvc repro` on the smoke profile, in a temporary copy of the repository.

Checks every output against the data contract of docs/architecture.md, that MLflow holds the runs,
that a second `dvc repro` has nothing to do, and that `dvc push` works with the default remote.
"""

from __future__ import annotations

import ast
import hashlib
import ipaddress
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import git_commit, run_ok, smoke_repo_copy
from openai_stub import serve_stub

TASKS = ("document", "code", "database")
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], str]:
    """A copy of the working tree on the smoke profile after `dvc repro`."""
    repo, env = smoke_repo_copy(tmp_path_factory.mktemp("smoke"))
    env["OPENAI_API_KEY"] = CANARY_KEY  # set, as on a user's machine: it must leak nowhere
    audited = {  # every Python process of the run logs its connects (test_nothing_leaves...)
        **env,
        "PYTHONPATH": f"{EGRESS_AUDIT}{os.pathsep}{env['PYTHONPATH']}",
        "IN2_EGRESS_LOG": str(repo.parent / "egress.jsonl"),
    }
    repro = run_ok(["dvc", "repro"], repo, audited)
    return repo, env, repro.stdout + repro.stderr


EGRESS_AUDIT = Path(__file__).parent / "egress"
"""Holds the sitecustomize that records each process' socket connects and name lookups."""


CANARY_KEY = f"sk-in2-e2e-canary-{uuid.uuid4().hex}"
"""A fake OpenAI key in the pipeline's environment; test_the_api_key_is_written_nowhere greps.
Made at run time, so no source file of the copied repository holds it."""


def test_the_api_key_is_written_nowhere(smoke_repo):
    """With OPENAI_API_KEY set, no file of the run (mlflow.db, MLflow artifacts, params, dvc.lock,
    data, reports, results, metrics, DVC cache) and no line of its log holds the key."""
    repo, _, log = smoke_repo
    assert CANARY_KEY not in log
    files = [p for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts]
    assert any(p.name == "mlflow.db" for p in files) and any(p.name == "dvc.lock" for p in files)
    leaked = [str(p.relative_to(repo)) for p in files if CANARY_KEY.encode() in p.read_bytes()]
    assert leaked == []


def test_nothing_leaves_the_machine(smoke_repo):
    """The whole `dvc repro` (DVC, every stage, MLflow, GX, the tokenizers) connects to nothing
    but loopback and local sockets, and looks up no other host name: no telemetry, no hub."""
    repo, _, _ = smoke_repo
    events = [json.loads(line) for line in (repo.parent / "egress.jsonl").read_text().splitlines()]
    started = " ".join(e["detail"] for e in events if e["event"] == "start")
    assert "dvc" in started and "stages/validate.py" in started and "stages/train.py" in started
    outside = []
    for e in events:
        detail = e["detail"]
        if e["event"] == "socket.connect":
            family, address = ast.literal_eval(detail)
            if family == socket.AF_UNIX:
                continue
            if ipaddress.ip_address(address[0]).is_loopback:
                continue
        elif e["event"] == "socket.getaddrinfo":
            if ast.literal_eval(detail) in (None, "localhost", "127.0.0.1", "::1", b"localhost"):
                continue
        else:
            continue
        outside.append(e)
    assert outside == []


def test_the_egress_audit_sees_a_connection_and_a_lookup(tmp_path):
    """The control of the test above: a process under the same audit that looks up a name and
    connects to a loopback server leaves both in the log."""
    log = tmp_path / "egress.jsonl"
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = (
            "import socket\n"
            "try: socket.getaddrinfo('in2-egress.invalid', 80)\n"
            "except OSError: pass\n"
            f"socket.create_connection(('127.0.0.1', {port})).close()\n"
        )
        env = {**os.environ, "PYTHONPATH": str(EGRESS_AUDIT), "IN2_EGRESS_LOG": str(log)}
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    lookups = [e["detail"] for e in events if e["event"] == "socket.getaddrinfo"]
    connects = [ast.literal_eval(e["detail"]) for e in events if e["event"] == "socket.connect"]
    assert events[0]["event"] == "start"
    assert lookups == [repr("in2-egress.invalid"), repr("127.0.0.1")]
    assert connects == [(socket.AF_INET, ("127.0.0.1", port))]


def test_every_stage_ran(smoke_repo):
    _, _, log = smoke_repo
    for stage in (
        "base_model",
        "corpus",
        "segment",
        "probe_data",
        "qa",
        "synthesize",
        "validate",
        "train",
        "probe@base",
        "probe@in2",
        "report",
    ):
        assert f"Running stage '{stage}'" in log


def test_segments_contract(smoke_repo):
    repo, _, _ = smoke_repo
    tokens = np.load(repo / "data/segments/tokens.npy", mmap_mode="r")
    index = pd.read_parquet(repo / "data/segments/segments.parquet")
    assert tokens.dtype == np.uint16  # SmolLM2's 49,152 ids fit
    assert {"seg_id", "doc_id", "start", "n_tokens"} <= set(index.columns)
    assert index["n_tokens"].max() <= 128
    assert int(index["start"].iloc[-1] + index["n_tokens"].iloc[-1]) == len(tokens)
    heldout = set(pd.read_parquet(repo / "data/corpus/heldout.parquet")["doc_id"])
    assert heldout and heldout.isdisjoint(index["doc_id"])


def test_in2_data_contract(smoke_repo):
    repo, _, _ = smoke_repo
    index = pd.read_parquet(repo / "data/segments/segments.parquet")
    frames = {s: pd.read_parquet(repo / f"data/in2/{s}.parquet") for s in ("train", "val")}
    columns = {
        "example_id",
        "kind",
        "context_segments",
        "gold_segments",
        "gold_slots",
        "source_doc",
        "question",
        "answer",
        "n_tokens",
    }
    assert len(frames["train"]) == 24 and len(frames["val"]) == 8
    for frame in frames.values():
        assert columns <= set(frame.columns)
        assert set(frame["kind"]) <= {"fine_grained", "integration", "short", "general"}
        for row in frame.itertuples():
            ctx = list(row.context_segments)
            assert [ctx[s] for s in row.gold_slots] == list(row.gold_segments)
            assert row.n_tokens == (int(index["n_tokens"].iloc[ctx].sum()) if ctx else 0)
            if row.kind in ("fine_grained", "integration"):
                assert 256 <= row.n_tokens <= 640
    assert set(frames["train"]["source_doc"]).isdisjoint(frames["val"]["source_doc"])


def test_show_prints_an_example_with_its_gold_segments_marked(smoke_repo):
    repo, env, _ = smoke_repo
    train = pd.read_parquet(repo / "data/in2/train.parquet")
    row = train[train["kind"] == "integration"].iloc[0]
    shown = run_ok(["in2", "show", row["example_id"]], repo, env).stdout
    assert shown.startswith(f"{row['example_id']} [train] kind=integration")
    assert shown.count(">>> GOLD") == len(row["gold_segments"]) == 2
    for slot, seg in zip(row["gold_slots"], row["gold_segments"], strict=True):
        assert f"gold segment {seg} at slot {slot} of {len(row['context_segments'])}" in shown
        assert f">>> GOLD slot {slot} seg {seg} @" in shown
    assert shown.count("   filler slot") == len(row["context_segments"]) - 2
    assert f"QUESTION: {row['question']}" in shown
    missing = subprocess.run(
        ["in2", "show", "ex-nope"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert missing.returncode == 2
    assert "no example 'ex-nope' in data/in2/{train,val}.parquet" in missing.stderr


def test_probe_contract(smoke_repo):
    repo, _, _ = smoke_repo
    for task in TASKS:
        contexts = [json.loads(x) for x in (repo / f"data/probes/{task}/contexts.jsonl").open()]
        queries = [json.loads(x) for x in (repo / f"data/probes/{task}/queries.jsonl").open()]
        assert {"context_id", "set_id", "text", "n_tokens", "n_items"} <= set(contexts[0])
        answer = {"completion"} if task != "database" else {"label", "description"}
        assert {
            "task",
            "set_id",
            "position_id",
            "context_id",
            "question",
            "keyword",
        } | answer <= set(queries[0])
        for model in ("base", "in2"):
            preds = [
                json.loads(x)
                for x in (repo / f"results/probe/{model}/{task}.predictions.jsonl").open()
            ]
            assert len(preds) == len(queries)
            assert {"set_id", "position_id", "prediction", "score"} <= set(preds[0])
    for model in ("base", "in2"):
        scores = json.loads((repo / f"results/probe/{model}/scores.json").read_text())
        assert set(TASKS) | {"all"} <= set(scores)
        for task in TASKS:
            assert {"avg", "gap"} <= set(scores[task])
            assert 0.0 <= scores[task]["avg"] <= 1.0


def test_gate_train_and_report_outputs(smoke_repo):
    repo, _, _ = smoke_repo
    summary = json.loads((repo / "reports/data_quality/summary.json").read_text())
    assert summary["success"] is True
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    (out,) = [o for o in lock["stages"]["synthesize"]["outs"] if o["path"] == "data/in2"]
    assert summary["dataset"]["md5"] == out["md5"]  # the gate's tag is DVC's version of data/in2
    assert (repo / "reports/data_quality/docs").is_dir()
    assert (repo / "models/in2/model.safetensors").is_file()
    assert not list((repo / "models/in2").glob("*.bin"))
    assert (repo / "reports/probe_curves.png").stat().st_size > 1000
    table = (repo / "reports/scores.md").read_text()
    assert "base" in table and "in2" in table
    page = (repo / "reports/index.html").read_text()
    assert 'id="run-scores"' in page and 'id="paper-scores"' in page and 'id="gap-noise"' in page
    scores = json.loads((repo / "results/probe/in2/scores.json").read_text())
    u = scores["document"]["uncertainty"]
    assert u["gap_ci"][0] <= scores["document"]["gap"] <= u["gap_ci"][1]  # centred on it
    assert "is within the noise" in table or "is above the noise" in table


def test_gate_states_what_its_pass_rules_out(smoke_repo):
    """summary.json, the Data Docs and the MLflow validate run say which first-half bias the
    position test would have caught on this many gold positions."""
    repo, _, log = smoke_repo
    power = json.loads((repo / "reports/data_quality/summary.json").read_text())["settings"][
        "position_power"
    ]
    assert power["statement"] in log
    pages = "".join(p.read_text() for p in (repo / "reports/data_quality/docs").rglob("*.html"))
    assert "Resolution: with " in pages
    db = sqlite3.connect(repo / "mlflow.db")
    (share,) = db.execute(
        "select m.value from metrics m join runs r on m.run_uuid = r.run_uuid where r.name = "
        "'validate' and m.key = 'dq.position_power.detected_first_half_share'"
    ).fetchone()
    assert share == pytest.approx(power["detected_first_half_share"])


def test_mlflow_holds_the_runs(smoke_repo):
    repo, _, _ = smoke_repo
    db = sqlite3.connect(repo / "mlflow.db")
    names = {r[0] for r in db.execute("select name from runs where status = 'FINISHED'")}
    assert {"train", "probe-base", "probe-in2"} <= names
    steps = db.execute(
        "select count(*) from metrics m join runs r on m.run_uuid = r.run_uuid "
        "where r.name = 'probe-in2' and m.key = 'document_bin_score'"
    ).fetchone()[0]
    assert steps >= 2  # a per-position series, one step per bin
    losses = db.execute(
        "select count(*) from metrics m join runs r on m.run_uuid = r.run_uuid "
        "where r.name = 'train' and m.key = 'loss'"
    ).fetchone()[0]
    assert losses >= 2
    logged = {
        (run, key)
        for run, key in db.execute(
            "select r.name, m.key from metrics m join runs r on m.run_uuid = r.run_uuid"
        )
    }
    assert {
        ("probe-in2", "document_gap_ci_low"),
        ("probe-in2", "document_gap_noise_floor"),
        ("report", "document_gap_diff"),
        ("report", "document_strict_gap_ci_high"),
    } <= logged


def test_audit_traces_the_probe_run_to_dvc_lock(smoke_repo):
    """`in2 audit run` on the real probe-in2 run: every link's md5 is the one dvc.lock records,
    each matches the workspace, and the gate passed."""
    repo, env, _ = smoke_repo
    db = sqlite3.connect(repo / "mlflow.db")
    (run_id,) = db.execute("select run_uuid from runs where name = 'probe-in2'").fetchone()
    report = json.loads(run_ok(["in2", "audit", "run", run_id, "--json"], repo, env).stdout)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    outs = {o["path"]: o["md5"] for stage in lock.values() for o in stage.get("outs", [])}
    chain = {a["path"]: a for a in report["chain"]}
    assert list(chain) == [
        "data/corpus/train.parquet",
        "data/segments",
        "data/qa",
        "data/in2",
        "models/in2",
        "results/probe/in2/scores.json",
    ]
    assert {path: a["md5"] for path, a in chain.items()} == {path: outs[path] for path in chain}
    assert report["problems"] == [] and {a["workspace"] for a in chain.values()} == {"match"}
    assert chain["data/in2"]["note"].startswith("gate passed (validate run")
    assert report["train_run_id"] and report["run"]["tags"]["dvc_stage"] == "probe@in2"


def test_second_repro_is_up_to_date_and_push_works(smoke_repo):
    repo, env, _ = smoke_repo
    data = [repo / "data/in2/train.parquet", repo / "data/in2/val.parquet"]
    before = [hashlib.md5(f.read_bytes()).hexdigest() for f in data]
    run_ok(["dvc", "repro", "--force", "--single-item", "synthesize"], repo, env)
    assert [hashlib.md5(f.read_bytes()).hexdigest() for f in data] == before  # deterministic
    assert "Data and pipelines are up to date" in run_ok(["dvc", "repro"], repo, env).stdout
    run_ok(["dvc", "push"], repo, env)
    assert any((repo / "dvc-storage").rglob("*"))


def test_the_api_key_used_by_the_openai_generator_is_written_nowhere(smoke_repo):
    """`dvc exp run --temp ... qa` with `qa.generator: openai` against a loopback endpoint, the
    canary key in OPENAI_API_KEY: the endpoint received the key, and still no file of the
    repository (the response cache, mlflow.db, DVC cache, metrics), nothing the experiment
    committed (params.yaml, dvc.lock) and no line of its log holds it. The experiment runs the
    `qa` stage alone: it is the one stage that holds the key (the stages after it run in
    the baseline above with the key in their environment too).

    The endpoint is the stub server of tests/openai_stub.py: a real model on loopback would need
    minutes to write the smoke profile's hundreds of QA pairs on this CPU, and where the key goes
    depends on our code, not on the replies."""
    repo, env, _ = smoke_repo
    git_commit(repo, env, "smoke repro")
    with serve_stub() as stub:
        settings = ["-S", "qa.generator=openai", "-S", f"qa.openai.base_url={stub.url}"]
        command = ["dvc", "exp", "run", "--temp", "-n", "openai-qa", *settings, "qa"]
        exp = run_ok(command, repo, env)
    log = exp.stdout + exp.stderr
    assert "Running stage 'qa'" in log and "Running stage 'synthesize'" not in log
    assert stub.authorization == {f"Bearer {CANARY_KEY}"} and stub.chat_hits > 0
    assert CANARY_KEY not in log
    files = [p for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts]
    cached = [p for p in files if ".cache" in p.parts]
    assert len(cached) >= stub.chat_hits  # the responses are there, without the key
    leaked = [str(p.relative_to(repo)) for p in files if CANARY_KEY.encode() in p.read_bytes()]
    assert leaked == []
    refs = run_ok(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo, env).stdout
    (ref,) = [r for r in refs.split() if r.endswith("/openai-qa")]
    for committed in ("params.yaml", "dvc.lock"):
        assert CANARY_KEY not in run_ok(["git", "show", f"{ref}:{committed}"], repo, env).stdout
    lock = yaml.safe_load(run_ok(["git", "show", f"{ref}:dvc.lock"], repo, env).stdout)
    (metrics,) = [o for o in lock["stages"]["qa"]["outs"] if o["path"] == "metrics/qa.json"]
    cached_metrics = repo / ".dvc/cache/files/md5" / metrics["md5"][:2] / metrics["md5"][2:]
    assert json.loads(cached_metrics.read_text())["api"]["requests"] == stub.chat_hits


def test_dvc_repro_killed_mid_training_resumes_from_the_last_checkpoint(smoke_repo):
    """`kill -9` of the whole `dvc repro` (DVC and the train stage it runs) after the second
    checkpoint, then `dvc repro` again: DVC takes its lock back, keeps the persisted
    `checkpoints/`, and the stage resumes there and finishes."""
    repo, env, _ = smoke_repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"] |= {"checkpoint_every": 1, "epochs": 4}  # 24 examples / 4 -> 24 steps
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.Popen(
        ["dvc", "repro", "train"],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill reaches the stage too
    )
    deadline = time.monotonic() + 300
    while not list(repo.glob("checkpoints/*/step-000002/manifest.json")):
        assert proc.poll() is None, "dvc repro ended before its second checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (repo / "models/in2/model.safetensors").exists()  # the killed run published nothing

    rerun = run_ok(["dvc", "repro", "train"], repo, env)
    log = rerun.stdout + rerun.stderr
    step = int(log.split("resuming from")[1].split("(step ")[1].split(" ")[0])
    assert 2 <= step < 24 and "of 24)" in log, log[-3000:]
    state = json.loads((repo / "models/in2/trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"]] == list(range(1, 25))
    again = run_ok(["dvc", "repro", "train"], repo, env).stdout
    assert "Data and pipelines are up to date" in again


def ran_stages(log: str) -> list[str]:
    """The stages a `dvc repro` ran, in order, from its log."""
    return [line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage '")]


def test_editing_a_report_module_re_runs_report_alone(smoke_repo):
    """The deps of dvc.yaml follow the imports: a change to plot code re-runs `report` and no
    model inference, and a second `dvc repro` has nothing to do."""
    repo, env, _ = smoke_repo
    run_ok(["dvc", "repro"], repo, env)  # whatever an earlier test left changed
    plots = repo / "src/in2/report/plots.py"
    text = plots.read_text()
    assert '"in2": "#E97132"' in text
    plots.write_text(text.replace('"in2": "#E97132"', '"in2": "#D35400"'))
    out = run_ok(["dvc", "repro"], repo, env)
    assert ran_stages(out.stdout) == ["report"], out.stdout[-3000:]
    assert "Data and pipelines are up to date" in run_ok(["dvc", "repro"], repo, env).stdout


def test_editing_a_training_module_re_trains_from_scratch(smoke_repo):
    """A change to the training code re-runs `train` (its deps list the module), and the run key
    holds the code's md5: the finished run's checkpoints are not resumed, every step is trained
    again and new weights are published, then probed."""
    repo, env, _ = smoke_repo
    run_ok(["dvc", "repro"], repo, env)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["train"]["checkpoint_every"] > 0  # checkpoints of the finished run exist
    assert list(repo.glob("checkpoints/*/step-*"))
    weights = repo / "models/in2/model.safetensors"
    before = hashlib.md5(weights.read_bytes()).hexdigest()
    loop = repo / "src/in2/train/loop.py"
    text = loop.read_text()
    assert text.count("lr=params.train.learning_rate") == 1
    loop.write_text(
        text.replace("lr=params.train.learning_rate", "lr=2 * params.train.learning_rate")
    )

    out = run_ok(["dvc", "repro"], repo, env)
    log = out.stdout + out.stderr
    assert ran_stages(log)[:2] == ["train", "probe@in2"], log[-3000:]
    assert "resuming from" not in log
    assert "checkpoint(s) of 1 other run(s)" in log, log[-3000:]
    state = json.loads((repo / "models/in2/trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"]] == list(range(1, 25))
    assert hashlib.md5(weights.read_bytes()).hexdigest() != before
    assert "Data and pipelines are up to date" in run_ok(["dvc", "repro"], repo, env).stdout
