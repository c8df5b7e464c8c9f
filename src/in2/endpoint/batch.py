"""The OpenAI Batch API for paper-scale QA generation: half the price, results within 24 h.

The requests not in the response cache are written as Batch API input files (one JSON line per
request: `custom_id` = the cache key, `POST /v1/chat/completions`, the same body as online; at
most 50,000 lines per batch), uploaded and submitted. The ids of a submitted batch are saved in
the cache folder before polling, so an interrupted run resumes polling the same batch instead of
paying for it again. Every successful response lands in the same cache as in the online mode;
failed requests are counted by reason and not cached, so a re-run asks for them again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from in2.endpoint.client import (
    ApiStats,
    Budget,
    ChatRequest,
    EndpointError,
    Plan,
    ResponseCache,
)
from in2.outputs import atomic_file, write_json
from in2.params import OpenAIQAParams

log = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
MAX_REQUESTS = 50_000
"""Lines per batch input file allowed by the Batch API."""
TERMINAL = ("completed", "failed", "expired", "cancelled")


def request_lines(requests: Iterable[ChatRequest]) -> Iterator[dict[str, Any]]:
    """Batch API input lines: the cache key is the custom_id that matches results to requests."""
    return (
        {"custom_id": r.key, "method": "POST", "url": ENDPOINT, "body": r.body} for r in requests
    )


@dataclass
class BatchResults:
    """Parsed output and error files: responses and failure reasons by custom_id."""

    responses: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def parse_results(lines: Iterable[str], into: BatchResults | None = None) -> BatchResults:
    """Parse output / error file lines:
    `{"id", "custom_id", "response": {"status_code", "request_id", "body"} | null, "error"}`."""
    results = BatchResults() if into is None else into
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            custom_id = record["custom_id"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise EndpointError(f"batch result line {n} is not a Batch API record") from None
        response = record.get("response") or {}
        error = record.get("error") or (response.get("body") or {}).get("error") or {}
        if response.get("status_code") == 200 and not error:
            results.responses[custom_id] = response["body"]
        else:
            results.errors[custom_id] = str(
                error.get("code") or f"http_{response.get('status_code', 'none')}"
            )
    return results


def _submit(client: openai.OpenAI, chunk: list[ChatRequest], folder: Path) -> Path:
    """Upload and submit one input file; returns the state file that records the batch.

    The input file stays next to it until the results are cached: it maps custom ids back to
    request bodies, also for a batch resumed by a later run."""
    digest = hashlib.sha256("\n".join(r.key for r in chunk).encode()).hexdigest()[:16]
    path = folder / f"{digest}.jsonl"
    with atomic_file(path) as tmp, tmp.open("w") as f:  # a line at a time: 50,000 per file
        for line in request_lines(chunk):
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    with path.open("rb") as f:
        uploaded = client.files.create(file=f, purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h"
    )
    state = path.with_suffix(".json")
    write_json(state, {"batch_id": batch.id, "input_file_id": uploaded.id})
    log.info("qa batch: submitted %s with %d requests", batch.id, len(chunk))
    return state


def _wait(client: openai.OpenAI, batch_id: str, poll_s: float) -> Any:
    """Poll until the batch ends; a transient API error only delays the next poll."""
    while True:
        try:
            batch = client.batches.retrieve(batch_id)
        except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as e:
            log.warning("qa batch %s: status check failed (%s), retrying", batch_id, e)
            time.sleep(poll_s)
            continue
        if batch.status in TERMINAL:
            return batch
        counts = batch.request_counts
        done = f"{counts.completed + counts.failed}/{counts.total}" if counts else "?"
        log.info("qa batch %s: %s, %s done", batch_id, batch.status, done)
        time.sleep(poll_s)


def _collect(
    client: openai.OpenAI,
    state: Path,
    work: Plan,
    cache: ResponseCache,
    params: OpenAIQAParams,
    stats: ApiStats,
    budget: Budget,
    planned: set[str],
) -> set[str]:
    """Wait for a submitted batch, cache its responses, count its failures, forget it.

    Returns the keys of the `planned` requests (those of `work.todo`) that got no response."""
    batch_id = json.loads(state.read_text())["batch_id"]
    inputs = state.with_suffix(".jsonl")
    batch = _wait(client, batch_id, params.batch_poll_s)
    if batch.status == "failed":
        errors = batch.errors.data if batch.errors and batch.errors.data else []
        reasons = "; ".join(str(e.message) for e in errors) or "no reason given"
        state.unlink()  # nothing was run or billed: a re-run submits afresh
        inputs.unlink()
        raise EndpointError(f"batch {batch_id} failed validation: {reasons}")
    results = BatchResults()
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            parse_results(client.files.content(file_id).text.splitlines(), results)
    sent = set()
    with inputs.open() as f:  # the bodies to cache, a line at a time
        for n, line in enumerate(f, 1):
            try:
                key, body = (record := json.loads(line))["custom_id"], record["body"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise EndpointError(
                    f"{inputs}:{n}: not a Batch API input line; remove {inputs.name} and "
                    f"{state.name} to send its requests again"
                ) from None
            sent.add(key)
            if (response := results.responses.get(key)) is not None:
                cache.put(key, body, response)
                cost = stats.add_usage(response, work.prompt_tokens.get(key, 0), work.pricing)
                budget.settle(0.0, cost)
    failed = (sent & planned) - results.responses.keys()
    for key in failed:
        reason = results.errors.get(key, f"batch_{batch.status}")
        stats.failed[reason] = stats.failed.get(reason, 0) + 1
    state.unlink()
    inputs.unlink()
    return failed


def run_batch(
    client: openai.OpenAI,
    work: Plan,
    cache: ResponseCache,
    params: OpenAIQAParams,
    stats: ApiStats,
) -> None:
    """Finish the batches an interrupted run submitted, then submit the rest within the budget
    (all batches at once, so they run side by side) and wait for them.

    A request that failed in a resumed batch is not sent again in the same run."""
    budget = Budget(params)
    folder = cache.root / "batches"
    planned = {r.key for r in work.todo}
    failed: set[str] = set()
    for state in sorted(folder.glob("*.json")):
        log.info("qa batch: resuming %s (submitted by an earlier run)", state.name)
        failed |= _collect(client, state, work, cache, params, stats, budget, planned)
    todo: list[ChatRequest] = []
    for request in (r for r in work.todo if r.key not in cache and r.key not in failed):
        if not budget.reserve(work.worst_case(request)):
            break
        todo.append(request)
    chunks = [todo[i : i + MAX_REQUESTS] for i in range(0, len(todo), MAX_REQUESTS)]
    for state in [_submit(client, chunk, folder) for chunk in chunks]:  # all run side by side
        _collect(client, state, work, cache, params, stats, budget, planned)
    if budget.stopped:
        raise budget.error(stats, cache)
