"""Segmenting: the tail policy, compact token ids, and gathering a context's ids."""

import numpy as np
import pandas as pd
import pytest

from in2.data.segments import SegmentStore, cut, segment_documents, token_dtype
from in2.model import load_tokenizer
from in2.params import SegmentParams


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
