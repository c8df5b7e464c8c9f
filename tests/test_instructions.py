"""General instruction data: the QA table format from the corpus, local files and `datasets`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from in2.params import GeneralParams, InputError
from in2.qa.pairs import COLUMNS
from in2.synth.general import load_general

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _jsonl(path: Path, lines: list[object | bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for line in lines:
            f.write((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n")


def _docs() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "doc_id": ["wiki-1", "wiki-2", "wiki-3", "wiki-4"],
            "title": ["Paris", "Oslo", "", "Rome"],
            "text": ["..."] * 4,
            "description": ["Capital of France", " ", "No title", " Capital of Italy "],
            "source": ["wiki_offline"] * 4,
        }
    )


def test_corpus_default_asks_what_a_title_is(tmp_path):
    table, stats = load_general(GeneralParams(), _docs(), seed=0)
    assert list(table.columns) == COLUMNS
    assert table[["source_doc", "question", "answer"]].values.tolist() == [
        ["wiki-1", "In a few words, what is Paris?", "Capital of France"],
        ["wiki-4", "In a few words, what is Rome?", "Capital of Italy"],
    ]
    assert (stats["read"], stats["kept"]) == (4, 2)
    assert stats["dropped"] == {"no_description": 1, "no_title": 1}
    row = table.iloc[0]
    assert row.kind == "general" and list(row.gold_segments) == [] and list(row.keywords) == []
    assert row.generator == "instructions:corpus"
    assert row.prompt_hash == _sha1(row.question)
    assert row.qa_id.startswith("ge-") and len(row.qa_id) == 15
    again, _ = load_general(GeneralParams(), _docs(), seed=0)
    pd.testing.assert_frame_equal(table, again)


def test_local_openorca_file_counts_bad_rows(tmp_path):
    path = tmp_path / "orca.jsonl"
    _jsonl(
        path,
        [
            {"system_prompt": "Think step by step.", "question": "What is 2+2?", "response": "4"},
            {"system_prompt": "", "question": "Name a colour.", "response": "Blue"},
            {"question": "Name a colour.", "response": "Red"},  # duplicate question
            {"question": "No answer"},  # no_field
            {"question": "Empty answer", "response": "  "},  # empty
            {"question": ["a list"], "response": "x"},  # not_text
            b"{not json",  # bad_json
            b'{"question": "caf\xe9", "response": "x"}',  # undecodable
        ],
    )
    table, stats = load_general(GeneralParams(source="local", path=str(path)), _docs(), 0)
    assert table[["question", "answer"]].values.tolist() == [
        ["Think step by step.\n\nWhat is 2+2?", "4"],
        ["Name a colour.", "Blue"],
    ]
    assert (stats["read"], stats["kept"]) == (8, 2)
    assert stats["dropped"] == {
        "duplicate": 1,
        "no_field": 1,
        "empty": 1,
        "not_text": 1,
        "bad_json": 1,
        "undecodable": 1,
    }
    assert table.iloc[1].source_doc == f"instr-{_sha1('Name a colour.')[:12]}"
    assert set(table["generator"]) == {"instructions:local"}
    assert stats["source"]["files"][0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_local_parquet_with_custom_fields_and_a_cap(tmp_path):
    n = 12
    frame = pd.DataFrame({"prompt": [f"Task {i}?" for i in range(n)], "completion": ["Done."] * n})
    frame.to_parquet(tmp_path / "tasks.parquet")
    params = GeneralParams(
        source="local",
        path=str(tmp_path / "tasks.parquet"),
        instruction_field="prompt",
        response_field="completion",
        max_examples=5,
    )
    table, stats = load_general(params, _docs(), seed=1)
    assert len(table) == 5 and table["qa_id"].is_unique
    assert stats["dropped"] == {"beyond_max_examples": 7}
    assert load_general(params, _docs(), seed=1)[0].equals(table)


def test_misnamed_fields_name_the_file_and_the_fields_found(tmp_path):
    path = tmp_path / "pairs.jsonl"
    _jsonl(path, [{"q": "a?", "a": "b"}])
    with pytest.raises(
        InputError,
        match=r"pairs\.jsonl: no row has the field\(s\) 'question' "
        r"\(synthesize\.general\.instruction_field\), 'response' "
        r"\(synthesize\.general\.response_field\); the fields found are \['a', 'q'\]",
    ):
        load_general(GeneralParams(source="local", path=str(path)), _docs(), 0)


def test_missing_file_fails_at_once(tmp_path):
    with pytest.raises(
        InputError, match=r"synthesize\.general\.path: .*none\.jsonl does not exist"
    ):
        load_general(GeneralParams(source="local", path=str(tmp_path / "none.jsonl")), _docs(), 0)


def test_hf_source_streams_up_to_max_examples(tmp_path, monkeypatch):
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    rows = [{"question": f"Question {i}?", "response": f"Answer {i}."} for i in range(100)]
    _jsonl(tmp_path / "orca" / "train.jsonl", rows)
    params = GeneralParams(source="hf", dataset=str(tmp_path / "orca"), max_examples=3)
    table, stats = load_general(params, _docs(), 0)
    assert (stats["read"], stats["kept"]) == (3, 3)
    assert sorted(table["question"]) == ["Question 0?", "Question 1?", "Question 2?"]
    assert set(table["generator"]) == {f"instructions:hf:{tmp_path / 'orca'}"}


def test_unknown_dataset_is_a_clear_error():
    code = (
        "from in2.synth.general import load_general\n"
        "from in2.params import GeneralParams, InputError\n"
        "try:\n"
        "    load_general(GeneralParams(source='hf', dataset='no-such/orca'), None, 0)\n"
        "except InputError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **OFFLINE},
        timeout=120,
    )
    assert out.stdout.startswith(
        "synthesize.general.dataset: cannot open dataset 'no-such/orca' "
        "(config None, split 'train')"
    ), out.stderr
