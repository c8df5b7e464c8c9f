"""128-token segments: the unit IN2 contexts are built from.

All segments live in ONE flat token-id array (`tokens.npy`: uint16 when the vocabulary fits, as
for Mistral's 32K and SmolLM2's 49K, else uint32) plus an index table (`segments.parquet`: seg_id,
doc_id, start, n_tokens, index_in_doc). A context is then a list of segment ids, and training
gathers its token ids from the memory-mapped array — at paper scale that is ~1 GB of ids instead
of ~100 GB of text, and no text is ever re-tokenized.
"""

from __future__ import annotations

import logging
import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from in2.data.units import UNIT_COLUMNS, UNITS_FILE
from in2.params import SegmentParams

log = logging.getLogger(__name__)

TOKENS_FILE = "tokens.npy"
INDEX_FILE = "segments.parquet"
INDEX_COLUMNS = ["seg_id", "doc_id", "start", "n_tokens", "index_in_doc"]


def cut(n_tokens: int, params: SegmentParams) -> list[tuple[int, int]]:
    """(offset, length) of each segment of a document of `n_tokens` tokens.

    Full segments of `params.length`; a tail of at least `params.min_tokens` tokens is a segment of
    its own. A shorter tail is dropped (`tail: drop`: a 5-token fragment carries no answerable
    information) or appended to the previous segment (`tail: merge`: no text is lost).
    A document shorter than `min_tokens` gives no segment either way.
    """
    spans = [
        (offset, min(params.length, n_tokens - offset))
        for offset in range(0, n_tokens, params.length)
    ]
    if spans and spans[-1][1] < params.min_tokens:
        _, tail = spans.pop()
        if params.tail == "merge" and spans:
            prev_offset, prev_length = spans.pop()
            spans.append((prev_offset, prev_length + tail))
    return spans


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype that holds every token id (halves disk and gather bandwidth)."""
    for dtype in (np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise ValueError(f"a vocabulary of {vocab_size} ids does not fit uint32 token ids")


@dataclass
class SegmentStats:
    """Counts of the segment stage (DVC metrics): what was cut, kept, merged and dropped."""

    documents: int = 0
    documents_with_segments: int = 0
    segments: int = 0
    full_length_segments: int = 0
    tokens_read: int = 0
    tokens_kept: int = 0
    short_tails: int = 0
    """Tails shorter than `min_tokens`: dropped or merged, as `segment.tail` says."""


def segment_documents(
    docs: pd.DataFrame,
    tokenizer: PreTrainedTokenizerBase,
    params: SegmentParams,
    batch_size: int = 512,
) -> tuple[np.ndarray, pd.DataFrame, SegmentStats]:
    """Tokenize documents in batches and cut them into segments.

    A batch call of a fast tokenizer encodes its documents on all cores (Rust threads); encoding
    one document at a time would use one (see bench/segment_throughput.py).
    """
    dtype = token_dtype(len(tokenizer))
    stats = SegmentStats(documents=len(docs))
    chunks: list[np.ndarray] = []
    rows: list[tuple[int, str, int, int, int]] = []
    start = 0
    texts, ids = docs["text"].tolist(), docs["doc_id"].tolist()
    for b in tqdm(range(0, len(texts), batch_size), desc="segment", unit="batch"):
        encoded = tokenizer(texts[b : b + batch_size], add_special_tokens=False)["input_ids"]
        for doc, token_ids in zip(ids[b : b + batch_size], encoded, strict=True):
            arr = np.asarray(token_ids, dtype=dtype)
            stats.tokens_read += len(arr)
            stats.short_tails += 0 < len(arr) % params.length < params.min_tokens
            spans = cut(len(arr), params)
            stats.documents_with_segments += bool(spans)
            for index_in_doc, (offset, length) in enumerate(spans):
                chunks.append(arr[offset : offset + length])
                rows.append((len(rows), doc, start, length, index_in_doc))
                start += length
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS).astype(
        {"seg_id": "int64", "start": "int64", "n_tokens": "int32", "index_in_doc": "int32"}
    )
    stats.segments, stats.tokens_kept = len(index), len(tokens)
    stats.full_length_segments = int((index["n_tokens"] == params.length).sum())
    return tokens, index, stats


def map_tokens(path: Path, populate: bool = False) -> np.ndarray:
    """The flat token array of a .npy file, memory-mapped read-only, as a plain ndarray.

    A plain ndarray over the map, not np.memmap: the subclass's hooks cost on every read.
    `populate` asks the kernel to map every page now (MAP_POPULATE, Linux); elsewhere it is a
    no-op and pages fault in on first use.
    """
    with path.open("rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }.get(version)
        if read_header is None:
            raise ValueError(f"{path}: unsupported .npy format version {version}")
        shape, fortran_order, dtype = read_header(f)
        if len(shape) != 1 or fortran_order:
            raise ValueError(f"{path}: expected a flat array of token ids, got shape {shape}")
        offset = f.tell()
        if shape[0] == 0:
            return np.zeros(0, dtype=dtype)
        flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
        buffer = mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
    return np.frombuffer(buffer, dtype=dtype, count=shape[0], offset=offset)


@dataclass(frozen=True)
class SegmentStore:
    """Read side of `data/segments/`: token ids and text of a segment by id."""

    tokens: np.ndarray
    index: pd.DataFrame
    starts: np.ndarray
    lengths: np.ndarray
    folder: Path | None = None
    """Where the store was opened from (None for one built in memory)."""

    @classmethod
    def open(cls, folder: str | Path, populate: bool = False) -> SegmentStore:
        """Open `data/segments/`; `populate` maps every page of the token array up front.

        A fresh memory map faults on the first read of each 4 KB page, and a context's segments
        sit on scattered pages: training, which reads them all, gathers ~7x faster from a
        populated map (bench/synthesis_scale.py). `in2 show` and the data stages read a few.
        """
        folder = Path(folder)
        for name in (TOKENS_FILE, INDEX_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(
                    f"{folder / name} is missing; run `dvc repro segment` to build it"
                )
        index = pd.read_parquet(folder / INDEX_FILE)
        if not (index["seg_id"].to_numpy() == np.arange(len(index))).all():
            raise ValueError(f"{folder / INDEX_FILE}: seg_id must equal the row number")
        tokens = map_tokens(folder / TOKENS_FILE, populate)
        return cls(tokens, index, index["start"].to_numpy(), index["n_tokens"].to_numpy(), folder)

    def ids(self, seg_id: int) -> np.ndarray:
        start = self.starts[seg_id]
        return self.tokens[start : start + self.lengths[seg_id]]

    def context_ids(self, seg_ids: list[int] | np.ndarray) -> np.ndarray:
        """Token ids of a context: its segments' ids, concatenated in order.

        One vectorised gather (an index per token, then one fancy-index read of the memory map)
        instead of a slice per segment: ~150 segments per paper-scale context.
        """
        seg_ids = np.asarray(seg_ids, dtype=np.int64)
        lengths = self.lengths[seg_ids]
        ends = np.cumsum(lengths)
        # token t of segment i sits at starts[i] + (t - first token of segment i in the context)
        shift = np.repeat(self.starts[seg_ids] - (ends - lengths), lengths)
        return np.take(self.tokens, np.arange(ends[-1] if len(ends) else 0) + shift)

    def units(self) -> pd.DataFrame:
        """The fields of the record units (in2.data.units), if the store has any; else empty."""
        path = None if self.folder is None else self.folder / UNITS_FILE
        if path is None or not path.is_file():
            return pd.DataFrame(columns=UNIT_COLUMNS)
        return pd.read_parquet(path)

    def texts(self, tokenizer: PreTrainedTokenizerBase) -> dict[int, str]:
        """Decoded text of every segment (for QA generation and decontamination)."""
        ids = [self.ids(s).tolist() for s in range(len(self.index))]
        return dict(enumerate(tokenizer.batch_decode(ids)))
