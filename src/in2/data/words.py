"""Words of many texts at once, as ids of a fixed vocabulary, and hashes of runs of them.

Decontamination, the gate's leakage check and the cue check of fillers all ask the same question
of ~1B words at paper scale: does this text hold that run of words? The words are lower-cased
`\\w+` runs (`WORD`). Only the vocabulary's words matter, so each text becomes the ids of its
words (0 for any other word) and every window of n ids is hashed at once in numpy
(`ngram_hashes`, `windows`).

The ids come from an ASCII view of every text (each non-ASCII byte a space; one
`bytes.translate` of an Arrow buffer): a run of ASCII words that Python's `\\w+` finds is found
there too. Only a text that could hold a vocabulary word with a non-ASCII letter (it has a
character that lower-cases to one), or a character that lower-cases to ASCII (U+0130, U+212A), is
split by Python's own regex as well (`Vocabulary.views`), so no run is missed. The ASCII view
can also see a run that is not there (a non-ASCII letter splits "naïve" into "na" and "ve"):
callers that must be exact recount what it finds.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from itertools import chain

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

WORD = re.compile(r"\w+")
_LOWER_TO_ASCII = ("\u0130", "\u212a")
"""The only non-ASCII characters whose lower case holds an ASCII letter (U+0130 -> i + dot,
the Kelvin sign -> k)."""
_ASCII_WORDS = (
    bytes(c if chr(c).isalnum() or c == ord("_") else ord(" ") for c in range(128)).lower()
    + b" " * 128
)
"""bytes.translate table: ASCII lower-cased, every other byte (non-word or non-ASCII) a space."""
MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd: the rolling hash mixes every id


def words(text: str) -> list[str]:
    """The lower-cased words of a text (the reference definition)."""
    return WORD.findall(text.lower())


@dataclass(frozen=True)
class View:
    """Word ids of some texts, end to end: text `rows[i]` has ids[offsets[i]:offsets[i + 1]]."""

    ids: np.ndarray
    offsets: np.ndarray
    rows: np.ndarray
    """Position of each text of the view among the texts asked about."""


@dataclass(frozen=True)
class Vocabulary:
    """A fixed set of words; a word's id is its position + 1 (0: not in the vocabulary)."""

    words: pa.Array
    ids: dict[str, int]
    python_pattern: str
    """RE2 class of the characters that send a text through Python's regex as well."""

    @classmethod
    def of(cls, texts_words: Iterable[Iterable[str]]) -> Vocabulary:
        ids: dict[str, int] = {}
        for w in chain.from_iterable(texts_words):
            ids.setdefault(w, len(ids) + 1)
        letters = {ch for w in ids for ch in w if not ch.isascii()}
        chars = {*_LOWER_TO_ASCII, *letters}.union(*(_upper_forms().get(ch, ()) for ch in letters))
        return cls(
            words=pa.array(list(ids), type=pa.string()),
            ids=ids,
            python_pattern="[" + "".join(f"\\x{{{ord(c):x}}}" for c in sorted(chars)) + "]",
        )

    def encode(self, texts_words: Iterable[list[str]]) -> View:
        """Ids of texts already split into words (a probe, a cue)."""
        lists = list(texts_words)
        flat = np.array([self.ids.get(w, 0) for ws in lists for w in ws], dtype=np.uint64)
        return View(flat, offsets(len(ws) for ws in lists), np.arange(len(lists)))

    def views(self, texts: pa.Array) -> Iterator[View]:
        """The ASCII view of every text, then Python's view of the texts that need it."""
        texts = pc.fill_null(texts, "")
        if pa.types.is_large_string(texts.type):  # the ASCII view reads 32-bit offsets
            texts = texts.cast(pa.string())
        yield self._ascii(texts)
        special = pc.match_substring_regex(texts, self.python_pattern).to_numpy(
            zero_copy_only=False
        )
        if special.any():
            view = self.encode(words(t) for t in texts.filter(pa.array(special)).to_pylist())
            yield View(view.ids, view.offsets, np.flatnonzero(special))

    def _ascii(self, texts: pa.Array) -> View:
        """One translate of the data buffer (non-ASCII bytes become spaces), one split on
        spaces, one vectorised lookup."""
        validity, bounds, data = texts.buffers()
        spaced = pa.py_buffer(data.to_pybytes().translate(_ASCII_WORDS) if data else b"")
        split = pc.split_pattern(
            pa.StringArray.from_buffers(len(texts), bounds, spaced, validity, 0, texts.offset),
            pattern=" ",
        )
        flat = pc.list_flatten(split)
        word = pc.binary_length(flat).to_numpy() > 0  # runs of spaces leave empty strings
        ids = pc.fill_null(pc.index_in(flat, value_set=self.words), -1).to_numpy() + 1
        lens = np.bincount(pc.list_parent_indices(split).to_numpy()[word], minlength=len(texts))
        return View(ids[word].astype(np.uint64), offsets(lens), np.arange(len(texts)))


def ngram_hashes(view: View, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The hash of every window of n ids that lies inside one text and holds no 0 (a word
    outside the vocabulary), and the text (view row) it is in.

    h(w_0 .. w_n-1) = ((w_0 * M + w_1) * M + ...) mod 2^64: numpy's uint64 arithmetic wraps, as
    it should. Only the valid windows are hashed: for a small vocabulary (the probes') they are
    few.
    """
    starts, owner = _valid_windows(view, n)
    hashes = np.zeros(len(starts), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            hashes = hashes * MULTIPLIER + view.ids[starts + k]
    return hashes, owner


def windows(view: View, max_n: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """`(n, *ngram_hashes(view, n))` for n = 1 .. max_n, each grown from the last by one word:
    all lengths cost max_n passes (for a large vocabulary, where nearly every window is valid)."""
    hashes = view.ids
    for n in range(1, max_n + 1):
        count = len(view.ids) - n + 1
        if count <= 0:
            return
        if n > 1:
            with np.errstate(over="ignore"):
                hashes = hashes[:count] * MULTIPLIER + view.ids[n - 1 :]
        starts, owner = _valid_windows(view, n)
        yield n, hashes[starts], owner


def _valid_windows(view: View, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Start of every window of n ids inside one text with no 0 among them, and its text."""
    count = len(view.ids) - n + 1
    if count <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    owner = np.repeat(np.arange(len(view.offsets) - 1), np.diff(view.offsets))
    zeros = np.concatenate([[0], np.cumsum(view.ids == 0)])
    keep = (zeros[n:] - zeros[:count] == 0) & (owner[:count] == owner[n - 1 :])
    starts = np.flatnonzero(keep)
    return starts, owner[starts]


def isin_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """`np.isin` against a sorted array: one binary search per value."""
    if len(sorted_set) == 0:
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[at] == values


def offsets(lengths: Iterable[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(list(lengths), dtype=np.int64)]).astype(np.int64)


@cache
def _upper_forms() -> dict[str, set[str]]:
    """Non-ASCII character -> the other characters whose lower case contains it (É -> é)."""
    forms: dict[str, set[str]] = {}
    for code in range(0x80, sys.maxunicode + 1):
        char = chr(code)
        lower = char.lower()
        if lower != char:
            for low in lower:
                if not low.isascii():
                    forms.setdefault(low, set()).add(char)
    return forms
