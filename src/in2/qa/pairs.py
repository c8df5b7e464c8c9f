"""QA pairs grounded in segments: the interface every QA generator implements.

A generator takes the segments (`segments_for_qa`: columns seg_id, doc_id, index_in_doc, the
fields of record units, and the decoded text of the candidates), the `qa` params and the seed,
and returns a frame with `COLUMNS` plus its `QAStats`. It produces the two long-context kinds of
the paper:

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

import numpy as np
import pandas as pd

from in2.data.segment_text import SegmentTexts
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


def segments_for_qa(
    segments_dir: Path, tokenizer_dir: Path, params: QAParams, seed: int
) -> pd.DataFrame:
    """The segment index with the fields of record units (their lookup questions) and the text
    (decoded with the base model's tokenizer) of the candidates `select_candidates` picks; the
    other segments' text is None.

    No generator reads any other text, and at paper scale decoding all ~8M segments would cost
    several times the decoding of the ~2M candidates and their strings."""
    store = SegmentStore.open(segments_dir)  # first: a missing input names the stage to run
    units = store.units()
    segments = store.index
    if not units.empty:
        segments = segments.merge(units.drop(columns="unit"), on="seg_id", how="left")
    picked = select_candidates(segments, params, seed, QAStats())
    wanted = sorted({*picked.fine_grained, *(s for _, segs in picked.integration for s in segs)})
    decoded = SegmentTexts(store, load_tokenizer(tokenizer_dir))
    texts = np.full(len(store.index), None, dtype=object)
    for ids, chunk in decoded.chunks(np.asarray(wanted, dtype=np.int64)):
        texts[ids] = chunk.to_pylist()
    text = pd.Series(texts[segments["seg_id"].to_numpy()], index=segments.index, dtype=object)
    segments.insert(len(store.index.columns), "text", text)
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
    by_doc = segments.sort_values(["doc_id", "index_in_doc"], kind="stable")
    docs, seg_ids = by_doc["doc_id"].to_numpy(), by_doc["seg_id"].astype(int).to_numpy()
    # one slice per document (a pandas group per document costs ~0.1 ms: minutes at 2M)
    starts = np.flatnonzero(np.concatenate([[True], docs[1:] != docs[:-1]])) if len(docs) else []
    for lo, hi in zip(starts, [*starts[1:], len(docs)], strict=True):
        doc_id, ordered = docs[lo], seg_ids[lo:hi].tolist()
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
