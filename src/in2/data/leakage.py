"""Word n-gram overlap with the probes: decontamination (synthesize) and the leakage check (gate).

The paper drops every training source that shares a 10-gram with an evaluation set. Both sides use
the same definition: lower-cased `\\w+` words, every run of n of them.

At paper scale that is ~1B words of segments and ~1B of documents against the probes, so the
check is vectorised (`ProbeNgrams.find`): a word can only be part of a probe n-gram if the probes
use it, so each text becomes the probe-vocabulary ids of its words (0 for any other word), every
window of n ids is hashed at once in numpy, and only a text with a hash among the probes' is
recounted exactly in Python. Words come from an ASCII view of every text (each non-ASCII byte a
space; one `bytes.translate` of an Arrow buffer): a run of n ASCII words that Python's `\\w+`
finds is found there too. Only a text that could hold a probe word with a non-ASCII letter (it
has a character that lower-cases to one), or a character that lower-cases to ASCII (U+0130,
U+212A), is split by Python's own regex as well. No hit is missed; none is made up.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import chain
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from in2.outputs import read_jsonl

_WORD = re.compile(r"\w+")
_LOWER_TO_ASCII = ("\u0130", "\u212a")
"""The only non-ASCII characters whose lower case holds an ASCII letter (U+0130 -> i + dot,
the Kelvin sign -> k)."""
_ASCII_WORDS = (
    bytes(c if chr(c).isalnum() or c == ord("_") else ord(" ") for c in range(128)).lower()
    + b" " * 128
)
"""bytes.translate table: ASCII lower-cased, every other byte (non-word or non-ASCII) a space."""
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd: the rolling hash mixes every id
CHUNK_TEXTS = 65_536
"""Texts per vectorised pass: ~8M words of segments, a few hundred MB of temporaries."""


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The lower-cased word n-grams of a text (the reference definition)."""
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def read_probe_texts(probes_dir: Path) -> list[str]:
    """The text of every probe context (`<task>/contexts.jsonl`), tasks in name order."""
    return [r["text"] for f in sorted(probes_dir.glob("*/contexts.jsonl")) for r in read_jsonl(f)]


@dataclass(frozen=True)
class ProbeNgrams:
    """The probe contexts' word n-grams, and a test of many texts against them at once."""

    n: int
    exact: frozenset[tuple[str, ...]]
    vocabulary: pa.Array
    """The probes' words; a word's id is its position + 1."""
    ids: dict[str, int]
    hashes: np.ndarray
    """Sorted rolling hashes of the probe n-grams."""
    python_pattern: str
    """RE2 class of the characters that send a text through Python's regex as well."""

    @classmethod
    def of(cls, probe_texts: Iterable[str], n: int) -> ProbeNgrams:
        words = [_WORD.findall(t.lower()) for t in probe_texts]
        ids: dict[str, int] = {}
        for w in (w for text in words for w in text):
            ids.setdefault(w, len(ids) + 1)
        flat = np.array([ids[w] for text in words for w in text], dtype=np.uint64)
        hashes, _ = _window_hashes(flat, _offsets(len(t) for t in words), n)
        letters = {ch for w in ids for ch in w if not ch.isascii()}
        chars = {*_LOWER_TO_ASCII, *letters}.union(*(_upper_forms().get(ch, ()) for ch in letters))
        return cls(
            n=n,
            exact=frozenset().union(*(ngrams(t, n) for t in probe_texts)),
            vocabulary=pa.array(list(ids), type=pa.string()),
            ids=ids,
            hashes=np.unique(hashes),
            python_pattern="[" + "".join(f"\\x{{{ord(c):x}}}" for c in sorted(chars)) + "]",
        )

    def hits(self, text: str) -> int:
        """Number of distinct probe n-grams in one text (exact)."""
        return len(self.shared(text))

    def shared(self, text: str) -> frozenset[tuple[str, ...]]:
        """The probe n-grams a text holds (exact)."""
        return frozenset(ngrams(text, self.n) & self.exact)

    def find(self, texts: Sequence[str] | pa.Array) -> dict[int, frozenset[tuple[str, ...]]]:
        """Positions of the texts that share an n-gram with the probes -> the n-grams shared.

        Texts without one (nearly all) cost a vectorised pass; a text whose hashes meet the
        probes' is recounted exactly, so a hash collision cannot make a false hit.
        """
        array = texts if isinstance(texts, pa.Array) else pa.array(texts, type=pa.string())
        found = {}
        for start in range(0, len(array), CHUNK_TEXTS):
            chunk = array.slice(start, CHUNK_TEXTS)
            for i in self._candidates(chunk):
                shared = self.shared(chunk[int(i)].as_py())
                if shared:
                    found[start + int(i)] = shared
        return found

    def _candidates(self, texts: pa.Array) -> np.ndarray:
        """Positions in `texts` with a window hash among the probes' (a superset of the hits)."""
        texts = pc.fill_null(texts, "")
        flat, lens = self._ascii_ids(texts)
        hashes, owner = _window_hashes(flat, _offsets(lens), self.n)
        found = owner[_isin_sorted(hashes, self.hashes)]
        special = pc.match_substring_regex(texts, self.python_pattern).to_numpy(
            zero_copy_only=False
        )
        if special.any():
            rows = np.flatnonzero(special)
            flat, lens = self._python_ids(texts.filter(pa.array(special)).to_pylist())
            hashes, owner = _window_hashes(flat, _offsets(lens), self.n)
            found = np.concatenate([found, rows[owner[_isin_sorted(hashes, self.hashes)]]])
        return np.unique(found)

    def _ascii_ids(self, texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Word ids of the ASCII view of texts: one translate of the data buffer (non-ASCII bytes
        become spaces), one split on spaces."""
        validity, offsets, data = texts.buffers()
        spaced = pa.py_buffer(data.to_pybytes().translate(_ASCII_WORDS) if data else b"")
        words = pc.split_pattern(
            pa.StringArray.from_buffers(len(texts), offsets, spaced, validity, 0, texts.offset),
            pattern=" ",
        )
        flat = pc.list_flatten(words)
        word = pc.binary_length(flat).to_numpy() > 0  # runs of spaces leave empty strings
        ids = pc.fill_null(pc.index_in(flat, value_set=self.vocabulary), -1).to_numpy() + 1
        parents = pc.list_parent_indices(words).to_numpy()[word]
        lens = np.bincount(parents, minlength=len(texts))
        return ids[word].astype(np.uint64), lens.astype(np.int64)

    def _python_ids(self, texts: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """Word ids of any texts: Python's own `\\w+` per text, then one vectorised lookup."""
        words = [_WORD.findall(t.lower()) if t else [] for t in texts]
        flat = pa.array(list(chain.from_iterable(words)), type=pa.string())
        ids = pc.fill_null(pc.index_in(flat, value_set=self.vocabulary), -1).to_numpy() + 1
        return ids.astype(np.uint64), np.array([len(ws) for ws in words], dtype=np.int64)


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


def _offsets(lengths: Iterable[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(list(lengths), dtype=np.int64)]).astype(np.int64)


def _window_hashes(flat: np.ndarray, offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hash of every window of n ids that lies inside one text and holds no 0 (a word the probes
    never use), and the text each window belongs to.

    h = ((id_0 * M + id_1) * M + ...) mod 2^64: numpy's uint64 arithmetic wraps, as it should.
    """
    count = len(flat) - n + 1
    if count <= 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    owner = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    zeros = np.concatenate([[0], np.cumsum(flat == 0)])
    keep = (zeros[n:] - zeros[:count] == 0) & (owner[:count] == owner[n - 1 :])
    starts = np.flatnonzero(keep)
    hashes = np.zeros(len(starts), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            hashes = hashes * _MULTIPLIER + flat[starts + k]
    return hashes, owner[starts]


def _isin_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    if len(sorted_set) == 0:
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[at] == values


def contaminated(pairs: Iterable[tuple[str, str]], probe_texts: list[str], n: int) -> set[str]:
    """Keys of the (key, text) pairs sharing any word n-gram with a probe context.

    Whole documents are checked (not segments), so an n-gram across a segment boundary counts.
    """
    pairs = list(pairs)
    found = ProbeNgrams.of(probe_texts, n).find([text for _, text in pairs])
    return {pairs[i][0] for i in found}
