"""Batch mode against a real loopback Batch API (bench/openai_batch_stub.py): paid once across
kills, lost replies and parallel runs; failed work is not silent; every call is retried.

One test per fault, each asserting what the user sees: the stub's bill (batches created, each
request message sent), the exit code and message, the metrics and the cache.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import git_commit, qa_segments, run_ok, smoke_repo_copy, write_random_segments

import in2.endpoint.retry
from in2.endpoint.claims import Claims
from in2.endpoint.retry import EndpointError
from in2.params import OpenAIQAParams, QAParams
from in2.qa.llm import generate_openai_qa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from openai_batch_stub import Store, serve  # noqa: E402


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(in2.endpoint.retry, "BACKOFF_BASE_S", 0.01)


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[Store]:
    with serve(tmp_path / "stub", failed_share=0.0) as store:
        yield store


def qa_params(url: str, cache: Path, **openai: Any) -> QAParams:
    settings = {"base_url": url, "cache_dir": str(cache), "api_key_env": "IN2_TEST_UNSET_KEY"}
    settings |= {"mode": "batch", "batch_poll_s": 0.05, "max_tokens": 256}
    return QAParams(generator="openai", openai=OpenAIQAParams(**(settings | openai)))


# ---------------------------------------------------------------- killed, lost replies, retries


def _stage_folder(root: Path, url: str, tiny_model_dir: Path, **openai: Any) -> Path:
    """Inputs of `stages/qa.py` in `root`: 40 random-token segments (two per document), the
    tiny model's tokenizer, params pointing the batch-mode generator at `url`."""
    (root / ".dvc").mkdir(parents=True)  # the repository root: the cache is anchored here
    shutil.copytree(tiny_model_dir, root / "models/base")
    write_random_segments(root / "data/segments", 40, 128, np.random.default_rng(0))
    settings = {"base_url": url, "mode": "batch", "batch_poll_s": 0.05, "max_retries": 2}
    params = {"seed": 0, "qa": {"generator": "openai", "openai": settings | openai}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _stage(root: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    for var in ("DVC_ROOT", "DVC_STAGE", "OPENAI_BASE_URL"):
        env.pop(var, None)
    return subprocess.Popen(
        [sys.executable, str(REPO / "stages/qa.py")],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(("action", "others"), [("lost", 150), ("drop", 0)])
def test_a_run_killed_as_its_create_reaches_the_server_pays_once(
    stub, tiny_model_dir, tmp_path, action, others
):
    """SIGKILL of the qa stage right when `batches.create` reaches the server, which then makes
    the batch (`lost`: the reply never arrives) or not (`drop`). The intent record is on disk
    without a batch id; the re-run finds the batch in `batches.list` (paging back past 150
    newer batches of other work) and resumes it, or submits the intent afresh: either way the
    server made one batch for these requests and sent each once, and data/qa is complete."""
    root = _stage_folder(tmp_path / "run", stub.url, tiny_model_dir)
    reached, killed = threading.Event(), threading.Event()

    def hook(body: dict[str, Any]) -> str:
        reached.set()
        killed.wait(60)
        return action

    stub.create_hook = hook
    proc = _stage(root)
    assert reached.wait(120), proc.communicate()[1][-3000:]
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    killed.set()
    while stub.created < (action == "lost"):  # the server finishes the call it was making
        time.sleep(0.01)
    stub.create_hook = None
    (record,) = (root / ".cache/qa/batches").glob("*.json")
    state = json.loads(record.read_text())
    assert state["batch_id"] is None and state["input_file_id"].startswith("file-")
    for _ in range(others):  # newer batches of other work: the intent's is on page 2
        stub.run(stub.upload(b"")["id"])

    _, err = (proc := _stage(root)).communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert stub.created == 1 + others
    assert set(stub.sent.values()) == {1} and len(stub.sent) == 60  # 40 fine + 20 integration
    assert stub.calls["batches.list"] == (2 if others else 1)
    assert stub.calls["batches.create"] == (1 if action == "lost" else 2)
    metrics = json.loads((root / "metrics/qa.json").read_text())
    assert metrics["api"]["requests"] == 60 and metrics["api"]["failed"] == {}
    assert not any(k.endswith("no_response") for k in metrics["rejected"])
    assert sum(metrics["accepted"].values()) == len(pd.read_parquet(root / "data/qa/qa.parquet"))
    assert not list((root / ".cache/qa/batches").iterdir())


def test_a_lost_create_reply_is_found_again_not_paid_twice(stub, tmp_path):
    """The server makes the batch but the reply is lost (connection closed): the retried create
    first looks in `batches.list` (its first page a 500, retried) and finds the batch."""
    actions = iter(["lost"])
    stub.create_hook = lambda body: next(actions, "answer")
    stub.fail_next["batches.list"] = 1
    _, stats = generate_openai_qa(qa_segments(3, 2), qa_params(stub.url, tmp_path), seed=0)
    assert stub.created == 1 and stub.calls["batches.create"] == 1
    assert set(stub.sent.values()) == {1} and len(stub.sent) == 9
    assert stats.api["retries"] == {"connection": 1, "5xx": 1}
    assert stats.api["requests"] == 9


def test_every_batch_api_call_is_retried(stub, tmp_path):
    """A 500 on the upload, the create, a status check and the result download: each retried
    and counted; the run completes with one batch."""
    for route in ("files.create", "batches.create", "batches.retrieve", "files.content"):
        stub.fail_next[route] = 1
    _, stats = generate_openai_qa(qa_segments(3, 2), qa_params(stub.url, tmp_path), seed=0)
    assert stats.api["retries"] == {"5xx": 4} and stats.api["requests"] == 9
    assert stub.created == 1 and stub.calls["batches.create"] == 2  # the 500 made no batch
    assert stub.calls["files.create"] == 2 and stub.calls["batches.list"] == 1  # checked first


# ---------------------------------------------------------------- failed work is not silent


def test_expired_requests_fail_the_stage_and_a_rerun_asks_for_them(stub, tiny_model_dir, tmp_path):
    """An `expired` batch: the stage exits 2 with one line naming how many and how to resume;
    the re-run sends exactly the expired requests again."""
    stub.expired_share = 0.3
    root = _stage_folder(tmp_path / "run", stub.url, tiny_model_dir)
    _, err = (proc := _stage(root)).communicate(timeout=300)
    expired = stub.outcomes["batch_expired"]
    assert proc.returncode == 2 and 0 < expired < 60
    assert err.splitlines()[-1] == (
        f"error: qa.openai: {expired} batch request(s) got no response (batch_expired: "
        f"{expired}); the answers received are cached and nothing was written to data/qa: "
        "re-run `dvc repro` to ask for the missing ones again, or set "
        "qa.openai.allow_failed_requests: true to go on without them"
    )
    assert not (root / "data/qa/qa.parquet").exists()
    assert len(list((root / ".cache/qa").glob("??/*.json"))) == 60 - expired

    stub.expired_share = 0.0
    _, err = (proc := _stage(root)).communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert sum(stub.sent.values()) == 60 + expired and len(stub.sent) == 60
    metrics = json.loads((root / "metrics/qa.json").read_text())
    assert metrics["api"]["requests"] == expired and metrics["api"]["cached"] == 60 - expired


def test_allowed_failures_succeed_and_say_so(stub, tmp_path, caplog):
    """`allow_failed_requests: true`: the run succeeds; the log and the metrics say how many
    requests got no response, by reason; they are not cached."""
    stub.failed_share, stub.expired_share = 0.15, 0.15
    params = qa_params(stub.url, tmp_path, allow_failed_requests=True)
    with caplog.at_level(logging.WARNING):
        _, stats = generate_openai_qa(qa_segments(10, 2), params, seed=0)
    failed = {k: stub.outcomes[k] for k in ("batch_expired", "server_error")}
    assert all(failed.values()) and stats.api["failed"] == failed
    n = sum(failed.values())
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(failed.items(), key=lambda x: (-x[1], x[0])))
    assert (
        f"qa.openai: {n} batch request(s) got no response ({reasons}); going on without them "
        "(qa.openai.allow_failed_requests): counted as no_response rejects and in api.failed of "
        "the metrics"
    ) in caplog.messages
    assert sum(v for k, v in stats.rejected.items() if k.endswith(":no_response")) == n
    assert len(list(tmp_path.glob("??/*.json"))) == 30 - n


def test_a_batch_that_fails_validation_keeps_its_message(stub, tmp_path):
    """Status `failed` (nothing run, nothing billed): the run stops with the server's reasons;
    nothing is left pending, so the re-run submits afresh."""
    stub.validation_error = "Line 1: the model gpt-4-turbo is not available for batch"
    with pytest.raises(EndpointError) as err:
        generate_openai_qa(qa_segments(2, 2), qa_params(stub.url, tmp_path), seed=0)
    assert str(err.value) == (
        "batch batch-000002 failed validation: Line 1: the model gpt-4-turbo is not available "
        "for batch"
    )
    assert not list((tmp_path / "batches").iterdir())
    generate_openai_qa(qa_segments(2, 2), qa_params(stub.url, tmp_path), seed=0)
    assert stub.created == 2 and len(stub.sent) == 6


# ---------------------------------------------------------------- parallel runs and claims


def test_two_runs_on_one_cache_send_each_request_once(stub, tmp_path):
    """Two runs at once on one cache with the same requests: each request is sent once; the
    second waits for what the first holds, and both end with the same pairs."""
    stub.hold_s = 1.0
    params = qa_params(stub.url, tmp_path)
    results: dict[str, Any] = {}

    def run(name: str) -> None:
        results[name] = generate_openai_qa(qa_segments(8, 2), params, seed=0)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
        time.sleep(0.3)
    for t in threads:
        t.join(120)
    assert set(results) == {"a", "b"}
    assert set(stub.sent.values()) == {1} and len(stub.sent) == 24  # 8 docs x 3 requests
    assert results["a"][1].api["requests"] + results["b"][1].api["requests"] == 24
    pd.testing.assert_frame_equal(results["a"][0], results["b"][0])


_HOLDER = """
import sys, time
from pathlib import Path
from in2.endpoint.claims import Claims
with Claims(Path(sys.argv[1])) as claims:
    assert all(claims.claim(f"{i:064x}") for i in range(int(sys.argv[2])))
    print("held", flush=True)
    time.sleep(600)
"""


def test_claims_of_a_live_owner_hold_and_a_killed_owners_are_taken_over(tmp_path):
    """A claim another live process holds is refused; once that process is killed (kill -9,
    no cleanup) its claims are taken over at once, one liveness check for all of them."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path), "100"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with Claims(tmp_path) as claims:
            assert not any(claims.claim(f"{i:064x}") for i in range(100))
            holder.kill()
            holder.wait()
            time.sleep(1.1)  # the alive verdict is trusted for a second
            assert all(claims.claim(f"{i:064x}") for i in range(100))
            assert claims.taken_over == 100
            claims.release(f"{0:064x}")
        assert not (tmp_path / "00" / f"{0:064x}").exists()
    finally:
        holder.kill()
        holder.wait()


def test_claim_and_release_cost_microseconds(tmp_path):
    """The bookkeeping per request at paper scale (~2M requests): claim + release."""
    keys = [f"{i:064x}" for i in range(20_000)]
    with Claims(tmp_path) as claims:
        start = time.perf_counter()
        for key in keys:
            claims.claim(key)
        claimed = time.perf_counter()
        for key in keys:
            claims.release(key)
        released = time.perf_counter()
    per_claim, per_release = [
        (b - a) / len(keys) * 1e6 for a, b in ((start, claimed), (claimed, released))
    ]
    print(f"claim {per_claim:.1f} µs, release {per_release:.1f} µs per request")
    assert per_claim < 500 and per_release < 500


# ---------------------------------------------------------------- queued DVC experiments


@pytest.mark.e2e
def test_two_queued_experiments_send_each_request_once(tmp_path):
    """`dvc exp run --queue` twice (a synthesize param apart: the same QA requests) and
    `dvc queue start -j 2` on the smoke repository with the batch-mode openai generator: the
    two qa stages run at once on the repository's `.cache/qa`, and each request is sent once."""
    with serve(tmp_path / "stub", failed_share=0.0) as stub:
        stub.hold_s = 20.0
        repo, env = smoke_repo_copy(tmp_path)
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["qa"] |= {"generator": "openai", "max_fine_grained": 12, "max_integration": 4}
        params["qa"]["openai"] |= {"base_url": stub.url, "mode": "batch", "batch_poll_s": 0.5}
        params["qa"]["openai"]["api_key_env"] = "IN2_TEST_UNSET_KEY"
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        run_ok(["dvc", "repro", "segment"], repo, env)
        git_commit(repo, env, "openai batch qa")
        names = ("n-train-20", "n-train-28")
        for name in names:
            command = ["dvc", "exp", "run", "--queue", "-n", name, "qa"]
            run_ok([*command, "-S", f"synthesize.n_train={name.rsplit('-', 1)[1]}"], repo, env)
        run_ok(["dvc", "queue", "start", "-j", "2"], repo, env)
        deadline = time.monotonic() + 600
        while True:
            out = run_ok(["dvc", "queue", "status"], repo, env).stdout
            status = {r[1]: r[-1] for r in map(str.split, out.splitlines()) if len(r) >= 3}
            if all(status.get(n) in ("Success", "Failed") for n in names):
                break
            assert time.monotonic() < deadline, f"queued experiments not done in 600 s: {out}"
            time.sleep(2)
        logs = {n: run_ok(["dvc", "queue", "logs", n], repo, env).stdout for n in names}
        assert [status[n] for n in names] == ["Success"] * 2, logs
        assert set(stub.sent.values()) == {1} and len(stub.sent) == 16
        assert len(list((repo / ".cache/qa").glob("??/*.json"))) == 16
        waited = [n for n in names if "request(s) another run is sending" in logs[n]]
        assert len(waited) == 1, logs  # the runs overlapped: one waited for the other's claims
