"""The OpenAI Batch API for paper-scale QA generation: half the price, results within 24 h.

The requests not in the response cache are written as Batch API input files (one JSON line per
request: `custom_id` = the cache key, `POST /v1/chat/completions`, the same body as online; at
most 50,000 lines per batch), uploaded and submitted, all at once so they run side by side. Every
successful response lands in the same cache as in the online mode. Every call (`files.create`,
`batches.create`, `batches.retrieve`, `batches.list`, `files.content`) goes through the retries
of in2.endpoint.retry, counted in the run's stats.

Paid once, across crashes and parallel runs:

- each batch is an intent in `<cache_dir>/batches/`: its input lines (`<intent>.jsonl`) and a
  record (`<intent>.json`) written and fsynced before `batches.create` (the uploaded file's id;
  the intent id goes to the batch's `metadata`), then again with the batch id. A run that finds
  a record without a batch id (killed in between, or a create whose reply was lost) looks for
  the batch in `batches.list` (paged, newest first, back to the record's time) by metadata or
  input file: found, it is resumed, never created again; not found, it is submitted.
- requests are claimed (in2.endpoint.claims) before they go into an input file; another live
  run's are waited for (their answers land in the shared cache). Claiming, adopting the intents
  of dead runs and writing input files happen under the claims lock, so a dead run's request is
  taken over only once its intent, if it has one, has been adopted with all its requests.

Failed work is not silent: requests that expired or failed are counted by reason, not cached,
and make the run fail naming them (a re-run asks for them again), unless
`qa.openai.allow_failed_requests` is set; a batch that fails validation stops the run.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import openai

from in2.endpoint.cache import ResponseCache, usable
from in2.endpoint.claims import Claims
from in2.endpoint.client import ApiStats, Budget, ChatRequest, Plan
from in2.endpoint.retry import EndpointError, with_retries
from in2.outputs import atomic_file
from in2.params import OpenAIQAParams

log = logging.getLogger(__name__)

T = TypeVar("T")

ENDPOINT = "/v1/chat/completions"
MAX_REQUESTS = 50_000
"""Lines per batch input file allowed by the Batch API."""
TERMINAL = ("completed", "failed", "expired", "cancelled")
METADATA_KEY = "in2_intent"
"""The batch `metadata` key holding the intent id that finds a batch again."""
LIST_PAGE = 100
"""Batches per `batches.list` page (the API's maximum)."""
CLOCK_SKEW_S = 3600.0
"""How far before a record's time `batches.list` is read: the server's clock is not ours."""


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


def _durable(path: Path, write: Callable[[IO[str]], None]) -> None:
    """Write `path` atomically and fsync it and its folder: it must outlive a power cut."""
    with atomic_file(path, sweep=False) as tmp, tmp.open("w") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


@dataclass
class Intent:
    """One batch: its input lines `<id>.jsonl` and its record `<id>.json` (input file id, batch
    id, when it was recorded). No record: nothing can have been created for it."""

    inputs: Path
    input_file_id: str | None = None
    batch_id: str | None = None
    recorded_at: float = 0.0

    @property
    def id(self) -> str:
        return self.inputs.stem

    @property
    def record(self) -> Path:
        return self.inputs.with_suffix(".json")

    @property
    def claim(self) -> str:
        return f"batch-{self.id}"

    def save(self) -> None:
        state = {"intent": self.id, "input_file_id": self.input_file_id}
        state |= {"batch_id": self.batch_id, "recorded_at": self.recorded_at}
        _durable(self.record, lambda f: json.dump(state, f))

    @classmethod
    def load(cls, inputs: Path) -> Intent:
        """The intent of an input file (records of earlier versions hold the two ids only)."""
        intent = cls(inputs)
        if not intent.record.is_file():
            return intent
        try:
            state = json.loads(intent.record.read_text())
            intent.input_file_id = state["input_file_id"]
            intent.batch_id = state["batch_id"]
            intent.recorded_at = float(state.get("recorded_at", 0.0))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise EndpointError(
                f"{intent.record}: not a batch record (edited?); find its batch in the "
                f"provider's batch list (metadata {METADATA_KEY}={intent.id}) and put its id "
                f'there as {{"input_file_id": ..., "batch_id": ...}}, or remove it and '
                f"{inputs.name} to send its requests again (paying twice if it ran)"
            ) from None
        return intent

    def custom_ids(self) -> list[str]:
        """The custom ids of its readable input lines."""
        keys = []
        with self.inputs.open() as f:
            for line in f:
                try:
                    keys.append(json.loads(line)["custom_id"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
        return keys


class _Api:
    """The Batch API calls of a run, each through with_retries, the retries counted."""

    def __init__(self, client: openai.OpenAI, params: OpenAIQAParams, stats: ApiStats) -> None:
        self.client = client
        self.params = params
        self.stats = stats
        self.url = str(client.base_url)

    def call(self, what: str, call: Callable[[], T]) -> T:
        return with_retries(call, self.params, self.url, what=what, on_retry=self._count)

    def _count(self, cause: str, delay: float) -> None:
        self.stats.retries[cause] = self.stats.retries.get(cause, 0) + 1
        self.stats.retry_wait_s += delay

    def upload(self, path: Path) -> str:
        def upload() -> Any:
            with path.open("rb") as f:
                return self.client.files.create(file=f, purpose="batch")

        return self.call("files.create", upload).id

    def create(self, intent: Intent) -> Any:
        """`batches.create`; a retry first looks for a batch the lost attempt may have made."""
        attempts = 0

        def create() -> Any:
            nonlocal attempts
            attempts += 1
            if attempts > 1 and (found := self.find([intent]).get(intent.id)) is not None:
                return found
            return self.client.batches.create(
                input_file_id=str(intent.input_file_id),
                endpoint=ENDPOINT,
                completion_window="24h",
                metadata={METADATA_KEY: intent.id},
            )

        return self.call("batches.create", create)

    def find(self, intents: list[Intent]) -> dict[str, Any]:
        """Intent id -> its batch in `batches.list` (by metadata, else by input file id), read
        page by page from the newest back to the oldest record's time."""
        wanted = {i.id for i in intents}
        by_file = {i.input_file_id: i.id for i in intents if i.input_file_id}
        since = min(i.recorded_at for i in intents) - CLOCK_SKEW_S
        found: dict[str, Any] = {}
        after: str | None = None
        while len(found) < len(wanted):
            page = self.call("batches.list", functools.partial(self._page, after))
            for batch in page.data:
                intent = (batch.metadata or {}).get(METADATA_KEY) or by_file.get(
                    batch.input_file_id
                )
                if intent in wanted:
                    found.setdefault(intent, batch)
            if not page.has_more or not page.data or page.data[-1].created_at < since:
                break
            after = page.data[-1].id
        return found

    def _page(self, after: str | None) -> Any:
        cursor = {"after": after} if after else {}
        return self.client.batches.list(limit=LIST_PAGE, **cursor)

    def retrieve(self, batch_id: str) -> Any:
        return self.call("batches.retrieve", lambda: self.client.batches.retrieve(batch_id))

    def content(self, file_id: str) -> str:
        return self.call("files.content", lambda: self.client.files.content(file_id)).text


def _wait(api: _Api, batch_id: str, poll_s: float) -> Any:
    """Poll until the batch ends."""
    while True:
        batch = api.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
        counts = batch.request_counts
        done = f"{counts.completed + counts.failed}/{counts.total}" if counts else "?"
        log.info("qa batch %s: %s, %s done", batch_id, batch.status, done)
        time.sleep(poll_s)


class _BatchRun:
    """The intents of one run: claimed, written, submitted, collected, forgotten."""

    def __init__(
        self,
        api: _Api,
        work: Plan,
        cache: ResponseCache,
        claims: Claims,
        stats: ApiStats,
    ) -> None:
        self.api = api
        self.params = api.params
        self.work = work
        self.cache = cache
        self.claims = claims
        self.stats = stats
        self.budget = Budget(api.params)
        self.folder = cache.root / "batches"
        self.planned = {r.key for r in work.todo}
        self.failed: set[str] = set()
        """Keys of planned requests that got no response in this run: not sent again in it."""
        self.reserved: dict[str, float] = {}

    def round(self, requests: list[ChatRequest]) -> list[ChatRequest]:
        """Finish the intents of dead runs, then claim and submit what is neither answered nor
        held, and wait for it; returns the requests another live run holds."""
        while True:
            with self.claims.locked():
                adopted = self._adopt()
                if not adopted:  # claims are taken only after a pass that adopted nothing
                    fresh, held = self._claim(requests)
                    break
            self._run(adopted)
        self._run(fresh)
        return held

    def _claim(self, requests: list[ChatRequest]) -> tuple[list[Intent], list[ChatRequest]]:
        """New intents for the requests this run may send (under the claims lock), and the
        requests another live run holds."""
        fresh: list[Intent] = []
        held: list[ChatRequest] = []
        lines: list[ChatRequest] = []
        for request in requests:
            if request.key in self.failed:
                continue
            if not self.claims.claim(request.key):
                held.append(request)
            elif request.key in self.cache:  # answered by a run that held it, or adopted
                self.claims.release(request.key)
            elif not self.budget.reserve(worst := self.work.worst_case(request)):
                self.claims.release(request.key)
                break
            else:
                self.reserved[request.key] = worst
                lines.append(request)
                if len(lines) == MAX_REQUESTS:
                    fresh.append(self._write(lines))
                    lines = []
        if lines:
            fresh.append(self._write(lines))
        return fresh, held

    def _run(self, intents: list[Intent]) -> None:
        """Submit the intents not known to have a batch (looking in `batches.list` first for
        those recorded by a run that died), then wait for and collect each."""
        unresolved = [i for i in intents if i.batch_id is None and i.input_file_id is not None]
        found = self.api.find(unresolved) if unresolved else {}
        for intent in intents:
            if intent.batch_id is None and intent.id in found:
                intent.batch_id = found[intent.id].id
                intent.save()
                log.info("qa batch: found %s of an interrupted run", intent.batch_id)
            elif intent.batch_id is None:
                self._submit(intent)
        for intent in intents:
            self._collect(intent)

    def _adopt(self) -> list[Intent]:
        """The intents of dead runs (called under the claims lock): those with a record are
        resumed, their requests made ours; the others were never sent and are dropped."""
        adopted = []
        for inputs in sorted(self.folder.glob("*.jsonl")):
            intent = Intent(inputs)
            if not self.claims.claim(intent.claim):
                continue
            if not intent.record.is_file():
                inputs.unlink(missing_ok=True)
                self.claims.release(intent.claim)
                continue
            intent = Intent.load(inputs)
            for key in intent.custom_ids():
                self.claims.take(key)
            log.info("qa batch: resuming %s (submitted by an earlier run)", intent.record.name)
            adopted.append(intent)
        return adopted

    def _write(self, chunk: list[ChatRequest]) -> Intent:
        """A new intent's input file, fsynced; the intent is claimed before its first line."""
        self.folder.mkdir(parents=True, exist_ok=True)
        intent = Intent(self.folder / f"{uuid.uuid4().hex}.jsonl")
        self.claims.claim(intent.claim)

        def write(f: IO[str]) -> None:
            for line in request_lines(chunk):  # a line at a time: 50,000 per file
                f.write(json.dumps(line, ensure_ascii=False) + "\n")

        _durable(intent.inputs, write)
        return intent

    def _submit(self, intent: Intent) -> None:
        """Upload (unless done), record the intent, create the batch, record its id."""
        if intent.input_file_id is None:
            intent.input_file_id = self.api.upload(intent.inputs)
            intent.recorded_at = time.time()
            intent.save()
        intent.batch_id = self.api.create(intent).id
        intent.save()
        log.info("qa batch: submitted %s for intent %s", intent.batch_id, intent.id)

    def _collect(self, intent: Intent) -> None:
        """Wait for a batch, cache its responses, count its failures, forget it."""
        batch_id = str(intent.batch_id)
        batch = _wait(self.api, batch_id, self.params.batch_poll_s)
        if batch.status == "failed":
            errors = batch.errors.data if batch.errors and batch.errors.data else []
            reasons = "; ".join(str(e.message) for e in errors) or "no reason given"
            self._forget(intent, intent.custom_ids())  # nothing was run or billed: submit afresh
            raise EndpointError(f"batch {batch_id} failed validation: {reasons}")
        results = BatchResults()
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                parse_results(self.api.content(file_id).splitlines(), results)
        sent, replies = [], []
        inputs = intent.inputs
        try:
            with inputs.open() as f:  # the bodies to cache, a line at a time
                for n, line in enumerate(f, 1):
                    try:
                        key, body = (record := json.loads(line))["custom_id"], record["body"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise EndpointError(
                            f"{inputs}:{n}: not a Batch API input line; remove {inputs.name} and "
                            f"{intent.record.name} to send its requests again"
                        ) from None
                    sent.append(key)
                    worst = self.reserved.pop(key, 0.0)
                    response = results.responses.get(key)
                    if response is not None and not usable(response):
                        results.errors[key] = "no_choices"  # a 200 without a reply: not cached
                        response = None
                    if response is not None:
                        replies.append((key, body, response))
                        cost = self.stats.add_usage(
                            response, self.work.prompt_tokens.get(key, 0), self.work.pricing
                        )
                        self.budget.settle(worst, cost)
                    else:
                        self.budget.settle(worst, 0.0)
                        if key in self.planned and key not in self.failed:
                            reason = results.errors.get(key, f"batch_{batch.status}")
                            self.stats.failed[reason] = self.stats.failed.get(reason, 0) + 1
                            self.failed.add(key)
        finally:  # one sync for the batch (or for what came before a bad line)
            self.cache.put_many(replies)
        self._forget(intent, sent)

    def _forget(self, intent: Intent, keys: list[str]) -> None:
        """Release the requests, then drop the record and the input file, then the intent."""
        for key in keys:
            self.claims.release(key)
        intent.record.unlink(missing_ok=True)
        intent.inputs.unlink(missing_ok=True)
        self.claims.release(intent.claim)

    def finish(self) -> None:
        """Raise what stopped the run; say what was allowed to fail."""
        if self.budget.stopped:
            raise self.budget.error(self.stats, self.cache)
        if not self.stats.failed:
            return
        section, n = self.params.section, sum(self.stats.failed.values())
        reasons = ", ".join(
            f"{reason}: {count}"
            for reason, count in sorted(self.stats.failed.items(), key=lambda x: (-x[1], x[0]))
        )
        if not self.params.allow_failed_requests:
            raise EndpointError(
                f"{section}: {n} batch request(s) got no response ({reasons}); the answers "
                f"received are cached and nothing was written to {self.params.output}: re-run "
                "`dvc repro` to ask for the missing ones again, or set "
                f"{section}.allow_failed_requests: true to go on without them"
            )
        log.warning(
            "%s: %d batch request(s) got no response (%s); going on without them "
            "(%s.allow_failed_requests): counted as no_response rejects and in api.failed of "
            "the metrics",
            section,
            n,
            reasons,
            section,
        )


def run_batch(
    client: openai.OpenAI,
    work: Plan,
    cache: ResponseCache,
    params: OpenAIQAParams,
    stats: ApiStats,
) -> None:
    """Resume the batches interrupted runs left, submit the rest within the budget (all at
    once, so they run side by side) and wait for them; then wait for the requests another live
    run holds, taking over those it leaves unanswered. A request that failed in this run is not
    sent again in it."""
    with Claims(cache.root / "claims") as claims:
        run = _BatchRun(_Api(client, params, stats), work, cache, claims, stats)
        held = run.round(work.todo)
        while held and not run.budget.stopped:
            log.info(
                "qa batch: waiting for %d request(s) another run is sending (claims in %s)",
                len(held),
                claims.root,
            )
            time.sleep(params.batch_poll_s)
            held = run.round(held)
    run.finish()
