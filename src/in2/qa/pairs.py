"""QA pairs grounded in segments: the interface every QA generator implements.

A generator takes the decoded segments (`segments_for_qa`: columns seg_id, doc_id,
index_in_doc, text, and the fields of record units), the `qa` params and the seed, and returns a
frame with `COLUMNS` plus its `QAStats`. It produces the two long-context kinds of the paper:

- fine_grained: a QA pair that needs the details of ONE segment;
- integration: a QA pair that needs >= 2 segments of one document.

Candidate selection (which segments and documents are asked about) is shared, so generators are
compared on the same candidates and a cap bounds the cost of a model-backed one. Adding a
generator is one entry in in2.registry.QA_GENERATORS.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from in2.data.segments import SegmentStore
from in2.data.units import TEXT_UNIT
from in2.model import load_tokenizer
from in2.params import QAParams

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

T = TypeVar("T")
Generator = Callable[[pd.DataFrame, QAParams, int], tuple[pd.DataFrame, "QAStats"]]


def segments_for_qa(segments_dir: Path, tokenizer_dir: Path) -> pd.DataFrame:
    """Every segment decoded to text (with the base model's tokenizer), with the fields of record
    units (their lookup questions)."""
    store = SegmentStore.open(segments_dir)  # first: a missing input names the stage to run
    texts = store.texts(load_tokenizer(tokenizer_dir))
    segments = store.index.assign(text=store.index["seg_id"].map(texts))
    units = store.units()
    if not units.empty:
        segments = segments.merge(units.drop(columns="unit"), on="seg_id", how="left")
    return segments


@dataclass
class QAStats:
    """Accepted pairs per kind, rejected candidates per reason and, for a model-backed generator,
    API usage (requests, cache hits, retries, tokens, cost): the DVC metrics of the qa stage."""

    accepted: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    api: dict[str, Any] = field(default_factory=dict)

    def accept(self, kind: str) -> None:
        self.accepted[kind] = self.accepted.get(kind, 0) + 1

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def metrics(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.api:
            del out["api"]
        return out


@dataclass(frozen=True)
class Candidates:
    """What a generator is asked about: segments (fine-grained) and segment groups of one
    document, in document order (integration)."""

    fine_grained: list[int]
    integration: list[tuple[str, list[int]]]


def _sample(items: list[T], cap: int | None, rng: random.Random) -> list[T]:
    return items if cap is None or cap >= len(items) else sorted(rng.sample(items, cap))


def select_candidates(
    segments: pd.DataFrame, params: QAParams, seed: int, stats: QAStats
) -> Candidates:
    """Seeded, capped choice of candidates; documents with too few segments are counted.

    Only prose segments are candidates: record units (in2.data.units, `unit` column) are asked about
    by their own tasks.
    """
    if "unit" in segments:
        segments = segments[segments["unit"] == TEXT_UNIT]
    segments = segments.sort_values("seg_id")
    fine = _sample(
        segments["seg_id"].astype(int).tolist(),
        params.max_fine_grained,
        random.Random(f"{seed}:fine_grained"),
    )
    k = params.integration_segments
    groups: list[tuple[str, list[int]]] = []
    for doc_id, group in segments.groupby("doc_id", sort=True):
        ordered = group.sort_values("index_in_doc")["seg_id"].astype(int).tolist()
        if len(ordered) < k:
            stats.reject("integration:too_few_segments")
            continue
        chosen = set(random.Random(f"{seed}:{doc_id}").sample(ordered, k))
        groups.append((str(doc_id), [s for s in ordered if s in chosen]))
    picked = _sample(groups, params.max_integration, random.Random(f"{seed}:integration"))
    return Candidates(fine, picked)


@dataclass(frozen=True)
class Gold:
    """Where a pair's answer lies: its kind, gold segments (in document order) and document."""

    kind: str
    segments: list[int]
    doc: str


def pair_digest(generator: str, gold: Gold, question: str) -> str:
    """SHA-1 of what identifies a pair: its generator, kind, gold segments and question."""
    key = f"{generator}|{gold.kind}|{gold.segments}|{question}"
    return hashlib.sha1(key.encode()).hexdigest()


def qa_row(
    *,
    gold: Gold,
    question: str,
    answer: str,
    keywords: list[str],
    generator: str,
    prompt_hash: str,
) -> dict[str, Any]:
    """One output row; the id is stable for the same generator, kind, gold segments and question."""
    return {
        "qa_id": f"{gold.kind[:2]}-{pair_digest(generator, gold, question)[:12]}",
        "kind": gold.kind,
        "gold_segments": gold.segments,
        "source_doc": gold.doc,
        "question": question,
        "answer": answer,
        "keywords": keywords,
        "generator": generator,
        "prompt_hash": prompt_hash,
    }


def qa_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows in `COLUMNS` order (an empty result keeps the schema)."""
    return pd.DataFrame(rows, columns=COLUMNS)
