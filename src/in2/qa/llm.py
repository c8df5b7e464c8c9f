"""The `openai` QA generator: an LLM behind any OpenAI-compatible endpoint writes the QA pairs.

The paper has GPT-4-Turbo write (1) a QA pair about the details of ONE 128-token segment and
(2) a QA pair that needs information from two or more segments of one text. The prompts below
are our own, in that spirit: the question must hinge on specifics of the given text, stay
unambiguous once the text is hidden among fillers, and not refer to "the passage"; the model
replies with JSON, and for integration names the segments it used. Every reply is validated and
each reject is counted by reason; the model's short evidence quotes, when they really occur in
the gold text, become the pair's `keywords` (synthesis keeps fillers from quoting them).

Requests, retries, cache, cost and budget: `in2.endpoint.client`; Batch API: `in2.endpoint.batch`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
from pydantic import BaseModel, Field

from in2 import layout
from in2.endpoint.batch import run_batch
from in2.endpoint.client import (
    ApiStats,
    ChatRequest,
    Pricing,
    ResponseCache,
    cache_root,
    chat_request,
    endpoint_url,
    make_client,
    plan,
    run_online,
    token_counter,
)
from in2.endpoint.formats import response_format
from in2.lineage.tracking import repo_root
from in2.params import OpenAIQAParams, QAParams
from in2.qa.pairs import Gold, QAStats, qa_frame, qa_row, select_candidates

log = logging.getLogger(__name__)

SYSTEM = (
    "You write question-answer pairs that train language models to use every part of a long "
    "document. You reply with a single JSON object and nothing else."
)
_RULES = """Rules for the question:
1. It must hinge on specific details of the text above (names, numbers, dates, places, events),
   not on general knowledge; it must not be a general question that would suit any text.
2. It must be clear and unambiguous on its own, even when the text is hidden among many others.
3. Do not write phrases such as "in the passage", "according to the text" or "based on the
   context".
Rules for the answer:
1. It must be correct and complete according to the text above.
2. Answer in your own words, in one or two sentences; do not just copy the text."""

FINE_GRAINED_PROMPT = """### Passage ###
{passage}

Write ONE question about this passage and its answer.
{rules}
Also give "evidence": one short exact quote (at most 12 words) from the passage that supports
the answer.

Reply with JSON only:
{{"question": "...", "answer": "...", "evidence": "..."}}"""

INTEGRATION_PROMPT = """### Passages (parts of one text) ###
{passages}

Write ONE question and its answer that need information from AT LEAST TWO of these passages:
answering it must combine or reason over facts found in different passages (for example a
comparison, an order of events, a cause and its effect, or a total).
{rules}
In "segments_used" list the numbers of the passages the answer needs (at least two). In
"evidence" give one short exact quote (at most 12 words) from each passage used.

Reply with JSON only:
{{"question": "...", "answer": "...", "segments_used": [1, 2], "evidence": ["...", "..."]}}"""


class FineGrainedReply(BaseModel):
    """The reply asked for by FINE_GRAINED_PROMPT (its JSON schema is sent as structured output)."""

    question: str
    answer: str
    evidence: str = Field(description="one short exact quote (at most 12 words) from the passage")


class IntegrationReply(BaseModel):
    """The reply asked for by INTEGRATION_PROMPT."""

    question: str
    answer: str
    segments_used: list[int] = Field(description="numbers of the passages the answer needs")
    evidence: list[str] = Field(description="one short exact quote from each passage used")


REPLY_MODELS: dict[str, type[BaseModel]] = {
    "fine_grained": FineGrainedReply,
    "integration": IntegrationReply,
}
"""The shape of each kind's reply; `parse_reply` still validates what comes back (a server in
`json_object` / `text` mode, or one that ignores the schema, may send anything)."""
TYPICAL_OUTPUT_TOKENS = {"fine_grained": 80, "integration": 130}
"""Typical completion lengths of the two prompts, for the cost estimate."""
MAX_QUESTION_CHARS = 500
MAX_ANSWER_CHARS = 1000
MIN_EVIDENCE_WORDS = 2
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_REFERS_TO_CONTEXT = re.compile(
    r"\b(according to|based on|in|from) the (given |provided |above |following )?"
    r"(passage|passages|text|context|segment|segments|excerpt)\b",
    re.IGNORECASE,
)


def messages(kind: str, texts: list[str]) -> list[dict[str, str]]:
    """The chat messages asking for one QA pair of `kind` about `texts` (one per segment)."""
    if kind == "fine_grained":
        user = FINE_GRAINED_PROMPT.format(passage=texts[0].strip(), rules=_RULES)
    else:
        passages = "\n\n".join(f"[{i}] {t.strip()}" for i, t in enumerate(texts, 1))
        user = INTEGRATION_PROMPT.format(passages=passages, rules=_RULES)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


@dataclass(frozen=True)
class Reply:
    """A validated reply; `used` are 0-based indices into the segments that were given."""

    question: str
    answer: str
    used: list[int]
    evidence: list[str]


def _json_object(content: str) -> dict[str, Any] | None:
    fenced = _FENCE.search(content)
    text = fenced.group(1) if fenced else content
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        value = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def _used_segments(value: Any, n: int) -> list[int] | str:
    if not isinstance(value, list):
        return "bad_segments_used"
    used = set()
    for item in value:
        if isinstance(item, str) and item.strip().isdigit():
            item = int(item)
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= n:
            return "bad_segments_used"
        used.add(item - 1)
    return sorted(used) if len(used) >= 2 else "too_few_segments"


def parse_reply(response: dict[str, Any], kind: str, texts: list[str]) -> Reply | str:
    """Validate a chat completion for a QA pair of `kind` about `texts`; a str is the reject
    reason (no_content, refusal, invalid_json, truncated, missing_field, empty_field, too_long,
    copies_question, refers_to_context, bad_segments_used, too_few_segments)."""
    try:
        choice = response["choices"][0]
        message = choice["message"]
    except (KeyError, IndexError, TypeError):
        return "no_content"
    if message.get("refusal"):
        return "refusal"
    content = message.get("content") or ""
    reply = _json_object(content)
    if reply is None:
        return "truncated" if choice.get("finish_reason") == "length" else "invalid_json"
    question, answer = reply.get("question"), reply.get("answer")
    if not isinstance(question, str) or not isinstance(answer, str):
        return "missing_field"
    question, answer = question.strip(), answer.strip()
    if not question or not answer:
        return "empty_field"
    if len(question) > MAX_QUESTION_CHARS or len(answer) > MAX_ANSWER_CHARS:
        return "too_long"
    if _norm(answer) in _norm(question):
        return "copies_question"
    if _REFERS_TO_CONTEXT.search(question):
        return "refers_to_context"
    used: list[int] | str = [0]
    if kind == "integration":
        if "segments_used" not in reply:
            return "missing_field"
        used = _used_segments(reply["segments_used"], len(texts))
        if isinstance(used, str):
            return used
    quotes = reply.get("evidence")
    quotes = [quotes] if isinstance(quotes, str) else quotes if isinstance(quotes, list) else []
    gold = [" ".join(texts[i].split()) for i in used]
    evidence = [
        q
        for q in (" ".join(str(q).split()) for q in quotes)
        if len(q.split()) >= MIN_EVIDENCE_WORDS and any(q in g for g in gold)
    ]
    return Reply(question, answer, used, evidence)


@dataclass(frozen=True)
class _Job:
    kind: str
    segments: list[int]
    source_doc: str
    request: ChatRequest


def generate_openai_qa(
    segments: pd.DataFrame, params: QAParams, seed: int
) -> tuple[pd.DataFrame, QAStats]:
    """QA pairs for the shared candidates of `segments` (seg_id, doc_id, index_in_doc, text).

    Prints the request count and cost estimate before the first request; raises
    `BudgetExceeded` / `EndpointError` (input errors) without returning rows, so the stage
    writes nothing, while every response received so far stays cached for the re-run.
    """
    p = params.openai
    stats = QAStats()
    candidates = select_candidates(segments, params, seed, stats)
    wanted = {*candidates.fine_grained, *(s for _, segs in candidates.integration for s in segs)}
    asked = segments[segments["seg_id"].isin(wanted)]  # only these have a text (segments_for_qa)
    ids = asked["seg_id"].astype(int)
    text = dict(zip(ids, asked["text"], strict=True))
    doc = dict(zip(ids, asked["doc_id"].astype(str), strict=True))
    jobs = [
        _Job("fine_grained", [s], doc[s], qa_request("fine_grained", [text[s]], p))
        for s in candidates.fine_grained
    ] + [
        _Job("integration", segs, d, qa_request("integration", [text[s] for s in segs], p))
        for d, segs in candidates.integration
    ]
    cache = ResponseCache(cache_root(p))
    api = ApiStats(mode=p.mode)
    count = token_counter(repo_root() / layout.BASE_MODEL / "tokenizer.json")
    if "n_tokens" in asked:
        seg_tokens = dict(zip(ids, asked["n_tokens"].astype(int), strict=True))
    else:
        seg_tokens = {s: count(t) for s, t in text.items()}
    count = _prompt_counter(count, jobs, seg_tokens)
    work = plan([j.request for j in jobs], cache, Pricing.of(p, batch=p.mode == "batch"), count)
    api.cached = work.cached
    api.estimated_cost_usd = round(work.typical_cost, 6)
    api.estimated_max_cost_usd = round(work.max_cost, 6)
    log.info("qa (openai, %s at %s): %s", p.model, endpoint_url(p), work.describe())
    if work.todo:
        run = run_batch if p.mode == "batch" else run_online
        run(make_client(p, cap_body=p.mode == "online"), work, cache, p, api)
    api.cost_usd = round(api.cost_usd, 6)
    api.retry_wait_s = round(api.retry_wait_s, 3)

    rows = []
    generator = f"openai:{p.model}"
    for job in jobs:
        response = cache.get(job.request.key)
        texts = [text[s] for s in job.segments]
        reply = parse_reply(response, job.kind, texts) if response else "no_response"
        if isinstance(reply, str):
            stats.reject(f"{job.kind}:{reply}")
            continue
        rows.append(
            qa_row(
                gold=Gold(job.kind, [job.segments[i] for i in reply.used], job.source_doc),
                question=reply.question,
                answer=reply.answer,
                keywords=reply.evidence,
                generator=generator,
                prompt_hash=job.request.key,
            )
        )
        stats.accept(job.kind)
    stats.api = asdict(api)
    log.info("qa (openai): accepted %s, rejected %s", stats.accepted, stats.rejected)
    return qa_frame(rows), stats


def qa_request(kind: str, texts: list[str], params: OpenAIQAParams) -> ChatRequest:
    """The request for one QA pair of `kind` about `texts`, its reply shaped as configured."""
    shape = response_format(params.response_format, REPLY_MODELS[kind])
    return chat_request(messages(kind, texts), params, TYPICAL_OUTPUT_TOKENS[kind], shape)


def _prompt_counter(
    count: Callable[[str], int], jobs: list[_Job], seg_tokens: dict[int, int]
) -> Callable[[str], int]:
    """`count` for the cost estimate, knowing each prompt's tokens as its template's (counted
    once per kind and number of passages) plus its segments' token counts.

    Re-tokenizing ~1.65M prompts of ~600 tokens at paper scale would take longer than the rest
    of the stage (bench/paper_rehearsal.py); a segment's token count is in the segment index.
    """
    known = {SYSTEM: count(SYSTEM)}
    template: dict[tuple[str, int], int] = {}
    for job in jobs:
        shape = (job.kind, len(job.segments))
        if shape not in template:
            template[shape] = count(messages(job.kind, [""] * shape[1])[1]["content"])
        prompt = job.request.body["messages"][1]["content"]
        known[prompt] = template[shape] + sum(seg_tokens[s] for s in job.segments)
    return lambda text: known[text] if text in known else count(text)
