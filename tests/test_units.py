"""Record units: rendering, storage after the segments, lookup QA and unit-filled contexts."""

import random

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from in2.data.units import (
    ENTRY_LAYOUTS,
    KEY_LETTERS,
    RECORD_LAYOUTS,
    TEXT_UNIT,
    UNIT_COLUMNS,
    append_units,
    make_keys,
    render_units,
    wrap_lines,
)
from in2.gate.tables import grounded
from in2.params import ContextLength, QAParams, SynthesizeParams, parse_params
from in2.qa.lookup import ENTRY, QUOTE, RECORD, entry_cue, quote_pair, quote_pairs, unit_pairs
from in2.qa.pairs import QAStats
from in2.qa.template import balance_tasks
from in2.synth.build import synthesize


def docs(n: int = 60) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "doc_id": [f"doc{i:03d}" for i in range(n)],
            "title": [f"Title {i}" for i in range(n)],
            "description": [f"thing number {i}" if i % 10 else "" for i in range(n)],
            "text": [
                f"Title {i} is item {i}. It has w{i}a w{i}b w{i}c w{i}d w{i}e w{i}f in it. More."
                for i in range(n)
            ],
        }
    )


def test_keys_are_distinct_near_duplicates():
    keys = make_keys(2000, np.random.default_rng(0))
    assert len(set(keys)) == 2000
    assert all(k[:2].strip(KEY_LETTERS) == "" and k[2] == "-" and k[3:].isdigit() for k in keys)
    assert len({k[:2] for k in keys}) <= len(KEY_LETTERS) ** 2  # a short alphabet: shared prefixes


def test_render_units_records_and_entries():
    units = render_units(docs(), ["record", "entry"], seed=0)
    records = [u for u in units if u.unit == "record"]
    entries = [u for u in units if u.unit == "entry"]
    assert len(records) == 54  # every 10th document has no description
    assert len(entries) == 60
    for u in records:
        assert u.text.endswith("\n")
        assert u.text.startswith(u.key) or u.text.startswith(f"[{u.key}]")
        assert u.answer in u.text and u.name in u.answer and u.value in u.answer
        assert u.key not in u.answer
    assert {u.text.count(" | ") == 2 for u in records} == {True, False}  # layouts are mixed
    assert len(RECORD_LAYOUTS) == 3
    e = entries[0]
    assert e.text == f"## {e.name}\n{e.value}\n\n" and e.answer == e.name
    assert render_units(docs(), ["record", "entry"], seed=0) == units  # deterministic
    with pytest.raises(ValueError, match="unknown unit"):
        render_units(docs(), ["table"], seed=0)


class CharTokenizer:
    """One id per character: enough to check offsets and lengths."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) % 60000 for c in t] for t in texts]}


def test_append_units_keeps_seg_id_the_row_number():
    tokens = np.arange(10, dtype=np.uint16)
    index = pd.DataFrame(
        {
            "seg_id": [0, 1],
            "doc_id": ["doc000", "doc001"],
            "start": [0, 5],
            "n_tokens": [5, 5],
            "index_in_doc": [0, 0],
        }
    ).astype({"start": "int64", "n_tokens": "int32", "index_in_doc": "int32"})
    units = render_units(docs(3), ["record"], seed=0)
    flat, full, table = append_units(tokens, index, units, CharTokenizer())
    assert (full["seg_id"] == np.arange(len(full))).all()
    assert list(full["unit"]) == [TEXT_UNIT, TEXT_UNIT, "record", "record"]
    assert list(table["seg_id"]) == [2, 3]
    for row, u in zip(full.iloc[2:].itertuples(), units, strict=True):
        ids = flat[row.start : row.start + row.n_tokens]
        assert "".join(map(chr, ids)) == u.text
    # doc000 has no description (no record); doc001's record follows its segment, doc002 has none
    assert list(full["doc_id"].iloc[2:]) == ["doc001", "doc002"]
    assert list(full["index_in_doc"].iloc[2:]) == [1, 0]


def test_documents_without_titles_give_no_unit_and_append_nothing():
    """A local corpus of plain texts (no title, no description): prose segments only, so the
    QA template passes the record and entry shares on (tests/test_qa_template.py)."""
    untitled = docs().assign(title="", description="")
    assert render_units(untitled, ["record", "entry"], seed=0) == []
    tokens = np.arange(4, dtype=np.uint16)
    index = pd.DataFrame(
        {"seg_id": [0], "doc_id": ["doc000"], "start": [0], "n_tokens": [4], "index_in_doc": [0]}
    )
    flat, full, table = append_units(tokens, index, [], CharTokenizer())
    assert flat is tokens and list(full["unit"]) == [TEXT_UNIT]
    assert table.empty and list(table.columns) == UNIT_COLUMNS


def test_quote_pair_takes_a_whole_inner_sentence():
    text = (
        "cut off start of a sentence. The middle sentence has exactly fourteen words in it and "
        "no other words. Cut off at the end"
    )
    cue, sentence = quote_pair(text, 6, random.Random(0))
    assert sentence == "The middle sentence has exactly fourteen words in it and no other words."
    assert cue in sentence and len(cue.split()) == 6
    assert quote_pair("Only. Two sentences here.", 6, random.Random(0)) is None


def test_entry_cue_avoids_the_heading():
    value = "Paris is the capital of France and its largest city by far."
    for seed in range(10):
        cue = entry_cue(value, "Paris", 4, random.Random(seed))
        assert cue in value and "Paris" not in cue


def test_wrap_lines_makes_the_fewest_near_equal_lines():
    text = " ".join(f"w{i}" for i in range(17))
    lines = wrap_lines(text, 8).split("\n")
    assert [len(line.split()) for line in lines] == [6, 5, 6]  # not 8 + 8 + a 1-word stub
    assert " ".join(lines) == text
    assert wrap_lines("one two three", 8) == "one two three"


def test_lined_entries_are_asked_about_one_whole_line():
    text = [" ".join(f"Sentence {j} of {i} has its own words." for j in range(3)) for i in range(5)]
    d = docs(5).assign(text=text)
    entries = render_units(d, ["entry"], seed=0, entry_words=16, entry_line_words=5)
    assert len(entries) == 5
    for e in entries:
        assert e.text.startswith(f"## {e.name}\n")
        lines = e.value.split("\n")
        assert len(lines) == 4 and all(len(line.split()) <= 5 for line in lines)  # 16 words
        for seed in range(5):
            cue = entry_cue(e.value, e.name, 6, random.Random(seed))
            assert cue in lines and e.name not in cue


def test_entry_layouts_are_mixed_and_every_cue_reads_in_the_text():
    entries = render_units(
        docs(40), ["entry"], seed=0, entry_line_words=4, entry_layouts=tuple(ENTRY_LAYOUTS)
    )
    first_lines = {e.text.split("\n")[0] for e in entries}
    assert {line[:3] for line in first_lines if line.startswith(("## ", "["))} == {"## ", "[Ti"}
    assert any(line.endswith(":") for line in first_lines)
    assert any("\n- " in e.text for e in entries) and any("\n  " in e.text for e in entries)
    for e in entries:
        assert e.name in e.text.split("\n")[0]
        assert entry_cue(e.value, e.name, 6, random.Random(0)) in e.text
    with pytest.raises(ValueError, match="entry layouts must be some of"):
        render_units(docs(3), ["entry"], seed=0, entry_layouts=("table",))


def unit_segments():
    d = docs(40)
    units = render_units(d, ["record", "entry"], seed=0)
    rows = [
        {
            "seg_id": i,
            "doc_id": u.doc_id,
            "index_in_doc": 0,
            "text": u.text,
            "unit": u.unit,
            "key": u.key,
            "name": u.name,
            "value": u.value,
            "answer": u.answer,
        }
        for i, u in enumerate(units)
    ]
    return pd.DataFrame(rows)


def test_lookup_pairs_are_grounded_in_their_unit():
    segs = unit_segments()
    st = QAStats()
    params = QAParams(cue_words=3)
    pairs = unit_pairs(segs, "record", params, 0, st) + unit_pairs(segs, "entry", params, 0, st)
    text = dict(zip(segs.seg_id, segs.text, strict=True))
    assert {p["generator"] for p in pairs} == {RECORD, ENTRY}
    for p in pairs:
        gold = text[p["gold_segments"][0]]
        assert grounded(p["generator"], p["answer"], p["keywords"], gold)
        assert p["keywords"][0] in p["question"]
        assert not grounded(p["generator"], "not in the text", p["keywords"], gold)
    record = next(p for p in pairs if p["generator"] == RECORD)
    assert record["keywords"][0] in text[record["gold_segments"][0]]  # the key


def test_quote_pairs_over_prose():
    segs = pd.DataFrame(
        {
            "seg_id": [0],
            "doc_id": ["d"],
            "text": [
                "tail. Alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu. Head"
            ],
        }
    )
    (pair,) = quote_pairs(segs, [0], QAParams(cue_words=4), 0, QAStats())
    assert pair["generator"] == QUOTE
    assert pair["answer"] == "Alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu."
    assert grounded(QUOTE, pair["answer"], pair["keywords"], segs.text[0])


def test_balance_tasks_keeps_the_shares():
    pairs = {"quote": [{"i": i} for i in range(100)], "record": [{"i": i} for i in range(30)]}
    kept = balance_tasks(pairs, {"quote": 0.5, "record": 0.5, "entry": 0.0}, seed=0)
    assert {t: len(v) for t, v in kept.items()} == {"quote": 30, "record": 30}


def test_params_need_the_units_the_tasks_ask_about():
    with pytest.raises(Exception, match=r"segment\.units"):
        parse_params({"qa": {"tasks": {"quote": 0.5, "record": 0.5}}})
    ok = parse_params(
        {"segment": {"units": ["record"]}, "qa": {"tasks": {"quote": 0.5, "record": 0.5}}}
    )
    assert ok.qa.tasks["record"] == 0.5
    with pytest.raises(Exception, match="sum to 1"):
        parse_params({"qa": {"tasks": {"quote": 0.5}}})


def unit_corpus(n_docs=600):
    """Each document: 2 full prose segments and one record unit of 20–40 tokens."""
    rng = np.random.default_rng(0)
    rows = []
    for d in range(n_docs):
        for j in range(2):
            rows.append((f"doc{d:03d}", 128, j, TEXT_UNIT))
        rows.append((f"doc{d:03d}", int(rng.integers(20, 41)), 2, "record"))
    index = pd.DataFrame(rows, columns=["doc_id", "n_tokens", "index_in_doc", "unit"])
    index.insert(0, "seg_id", range(len(index)))
    index["start"] = index["n_tokens"].cumsum() - index["n_tokens"]
    qa = [
        {
            "qa_id": f"r{s}",
            "kind": "fine_grained",
            "gold_segments": [s],
            "source_doc": doc,
            "question": f"key {s}?",
            "answer": "a",
            "keywords": [f"KEY{s:05d}"],
        }
        for s, doc, unit in zip(index.seg_id, index.doc_id, index.unit, strict=True)
        if unit == "record"
    ] + [
        {
            "qa_id": f"g{d}",
            "kind": "general",
            "gold_segments": [],
            "source_doc": f"doc{d:03d}",
            "question": "q?",
            "answer": "a",
            "keywords": [],
        }
        for d in range(n_docs)
    ]
    text = {
        int(s): (f"KEY{s:05d} | x\n" if u == "record" else "prose words")
        for s, u in zip(index.seg_id, index.unit, strict=True)
    }
    return index, pd.DataFrame(qa), text


def test_unit_examples_get_unit_fillers_in_range_and_uniform_slots():
    index, qa, text = unit_corpus()
    c = ContextLength(min=256, max=768, bins=2)
    p = SynthesizeParams(
        n_train=400,
        n_val=20,
        context_tokens=c,
        mix={"fine_grained": 0.9, "integration": 0.0, "short": 0.0, "general": 0.1},
    )
    train, _, st = synthesize(qa, index, p, 128, seed=0, segment_text=text)
    train = train.to_pandas()
    unit = index["unit"].to_numpy()
    n_tok = index["n_tokens"].to_numpy()
    doc = index["doc_id"].to_numpy()
    long = train[train.kind == "fine_grained"]
    rel = []
    for row in long.itertuples():
        ctx = np.asarray(row.context_segments)
        assert set(unit[ctx]) == {"record"}  # a record's context holds records only
        assert row.n_tokens == n_tok[ctx].sum()
        assert c.min <= row.n_tokens <= c.max
        gold = row.gold_segments[0]
        assert ctx[row.gold_slots[0]] == gold
        assert (doc[ctx] == row.source_doc).sum() == 1  # no filler from the gold's document
        assert len(set(ctx)) == len(ctx)
        rel.append((row.gold_slots[0] + 0.5) / len(ctx))
    assert stats.kstest(rel, "uniform").pvalue > 0.001
    hist = st.length_hist["train"]
    assert abs(hist["256-512"] - hist["512-768"]) <= 0.15 * len(long)  # balanced over bins
