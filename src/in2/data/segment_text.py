"""Segment text for checks over the whole corpus: decoded in chunks, fast, never all held.

The gate and decontamination read every segment as text. The tokenizer's own decoder does
~1M tokens/s here, ~20 min for the paper's 1.3B tokens, and a dict of 10M strings is GBs.
For a byte-level BPE decoder (GPT-2, SmolLM2, Llama 3, Qwen) decoding is a lookup: each token
stands for fixed bytes, so a chunk of segments is one numpy gather from a table of every
token's bytes, then UTF-8 with replacement, as the tokenizer does. The table is checked against
the tokenizer on sample segments when it is built; any other decoder (or a mismatch) uses the
tokenizer itself, in batches.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from transformers import PreTrainedTokenizerBase

from in2.data.segments import SegmentStore

log = logging.getLogger(__name__)

CHUNK_SEGMENTS = 32_768
"""Segments per decoded chunk: ~4M tokens, ~20 MB of text."""
SAMPLE_SEGMENTS = 256
"""Segments decoded both ways to check the byte table against the tokenizer."""


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted (character -> byte)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def byte_table(tokenizer: PreTrainedTokenizerBase) -> pa.BinaryArray | None:
    """Every token id's bytes, for a byte-level BPE decoder; None for any other decoder."""
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    if type(decoder).__name__ != "ByteLevel":
        return None
    alphabet = _byte_level_alphabet()
    special = {t.content for t in tokenizer.added_tokens_decoder.values()}
    pieces = []
    for token in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))):
        if token is None:
            return None
        if token in special or any(ch not in alphabet for ch in token):
            pieces.append(token.encode())
        else:
            pieces.append(bytes(alphabet[ch] for ch in token))
    return pa.array(pieces, type=pa.binary())


class SegmentTexts(Mapping[int, str]):
    """The text of every segment of a store, by id; `chunks` decodes many at once.

    Nothing is cached: at paper scale the decoded corpus does not belong in memory.
    """

    def __init__(self, store: SegmentStore, tokenizer: PreTrainedTokenizerBase) -> None:
        self.store = store
        self.tokenizer = tokenizer

    def __getitem__(self, seg_id: int) -> str:
        if not 0 <= seg_id < len(self):
            raise KeyError(seg_id)
        return self.tokenizer.decode(self.store.ids(seg_id).tolist())

    def __len__(self) -> int:
        return len(self.store.index)

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self)))

    def chunks(
        self, seg_ids: np.ndarray, size: int = CHUNK_SEGMENTS
    ) -> Iterator[tuple[np.ndarray, pa.StringArray]]:
        """(ids, their texts) for `seg_ids` (known ids), `size` at a time."""
        seg_ids = np.asarray(seg_ids, dtype=np.int64)
        for start in range(0, len(seg_ids), size):
            ids = seg_ids[start : start + size]
            yield ids, self._decode(ids)

    @cached_property
    def _table(self) -> pa.BinaryArray | None:
        """The byte table, if it decodes sample segments exactly as the tokenizer does."""
        table = byte_table(self.tokenizer)
        if table is None or len(self) == 0:
            return table
        sample = np.unique(np.linspace(0, len(self) - 1, SAMPLE_SEGMENTS).astype(np.int64))
        if _gather(self.store, table, sample).to_pylist() != self._tokenizer_decode(sample):
            log.warning("segment text: the byte table disagrees with the tokenizer; using it")
            return None
        return table

    def _decode(self, ids: np.ndarray) -> pa.StringArray:
        if self._table is None:
            return pa.array(self._tokenizer_decode(ids), type=pa.string())
        return _gather(self.store, self._table, ids)

    def _tokenizer_decode(self, ids: np.ndarray) -> list[str]:
        return self.tokenizer.batch_decode([self.store.ids(int(s)).tolist() for s in ids])


def _gather(store: SegmentStore, table: pa.BinaryArray, ids: np.ndarray) -> pa.StringArray:
    """Texts of segments `ids`: their tokens' bytes, concatenated, as UTF-8 (invalid -> U+FFFD).

    One Arrow `take` of the token table lays every token's bytes end to end; a segment is then
    a run of tokens, so the segments' texts share that buffer with offsets at segment ends.
    """
    tokens = table.take(pa.array(store.context_ids(ids).astype(np.int64)))
    _, token_offsets, data = tokens.buffers()
    token_offsets = np.frombuffer(token_offsets, dtype=np.int32)[: len(tokens) + 1]
    offsets = token_offsets[np.concatenate([[0], np.cumsum(store.lengths[ids])])]
    strings = pa.Array.from_buffers(pa.string(), len(ids), [None, pa.py_buffer(offsets), data])
    try:
        strings.validate(full=True)  # a multi-byte character cut by a segment boundary is not
        return strings
    except pa.ArrowInvalid:
        pass
    raw = strings.view(pa.binary())
    fixed = {}
    non_ascii = ~pc.string_is_ascii(strings).to_numpy(zero_copy_only=False)  # a byte test
    for i in np.flatnonzero(non_ascii).tolist():
        piece = raw[i].as_py()
        try:
            piece.decode("utf-8")
        except UnicodeDecodeError:
            fixed[i] = piece.decode("utf-8", "replace")
    mask = np.zeros(len(ids), dtype=bool)
    mask[list(fixed)] = True
    return pc.replace_with_mask(
        strings, pa.array(mask), pa.array(list(fixed.values()), pa.string())
    )


def text_chunks(
    texts: Mapping[int, str], seg_ids: np.ndarray
) -> Iterator[tuple[np.ndarray, pa.StringArray | list[str]]]:
    """(ids, texts) of segments in chunks: decoded at once from a `SegmentTexts`, looked up in
    any other mapping (an id it lacks reads as empty: the segment checks report unknown ids)."""
    if isinstance(texts, SegmentTexts):
        yield from texts.chunks(seg_ids[(seg_ids >= 0) & (seg_ids < len(texts))])
        return
    for start in range(0, len(seg_ids), CHUNK_SEGMENTS):
        ids = seg_ids[start : start + CHUNK_SEGMENTS]
        yield ids, [texts.get(int(s), "") for s in ids]
