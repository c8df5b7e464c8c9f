"""128-token segments: the unit IN2 contexts are built from.

All segments live in ONE flat uint32 array (`tokens.npy`) plus an index table
(`segments.parquet`: seg_id, doc_id, start, n_tokens, index_in_doc). A context is then a list of
segment ids, and training gathers its token ids from the memory-mapped array — at paper scale that
is ~1 GB of ids instead of ~100 GB of text, and no text is ever re-tokenized.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from in2.params import SegmentParams

log = logging.getLogger(__name__)

TOKENS_FILE = "tokens.npy"
INDEX_FILE = "segments.parquet"
INDEX_COLUMNS = ["seg_id", "doc_id", "start", "n_tokens", "index_in_doc"]


def cut(n_tokens: int, params: SegmentParams) -> list[tuple[int, int]]:
    """(offset, length) of each segment of a document of `n_tokens` tokens.

    Full segments of `params.length`; the tail is kept only if it has at least
    `params.min_tokens` tokens (a 5-token fragment carries no answerable information).
    """
    spans = []
    for offset in range(0, n_tokens, params.length):
        length = min(params.length, n_tokens - offset)
        if length == params.length or length >= params.min_tokens:
            spans.append((offset, length))
    return spans


def segment_documents(
    docs: pd.DataFrame,
    tokenizer: PreTrainedTokenizerBase,
    params: SegmentParams,
    batch_size: int = 512,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Tokenize documents in batches (fast tokenizer, Rust threads) and cut them into segments."""
    if tokenizer.vocab_size > np.iinfo(np.uint32).max:
        raise ValueError("vocabulary does not fit uint32 token ids")
    chunks: list[np.ndarray] = []
    rows: list[tuple[int, str, int, int, int]] = []
    start = 0
    texts, ids = docs["text"].tolist(), docs["doc_id"].tolist()
    for b in tqdm(range(0, len(texts), batch_size), desc="segment", unit="batch"):
        encoded = tokenizer(texts[b : b + batch_size], add_special_tokens=False)["input_ids"]
        for doc, token_ids in zip(ids[b : b + batch_size], encoded, strict=True):
            arr = np.asarray(token_ids, dtype=np.uint32)
            for index_in_doc, (offset, length) in enumerate(cut(len(arr), params)):
                chunks.append(arr[offset : offset + length])
                rows.append((len(rows), doc, start, length, index_in_doc))
                start += length
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint32)
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS).astype(
        {"seg_id": "int64", "start": "int64", "n_tokens": "int32", "index_in_doc": "int32"}
    )
    return tokens, index


@dataclass(frozen=True)
class SegmentStore:
    """Read side of `data/segments/`: token ids and text of a segment by id."""

    tokens: np.ndarray
    index: pd.DataFrame
    starts: np.ndarray
    lengths: np.ndarray

    @classmethod
    def open(cls, folder: str | Path) -> SegmentStore:
        folder = Path(folder)
        for name in (TOKENS_FILE, INDEX_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(
                    f"{folder / name} is missing; run `dvc repro segment` to build it"
                )
        index = pd.read_parquet(folder / INDEX_FILE)
        if not (index["seg_id"].to_numpy() == np.arange(len(index))).all():
            raise ValueError(f"{folder / INDEX_FILE}: seg_id must equal the row number")
        tokens = np.load(folder / TOKENS_FILE, mmap_mode="r")
        return cls(tokens, index, index["start"].to_numpy(), index["n_tokens"].to_numpy())

    def ids(self, seg_id: int) -> np.ndarray:
        start = self.starts[seg_id]
        return self.tokens[start : start + self.lengths[seg_id]]

    def context_ids(self, seg_ids: list[int]) -> np.ndarray:
        """Token ids of a context: its segments' ids, concatenated in order."""
        if not len(seg_ids):
            return np.zeros(0, dtype=np.uint32)
        return np.concatenate([self.ids(s) for s in seg_ids])

    def texts(self, tokenizer: PreTrainedTokenizerBase) -> dict[int, str]:
        """Decoded text of every segment (for QA generation and decontamination)."""
        ids = [self.ids(s).tolist() for s in range(len(self.index))]
        return dict(enumerate(tokenizer.batch_decode(ids)))
