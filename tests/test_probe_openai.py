"""The API probe runner against a real `transformers serve` on loopback (no mock of the client).

The tiny model with varied weights is served by `transformers serve`; the same model is probed by
the local runner, so both runners' outputs are compared row by row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai.resources.chat.completions as chat_completions
import pytest
import yaml
from conftest import PROBE_CONTEXT_TOKENS, PROBE_TASKS, free_port, transformers_serve, vary_weights
from openai_stub import serve_stub

from in2.model import load_model, load_tokenizer, save_model
from in2.params import InputError, OpenAIProbeParams, ProbeParams
from in2.probing.api import probe_endpoint
from in2.probing.build import read_probes
from in2.probing.local import probe_model
from in2.probing.results import scores_summary

REPO = Path(__file__).resolve().parents[1]
MAX_NEW = 6
ROW_KEYS = ["context_tokens", "set_id", "position_id", "prediction", "score", "strict_score"]


@pytest.fixture(scope="module")
def varied_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with varied weights, saved: served, and loaded by the local runner."""
    out = tmp_path_factory.mktemp("varied")
    save_model(vary_weights(load_model(tiny_model_dir)), load_tokenizer(tiny_model_dir), out)
    return out


@pytest.fixture(scope="module")
def served(varied_dir: Path) -> Iterator[str]:
    with transformers_serve(varied_dir) as url:
        yield url


def probe_params(url: str, model: str, cache: Path, **openai: Any) -> ProbeParams:
    settings = {"base_url": url, "model": model, "cache_dir": str(cache)}
    return ProbeParams(
        tasks=list(PROBE_TASKS),
        context_tokens=PROBE_CONTEXT_TOKENS,
        bin_size=2,
        max_new_tokens=dict.fromkeys(PROBE_TASKS, MAX_NEW),
        openai=OpenAIProbeParams(**(settings | {"api_key_env": "IN2_TEST_UNSET_KEY"} | openai)),
    )


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Counts HTTP requests: every call of the SDK's chat.completions.create is recorded. Our
    client turns the SDK's retries off, so one call is one HTTP request to the server."""
    calls: list[dict[str, Any]] = []
    create: Callable[..., Any] = chat_completions.Completions.create

    def counting(self: chat_completions.Completions, **body: Any) -> Any:
        calls.append(body)
        return create(self, **body)

    monkeypatch.setattr(chat_completions.Completions, "create", counting)
    return calls


def test_api_and_local_runners_write_equal_rows_and_a_rerun_sends_nothing(
    served: str, varied_dir: Path, probes_dir: Path, tmp_path: Path, sent: list[dict[str, Any]]
) -> None:
    params = probe_params(served, str(varied_dir), tmp_path, concurrency=2)
    api_runs, api = probe_endpoint(params, probes_dir, tokenizer_file=None)
    local_runs = probe_model(load_model(varied_dir), load_tokenizer(varied_dir), params, probes_dir)

    n_queries = sum(len(read_probes(probes_dir, task)[1]) for task in PROBE_TASKS)
    assert len(sent) == n_queries and api.requests == n_queries and api.cached == 0
    assert {b["temperature"] for b in sent} == {0.0} and {
        b["max_completion_tokens"] for b in sent
    } == {6}
    assert list(api_runs) == list(local_runs) == list(PROBE_TASKS)
    for task in PROBE_TASKS:
        _, queries = read_probes(probes_dir, task)
        api_rows = api_runs[task].predictions
        assert [list(r) for r in api_rows] == [ROW_KEYS] * len(queries)
        ids = sorted((r["set_id"], r["position_id"]) for r in api_rows)
        assert ids == sorted((q["set_id"], q["position_id"]) for q in queries)
        # The same greedy model behind both runners, given the same prompt, answers the same:
        # equal rows prove format, order, prompt content, answer cleanup and scoring at once.
        assert api_rows == local_runs[task].predictions
        assert api_runs[task].curve == local_runs[task].curve
    answers = [r["prediction"] for run in api_runs.values() for r in run.predictions]
    assert len(set(answers)) > 1, "degenerate model: the comparison would prove nothing"
    # the question sent is the query's, after the set's context, in one user message
    document = read_probes(probes_dir, "document")
    message = sent[0]["messages"]
    assert [m["role"] for m in message] == ["user"]
    assert document[0][0]["text"] in message[0]["content"]
    assert message[0]["content"].endswith(document[1][0]["question"])

    # A re-run is answered by the cache alone: no HTTP request, even with the server unreachable.
    dead = probe_params(f"http://127.0.0.1:{free_port()}/v1", str(varied_dir), tmp_path)
    again, api2 = probe_endpoint(dead, probes_dir, tokenizer_file=None)
    assert len(sent) == n_queries
    assert api2.requests == 0 and api2.cached == n_queries and api2.cost_usd == 0
    assert {t: r.predictions for t, r in again.items()} == {
        t: r.predictions for t, r in api_runs.items()
    }


def _stage(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "stages/probe.py"), "--model", "api"],
        cwd=cwd,
        env=os.environ
        | {"DVC_ROOT": str(cwd), "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db"},
        capture_output=True,
        text=True,
    )


def _stage_dir(tmp_path: Path, probes_dir: Path, params: ProbeParams) -> Path:
    """A folder as the stage sees the repository: params.yaml and data/probes."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data/probes").symlink_to(probes_dir)
    raw = {"probe": params.model_dump(exclude_defaults=True)}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path


def test_stage_writes_results_probe_api_like_the_local_runner(
    served: str, varied_dir: Path, probes_dir: Path, tmp_path: Path
) -> None:
    params = probe_params(served, str(varied_dir), tmp_path / ".cache/probe")
    root = _stage_dir(tmp_path, probes_dir, params)
    out = _stage(root)
    assert out.returncode == 0, out.stderr
    results = root / "results/probe/api"
    assert sorted(p.name for p in results.iterdir()) == sorted(
        [*(f"{t}.predictions.jsonl" for t in PROBE_TASKS), "scores.json"]
    )
    rows = [json.loads(line) for line in (results / "document.predictions.jsonl").open()]
    assert rows and all(list(r) == ROW_KEYS for r in rows)
    scores = json.loads((results / "scores.json").read_text())
    assert set(scores) == {*PROBE_TASKS, "all", "all_strict"}
    assert len(list((tmp_path / ".cache/probe").rglob("*.json"))) == sum(
        len(read_probes(probes_dir, t)[1]) for t in PROBE_TASKS
    )


def test_stage_with_the_endpoint_down_says_what_to_do(probes_dir: Path, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    params = probe_params(url, "m", tmp_path / "cache", max_retries=0)
    out = _stage(_stage_dir(tmp_path, probes_dir, params))
    assert out.returncode == 2
    assert f"error: cannot reach the probe endpoint {url}/ (after 1 attempt(s))" in out.stderr
    assert "fix probe.openai.base_url / OPENAI_BASE_URL" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "results").exists()


def test_a_remote_endpoint_without_key_asks_for_the_env_var(
    probes_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IN2_TEST_UNSET_KEY", raising=False)
    params = probe_params("https://api.example.com/v1", "gpt-4-turbo", tmp_path)
    with pytest.raises(InputError) as err:
        probe_endpoint(params, probes_dir, tokenizer_file=None)
    assert str(err.value) == (
        "probe.openai: no API key for https://api.example.com/v1: set the environment variable "
        "IN2_TEST_UNSET_KEY (probe.openai.api_key_env); never put the key in params.yaml"
    )


def test_a_retrained_checkpoint_is_asked_again_and_empty_answers_are_counted(
    probes_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`vllm serve models/in2` after re-training serves the same name: the cache key holds the
    checkpoint's DVC md5 (from dvc.lock), so the new model is asked, not the old one's cache."""
    root = tmp_path / "repo"
    (root / ".dvc").mkdir(parents=True)
    (root / "models/in2").mkdir(parents=True)
    (root / "models/in2/model.safetensors").write_bytes(b"weights")
    monkeypatch.setenv("DVC_ROOT", str(root))

    def lock(md5: str) -> None:
        outs = [{"path": "models/in2", "md5": md5, "size": 7, "nfiles": 1}]
        stages = {"train": {"cmd": "python stages/train.py", "outs": outs}}
        (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))

    lock("aaaa.dir")
    n_queries = sum(len(read_probes(probes_dir, task)[1]) for task in PROBE_TASKS)
    with serve_stub() as stub:
        stub.reply = lambda body: "an answer"
        stub.models = [{"id": "models/in2", "object": "model", "created": 0, "owned_by": "vllm"}]
        stub.script.append(("refusal",))
        params = probe_params(stub.url, "models/in2", tmp_path / "cache", concurrency=1)
        runs, api = probe_endpoint(params, probes_dir, tokenizer_file=None)
        assert api.requests == n_queries and api.refusals == 1
        scores = scores_summary(runs)
        assert sum(scores[t]["empty_answers"] for t in PROBE_TASKS) == 1  # the refusal
        _, again = probe_endpoint(params, probes_dir, tokenizer_file=None)
        assert again.requests == 0 and again.cached == n_queries
        lock("bbbb.dir")  # re-trained: same name, new checkpoint
        _, retrained = probe_endpoint(params, probes_dir, tokenizer_file=None)
        assert retrained.requests == n_queries and retrained.cached == 0
    assert stub.paths.count("/v1/models") == 3
