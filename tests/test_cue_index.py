"""The cue check's index (in2.synth.cues) against its definition: a segment quotes a cue when its
words hold the cue's (first MAX_CUE_WORDS) words as one run."""

from __future__ import annotations

import random

import numpy as np

from in2.data.words import words
from in2.synth.cues import MAX_CUE_WORDS, CueIndex

WORDS = ["the", "Quick", "brown", "fox", "café", "naïve", "ÉTÉ", "a_b", "12", "x"] + [
    f"w{i}" for i in range(60)
]
MARKS = ["", ",", ".", " ", "—", "’s", "\n", "-"]


def prose(rng: random.Random, k: int) -> str:
    return " ".join(rng.choice(WORDS) + rng.choice(MARKS) for _ in range(k))


def quotes(text: str, cue: str) -> bool:
    """The definition, by brute force."""
    run, ws = words(cue)[:MAX_CUE_WORDS], words(text)
    return bool(run) and any(ws[i : i + len(run)] == run for i in range(len(ws) - len(run) + 1))


def test_index_finds_exactly_the_quotes_of_the_definition():
    rng = random.Random(0)
    texts = [prose(rng, rng.randint(0, 40)) for _ in range(800)]
    texts = [t if i % 2 else t.encode("ascii", "ignore").decode() for i, t in enumerate(texts)]
    cues = []
    for _ in range(150):  # each row: cues quoted from some text, of 1 to 12 words, or none
        row = []
        for _ in range(rng.randint(0, 3)):
            ws = rng.choice(texts).split(" ")
            start = rng.randint(0, max(len(ws) - 1, 0))
            row.append(" ".join(ws[start : start + rng.randint(1, 12)]))
        cues.append(row)
    cues.append(["—", ""])  # no word at all: cannot be quoted
    seg_ids = np.arange(len(texts)) + 1000  # ids are not positions
    index = CueIndex.build(cues, [(seg_ids[:300], texts[:300]), (seg_ids[300:], texts[300:])])
    rows = index.row_cues(cues)
    assert rows.counts[-1] == 0
    row_of = np.repeat(np.arange(len(cues)), rows.counts)
    flat = [c for row in cues for c in row if words(c)]
    checked = found = 0
    for t, text in enumerate(texts):
        got = index.quotes(np.full(len(row_of), seg_ids[t]), rows.hashes)
        want = np.array([quotes(text, c) for c in flat])
        assert (got >= want).all()  # no quote is missed
        if text.isascii():
            assert (got == want).all()  # and none made up where the ASCII view is the text
        checked += len(want)
        found += int(want.sum())
    assert 0 < found < checked  # some quotes, not all


def test_a_long_cue_is_looked_for_by_its_first_words():
    head = " ".join(f"w{i}" for i in range(MAX_CUE_WORDS))
    cue = head + " and then some more"
    index = CueIndex.build([[cue]], [(np.array([0, 1]), [f"x {head} y", "w0 w1 w2"])])
    hashes = index.row_cues([[cue]]).hashes
    assert index.quotes(np.array([0, 1]), np.repeat(hashes, 2)).tolist() == [True, False]


def test_row_cues_take_gathers_in_row_order():
    index = CueIndex.build([["a b"], [], ["c", "d e"]], [(np.array([0]), ["a b c"])])
    rows = index.row_cues([["a b"], [], ["c", "d e"]])
    taken = rows.take(np.array([2, 0, 1, 2]))
    assert taken.counts.tolist() == [2, 1, 0, 2]
    assert taken.hashes.tolist() == [*rows.hashes[1:], rows.hashes[0], *rows.hashes[1:]]
    assert index.quotes(np.zeros(3, np.int64), rows.hashes).tolist() == [True, True, False]
