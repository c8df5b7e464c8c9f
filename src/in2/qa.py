"""QA pairs grounded in segments: the `template` generator (offline, deterministic).

The paper asks GPT-4-Turbo for QA pairs; this generator needs no model and still has the property
IN2 relies on — the answer is recoverable from the gold segment text and from nothing else:

- fine_grained (one segment): "Which N words directly follow "<cue>" in the context?" where the cue
  is a run of words quoted from the segment and the answer the N words after it.
- integration (>= 2 segments of one document): the same, for one cue in each segment; the answer
  needs every one of them.
- general (no context): "In a few words, what is <title>?" answered by the article's short
  description — an offline stand-in for the paper's general instruction data (OpenOrca).

Each pair records its `keywords` (the cues): synthesis keeps them unique within a context, so
a question never becomes ambiguous because a filler quotes the same words.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass, field

import pandas as pd
from tqdm import tqdm

from in2.params import QAParams

log = logging.getLogger(__name__)

GENERATOR = "template-v1"
COLUMNS = [
    "qa_id",
    "kind",
    "gold_segments",
    "source_doc",
    "question",
    "answer",
    "keywords",
    "generator",
    "prompt_hash",
]
_SENTENCE_END = (".", "!", "?")


@dataclass(frozen=True)
class Cue:
    """A quoted run of words and the words that follow it in one segment."""

    cue: str
    answer: str

    @property
    def n_answer_words(self) -> int:
        return len(self.answer.split())


@dataclass
class QAStats:
    """Accepted pairs per kind and rejected candidates per reason (DVC metrics of the qa stage)."""

    accepted: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)

    def count(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1


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


def _qa_id(kind: str, key: str) -> str:
    return f"{kind[:2]}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def _row(kind: str, segs: list[int], doc: str, question: str, answer: str, keywords: list[str]):
    key = f"{GENERATOR}|{kind}|{segs}|{doc}|{question}"
    return {
        "qa_id": _qa_id(kind, key),
        "kind": kind,
        "gold_segments": segs,
        "source_doc": doc,
        "question": question,
        "answer": answer,
        "keywords": keywords,
        "generator": GENERATOR,
        "prompt_hash": hashlib.sha1(key.encode()).hexdigest(),
    }


def fine_grained_question(cue: Cue) -> str:
    return f'Which {cue.n_answer_words} words directly follow "{cue.cue}" in the context?'


def integration_question(cues: list[Cue]) -> str:
    parts = " ".join(f'{i}. "{c.cue}" ({c.n_answer_words} words)' for i, c in enumerate(cues, 1))
    return f"For each of these phrases from one article, which words directly follow it? {parts}"


def generate_template_qa(
    segment_texts: pd.DataFrame, docs: pd.DataFrame, params: QAParams, seed: int
) -> tuple[pd.DataFrame, QAStats]:
    """QA pairs from decoded segments (seg_id, doc_id, index_in_doc, text) and documents.

    Deterministic: each segment's choices come from its own RNG seeded by (seed, seg_id).
    """
    stats = QAStats()
    rows = []
    cues: dict[int, Cue] = {}
    for seg in tqdm(segment_texts.itertuples(index=False), total=len(segment_texts), desc="qa"):
        cue = find_cue(seg.text, params, random.Random(f"{seed}:{seg.seg_id}"))
        if cue is None:
            stats.count(stats.rejected, "fine_grained:no_unique_cue")
            continue
        cues[seg.seg_id] = cue
        rows.append(
            _row(
                "fine_grained",
                [seg.seg_id],
                seg.doc_id,
                fine_grained_question(cue),
                cue.answer,
                [cue.cue],
            )
        )
        stats.count(stats.accepted, "fine_grained")

    k = params.integration_segments
    for doc_id, group in segment_texts.groupby("doc_id", sort=True):
        usable = [s for s in group.sort_values("index_in_doc")["seg_id"] if s in cues]
        if len(usable) < k:
            stats.count(stats.rejected, "integration:too_few_segments")
            continue
        chosen = sorted(random.Random(f"{seed}:{doc_id}").sample(usable, k))
        picked = [cues[s] for s in chosen]
        answer = " ".join(f"{i}. {c.answer}" for i, c in enumerate(picked, 1))
        rows.append(
            _row(
                "integration",
                chosen,
                doc_id,
                integration_question(picked),
                answer,
                [c.cue for c in picked],
            )
        )
        stats.count(stats.accepted, "integration")

    for doc in docs.itertuples(index=False):
        description = str(doc.description).strip()
        if not description:
            stats.count(stats.rejected, "general:no_description")
            continue
        rows.append(
            _row(
                "general", [], doc.doc_id, f"In a few words, what is {doc.title}?", description, []
            )
        )
        stats.count(stats.accepted, "general")
    log.info("qa: accepted %s, rejected %s", stats.accepted, stats.rejected)
    return pd.DataFrame(rows, columns=COLUMNS), stats
