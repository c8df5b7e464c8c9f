"""Paying for each chat completion once: an OpenAI-compatible client with our own retries, bounded
concurrency, an on-disk response cache, a cost estimate and a budget.

Used by the QA generator (`qa.openai`, in2.qa.llm) and the API probe runner (`probe.openai`,
in2.probing.api); messages name the section of the caller's params.

- Cache: one JSON file per response under `<section>.cache_dir` (outside every DVC output),
  keyed by the sha256 of the request body (model, messages, sampling params; never the URL or
  the key) and written atomically right after the response arrives, so neither a re-run nor a
  crash pays for a call twice.
- Retries: the SDK's own retries are off; 429, 5xx, timeouts, connection errors and malformed
  bodies (a 200 that is not a chat completion) are retried here with exponential backoff,
  honouring Retry-After, at most `max_retries` times per request, and every retry is counted.
- Budget: before a request is sent, its worst case (estimated prompt + `max_tokens` completion)
  is reserved against `budget_usd`; the run stops cleanly when the next one would not fit.

Secrets: the API key is read from the environment variable named by `api_key_env` and only
handed to the SDK; it is never logged, cached or written to params or metrics.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import openai
from tqdm import tqdm

from in2.lineage.tracking import repo_root
from in2.outputs import atomic_file
from in2.params import InputError, OpenAIEndpointParams, OpenAIQAParams

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
BATCH_DISCOUNT = 0.5
"""The Batch API bills half the online price."""
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
RETRY_AFTER_MAX_S = 600.0


class EndpointError(InputError):
    """The endpoint cannot serve the requests (unreachable, refused, or kept failing)."""


class BudgetExceeded(InputError):
    """The next request could exceed `budget_usd`; everything paid for so far is cached."""


@dataclass(frozen=True)
class ChatRequest:
    """A chat completion request body and its cache key."""

    key: str
    body: dict[str, Any]
    typical_output_tokens: int
    """Expected completion length, for the typical cost estimate (`max_tokens` bounds it)."""


def request_key(body: dict[str, Any]) -> str:
    """sha256 of the canonical request body: model, messages and sampling params."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def request_of(body: dict[str, Any], typical_output_tokens: int) -> ChatRequest:
    """A request for `body`, which must set `max_tokens` (it bounds the cost)."""
    typical = min(typical_output_tokens, body["max_tokens"])
    return ChatRequest(request_key(body), body, typical)


def chat_request(
    messages: list[dict[str, str]], params: OpenAIQAParams, typical_output_tokens: int
) -> ChatRequest:
    body: dict[str, Any] = {
        "model": params.model,
        "messages": messages,
        "temperature": params.temperature,
        "max_tokens": params.max_tokens,
    }
    if params.json_mode:
        body["response_format"] = {"type": "json_object"}
    return request_of(body, typical_output_tokens)


def cache_root(params: OpenAIEndpointParams) -> Path:
    """The response cache folder; a relative path is anchored at the repository root."""
    path = Path(params.cache_dir)
    return path if path.is_absolute() else repo_root() / path


class ResponseCache:
    """One JSON file per response: `<root>/<key[:2]>/<key>.json` = {"request", "response"}."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def __contains__(self, key: str) -> bool:
        return self._path(key).is_file()

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            return json.loads(path.read_text())["response"]
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("ignoring unreadable cache entry %s", path)
            return None

    def put(self, key: str, request: dict[str, Any], response: dict[str, Any]) -> None:
        with atomic_file(self._path(key), sweep=False) as tmp:
            tmp.write_text(json.dumps({"request": request, "response": response}))

    def count(self) -> int:
        return sum(1 for _ in self.root.glob("??/*.json"))


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
    """Retries per cause: 429, 5xx, timeout, connection, malformed."""
    retry_wait_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    estimated_cost_usd: float = 0.0
    """Typical cost of the requests not in the cache, estimated before the first request."""
    estimated_max_cost_usd: float = 0.0
    """Upper bound: every completion uses `max_tokens`."""
    failed: dict[str, int] = field(default_factory=dict)
    """Batch mode: requests without a response, per reason (not cached; a re-run asks again)."""

    def add_usage(self, response: dict[str, Any], estimated_prompt: int, pricing: Pricing) -> float:
        """Count one paid response; returns its cost. Servers that send no usage are estimated."""
        usage = response.get("usage") or {}
        prompt = int(usage.get("prompt_tokens") or estimated_prompt)
        completion = int(usage.get("completion_tokens") or 0)
        cost = pricing.cost(prompt, completion)
        self.requests += 1
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
        return sum(r.body["max_tokens"] for r in self.todo)

    @property
    def max_cost(self) -> float:
        return self.pricing.cost(sum(self.prompt_tokens.values()), self.max_completion_tokens)

    def worst_case(self, request: ChatRequest) -> float:
        return self.pricing.cost(self.prompt_tokens[request.key], request.body["max_tokens"])

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
    """Reserve a request's worst case before sending it; settle with the actual cost after."""

    def __init__(self, params: OpenAIEndpointParams) -> None:
        self.params = params
        self.limit = params.budget_usd
        self.spent = 0.0
        self.reserved = 0.0
        self.stopped = False

    def reserve(self, worst: float) -> bool:
        if self.limit is not None and self.spent + self.reserved + worst > self.limit:
            self.stopped = True
            return False
        self.reserved += worst
        return True

    def settle(self, worst: float, actual: float) -> None:
        self.reserved -= worst
        self.spent += actual

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


def make_client(params: OpenAIEndpointParams) -> openai.OpenAI:
    """An SDK client with its own retries off (ours honour Retry-After and are counted)."""
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
    return openai.OpenAI(api_key=key, base_url=url, max_retries=0, timeout=params.timeout_s)


def retry_after_s(headers: Any) -> float | None:
    """Seconds asked for by `retry-after-ms` / `Retry-After` (seconds or an HTTP date)."""
    if ms := headers.get("retry-after-ms"):
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _status_error(
    err: openai.APIStatusError, url: str, params: OpenAIEndpointParams
) -> EndpointError:
    code, section, name = err.status_code, params.section, f"the {params.purpose} endpoint {url}"
    if code in (401, 403):  # the server's message may quote part of the key: leave it out
        hint = f"set the environment variable {params.api_key_env} to a valid key for it"
        return EndpointError(f"{name} refused the API key (HTTP {code}): {hint}")
    if code == 404:
        hint = f"check {section}.model ({params.model!r}) and {section}.base_url (usually …/v1)"
    else:
        hint = f"check {section}.model ({params.model!r}) and the sampling params"
    return EndpointError(f"{name} answered HTTP {code} ({err.message}): {hint}")


@dataclass
class Fetched:
    response: dict[str, Any]
    retries: list[tuple[str, float]]
    """(cause, seconds waited) per retry."""


def fetch(
    client: openai.OpenAI, request: ChatRequest, cache: ResponseCache, params: OpenAIEndpointParams
) -> Fetched:
    """One request with retries; the response is cached before it is returned."""
    url = str(client.base_url)
    retries: list[tuple[str, float]] = []
    while True:
        attempt = len(retries)
        asked: float | None = None
        try:
            completion = client.chat.completions.create(**request.body)
            if not isinstance(completion, openai.types.chat.ChatCompletion):
                raise ValueError(f"not a chat completion: {str(completion)[:80]!r}")
            response = completion.model_dump(mode="json")
            cache.put(request.key, request.body, response)
            return Fetched(response, retries)
        except ValueError:  # a 200 whose body is cut JSON or not JSON: a server fault, not cached
            cause = "malformed"
        except openai.APIStatusError as err:
            if err.status_code != 429 and err.status_code < 500:
                raise _status_error(err, url, params) from None
            cause = "429" if err.status_code == 429 else "5xx"
            asked = retry_after_s(err.response.headers)
        except openai.APITimeoutError:
            cause = "timeout"
        except openai.APIConnectionError:
            cause = "connection"
        if attempt == params.max_retries:
            section, name = params.section, f"the {params.purpose} endpoint {url}"
            if cause == "connection":
                raise EndpointError(
                    f"cannot reach {name} (after {attempt + 1} attempt(s)): start the server "
                    "(e.g. `transformers serve FOLDER --port N` or vLLM) or fix "
                    f"{section}.base_url / OPENAI_BASE_URL; responses received so far are cached "
                    "and a re-run resumes from them"
                ) from None
            raise EndpointError(
                f"{name} kept failing ({cause}, {attempt + 1} attempt(s)); responses received so "
                f"far are cached and a re-run resumes from them; raise {section}.max_retries or "
                f"{section}.timeout_s, or lower {section}.concurrency"
            ) from None
        if asked is not None:
            delay = min(asked, RETRY_AFTER_MAX_S)
        else:
            delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**attempt) * random.uniform(0.5, 1.0)
        log.warning(
            "%s: request to %s failed (%s), retry %d in %.1f s",
            params.section,
            url,
            cause,
            attempt + 1,
            delay,
        )
        retries.append((cause, delay))
        time.sleep(delay)


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

    On an endpoint error or the budget limit no new request is sent; those in flight finish (and
    are cached) before the error is raised.
    """
    budget = budget or Budget(params)
    error: EndpointError | None = None
    pending: dict[Future[Fetched], tuple[ChatRequest, float]] = {}
    todo = iter(work.todo)
    with (
        ThreadPoolExecutor(params.concurrency, thread_name_prefix=params.purpose) as pool,
        tqdm(total=len(work.todo), desc=f"{params.purpose} requests") as bar,
    ):
        while True:
            while error is None and not budget.stopped and len(pending) < params.concurrency:
                request = next(todo, None)
                if request is None:
                    break
                worst = work.worst_case(request)
                if budget.reserve(worst):
                    pending[pool.submit(fetch, client, request, cache, params)] = request, worst
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                request, worst = pending.pop(future)
                try:
                    fetched = future.result()
                except EndpointError as err:
                    error = error or err
                    budget.settle(worst, 0.0)
                    continue
                for cause, delay in fetched.retries:  # stats change on this thread only
                    stats.retries[cause] = stats.retries.get(cause, 0) + 1
                    stats.retry_wait_s += delay
                cost = stats.add_usage(
                    fetched.response, work.prompt_tokens[request.key], work.pricing
                )
                budget.settle(worst, cost)
                bar.update()
    if error is not None:
        raise error
    if budget.stopped:
        raise budget.error(stats, cache)
