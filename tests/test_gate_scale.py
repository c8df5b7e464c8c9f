"""The gate at paper scale: the vectorised n-gram check, chunked segment text, and the
position test's resolving power — each held to its exact (slow) definition."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from in2.data.leakage import ProbeNgrams, contaminated, ngrams
from in2.data.segment_text import SegmentTexts, byte_table, text_chunks
from in2.data.segments import SegmentStore
from in2.gate.expectations import uniformity_tests
from in2.gate.power import position_power
from in2.gate.tables import Lists, gold_slot_table, relative_position
from in2.model import load_tokenizer

WORDS = ["the", "Quick", "brown", "fox", "café", "naïve", "ÉTÉ", "a_b", "12", "x"] + [
    f"w{i}" for i in range(200)
]
MARKS = ["", ",", ".", "!", " ", "—", "’s", "\n", "  ", "-"]


def prose(rng: random.Random, k: int) -> str:
    return " ".join(rng.choice(WORDS) + rng.choice(MARKS) for _ in range(k))


@pytest.mark.parametrize("n", [1, 3, 10])
def test_vectorised_ngram_check_equals_the_definition(n):
    """ASCII and non-ASCII texts, probe pieces planted at random: `find` returns exactly the
    texts (and n-grams) that the set-of-tuples definition finds."""
    rng = random.Random(n)
    probes = [prose(rng, 300) for _ in range(4)]
    texts = []
    for i in range(3000):
        text = prose(rng, rng.randint(0, 50))
        if i % 5 == 0:
            words = rng.choice(probes).split(" ")
            start = rng.randint(0, 280)
            text += " " + " ".join(words[start : start + rng.randint(n - 1, n + 4)])
        texts.append(text if i % 3 else text.encode("ascii", "ignore").decode())
    probe = ProbeNgrams.of(probes, n)
    expected = {i: frozenset(ngrams(t, n) & probe.exact) for i, t in enumerate(texts)}
    assert probe.find(texts) == {i: found for i, found in expected.items() if found}
    assert any(t.isascii() for t in texts) and not all(t.isascii() for t in texts)


def test_contamination_is_decided_per_document_key():
    docs = [("a", "One two three four five six seven eight nine ten"), ("b", "nothing here")]
    assert contaminated(docs, ["x one two three four five six seven eight nine ten y"], 10) == {"a"}
    assert contaminated([], ["one two"], 2) == set()


@pytest.fixture(scope="module")
def store(tiny_model_dir: Path) -> tuple[SegmentStore, object]:
    """Segments of random token ids (invalid UTF-8 included) and of real text."""
    tokenizer = load_tokenizer(tiny_model_dir)
    rng = np.random.default_rng(0)
    text = "Ünïcödé — “quotes”, emoji 🙂 and plain ASCII words. " * 40
    real = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = [rng.integers(0, len(tokenizer), 128) for _ in range(300)]
    pieces += [np.asarray(real[i : i + 37]) for i in range(0, len(real) - 37, 37)]
    tokens = np.concatenate(pieces).astype(np.uint16)
    lengths = np.array([len(p) for p in pieces])
    index = pd.DataFrame(
        {
            "seg_id": np.arange(len(pieces)),
            "doc_id": "d",
            "start": np.concatenate([[0], np.cumsum(lengths)[:-1]]),
            "n_tokens": lengths,
            "index_in_doc": 0,
        }
    )
    return SegmentStore(tokens, index, index["start"].to_numpy(), lengths), tokenizer


def test_chunked_segment_text_equals_the_tokenizer(store):
    segments, tokenizer = store
    assert byte_table(tokenizer) is not None  # SmolLM2: byte-level BPE, the fast path
    texts = SegmentTexts(segments, tokenizer)
    ids = np.arange(len(texts))[::-1]
    expected = tokenizer.batch_decode([segments.ids(int(s)).tolist() for s in ids])
    got = [t for _, chunk in text_chunks(texts, ids) for t in chunk.to_pylist()]
    assert got == expected
    assert texts[5] == expected[len(ids) - 1 - 5]
    with pytest.raises(KeyError):
        texts[len(texts)]


def test_list_columns_become_offsets_and_values():
    lists = Lists.of(pd.Series([np.array([3, 4]), np.array([], dtype=np.int64), [5]]))
    assert lists.values.tolist() == [3, 4, 5]
    assert lists.offsets.tolist() == [0, 2, 2, 3]
    assert lists.rows.tolist() == [0, 0, 2]


def test_gold_slot_table_rows_follow_the_definition():
    frame = pd.DataFrame(
        {
            "example_id": ["e0", "e1"],
            "kind": ["fine_grained", "integration"],
            "context_segments": [[7, 8, 9], [1, 2, 3, 4]],
            "gold_segments": [[8], [2, 4]],
            "gold_slots": [[1], [1, 9]],
        }
    )
    table = gold_slot_table(frame, frame.iloc[0:0])
    assert table["segment_at_slot"].tolist() == [8, 2, -1]
    assert table["u"].iloc[0] == relative_position("e0", 0, 1, 3)
    assert np.isnan(table["u"].iloc[2]) and table["gold_index"].tolist() == [0, 0, 1]


def test_power_statement_holds_by_simulation():
    """At the stated first-half share the gate's own tests reject >= 99% of the time (400
    simulated datasets of 1,000 positions); a share halfway to 50% is detected clearly less."""
    n, alpha, bins = 1000, 0.001, 10
    power = position_power(n, alpha, bins, min_n=5 * bins)
    rng = np.random.default_rng(0)

    def rejected(share: float) -> float:
        hits = 0
        for _ in range(400):
            early = rng.random(n) < share
            u = np.where(early, rng.random(n) / 2, 0.5 + rng.random(n) / 2)
            result = uniformity_tests(u, bins)
            hits += result["ks_p"] < alpha or result["chi2_p"] < alpha
        return hits / 400

    share = power.detected_first_half_share
    assert 0.55 < share < 0.65 and power.best_possible_share < share
    assert rejected(share) >= 0.97
    assert rejected((share + 0.5) / 2) < 0.6
    assert "1,000 gold positions" in power.sentence() and "99% power" in power.sentence()


def test_power_at_paper_scale_is_a_fraction_of_a_point_and_large_at_the_default():
    paper = position_power(1_700_000, 0.001, 10, min_n=50)
    default = position_power(260, 0.001, 10, min_n=50)
    assert paper.detected_first_half_share - 0.5 < 0.005
    assert default.detected_first_half_share > 0.6
    assert "a large bias" in default.sentence() and "a small bias" in paper.sentence()
    assert "does not run" in position_power(20, 0.001, 10, min_n=50).sentence()
