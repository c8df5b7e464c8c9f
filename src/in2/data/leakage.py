"""Word n-gram overlap with the probes: decontamination (synthesize) and the leakage check (gate).

The paper drops every training source that shares a 10-gram with an evaluation set. Both sides use
the same definition: lower-cased `\\w+` words, every run of n of them, compared by hash.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from in2.outputs import read_jsonl

_WORD = re.compile(r"\w+")


def ngrams(text: str, n: int) -> set[int]:
    """Hashes of the lower-cased word n-grams of a text."""
    words = _WORD.findall(text.lower())
    return {hash(tuple(words[i : i + n])) for i in range(len(words) - n + 1)}


def read_probe_texts(probes_dir: Path) -> list[str]:
    """The text of every probe context (`<task>/contexts.jsonl`), tasks in name order."""
    return [r["text"] for f in sorted(probes_dir.glob("*/contexts.jsonl")) for r in read_jsonl(f)]


def probe_ngrams(probe_texts: Iterable[str], n: int) -> set[int]:
    """Every n-gram of the probe contexts."""
    return set().union(*(ngrams(t, n) for t in probe_texts))


def contaminated(texts: Iterable[tuple[str, str]], probe_texts: list[str], n: int) -> set[str]:
    """Keys of the (key, text) pairs sharing any word n-gram with a probe context.

    Whole documents are checked (not segments), so an n-gram across a segment boundary counts.
    """
    probe = probe_ngrams(probe_texts, n)
    return {key for key, text in texts if not ngrams(text, n).isdisjoint(probe)}
