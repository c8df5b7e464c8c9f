"""Segmenting, QA grounding, mix counts and slot sampling — the data side of IN2."""

import random

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from in2.params import QAParams, SegmentParams, SynthesizeParams
from in2.qa import find_cue, generate_template_qa
from in2.segments import SegmentStore, cut, segment_documents
from in2.synthesis import (
    ContextBuilder,
    SynthesisError,
    build_split,
    contaminated_segments,
    filler_count_range,
    mix_counts,
)


def test_cut_full_segments_and_tail_policy():
    p = SegmentParams(length=128, min_tokens=32)
    assert cut(300, p) == [(0, 128), (128, 128), (256, 44)]
    assert cut(270, p) == [(0, 128), (128, 128)]  # 14-token tail dropped
    assert cut(20, p) == []
    assert cut(32, p) == [(0, 32)]


def test_segment_documents_round_trip(tiny_model_dir, tmp_path):
    from in2.model import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    text = " ".join(f"word{i}" for i in range(400))
    docs = pd.DataFrame({"doc_id": ["a", "b"], "text": [text, "too short"]})
    p = SegmentParams(length=64, min_tokens=8)
    tokens, index = segment_documents(docs, tok, p)
    full = tok(text, add_special_tokens=False)["input_ids"]
    assert tokens.dtype == np.uint32
    assert index["seg_id"].tolist() == list(range(len(index)))
    assert set(index["doc_id"]) == {"a"}  # "too short" has fewer than min_tokens tokens
    assert (index["n_tokens"].iloc[:-1] == 64).all()
    np.save(tmp_path / "tokens.npy", tokens)
    index.to_parquet(tmp_path / "segments.parquet")
    store = SegmentStore.open(tmp_path)
    kept = sum(index["n_tokens"])
    assert store.context_ids(index["seg_id"].tolist()).tolist() == full[:kept]
    assert store.ids(1).tolist() == full[64:128]


def test_segment_store_missing_files_say_which_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `dvc repro segment`"):
        SegmentStore.open(tmp_path)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (100, {"fine_grained": 63, "integration": 17, "short": 9, "general": 11}),
        # 60.48 / 16.32 / 8.64 / 10.56: floors sum to 94; the two largest remainders win
        (96, {"fine_grained": 60, "integration": 16, "short": 9, "general": 11}),
        (7, {"fine_grained": 4, "integration": 1, "short": 1, "general": 1}),
        (0, {"fine_grained": 0, "integration": 0, "short": 0, "general": 0}),
    ],
)
def test_mix_counts_largest_remainder(n, expected):
    mix = {"fine_grained": 0.63, "integration": 0.17, "short": 0.09, "general": 0.11}
    assert mix_counts(n, mix) == expected
    assert sum(mix_counts(n, mix).values()) == n


SENTENCE = "The quick brown fox jumps over the lazy dog near the old river bank today."


def test_find_cue_answer_follows_cue_in_text():
    text = f"start {SENTENCE} Another sentence follows here with more words in it. end"
    for seed in range(20):
        cue = find_cue(text, QAParams(cue_words=4, answer_words=3), random.Random(seed))
        assert cue is not None
        assert f"{cue.cue} {cue.answer}" in text
        assert text.count(cue.cue) == 1
        assert 2 <= cue.n_answer_words <= 3


def test_find_cue_rejects_repeated_text():
    text = "x " + " ".join(["a b c d e f g h."] * 4) + " y"
    assert find_cue(text, QAParams(cue_words=4, answer_words=3), random.Random(0)) is None


def _segments(n_docs=30, per_doc=3):
    rows, sid = [], 0
    for d in range(n_docs):
        for j in range(per_doc):
            words = " ".join(f"d{d}s{j}w{k}" for k in range(40))
            rows.append(
                {
                    "seg_id": sid,
                    "doc_id": f"doc{d}",
                    "index_in_doc": j,
                    "text": f"{words}.",
                    "n_tokens": 128,
                    "start": sid * 128,
                }
            )
            sid += 1
    return pd.DataFrame(rows)


def test_template_qa_is_grounded_and_deterministic():
    segs = _segments()
    docs = pd.DataFrame(
        {"doc_id": ["doc0", "doc1"], "title": ["A", "B"], "description": ["first thing", ""]}
    )
    qa, st = generate_template_qa(segs, docs, QAParams(), seed=1)
    qa2, _ = generate_template_qa(segs, docs, QAParams(), seed=1)
    pd.testing.assert_frame_equal(qa, qa2)
    text = dict(zip(segs["seg_id"], segs["text"], strict=True))
    for row in qa.itertuples():
        if row.kind == "general":
            assert row.answer == "first thing" and row.gold_segments == []
            continue
        gold = " ".join(text[s] for s in row.gold_segments)
        assert all(kw in gold for kw in row.keywords)
        assert {segs.doc_id[s] for s in row.gold_segments} == {row.source_doc}
    assert st.accepted["integration"] == 30
    assert st.rejected["general:no_description"] == 1
    integ = qa[qa.kind == "integration"]
    assert (integ.gold_segments.map(len) == 2).all()


def _builder(params, seed=0, n_docs=60):
    segs = _segments(n_docs)
    index = segs[["seg_id", "doc_id", "start", "n_tokens", "index_in_doc"]]
    text = dict(zip(segs["seg_id"], segs["text"], strict=True))
    return ContextBuilder(
        index, text, segs["seg_id"].to_numpy(), params, 128, np.random.default_rng(seed)
    ), segs


def test_filler_count_range():
    assert filler_count_range(128, 128, 256, 1024) == (1, 7)
    assert filler_count_range(300, 128, 256, 1024) == (0, 5)


def test_long_context_gold_at_recorded_slot_and_lengths_in_range():
    params = SynthesizeParams()
    builder, segs = _builder(params)
    for i in range(200):
        gold = [3, 4]
        ctx, slots = builder.long_context(i, gold, "doc1", ["d1s0w1 d1s0w2"])
        assert [ctx[s] for s in slots] == gold
        assert 256 <= 128 * len(ctx) <= 1024
        assert len(set(ctx)) == len(ctx)
        fillers = [s for s in ctx if s not in gold]
        assert all(segs.doc_id[s] != "doc1" for s in fillers)


def test_gold_slots_are_uniform():
    """Over many draws, the relative slot of a single gold segment passes a KS test."""
    params = SynthesizeParams()
    builder, _ = _builder(params, seed=3)
    rng = np.random.default_rng(7)
    u = []
    for i in range(2000):
        ctx, (slot,) = builder.long_context(i, [0], "doc0", [])
        u.append((slot + rng.random()) / len(ctx))
    assert stats.kstest(u, "uniform").pvalue > 0.001
    # and a biased placement would be caught by the same test
    assert stats.kstest(np.array(u) * 0.6, "uniform").pvalue < 1e-6


def test_fillers_never_quote_the_cue():
    params = SynthesizeParams()
    builder, _ = _builder(params)
    ctx, _ = builder.long_context(0, [0], "doc0", ["d5s1w3"])  # a word of doc5 segment 1
    assert 16 not in ctx  # seg 16 = doc5 segment 1 quotes the cue


def test_build_split_mix_and_shortage_message():
    params = SynthesizeParams(n_train=20)
    builder, segs = _builder(params)
    qa, _ = generate_template_qa(
        segs,
        pd.DataFrame(
            {
                "doc_id": [f"doc{i}" for i in range(60)],
                "title": ["t"] * 60,
                "description": ["d"] * 60,
            }
        ),
        QAParams(),
        seed=0,
    )
    frame = build_split("train", 20, qa, builder, params)
    assert frame["kind"].value_counts().to_dict() == {
        k: v for k, v in mix_counts(20, params.mix).items() if v
    }
    assert frame["example_id"].is_unique
    with pytest.raises(
        SynthesisError,
        match="need 720 fine_grained QA pairs \\(for fine_grained and short\\) but only 180",
    ):
        build_split("train", 1000, qa, builder, params)


def test_decontamination_drops_overlapping_segments():
    text = {
        0: "one two three four five six seven eight nine ten eleven",
        1: "completely different words that never appear in any probe at all",
    }
    probe = ["prefix one two three four five six seven eight nine ten suffix"]
    assert contaminated_segments(text, probe, 10) == {0}
    assert contaminated_segments(text, probe, 11) == set()
