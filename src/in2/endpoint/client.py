"""Paying for each chat completion once: an OpenAI-compatible client with our own retries, bounded
concurrency, an on-disk response cache, a cost estimate and a budget.

Used by the QA generator (`qa.openai`, in2.qa.llm) and the API probe runner (`probe.openai`,
in2.probing.api); messages name the section of the caller's params.

- Cache (in2.endpoint.cache): one JSON file per usable reply under `<section>.cache_dir`
  (outside every DVC output), keyed by the sha256 of the canonical request body (model,
  messages, sampling params, the completion budget always named `max_tokens`; never the URL or
  the key) and written durably right after the reply arrives, so neither a re-run nor a crash
  pays for a call twice.
- Retries (in2.endpoint.retry) and a wall-clock deadline and size cap per attempt
  (in2.endpoint.transport); a 200 without `choices[0].message.content` (or a refusal) is a
  retried fault, never cached.
- Budget: before each attempt, its worst case (estimated prompt + the completion budget) is
  reserved against `budget_usd`; an attempt that timed out or lost its connection may have been
  billed, so its reservation is kept as spent. The run stops cleanly when the next would not fit.
- Ctrl-C: no new request is sent, retry waits end at once, attempts in flight end by their
  deadline (`timeout_s`) and what they received is cached; then the run stops with one line.

Secrets: the API key is read from the environment variable named by `api_key_env` and only
handed to the SDK; it is never logged, cached or written to params or metrics.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import openai
from tqdm import tqdm

from in2.endpoint.cache import ResponseCache, refusal_of, usable
from in2.endpoint.claims import Claims
from in2.endpoint.formats import Fallback
from in2.endpoint.retry import Cancelled, EndpointError, Malformed, with_retries
from in2.endpoint.transport import BoundedClient
from in2.lineage.tracking import repo_root
from in2.params import InputError, OpenAIEndpointParams, OpenAIQAParams

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
BATCH_DISCOUNT = 0.5
"""The Batch API bills half the online price."""
__all__ = ["EndpointError", "ResponseCache"]  # re-exported for the batch mode


class BudgetExceeded(InputError):
    """The next request could exceed `budget_usd`; everything paid for so far is cached."""


class Interrupted(InputError):
    """Ctrl-C: the run stopped sending; everything received so far is cached."""


class _OverBudget(Exception):
    """A retry's reservation does not fit the budget: the request is given up."""


@dataclass(frozen=True)
class ChatRequest:
    """A chat completion request body (as sent) and its cache key."""

    key: str
    body: dict[str, Any]
    max_output_tokens: int
    """The completion budget: it bounds the cost."""
    typical_output_tokens: int
    """Expected completion length, for the typical cost estimate."""


def request_key(body: dict[str, Any]) -> str:
    """sha256 of the canonical request body: model, messages and sampling params."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def request_of(
    body: dict[str, Any],
    max_output_tokens: int,
    typical_output_tokens: int,
    params: OpenAIEndpointParams,
    identity: dict[str, str] | None = None,
) -> ChatRequest:
    """The request sending `body` with the completion budget under `params.output_tokens_field`.

    Its key names the budget `max_tokens` whatever the field (the field changes nothing the
    model writes, and keys made before it existed stay valid), plus the model's `identity`.
    """
    canonical = {**body, "max_tokens": max_output_tokens}
    if identity:
        canonical["model_identity"] = identity
    sent = {**body, params.output_tokens_field: max_output_tokens}
    typical = min(typical_output_tokens, max_output_tokens)
    return ChatRequest(request_key(canonical), sent, max_output_tokens, typical)


def chat_request(
    messages: list[dict[str, str]],
    params: OpenAIQAParams,
    typical_output_tokens: int,
    response_format: dict[str, Any] | None,
) -> ChatRequest:
    body: dict[str, Any] = {
        "model": params.model,
        "messages": messages,
        "temperature": params.temperature,
    }
    if response_format is not None:
        body["response_format"] = response_format
    return request_of(body, params.max_tokens, typical_output_tokens, params)


def cache_root(params: OpenAIEndpointParams) -> Path:
    """The response cache folder; a relative path is anchored at the repository root."""
    path = Path(params.cache_dir)
    return path if path.is_absolute() else repo_root() / path


def token_counter(tokenizer_file: Path | None) -> Callable[[str], int]:
    """Token count of a text: the base model's tokenizer when present, else ~4 characters/token."""
    if tokenizer_file is not None and tokenizer_file.is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)
    return lambda text: max(1, len(text) // 4)


def prompt_tokens(body: dict[str, Any], count: Callable[[str], int]) -> int:
    """Estimated prompt tokens of a request (4 tokens of chat markup per message)."""
    return sum(count(m["content"]) + 4 for m in body["messages"]) + 3


@dataclass(frozen=True)
class Pricing:
    input_per_1m: float
    output_per_1m: float
    discount: float = 1.0

    @classmethod
    def of(cls, params: OpenAIEndpointParams, batch: bool = False) -> Pricing:
        discount = BATCH_DISCOUNT if batch else 1.0
        return cls(params.price_per_1m_input, params.price_per_1m_output, discount)

    def cost(self, prompt: int, completion: int) -> float:
        usd = prompt * self.input_per_1m + completion * self.output_per_1m
        return usd * self.discount / 1e6


@dataclass
class ApiStats:
    """What a run asked the endpoint for and what it cost (metrics/qa.json, MLflow of probes)."""

    mode: str
    requests: int = 0
    """Responses received (and paid for) in this run."""
    cached: int = 0
    """Requests answered from the response cache (free)."""
    retries: dict[str, int] = field(default_factory=dict)
    """Retries per cause: 408, 409, 429, 5xx, timeout, connection, too_large, malformed (a body
    that is not JSON), error_body (a 200 `{"error": ...}`), no_choices (a 200 without a reply)."""
    retry_wait_s: float = 0.0
    refusals: int = 0
    """Replies received in this run that are a refusal (`message.refusal`), not content."""
    format_fallbacks: int = 0
    """Times the server rejected `response_format` and the run stepped down (formats.py)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    estimated_cost_usd: float = 0.0
    """Typical cost of the requests not in the cache, estimated before the first request."""
    estimated_max_cost_usd: float = 0.0
    """Upper bound: every completion uses its whole completion budget."""
    failed: dict[str, int] = field(default_factory=dict)
    """Batch mode: requests without a response, per reason (not cached; a re-run asks again)."""

    def add_usage(self, response: dict[str, Any], estimated_prompt: int, pricing: Pricing) -> float:
        """Count one paid response; returns its cost. Servers that send no usage are estimated."""
        usage = response.get("usage") or {}
        prompt = int(usage.get("prompt_tokens") or estimated_prompt)
        completion = int(usage.get("completion_tokens") or 0)
        cost = pricing.cost(prompt, completion)
        self.requests += 1
        self.refusals += refusal_of(response) is not None
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.cost_usd += cost
        return cost


@dataclass(frozen=True)
class Plan:
    """The requests still to pay for, their estimated prompt tokens and the cost estimate."""

    todo: list[ChatRequest]
    prompt_tokens: dict[str, int]
    cached: int
    pricing: Pricing

    @property
    def typical_cost(self) -> float:
        return sum(
            self.pricing.cost(self.prompt_tokens[r.key], r.typical_output_tokens) for r in self.todo
        )

    @property
    def max_completion_tokens(self) -> int:
        return sum(r.max_output_tokens for r in self.todo)

    @property
    def max_cost(self) -> float:
        return self.pricing.cost(sum(self.prompt_tokens.values()), self.max_completion_tokens)

    def worst_case(self, request: ChatRequest) -> float:
        return self.pricing.cost(self.prompt_tokens[request.key], request.max_output_tokens)

    def describe(self) -> str:
        typical_out = sum(r.typical_output_tokens for r in self.todo)
        rate = f"${self.pricing.input_per_1m:g}/${self.pricing.output_per_1m:g} per 1M tokens"
        if self.pricing.discount != 1.0:
            rate += f" x {self.pricing.discount:g} (batch)"
        return (
            f"{len(self.todo) + self.cached} requests: {self.cached} cached, {len(self.todo)} to "
            f"send with ~{sum(self.prompt_tokens.values()):,} prompt tokens and "
            f"<= {self.max_completion_tokens:,} completion tokens (typically "
            f"~{typical_out:,}); estimated cost ${self.typical_cost:.4f} "
            f"(at most ${self.max_cost:.4f}) at {rate}"
        )


def plan(
    requests: list[ChatRequest],
    cache: ResponseCache,
    pricing: Pricing,
    count: Callable[[str], int],
) -> Plan:
    """Deduplicate, drop what the cache answers, and estimate the rest."""
    unique = list({r.key: r for r in requests}.values())
    todo = [r for r in unique if r.key not in cache]
    tokens = {r.key: prompt_tokens(r.body, count) for r in todo}
    return Plan(todo, tokens, len(unique) - len(todo), pricing)


class Budget:
    """Reserve an attempt's worst case before sending it; settle with the actual cost after.

    Thread-safe: retries reserve (and keep) from the request threads.
    """

    def __init__(self, params: OpenAIEndpointParams) -> None:
        self.params = params
        self.limit = params.budget_usd
        self.spent = 0.0
        """Paid, plus the kept worst cases of attempts that may have been billed."""
        self.reserved = 0.0
        self.stopped = False
        self._lock = threading.Lock()

    def reserve(self, worst: float) -> bool:
        with self._lock:
            if self.limit is not None and self.spent + self.reserved + worst > self.limit:
                self.stopped = True
                return False
            self.reserved += worst
            return True

    def settle(self, worst: float, actual: float) -> None:
        with self._lock:
            self.reserved -= worst
            self.spent += actual

    def keep(self, worst: float) -> None:
        """An attempt that may have been billed: its worst case counts as spent."""
        self.settle(worst, worst)

    def error(self, stats: ApiStats, cache: ResponseCache) -> BudgetExceeded:
        section, output = self.params.section, self.params.output
        return BudgetExceeded(
            f"{section}.budget_usd: stopped before exceeding ${self.limit:.4f}: spent "
            f"${self.spent:.4f} on {stats.requests} request(s) in this run; {cache.count()} "
            f"response(s) are cached in {cache.root}. Nothing was written to {output}. Re-running "
            f"resumes from the cache: raise {section}.budget_usd (or set it to null) to go on."
        )


def endpoint_url(params: OpenAIEndpointParams) -> str:
    return params.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL


def make_client(params: OpenAIEndpointParams, *, cap_body: bool = True) -> openai.OpenAI:
    """An SDK client with its own retries off (ours are counted and interruptible) and every
    attempt bounded by `timeout_s` and `max_response_mb` (in2.endpoint.transport; no size cap
    with `cap_body=False`, for the Batch API's result files)."""
    url = endpoint_url(params)
    key = os.environ.get(params.api_key_env)
    if not key:
        if urlparse(url).hostname not in LOOPBACK_HOSTS:
            raise InputError(
                f"{params.section}: no API key for {url}: set the environment variable "
                f"{params.api_key_env} ({params.section}.api_key_env); never put the key in "
                "params.yaml"
            )
        key = "unused-local-key"  # a server on loopback needs none, the SDK wants one
    cap = params.max_response_mb if cap_body else None
    http = BoundedClient(params.timeout_s, cap, params.concurrency)
    return openai.OpenAI(
        api_key=key, base_url=url, max_retries=0, timeout=params.timeout_s, http_client=http
    )


def _reply(completion: Any) -> dict[str, Any]:
    """The completion as a dict; raises `Malformed` unless it is a usable reply."""
    if not isinstance(completion, openai.types.chat.ChatCompletion):
        raise Malformed("malformed", f"not a chat completion: {str(completion)[:80]!r}")
    response = completion.model_dump(mode="json")
    if usable(response):
        return response
    extra = completion.model_extra or {}
    if "error" in extra:
        raise Malformed("error_body", f"a 200 with an error: {str(extra['error'])[:80]}")
    raise Malformed("no_choices", "a 200 without choices[0].message.content")


@dataclass
class Fetched:
    response: dict[str, Any]
    retries: list[tuple[str, float]]
    """(cause, seconds waited) per retry."""


@dataclass(frozen=True)
class _Run:
    """What the request threads of one `run_online` share."""

    client: openai.OpenAI
    cache: ResponseCache
    params: OpenAIEndpointParams
    budget: Budget
    stop: threading.Event
    fallback: Fallback


def fetch(run: _Run, request: ChatRequest, worst: float) -> Fetched:
    """One request with retries; the reply is cached before it is returned.

    `worst` is reserved for the first attempt. An attempt that timed out, lost its connection or
    got a body it could not use may have been billed by a real server (it may have generated the
    whole reply): its reservation is kept as spent, and the next attempt reserves anew. On
    failure the reservations are settled here; on success the caller settles the last one.
    """
    url = str(run.client.base_url)
    retries: list[tuple[str, float]] = []
    maybe_billed = False

    def attempt() -> dict[str, Any]:
        nonlocal maybe_billed
        maybe_billed = False
        while True:
            body = run.fallback.apply(request.body)
            try:
                completion = run.client.chat.completions.create(**body)
            except openai.BadRequestError as err:
                if run.fallback.step_down(body, err):
                    continue  # the same attempt, in the next format: the 400 cost nothing
                raise
            except openai.APIConnectionError:  # timeouts, disconnects, bodies over the cap
                maybe_billed = True
                raise
            except ValueError as err:  # a 200 whose body is cut JSON or not JSON
                maybe_billed = True
                raise Malformed("malformed", str(err)) from None
            return _reply(completion)

    def on_retry(cause: str, delay: float) -> None:
        retries.append((cause, delay))
        if maybe_billed:
            run.budget.keep(worst)
            if not run.budget.reserve(worst):
                raise _OverBudget

    try:
        response = with_retries(attempt, run.params, url, stop=run.stop, on_retry=on_retry)
    except EndpointError:
        if maybe_billed:
            run.budget.keep(worst)
        else:
            run.budget.settle(worst, 0.0)
        raise
    except Cancelled:
        run.budget.settle(worst, 0.0)
        raise
    run.cache.put(request.key, request.body, response)
    return Fetched(response, retries)


def run_online(
    client: openai.OpenAI,
    work: Plan,
    cache: ResponseCache,
    params: OpenAIEndpointParams,
    stats: ApiStats,
    budget: Budget | None = None,
) -> None:
    """Send the planned requests, at most `concurrency` in flight, within the budget (a fresh
    one, or `budget` when several calls share one).

    On an endpoint error, the budget limit or Ctrl-C no new request is sent; those in flight
    finish (and are cached) before the error is raised.
    """
    budget = budget or Budget(params)
    run = _Run(client, cache, params, budget, threading.Event(), Fallback())
    error: EndpointError | None = None
    pending: dict[Future[Fetched], tuple[ChatRequest, float]] = {}
    with (
        Claims(cache.root / "claims") as claims,
        ThreadPoolExecutor(params.concurrency, thread_name_prefix=params.purpose) as pool,
        tqdm(total=len(work.todo), desc=f"{params.purpose} requests") as bar,
    ):
        todo, exhausted = _claimed(work.todo, claims, run, stats, bar), False
        while True:
            try:
                while not (error or budget.stopped or run.stop.is_set()):
                    if len(pending) == params.concurrency:
                        break
                    if (request := next(todo, None)) is None:
                        exhausted = True
                        break
                    if request is LATER:  # the rest is another run's: look again in a while
                        break
                    worst = work.worst_case(request)
                    if budget.reserve(worst):
                        pending[pool.submit(fetch, run, request, worst)] = request, worst
                    else:
                        claims.release(request.key)
                if not pending:
                    if exhausted or error or budget.stopped or run.stop.is_set():
                        break
                    run.stop.wait(CLAIM_POLL_S)
                    continue
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
            except KeyboardInterrupt:  # wherever it lands: a retry may be waiting in a thread
                _interrupt(run, len(pending))
                continue
            for future in done:
                request, worst = pending.pop(future)
                claims.release(request.key)  # cached, or failed: another run may ask
                try:
                    fetched = future.result()
                except EndpointError as err:  # fetch has settled its reservations
                    error = error or err
                    continue
                except (Cancelled, _OverBudget):
                    continue
                for cause, delay in fetched.retries:  # stats change on this thread only
                    stats.retries[cause] = stats.retries.get(cause, 0) + 1
                    stats.retry_wait_s += delay
                cost = stats.add_usage(
                    fetched.response, work.prompt_tokens[request.key], work.pricing
                )
                budget.settle(worst, cost)
                bar.update()
    stats.format_fallbacks += run.fallback.steps
    if run.stop.is_set():
        raise Interrupted(
            f"{params.section}: interrupted (Ctrl-C): {stats.requests} response(s) received in "
            f"this run, {cache.count()} in all, are cached in {cache.root}; nothing was written "
            f"to {params.output}; re-running resumes from the cache"
        )
    if error is not None:
        raise error
    if budget.stopped:
        raise budget.error(stats, cache)


CLAIM_POLL_S = 1.0
"""How often a run waiting for requests that another run is sending looks at the cache."""
LATER = ChatRequest("", {}, 0, 0)
"""What `_claimed` yields when nothing can be sent now (the rest is another run's)."""


def _claimed(
    requests: list[ChatRequest], claims: Claims, run: _Run, stats: ApiStats, bar: tqdm
) -> Iterator[ChatRequest]:
    """The requests this run may send, each claimed first (in2.endpoint.claims), so that runs
    sharing a cache (queued experiments) never pay for one request twice.

    A request another live run holds is put off; once the rest is sent, the run looks every
    CLAIM_POLL_S for the other's reply in the cache (counted as cached) or for its claim to
    lapse (then sends it itself), yielding LATER in between, so that it never blocks the
    replies of its own requests in flight. A request cached by another run since the plan was
    made is not sent.
    """
    held: list[ChatRequest] = []
    for request in requests:
        if not claims.claim(request.key):
            held.append(request)
        elif _still_missing(request, claims, run, stats, bar):
            yield request
    if held:
        log.info(
            "%s: %d request(s) are being sent by another run; waiting for them",
            run.params.section,
            len(held),
        )
    looked = time.monotonic()
    while held:
        if time.monotonic() - looked < CLAIM_POLL_S:
            yield LATER
            continue
        looked, waiting = time.monotonic(), []
        for request in held:
            if request.key in run.cache:
                stats.cached += 1
                bar.update()
            elif not claims.claim(request.key):
                waiting.append(request)
            elif _still_missing(request, claims, run, stats, bar):
                yield request
        held = waiting


def _still_missing(
    request: ChatRequest, claims: Claims, run: _Run, stats: ApiStats, bar: tqdm
) -> bool:
    """Whether a claimed request still needs sending: another run may have cached its reply
    between the plan and the claim (then the claim is given back and it counts as cached)."""
    if request.key not in run.cache:
        return True
    claims.release(request.key)
    stats.cached += 1
    bar.update()
    return False


def _interrupt(run: _Run, in_flight: int) -> None:
    """First Ctrl-C: stop sending and end the retry waits; a second one ends the process."""
    if run.stop.is_set():
        raise KeyboardInterrupt
    run.stop.set()
    log.warning(
        "%s: interrupted: no new requests; waiting for the %d in flight (at most %g s; Ctrl-C "
        "again to quit without them)",
        run.params.section,
        in_flight,
        run.params.timeout_s,
    )
