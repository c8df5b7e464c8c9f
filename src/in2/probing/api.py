"""API runner for VaL probing: the model behind any OpenAI-compatible endpoint answers the queries.

Each query is one chat completion: a single user message holding the same instruction the local
runner's `chat` format wraps in the model's template (in2.prompting.user_message: the set's
context, then the question); the server applies its model's own chat template. Decoding is
greedy (temperature 0) with a completion budget (sent as `probe.openai.output_tokens_field`)
= the task's answer budget (`probe.max_new_tokens[task]`, else the spec's). The queries of a set are
sent one after another in context order, so a server with prefix caching (vLLM) computes each
context about once.

Requests, bounded concurrency, retries, the response cache, the cost estimate and the budget are
in2.endpoint.client's, configured by `probe.openai`; the cache key holds the answering model's
identity (in2.endpoint.identity), so a re-trained checkpoint behind the same name is asked again.
The answers are scored by in2.probing.results, exactly as the local runner's, so both write the
same rows; answers without text (content "" or a refusal) are counted per task.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import openai

from in2.endpoint.client import (
    ApiStats,
    Budget,
    ChatRequest,
    Plan,
    Pricing,
    ResponseCache,
    cache_root,
    endpoint_url,
    make_client,
    plan,
    request_of,
    run_online,
    token_counter,
)
from in2.endpoint.identity import model_identity
from in2.params import InputError, OpenAIProbeParams, ProbeParams
from in2.probing.build import read_probes
from in2.probing.metrics import Bins
from in2.probing.results import TaskRun, by_context, task_run
from in2.probing.tasks import answer_budget
from in2.prompting import user_message

log = logging.getLogger(__name__)


def probe_request(
    context: str,
    question: str,
    params: OpenAIProbeParams,
    max_new_tokens: int,
    identity: dict[str, str] | None = None,
) -> ChatRequest:
    """The chat completion answering one query greedily (`identity`: the model's, for the key)."""
    body: dict[str, Any] = {
        "model": params.model,
        "messages": [{"role": "user", "content": user_message(context, question)}],
        "temperature": 0.0,
    }
    return request_of(body, max_new_tokens, max_new_tokens, params, identity)


def answer_text(response: dict[str, Any] | None) -> str:
    """The completion's text; "" for a reply without content or a refusal (it scores 0)."""
    try:
        return (response or {})["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        return ""


@dataclass(frozen=True)
class _Task:
    name: str
    queries: list[dict]
    """In the order of the prediction rows."""
    requests: list[ChatRequest]


def _task(
    name: str, probes_dir: str | Path, params: ProbeParams, identity: dict[str, str]
) -> _Task:
    contexts, queries = read_probes(probes_dir, name)
    asked: list[dict] = []
    requests: list[ChatRequest] = []
    max_new_tokens = answer_budget(params, name)
    for context, mine in by_context(contexts, queries):
        asked += mine
        requests += [
            probe_request(context["text"], q["question"], params.openai, max_new_tokens, identity)
            for q in mine
        ]
    return _Task(name, asked, requests)


def probe_endpoint(
    params: ProbeParams, probes_dir: str | Path, tokenizer_file: Path | None
) -> tuple[dict[str, TaskRun], ApiStats]:
    """Run every task of `params.tasks` against `params.openai`'s endpoint.

    Logs the request count and the cost estimate of all tasks before the first request (prompt
    tokens counted with `tokenizer_file` when it exists, else ~4 characters per token); one budget
    spans all tasks. Raises `EndpointError` / `BudgetExceeded` (input errors) without returning
    runs, while every response received so far stays cached for the re-run.
    """
    p = params.openai
    try:
        client: openai.OpenAI | None = make_client(p)
    except InputError:  # no API key: what the cache holds can still be read
        client = None
    identity = model_identity(client, p)
    tasks = [_task(name, probes_dir, params, identity) for name in params.tasks]
    cache = ResponseCache(cache_root(p))
    everything = plan(
        [r for t in tasks for r in t.requests], cache, Pricing.of(p), token_counter(tokenizer_file)
    )
    log.info("probe (openai, %s at %s): %s", p.model, endpoint_url(p), everything.describe())
    api = ApiStats(mode="online", cached=everything.cached)
    api.estimated_cost_usd = round(everything.typical_cost, 6)
    api.estimated_max_cost_usd = round(everything.max_cost, 6)
    if everything.todo and client is None:
        client = make_client(p)  # raises the missing key's error
    budget = Budget(p)
    runs = {}
    for task in tasks:
        started = time.perf_counter()
        keys = {r.key for r in task.requests}
        todo = [r for r in everything.todo if r.key in keys]
        if client is not None and todo:
            work = Plan(todo, everything.prompt_tokens, 0, everything.pricing)
            run_online(client, work, cache, p, api, budget)
        answers = [answer_text(cache.get(r.key)) for r in task.requests]
        bins = Bins(params.bin_size, params.binning)
        run = task_run(task.name, task.queries, answers, bins, time.perf_counter() - started)
        runs[task.name] = replace(run, empty_answers=sum(not a.strip() for a in answers))
    api.cost_usd = round(api.cost_usd, 6)
    api.retry_wait_s = round(api.retry_wait_s, 3)
    return runs, api
