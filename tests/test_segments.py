"""Segmenting: the tail policy, compact token ids, and gathering a context's ids."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from in2.data.corpus import SCHEMA
from in2.data.segments import (
    INDEX_FILE,
    TOKENS_FILE,
    SegmentStore,
    TokenFile,
    cut,
    segment_documents,
    token_dtype,
)
from in2.data.units import UNITS_FILE, append_units, render_units
from in2.model import load_tokenizer
from in2.params import SegmentParams

REPO = Path(__file__).resolve().parents[1]


def test_cut_drops_a_short_tail():
    p = SegmentParams(length=128, min_tokens=32)
    assert cut(300, p) == [(0, 128), (128, 128), (256, 44)]
    assert cut(270, p) == [(0, 128), (128, 128)]  # 14-token tail dropped
    assert cut(20, p) == []
    assert cut(32, p) == [(0, 32)]


def test_cut_merges_a_short_tail_into_the_previous_segment():
    p = SegmentParams(length=128, min_tokens=32, tail="merge")
    assert cut(300, p) == [(0, 128), (128, 128), (256, 44)]  # long enough: its own segment
    assert cut(270, p) == [(0, 128), (128, 142)]  # no token lost
    assert cut(140, p) == [(0, 140)]
    assert cut(20, p) == []  # a document shorter than min_tokens gives nothing either way


def test_token_dtype_is_the_smallest_that_fits():
    assert token_dtype(49_152) == np.uint16  # SmolLM2
    assert token_dtype(65_536) == np.uint16
    assert token_dtype(128_256) == np.uint32  # Llama 3
    with pytest.raises(ValueError, match="does not fit uint32"):
        token_dtype(2**33)


@pytest.mark.parametrize("tail", ["drop", "merge"])
def test_segment_documents_round_trip(tiny_model_dir, tmp_path, tail):
    tok = load_tokenizer(tiny_model_dir)
    text = " ".join(f"word{i}" for i in range(400))
    docs = pd.DataFrame({"doc_id": ["a", "b"], "text": [text, "too short"]})
    p = SegmentParams(length=64, min_tokens=8, tail=tail)
    tokens, index, stats = segment_documents(docs, tok, p)
    full = tok(text, add_special_tokens=False)["input_ids"]
    assert (stats.documents, stats.documents_with_segments) == (2, 1)
    assert stats.tokens_kept == len(tokens) and stats.segments == len(index)
    assert tokens.dtype == np.uint16  # a 49K vocabulary
    assert index["seg_id"].tolist() == list(range(len(index)))
    assert set(index["doc_id"]) == {"a"}  # "too short" has fewer than min_tokens tokens
    assert [(r.start, r.n_tokens) for r in index.itertuples()] == cut(len(full), p)
    np.save(tmp_path / "tokens.npy", tokens)
    index.to_parquet(tmp_path / "segments.parquet")
    store = SegmentStore.open(tmp_path)
    kept = int(index["n_tokens"].sum())
    assert store.context_ids(index["seg_id"].tolist()).tolist() == full[:kept]
    assert store.ids(1).tolist() == full[64:128]


def test_context_ids_gathers_segments_in_context_order(tmp_path):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 20, size=50)
    tokens = rng.integers(0, 1000, size=int(lengths.sum())).astype(np.uint16)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    np.save(tmp_path / "tokens.npy", tokens)
    pd.DataFrame(
        {"seg_id": range(50), "doc_id": "d", "start": starts, "n_tokens": lengths}
    ).to_parquet(tmp_path / "segments.parquet")
    store = SegmentStore.open(tmp_path)
    populated = SegmentStore.open(tmp_path, populate=True)
    assert np.array_equal(populated.tokens, tokens) and not populated.tokens.flags.writeable
    for _ in range(20):
        ids = rng.permutation(50)[: rng.integers(1, 50)]
        expected = np.concatenate([tokens[starts[s] : starts[s] + lengths[s]] for s in ids])
        assert np.array_equal(store.context_ids(ids), expected)
    assert len(store.context_ids([])) == 0


def test_a_token_file_that_is_not_flat_is_refused(tmp_path):
    np.save(tmp_path / "tokens.npy", np.zeros((4, 2), dtype=np.uint16))
    pd.DataFrame({"seg_id": [0], "doc_id": "d", "start": [0], "n_tokens": [2]}).to_parquet(
        tmp_path / "segments.parquet"
    )
    with pytest.raises(ValueError, match=r"tokens.npy: expected a flat array of token ids, got s"):
        SegmentStore.open(tmp_path)


def test_segment_store_missing_files_say_which_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `dvc repro segment`"):
        SegmentStore.open(tmp_path)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_token_file_is_what_np_save_writes(tmp_path, dtype):
    rng = np.random.default_rng(0)
    chunks = [rng.integers(0, 40_000, size=n).astype(dtype) for n in (0, 5, 1000, 1)]
    with TokenFile(tmp_path / "streamed.npy", np.dtype(dtype)) as tokens:
        for chunk in chunks[:2]:
            tokens.append(chunk)
        view = tokens.view()  # mapped, not read: the file is not read into memory
        assert view.tolist() == chunks[1].tolist() and not view.flags.writeable
        for chunk in chunks[2:]:
            tokens.append(chunk)
    np.save(tmp_path / "saved.npy", np.concatenate(chunks))
    assert (tmp_path / "streamed.npy").read_bytes() == (tmp_path / "saved.npy").read_bytes()
    with TokenFile(tmp_path / "empty.npy", np.dtype(dtype)):
        pass
    np.save(tmp_path / "saved.npy", np.zeros(0, dtype=dtype))
    assert (tmp_path / "empty.npy").read_bytes() == (tmp_path / "saved.npy").read_bytes()


def test_stage_streams_to_the_files_segment_documents_gives_in_memory(tiny_model_dir, tmp_path):
    """1,300 documents (three read batches; titled ones give units): the stage's files are byte
    for byte those of segmenting the whole table in memory, then np.save / to_parquet."""
    n = 1300
    docs = pd.DataFrame(
        {
            "doc_id": [f"local-{i:016x}" for i in range(n)],
            "title": [f"Title {i}" if i % 3 else "" for i in range(n)],
            "text": [f"Title {i} is a thing. " + "word " * (i % 97) for i in range(n)],
            "description": [f"thing {i}" if i % 5 else "" for i in range(n)],
            "source": "local:docs.jsonl",
        }
    )
    (tmp_path / "data/corpus").mkdir(parents=True)
    (tmp_path / "models").mkdir()
    (tmp_path / "models/base").symlink_to(tiny_model_dir)
    docs.to_parquet(tmp_path / "data/corpus/train.parquet", index=False, schema=SCHEMA)
    params = {"segment": {"length": 16, "min_tokens": 4, "units": ["record", "entry"]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = subprocess.run(
        [sys.executable, str(REPO / "stages" / "segment.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr
    tok = load_tokenizer(tiny_model_dir)
    tokens, index, _ = segment_documents(docs, tok, SegmentParams(length=16, min_tokens=4))
    units = render_units(docs, ["record", "entry"], seed=0)
    tokens, index, table = append_units(tokens, index, units, tok)
    (tmp_path / "memory").mkdir()
    np.save(tmp_path / "memory" / TOKENS_FILE, tokens)
    index.to_parquet(tmp_path / "memory" / INDEX_FILE, index=False)
    table.to_parquet(tmp_path / "memory" / UNITS_FILE, index=False)
    assert len(table) > 0 and len(index) > n
    for name in (TOKENS_FILE, INDEX_FILE, UNITS_FILE):
        streamed = (tmp_path / "data/segments" / name).read_bytes()
        assert streamed == (tmp_path / "memory" / name).read_bytes(), name
