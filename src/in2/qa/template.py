"""The `template` QA generator: offline, deterministic, no model.

The paper asks GPT-4-Turbo for QA pairs; this generator keeps the property IN2 relies on — the
answer is recoverable from the gold segment text and from nothing else:

- fine_grained (one segment): "Which N words directly follow "<cue>" in the context?" where the cue
  is a run of words quoted from the segment and the answer the N words after it.
- integration (>= 2 segments of one document): the same, for one cue in each segment; the answer
  needs every one of them.

Each pair records its `keywords` (the cues): synthesis keeps them unique within a context, so
a question never becomes ambiguous because a filler quotes the same words.

Besides continuations, the fine-grained pairs can be sentence quotes and lookups over record
units (in2.qa.lookup); `qa.tasks` sets each task's share of the fine-grained pairs
(`balance_tasks`). A task that gives no pair at all (`record` and `entry` over a corpus without
titles, which has no record units) passes its share to the tasks that have pairs
(`redistribute`), with a warning and a count in the metrics, rather than emptying the mix.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import pandas as pd
from tqdm import tqdm

from in2.params import QAParams
from in2.qa.lookup import quote_pairs, unit_pairs
from in2.qa.pairs import Gold, QAStats, pair_digest, qa_frame, qa_row, select_candidates

log = logging.getLogger(__name__)

GENERATOR = "template-v1"
UNITS_NEED_TITLES = " (segment.units renders no unit for a document without a title)"
_SENTENCE_END = (".", "!", "?")


@dataclass(frozen=True)
class Cue:
    """A quoted run of words and the words that follow it in one segment."""

    cue: str
    answer: str

    @property
    def n_answer_words(self) -> int:
        return len(self.answer.split())


def find_cue(text: str, params: QAParams, rng: random.Random) -> Cue | None:
    """Pick a cue of `cue_words` words whose continuation stays inside one sentence.

    The segment's first and last words are never used: a 128-token cut may split them.
    The cue must occur once in the segment, and cue + answer must be a substring of the text.
    """
    words = text.split()
    inner = range(1, len(words) - 1 - params.cue_words - 1)
    starts = [i for i in inner if not words[i + params.cue_words - 1].endswith(_SENTENCE_END)]
    rng.shuffle(starts)
    for i in starts:
        cue_words = words[i : i + params.cue_words]
        answer: list[str] = []
        for word in words[i + params.cue_words : len(words) - 1]:
            answer.append(word)
            if len(answer) == params.answer_words or word.endswith(_SENTENCE_END):
                break
        if len(answer) < 2:
            continue
        cue, ans = " ".join(cue_words), " ".join(answer)
        if text.count(cue) == 1 and f"{cue} {ans}" in " ".join(words):
            return Cue(cue, ans)
    return None


def fine_grained_question(cue: Cue) -> str:
    return f'Which {cue.n_answer_words} words directly follow "{cue.cue}" in the context?'


def integration_question(cues: list[Cue]) -> str:
    parts = " ".join(f'{i}. "{c.cue}" ({c.n_answer_words} words)' for i, c in enumerate(cues, 1))
    return f"For each of these phrases from one article, which words directly follow it? {parts}"


def _row(gold: Gold, question: str, answer: str, cues: list[Cue]) -> dict[str, Any]:
    """A template pair: no prompt, so its prompt hash is the digest of the pair itself."""
    return qa_row(
        gold=gold,
        question=question,
        answer=answer,
        keywords=[c.cue for c in cues],
        generator=GENERATOR,
        prompt_hash=pair_digest(GENERATOR, gold, question),
    )


def balance_tasks(
    pairs: dict[str, list[dict]], shares: dict[str, float], seed: int
) -> dict[str, list[dict]]:
    """Fine-grained pairs in the configured task shares: the largest set that keeps them.

    With N = min over tasks of (pairs available / share), a task keeps round(N × share) of its
    pairs, a seeded sample in the original order; a task with share 0 keeps none.
    """
    wanted = {t: f for t, f in shares.items() if f > 0}
    n = min(len(pairs.get(t, [])) / f for t, f in wanted.items())
    kept = {}
    for task, share in wanted.items():
        rows = pairs.get(task, [])
        keep = min(len(rows), round(n * share))
        chosen = sorted(random.Random(f"{seed}:tasks:{task}").sample(range(len(rows)), keep))
        kept[task] = [rows[i] for i in chosen]
    return kept


def redistribute(pairs: dict[str, list[dict]], shares: dict[str, float]) -> dict[str, float]:
    """Shares with those of the tasks without any pair moved to the tasks with pairs, in
    proportion to their own shares; unchanged when every task has pairs, or none has."""
    have = {t: f for t, f in shares.items() if f > 0 and pairs.get(t)}
    if not have or len(have) == sum(f > 0 for f in shares.values()):
        return shares
    total = sum(have.values())
    return {t: have.get(t, 0.0) / total for t in shares}


def _balanced(
    fine: dict[str, list[dict]], params: QAParams, seed: int, stats: QAStats
) -> list[dict]:
    """The fine-grained pairs in the task shares (redistributed if a task has no pair), with
    their counts in `stats`: per task, and `fine_grained:redistributed`, the pairs that stand in
    for the share of the tasks without pairs."""
    shares = redistribute(fine, params.tasks)
    rows = []
    for task, kept in balance_tasks(fine, shares, seed).items():
        rows.extend(kept)
        stats.accepted[f"fine_grained:{task}"] = len(kept)
    if shares != params.tasks:
        empty = [t for t, f in params.tasks.items() if f > 0 and not shares[t]]
        why = UNITS_NEED_TITLES if set(empty) <= {"record", "entry"} else ""
        log.warning(
            "qa (template): no %s pair%s; their share of %.2f goes to %s: %s",
            " or ".join(empty),
            why,
            sum(params.tasks[t] for t in empty),
            ", ".join(t for t, f in shares.items() if f > 0),
            {t: round(f, 4) for t, f in shares.items() if f > 0},
        )
        for task in empty:
            stats.accepted[f"fine_grained:{task}"] = 0
        own = sum(round(len(rows) * params.tasks[t]) for t, f in shares.items() if f > 0)
        stats.accepted["fine_grained:redistributed"] = len(rows) - own
    return rows


def generate_template_qa(
    segments: pd.DataFrame, params: QAParams, seed: int
) -> tuple[pd.DataFrame, QAStats]:
    """QA pairs for the shared candidates of `segments` (seg_id, doc_id, index_in_doc, text).

    Deterministic: a segment's cue comes from its own RNG seeded by (seed, seg_id), so a segment
    gets the same cue in its fine-grained and its integration questions.
    """
    stats = QAStats()
    candidates = select_candidates(segments, params, seed, stats)
    text = dict(zip(segments["seg_id"].astype(int), segments["text"], strict=True))
    doc = dict(zip(segments["seg_id"].astype(int), segments["doc_id"].astype(str), strict=True))
    cues: dict[int, Cue | None] = {}

    def cue_of(seg_id: int) -> Cue | None:
        if seg_id not in cues:
            cues[seg_id] = find_cue(text[seg_id], params, random.Random(f"{seed}:{seg_id}"))
        return cues[seg_id]

    tasks = {t for t, f in params.tasks.items() if f > 0}
    fine: dict[str, list[dict]] = {}
    if "continuation" in tasks:
        fine["continuation"] = []
        for seg_id in tqdm(candidates.fine_grained, desc="qa fine_grained"):
            cue = cue_of(seg_id)
            if cue is None:
                stats.reject("fine_grained:no_unique_cue")
                continue
            question = fine_grained_question(cue)
            fine["continuation"].append(
                _row(Gold("fine_grained", [seg_id], doc[seg_id]), question, cue.answer, [cue])
            )
    if "quote" in tasks:
        fine["quote"] = quote_pairs(segments, candidates.fine_grained, params, seed, stats)
    for unit in ("record", "entry"):
        if unit in tasks:
            fine[unit] = unit_pairs(segments, unit, params, seed, stats)
    rows = _balanced(fine, params, seed, stats)
    stats.accepted["fine_grained"] = len(rows)

    for doc_id, segs in tqdm(candidates.integration, desc="qa integration"):
        found = [cue_of(s) for s in segs]
        picked = [c for c in found if c is not None]
        if len(picked) < len(found):
            stats.reject("integration:no_unique_cue")
            continue
        answer = " ".join(f"{i}. {c.answer}" for i, c in enumerate(picked, 1))
        question = integration_question(picked)
        rows.append(_row(Gold("integration", segs, doc_id), question, answer, picked))
        stats.accept("integration")
    log.info("qa (template): accepted %s, rejected %s", stats.accepted, stats.rejected)
    return qa_frame(rows), stats
