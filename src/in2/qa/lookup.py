"""Fine-grained QA pairs that quote their answer: sentence quotes over prose, lookups over units.

Part of the offline `template` generator (in2.qa.template calls these), built from the training
corpus only. Each answer is a verbatim piece of its gold segment, and each question's cue occurs
once in it; synthesis keeps cues unique in a context (no filler quotes them), so a question
always points at exactly one place.

- `quote` (prose segment): the whole sentence that holds a quoted run of `qa.cue_words` words;
- `record` (record unit, in2.data.units): a key -> the name and description filed under it;
- `entry` (entry unit): a quoted run of words from an entry's text -> the entry's heading.

Questions are drawn from several phrasings (`*_QUESTIONS`) so that no single wording is learnt.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pandas as pd

from in2.data.units import sentences
from in2.params import QAParams
from in2.qa.pairs import Gold, QAStats, pair_digest, qa_row

QUOTE = "template-quote-v1"
RECORD = "lookup-record-v1"
ENTRY = "lookup-entry-v1"
QUOTING_GENERATORS = (QUOTE, RECORD, ENTRY)
"""Generators whose answer (and every cue) is a verbatim piece of the gold text."""

QUOTE_WORDS = (12, 60)
"""Words of a sentence a `quote` pair may ask for."""
QUOTE_QUESTIONS = (
    'Quote the complete sentence in which the words "{cue}" appear.',
    'Copy out, in full, the sentence that includes "{cue}".',
    'Find the words "{cue}" in the context and write out the whole sentence they belong to.',
)
RECORD_QUESTIONS = (
    "What is filed under {key}? Answer with the name and the description.",
    "Look up {key}: give the name and the description stored there.",
    "Which name and description belong to {key}?",
)
ENTRY_QUESTIONS = (
    'Under which heading do the words "{cue}" appear? Answer with the heading only.',
    'Which entry contains "{cue}"? Give its heading.',
    'Name the entry whose text includes "{cue}".',
)


def _row(
    generator: str, seg_id: int, doc: str, question: str, answer: str, cue: str
) -> dict[str, Any]:
    """A fine-grained pair: no prompt, so its prompt hash is the digest of the pair itself."""
    gold = Gold("fine_grained", [seg_id], doc)
    return qa_row(
        gold=gold,
        question=question,
        answer=answer,
        keywords=[cue],
        generator=generator,
        prompt_hash=pair_digest(generator, gold, question),
    )


def quote_pair(text: str, cue_words: int, rng: random.Random) -> tuple[str, str] | None:
    """(cue, sentence) from a prose segment: a whole sentence (not the first or last, which a
    128-token cut may split) and a run of `cue_words` of its words occurring once in the text."""
    found = sentences(text)[1:-1]
    usable = [s for s in found if QUOTE_WORDS[0] <= len(s.split()) <= QUOTE_WORDS[1]]
    rng.shuffle(usable)
    flat = " ".join(text.split())
    for sentence in usable:
        words = sentence.split()
        starts = list(range(len(words) - cue_words + 1))
        rng.shuffle(starts)
        for i in starts[:3]:
            cue = " ".join(words[i : i + cue_words])
            if flat.count(cue) == 1 and sentence in flat:
                return cue, sentence
    return None


ENTRY_LINE_MIN_WORDS = 3
"""A line of a lined entry is a cue only with at least this many words (else too vague)."""


def entry_cue(value: str, name: str, cue_words: int, rng: random.Random) -> str | None:
    """A piece of an entry's text that does not contain its heading and occurs once in it: one
    whole line of a lined entry (in2.data.units.wrap_lines), else a run of `cue_words` words."""
    if "\n" in value:
        lines = [line for line in value.split("\n") if len(line.split()) >= ENTRY_LINE_MIN_WORDS]
        rng.shuffle(lines)
        return next((x for x in lines if name not in x and value.count(x) == 1), None)
    words = value.split()
    starts = list(range(len(words) - cue_words + 1))
    rng.shuffle(starts)
    for i in starts:
        cue = " ".join(words[i : i + cue_words])
        if name not in cue and value.count(cue) == 1:
            return cue
    return None


def quote_pairs(
    segments: pd.DataFrame, seg_ids: list[int], params: QAParams, seed: int, stats: QAStats
) -> list[dict[str, Any]]:
    """One `quote` pair per prose segment of `seg_ids` that has a usable sentence."""
    text = dict(zip(segments["seg_id"].astype(int), segments["text"], strict=True))
    doc = dict(zip(segments["seg_id"].astype(int), segments["doc_id"].astype(str), strict=True))
    rows = []
    for seg_id in seg_ids:
        rng = random.Random(f"{seed}:quote:{seg_id}")
        found = quote_pair(text[seg_id], params.cue_words, rng)
        if found is None:
            stats.reject("quote:no_sentence")
            continue
        cue, sentence = found
        question = rng.choice(QUOTE_QUESTIONS).format(cue=cue)
        rows.append(_row(QUOTE, seg_id, doc[seg_id], question, sentence, cue))
    return rows


def _record(unit: Any, rng: random.Random, params: QAParams) -> tuple[str, str, str] | None:
    question = rng.choice(RECORD_QUESTIONS).format(key=unit.key)
    return question, unit.answer, unit.key


def _entry(unit: Any, rng: random.Random, params: QAParams) -> tuple[str, str, str] | None:
    cue = entry_cue(unit.value, unit.name, params.cue_words, rng)
    if cue is None:
        return None
    return rng.choice(ENTRY_QUESTIONS).format(cue=cue), unit.answer, cue


UNIT_TASKS: dict[str, tuple[str, Callable[..., tuple[str, str, str] | None]]] = {
    "record": (RECORD, _record),
    "entry": (ENTRY, _entry),
}
"""Unit type -> (generator name, question maker)."""


def unit_pairs(
    segments: pd.DataFrame, unit: str, params: QAParams, seed: int, stats: QAStats
) -> list[dict[str, Any]]:
    """One pair per unit of the type (rows of `segments` carrying the unit fields)."""
    generator, make = UNIT_TASKS[unit]
    rows = []
    for u in segments[segments["unit"] == unit].itertuples(index=False):
        made = make(u, random.Random(f"{seed}:{unit}:{u.seg_id}"), params)
        if made is None:
            stats.reject(f"{unit}:no_cue")
            continue
        question, answer, cue = made
        rows.append(_row(generator, int(u.seg_id), str(u.doc_id), question, answer, cue))
    return rows
