"""Word n-gram overlap with the probes: decontamination (synthesize) and the leakage check (gate).

The paper drops every training source that shares a 10-gram with an evaluation set. Both sides use
the same definition: lower-cased `\\w+` words, every run of n of them.

At paper scale that is ~1B words of segments and ~1B of documents against the probes, so the
check is vectorised (`ProbeNgrams.find`): a word can only be part of a probe n-gram if the probes
use it, so each text becomes the probe-vocabulary ids of its words and every window of n ids is
hashed at once (in2.data.words); only a text with a hash among the probes' is recounted exactly
in Python, so neither a hash collision nor the ASCII view can make up a hit, and the views miss
none.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from in2.data.words import Vocabulary, isin_sorted, ngram_hashes, words
from in2.outputs import read_jsonl

CHUNK_TEXTS = 65_536
"""Texts per vectorised pass: ~8M words of segments, a few hundred MB of temporaries."""


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The lower-cased word n-grams of a text (the reference definition)."""
    ws = words(text)
    return {tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)}


def read_probe_texts(probes_dir: Path) -> list[str]:
    """The text of every probe context (`<task>/contexts.jsonl`), tasks in name order."""
    return [r["text"] for f in sorted(probes_dir.glob("*/contexts.jsonl")) for r in read_jsonl(f)]


@dataclass(frozen=True)
class ProbeNgrams:
    """The probe contexts' word n-grams, and a test of many texts against them at once."""

    n: int
    exact: frozenset[tuple[str, ...]]
    vocabulary: Vocabulary
    hashes: np.ndarray
    """Sorted rolling hashes of the probe n-grams."""

    @classmethod
    def of(cls, probe_texts: Iterable[str], n: int) -> ProbeNgrams:
        probe_texts = list(probe_texts)
        probe_words = [words(t) for t in probe_texts]
        vocabulary = Vocabulary.of(probe_words)
        return cls(
            n=n,
            exact=frozenset().union(*(ngrams(t, n) for t in probe_texts)),
            vocabulary=vocabulary,
            hashes=np.unique(ngram_hashes(vocabulary.encode(probe_words), n)[0]),
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
        found = []
        for view in self.vocabulary.views(texts):
            hashes, owner = ngram_hashes(view, self.n)
            found.append(view.rows[owner[isin_sorted(hashes, self.hashes)]])
        return np.unique(np.concatenate(found))


def contaminated(pairs: Iterable[tuple[str, str]], probe_texts: list[str], n: int) -> set[str]:
    """Keys of the (key, text) pairs sharing any word n-gram with a probe context.

    Whole documents are checked (not segments), so an n-gram across a segment boundary counts.
    """
    pairs = list(pairs)
    found = ProbeNgrams.of(probe_texts, n).find([text for _, text in pairs])
    return {pairs[i][0] for i in found}
