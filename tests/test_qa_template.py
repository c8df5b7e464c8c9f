"""The QA interface (candidates, registry, rows) and the offline `template` generator."""

import logging
import random

import pandas as pd
import pytest

from in2.params import QAParams
from in2.qa.pairs import COLUMNS, QAStats, select_candidates
from in2.qa.template import find_cue, generate_template_qa, redistribute
from in2.registry import QA_GENERATORS

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


def segments_frame(n_docs=30, per_doc=3):
    """Segments whose words are unique, so every one has a unique cue."""
    rows, sid = [], 0
    for d in range(n_docs):
        for j in range(per_doc):
            words = " ".join(f"d{d}s{j}w{k}" for k in range(40))
            rows.append(
                {"seg_id": sid, "doc_id": f"doc{d}", "index_in_doc": j, "text": f"{words}."}
            )
            sid += 1
    return pd.DataFrame(rows)


def test_template_qa_is_grounded_and_deterministic():
    segs = segments_frame()
    segs.loc[len(segs)] = {"seg_id": 90, "doc_id": "lonely", "index_in_doc": 0, "text": "a b."}
    qa, st = generate_template_qa(segs, QAParams(), seed=1)
    qa2, _ = generate_template_qa(segs.sample(frac=1, random_state=0), QAParams(), seed=1)
    pd.testing.assert_frame_equal(qa, qa2)  # the row order of the input does not matter
    assert list(qa.columns) == COLUMNS
    assert set(qa.kind) == {"fine_grained", "integration"}  # general data comes from elsewhere
    text = dict(zip(segs["seg_id"], segs["text"], strict=True))
    doc = dict(zip(segs["seg_id"], segs["doc_id"], strict=True))
    for row in qa.itertuples():
        gold = [text[s] for s in row.gold_segments]
        # every answer is recoverable from the gold text only: cue + answer quote it verbatim
        assert len(row.keywords) == len(gold)
        for i, (kw, g) in enumerate(zip(row.keywords, gold, strict=True), 1):
            assert g.count(kw) == 1
            part = row.answer
            if row.kind == "integration":  # "1. <answer 1> 2. <answer 2>": one part per segment
                part = row.answer.split(f"{i}. ", 1)[1].split(f" {i + 1}. ", 1)[0]
            assert f"{kw} {part}" in g
        assert {doc[s] for s in row.gold_segments} == {row.source_doc}
    assert st.accepted == {
        "fine_grained": 91 - 1,
        "fine_grained:continuation": 91 - 1,  # the only task (qa.tasks default)
        "integration": 30,
    }
    assert st.rejected == {
        "fine_grained:no_unique_cue": 1,  # "a b." is too short
        "integration:too_few_segments": 1,  # the lonely document
    }
    assert st.metrics() == {"accepted": st.accepted, "rejected": st.rejected}  # no api usage
    integ = qa[qa.kind == "integration"]
    assert (integ.gold_segments.map(len) == 2).all()
    assert qa.qa_id.is_unique


def test_integration_needs_every_segment():
    """A document whose second segment has no usable cue gives no integration pair."""
    segs = segments_frame(n_docs=1, per_doc=2)
    segs.loc[1, "text"] = "x " + " ".join(["a b c d e f g h."] * 4) + " y"
    qa, st = generate_template_qa(segs, QAParams(cue_words=4, answer_words=3), seed=0)
    assert qa.kind.tolist() == ["fine_grained"]
    assert st.rejected == {"fine_grained:no_unique_cue": 1, "integration:no_unique_cue": 1}


def test_candidates_are_seeded_capped_and_from_one_document():
    segs = segments_frame(n_docs=20, per_doc=4)
    params = QAParams(max_fine_grained=10, max_integration=5, integration_segments=3)
    a = select_candidates(segs, params, 7, QAStats())
    b = select_candidates(segs, params, 7, QAStats())
    c = select_candidates(segs, params, 8, QAStats())
    assert a == b and a != c
    assert len(a.fine_grained) == 10 and a.fine_grained == sorted(a.fine_grained)
    assert len(a.integration) == 5
    doc = dict(zip(segs["seg_id"], segs["doc_id"], strict=True))
    for doc_id, group in a.integration:
        assert len(group) == 3 and group == sorted(group)  # document order
        assert {doc[s] for s in group} == {doc_id}
    uncapped = select_candidates(segs, QAParams(), 7, QAStats())
    assert len(uncapped.fine_grained) == 80 and len(uncapped.integration) == 20


def test_registry_resolves_every_generator():
    assert set(QA_GENERATORS) == {"template", "openai"}
    assert QA_GENERATORS["template"] is generate_template_qa
    assert callable(QA_GENERATORS["openai"])
    with pytest.raises(KeyError, match="unknown QA generator 'nope'"):
        QA_GENERATORS["nope"]


def prose_frame(n_docs=30, per_doc=3):
    """Prose segments of four 14-word sentences of unique words, and no record unit: what a
    corpus without titles gives."""
    rows, sid = [], 0
    for d in range(n_docs):
        for j in range(per_doc):
            text = " ".join(
                f"S{i} " + " ".join(f"d{d}s{j}i{i}w{k}" for k in range(13)) + "." for i in range(4)
            )
            rows.append(
                {
                    "seg_id": sid,
                    "doc_id": f"doc{d}",
                    "index_in_doc": j,
                    "text": text,
                    "unit": "text",
                }
            )
            sid += 1
    return pd.DataFrame(rows)


DEFAULT_TASKS = {"continuation": 0.1, "quote": 0.3, "record": 0.3, "entry": 0.3}


def test_without_record_units_their_share_goes_to_the_prose_tasks(caplog):
    with caplog.at_level(logging.WARNING, logger="in2.qa.template"):
        qa, st = generate_template_qa(prose_frame(), QAParams(tasks=DEFAULT_TASKS), seed=0)
    # 90 continuations and 90 quotes in the shares 0.1 : 0.3 -> 0.25 : 0.75: 30 + 90
    assert st.accepted == {
        "fine_grained": 120,
        "fine_grained:continuation": 30,
        "fine_grained:quote": 90,
        "fine_grained:record": 0,
        "fine_grained:entry": 0,
        "fine_grained:redistributed": 120 - 12 - 36,  # beyond the prose tasks' own 0.1 and 0.3
        "integration": 30,
    }
    assert (qa["kind"] == "fine_grained").sum() == 120
    assert [r.getMessage() for r in caplog.records if r.name == "in2.qa.template"] == [
        "qa (template): no record or entry pair (segment.units renders no unit for a document "
        "without a title); their share of 0.60 goes to continuation, quote: "
        "{'continuation': 0.25, 'quote': 0.75}"
    ]


def test_redistribute_moves_only_the_shares_of_tasks_without_pairs():
    shares = {"continuation": 0.2, "quote": 0.2, "record": 0.6, "entry": 0.0}
    assert redistribute({"continuation": [{}], "quote": [{}]}, shares) == {
        "continuation": 0.5,
        "quote": 0.5,
        "record": 0.0,
        "entry": 0.0,
    }
    every = {"continuation": [{}], "quote": [{}], "record": [{}]}
    assert redistribute(every, shares) is shares
    assert redistribute({}, shares) is shares  # nothing to move to: the mix stays empty
