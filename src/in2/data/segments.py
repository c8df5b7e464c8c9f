"""128-token segments: the unit IN2 contexts are built from.

All segments live in ONE flat token-id array (`tokens.npy`: uint16 when the vocabulary fits, as
for Mistral's 32K and SmolLM2's 49K, else uint32) plus an index table (`segments.parquet`: seg_id,
doc_id, start, n_tokens, index_in_doc). A context is then a list of segment ids, and training
gathers its token ids from the memory-mapped array — at paper scale that is ~1 GB of ids instead
of ~100 GB of text, and no text is ever re-tokenized.

The stage streams: the corpus table is read in record batches (`CorpusTexts`), the ids go to disk
as they come (`TokenFile`) and the index grows as numpy columns, so memory holds neither the
corpus nor the token array.
"""

from __future__ import annotations

import io
import logging
import math
import mmap
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
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


def segment_batches(
    batches: Iterable[tuple[Sequence[str], Sequence[str]]],
    tokenizer: PreTrainedTokenizerBase,
    params: SegmentParams,
    write: Callable[[np.ndarray], None],
) -> tuple[pd.DataFrame, SegmentStats]:
    """Tokenize batches of (doc ids, texts) and cut them into segments; the kept token ids go to
    `write` batch by batch, in index order. Returns the index (INDEX_COLUMNS) and the counts.

    A batch call of a fast tokenizer encodes its documents on all cores (Rust threads); encoding
    one document at a time would use one (see bench/segment_throughput.py). The index grows as
    numpy columns, one array per batch (16 bytes a segment), not as a Python tuple per segment.
    """
    dtype = token_dtype(len(tokenizer))
    stats = SegmentStats()
    doc_ids: list[str] = []  # documents with segments; the index refers to them by number
    columns: dict[str, list[np.ndarray]] = {"doc": [], "n_tokens": [], "index_in_doc": []}
    for ids, texts in batches:
        encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        pieces: list[np.ndarray] = []
        docs, lengths, positions = [], [], []
        for doc, token_ids in zip(ids, encoded, strict=True):
            stats.documents += 1
            stats.tokens_read += len(token_ids)
            stats.short_tails += 0 < len(token_ids) % params.length < params.min_tokens
            spans = cut(len(token_ids), params)
            if not spans:
                continue
            stats.documents_with_segments += 1
            arr = np.asarray(token_ids, dtype=dtype)
            for index_in_doc, (offset, length) in enumerate(spans):
                pieces.append(arr[offset : offset + length])
                docs.append(len(doc_ids))
                lengths.append(length)
                positions.append(index_in_doc)
            doc_ids.append(doc)
        if pieces:
            write(np.concatenate(pieces))
        columns["doc"].append(np.asarray(docs, dtype=np.int64))
        columns["n_tokens"].append(np.asarray(lengths, dtype=np.int32))
        columns["index_in_doc"].append(np.asarray(positions, dtype=np.int32))
    doc, n_tokens, index_in_doc = (
        np.concatenate(columns[c]) if columns[c] else np.zeros(0, dtype=np.int32) for c in columns
    )
    starts = np.cumsum(n_tokens, dtype=np.int64) - n_tokens
    index = pd.DataFrame(
        {
            "seg_id": np.arange(len(n_tokens), dtype=np.int64),
            "doc_id": pd.array(doc_ids, dtype="str").take(doc),
            "start": starts,
            "n_tokens": n_tokens,
            "index_in_doc": index_in_doc,
        }
    )
    stats.segments, stats.tokens_kept = len(index), int(n_tokens.sum())
    stats.full_length_segments = int((n_tokens == params.length).sum())
    return index, stats


def segment_documents(
    docs: pd.DataFrame,
    tokenizer: PreTrainedTokenizerBase,
    params: SegmentParams,
    batch_size: int = 512,
) -> tuple[np.ndarray, pd.DataFrame, SegmentStats]:
    """Segment a table of documents (doc_id, text) in memory: (token ids, index, stats).

    For tests and benchmarks; the stage streams the corpus through `segment_batches` instead.
    """
    texts, ids = docs["text"].tolist(), docs["doc_id"].tolist()
    batches = (
        (ids[b : b + batch_size], texts[b : b + batch_size])
        for b in tqdm(range(0, len(texts), batch_size), desc="segment", unit="batch")
    )
    chunks: list[np.ndarray] = []
    index, stats = segment_batches(batches, tokenizer, params, chunks.append)
    dtype = token_dtype(len(tokenizer))
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)
    return tokens, index, stats


@dataclass
class CorpusTexts:
    """A corpus table (data/corpus/train.parquet) read `batch_size` documents at a time.

    Iterating gives (doc ids, texts) to tokenize; with `keep_titled`, the documents that have a
    title are kept aside on the way (`titled()`): record units are made of those only
    (in2.data.units.render_units), and they are at most one unit per document.
    `rows` restricts the reading to one contiguous run of rows: a shard (in2.data.shards).
    """

    path: Path
    keep_titled: bool
    batch_size: int = 512
    rows: range | None = None
    """Rows of the table to read, in file order; None: all of them."""
    _titled: list[pd.DataFrame] = field(default_factory=list, init=False, repr=False)

    UNIT_SOURCE_COLUMNS = ("doc_id", "title", "description", "text")

    def __iter__(self) -> Iterator[tuple[list[str], list[str]]]:
        columns = list(self.UNIT_SOURCE_COLUMNS if self.keep_titled else ("doc_id", "text"))
        for batch in self._batches(columns):
            if self.keep_titled:
                self._keep_titled(batch)
            yield batch.column("doc_id").to_pylist(), batch.column("text").to_pylist()

    def read_titled(self) -> pd.DataFrame:
        """Read the rows for their titled documents alone, nothing tokenized (none read unless
        `keep_titled`): the record units of a merge of shards, whose prose is cut already."""
        if self.keep_titled:
            for batch in self._batches(list(self.UNIT_SOURCE_COLUMNS)):
                self._keep_titled(batch)
        return self.titled()

    def _batches(self, columns: list[str]) -> Iterator[pa.RecordBatch]:
        table = pq.ParquetFile(self.path)
        rows = range(table.metadata.num_rows) if self.rows is None else self.rows
        total = math.ceil(len(rows) / self.batch_size)
        batches = _row_batches(table, rows, self.batch_size, columns)
        yield from tqdm(batches, total=total, desc="segment", unit="batch")

    def _keep_titled(self, batch: pa.RecordBatch) -> None:
        keep = pa.array([bool(t and t.strip()) for t in batch.column("title").to_pylist()])
        self._titled.append(batch.filter(keep).to_pandas())

    def titled(self) -> pd.DataFrame:
        """The documents with a title read so far (doc_id, title, description, text)."""
        if not self._titled:
            return pd.DataFrame(columns=list(self.UNIT_SOURCE_COLUMNS))
        return pd.concat(self._titled, ignore_index=True)


def _row_batches(
    table: pq.ParquetFile, rows: range, batch_size: int, columns: list[str]
) -> Iterator[pa.RecordBatch]:
    """Record batches of the contiguous `rows` of a parquet file; only the row groups that hold
    them are decoded, and the batches at the range's ends are cut to it."""
    meta = table.metadata
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    firsts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    groups = [g for g in range(len(sizes)) if firsts[g] < rows.stop and firsts[g + 1] > rows.start]
    if not groups or not rows:
        return
    position = int(firsts[groups[0]])
    for batch in table.iter_batches(batch_size=batch_size, row_groups=groups, columns=columns):
        begin, end = max(rows.start - position, 0), min(rows.stop - position, batch.num_rows)
        position += batch.num_rows
        if begin < end:
            yield batch.slice(begin, end - begin)


class TokenFile:
    """A flat `.npy` of token ids written as they come, so the ids are never all in memory.

    The header goes first, for length 0, and is rewritten with the final length on close: numpy
    pads a 1-d header to the same size for any length of up to 21 digits, so the data never
    moves and the file is byte for byte what `np.save` writes.
    """

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path, self.dtype, self.length = Path(path), np.dtype(dtype), 0
        self._file = self.path.open("wb")
        self._header_size = len(self._header())
        self._file.write(self._header())

    def _header(self) -> bytes:
        out = io.BytesIO()
        descr = np.lib.format.dtype_to_descr(self.dtype)
        header = {"descr": descr, "fortran_order": False, "shape": (self.length,)}
        np.lib.format.write_array_header_1_0(out, header)
        return out.getvalue()

    def _update_header(self) -> None:
        header = self._header()
        if len(header) != self._header_size:
            raise ValueError(f"{self.path}: {self.length} token ids overflow the .npy header")
        self._file.seek(0)
        self._file.write(header)
        self._file.seek(0, io.SEEK_END)
        self._file.flush()

    def append(self, ids: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(ids, dtype=self.dtype).data)
        self.length += len(ids)

    def view(self) -> np.ndarray:
        """The ids written so far, memory-mapped read-only (not read into memory)."""
        self._update_header()
        return map_tokens(self.path)

    def close(self) -> None:
        if not self._file.closed:
            self._update_header()
            self._file.close()

    def __enter__(self) -> TokenFile:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


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
