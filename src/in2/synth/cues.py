"""Which segments quote which cues: the cue check of fillers, from one streaming pass.

A filler must not quote a cue of its question (a template cue, an LLM's evidence quote: the words
the question points at), or the question would have two places to look in one context. "Quote"
is decontamination's word definition (in2.data.words): the filler's lower-cased `\\w+` words hold
the cue's words as one run. A cue longer than MAX_CUE_WORDS words is looked for by its first
MAX_CUE_WORDS; a filler that holds them is rejected, so the check errs on the safe side.

At paper scale the check runs ~240M times (1.49M long examples x ~160 fillers, redraws included)
over 10M segments, ~6 GB of text: too much text to hold and too many lookups for Python. So the
segments' text is read once, in chunks (in2.data.segment_text), every window of up to
MAX_CUE_WORDS words is hashed in numpy, and each window whose hash is a cue's becomes a
(segment, cue) key in one sorted array (`CueIndex.keys`). A check is then a binary search. The
keys are few: a segment holds its own cues and little else.

The hashes can only err towards a rejection: the ASCII view may see a run that a non-ASCII
letter breaks ("naïve" -> "na ve"), and two different runs may share a hash (2^-64 a pair). Such
a filler is redrawn, which costs a redraw. No quote is missed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from in2.data.words import MULTIPLIER, Vocabulary, isin_sorted, windows, words

MAX_CUE_WORDS = 8
"""Words of a cue that are looked for (template cues are `qa.cue_words` = 6 by default)."""
_BUCKET_BITS = 27
"""A window's hash is first looked up in a table of 2^27 buckets (128 MB of bools): ~2% of the
non-cue windows get through to the binary search, so each chunk costs a gather, not a search."""


@dataclass(frozen=True)
class RowCues:
    """The cue hashes of each QA row: row i's are hashes[offsets[i]:offsets[i + 1]]."""

    offsets: np.ndarray
    hashes: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, rows: np.ndarray) -> RowCues:
        """The cues of `rows`, in that order."""
        counts = self.counts[rows]
        offsets = np.concatenate([[0], np.cumsum(counts)])
        within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], counts)
        return RowCues(offsets, self.hashes[np.repeat(self.offsets[:-1][rows], counts) + within])


@dataclass(frozen=True)
class CueIndex:
    """Every (segment, cue) pair where the segment quotes the cue, as sorted 64-bit keys."""

    vocabulary: Vocabulary
    keys: np.ndarray

    @classmethod
    def build(
        cls,
        cues: Sequence[Sequence[str]],
        chunks: Iterable[tuple[np.ndarray, Sequence[str] | pa.Array]],
    ) -> CueIndex:
        """The index of the segments in `chunks` ((ids, texts) pairs) against every row's cues."""
        cue_words = _cue_words(cues)
        vocabulary = Vocabulary.of(cue_words)
        rows = _row_cues(vocabulary, cues, cue_words)
        wanted = np.unique(rows.hashes)
        buckets = np.zeros(1 << _BUCKET_BITS, dtype=bool)
        buckets[wanted >> np.uint64(64 - _BUCKET_BITS)] = True
        max_n = max(map(len, cue_words), default=0)
        found = [np.zeros(0, np.uint64)]
        for seg_ids, texts in chunks:
            array = texts if isinstance(texts, pa.Array) else pa.array(list(texts), pa.string())
            for view in vocabulary.views(array):
                for _, window, owner in windows(view, max_n):
                    near = buckets[window >> np.uint64(64 - _BUCKET_BITS)]
                    window, owner = window[near], owner[near]
                    hit = isin_sorted(window, wanted)
                    segments = np.asarray(seg_ids, dtype=np.int64)[view.rows[owner[hit]]]
                    found.append(_key(segments, window[hit]))
        return cls(vocabulary, np.unique(np.concatenate(found)))

    def row_cues(self, cues: Sequence[Sequence[str]]) -> RowCues:
        """The cue hashes of each row (a cue without a word is left out: it cannot be quoted)."""
        return _row_cues(self.vocabulary, cues, _cue_words(cues))

    def quotes(self, segments: np.ndarray, cue_hashes: np.ndarray) -> np.ndarray:
        """Element-wise: does segment i quote the cue of hash i?"""
        return isin_sorted(_key(segments, cue_hashes), self.keys)


def _key(segments: np.ndarray, cue_hashes: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return cue_hashes * MULTIPLIER + segments.astype(np.uint64)


def _cue_words(cues: Sequence[Sequence[str]]) -> list[list[str]]:
    """The words looked for of every cue, row after row."""
    return [words(cue)[:MAX_CUE_WORDS] for row in cues for cue in row]


def _row_cues(
    vocabulary: Vocabulary, cues: Sequence[Sequence[str]], cue_words: list[list[str]]
) -> RowCues:
    """Each cue's hash over its words, grouped by row."""
    lengths = np.array([len(w) for w in cue_words], dtype=np.int64)
    hashes = np.zeros(len(lengths), dtype=np.uint64)
    view = vocabulary.encode(cue_words)
    for n, window, owner in windows(view, int(lengths.max()) if len(lengths) else 0):
        whole = lengths[owner] == n  # the one window of a cue's length is the whole cue
        hashes[owner[whole]] = window[whole]
    row_of_cue = np.repeat(np.arange(len(cues)), [len(row) for row in cues])
    usable = lengths > 0
    counts = np.bincount(row_of_cue[usable], minlength=len(cues))
    return RowCues(np.concatenate([[0], np.cumsum(counts)]), hashes[usable])
