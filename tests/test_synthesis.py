"""Context synthesis: mix, balanced lengths, uniform gold slots, fillers, decontamination."""

import hashlib

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy import stats

from in2.data.leakage import contaminated
from in2.params import ContextLength, SynthesizeParams
from in2.synth.build import synthesize
from in2.synth.fillers import FillerPool, place_gold
from in2.synth.mix import SynthesisError, filler_counts, mix_counts

SEG = 128


def corpus(n_docs: int = 80, per_doc: int = 4) -> pd.DataFrame:
    """Segment index: `per_doc` full segments per document, then a 50-token tail."""
    rows = []
    for d in range(n_docs):
        for j in range(per_doc + 1):
            n = SEG if j < per_doc else 50
            rows.append({"seg_id": len(rows), "doc_id": f"doc{d:03d}", "n_tokens": n})
    frame = pd.DataFrame(rows)
    frame["start"] = frame["n_tokens"].cumsum() - frame["n_tokens"]
    frame["index_in_doc"] = frame.groupby("doc_id").cumcount()
    return frame


def qa_pairs(index: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for doc, segs in index.groupby("doc_id")["seg_id"]:
        segs = segs.tolist()
        for s in segs:
            rows.append(("fine_grained", [s], doc, [f"cue of {s}"]))
        rows.append(("integration", [segs[0], segs[2]], doc, []))
        rows.append(("general", [], doc, []))
    return pd.DataFrame(
        [
            {
                "qa_id": f"qa{i}",
                "kind": kind,
                "gold_segments": gold,
                "source_doc": doc,
                "question": f"question {i}?",
                "answer": f"answer {i}",
                "keywords": kw,
            }
            for i, (kind, gold, doc, kw) in enumerate(rows)
        ]
    )


def params(**kw) -> SynthesizeParams:
    return SynthesizeParams(**{"n_train": 200, "n_val": 20, **kw})


@pytest.fixture(scope="module")
def built():
    index = corpus()
    train, val, st = synthesize(qa_pairs(index), index, params(), SEG, seed=0)
    return index, train.to_pandas(), val.to_pandas(), st


def test_every_example_is_consistent(built):
    index, train, val, _ = built
    doc_of = index["doc_id"].to_numpy()
    n_tok = index["n_tokens"].to_numpy()
    for row in pd.concat([train, val]).itertuples():
        ctx, gold = list(row.context_segments), list(row.gold_segments)
        assert [ctx[s] for s in row.gold_slots] == gold
        assert row.n_tokens == n_tok[ctx].sum()
        assert len(set(ctx)) == len(ctx)
        if row.kind in ("fine_grained", "integration"):
            assert 256 <= row.n_tokens <= 1024
            fillers = [s for s in ctx if s not in gold]
            assert all(doc_of[s] != row.source_doc for s in fillers)
            assert all(n_tok[s] == SEG for s in fillers)
        elif row.kind == "short":
            assert ctx == gold and len(gold) == 1
        else:
            assert ctx == [] and gold == [] and row.n_tokens == 0


def test_mix_is_exact_and_splits_are_disjoint_by_document(built):
    index, train, val, st = built
    for frame, n in ((train, 200), (val, 20)):
        assert frame["kind"].value_counts().to_dict() == {
            k: v for k, v in mix_counts(n, params().mix).items() if v
        }
        assert frame["example_id"].is_unique
    doc_of = index["doc_id"].to_numpy()

    def docs(frame):
        return set(frame["source_doc"]) | {doc_of[s] for c in frame.context_segments for s in c}

    assert not docs(train) & docs(val)
    assert st.counts["train"] == train["kind"].value_counts().sort_index().to_dict()


def test_fillers_never_quote_the_cue():
    index = corpus(n_docs=12, per_doc=4)
    qa = qa_pairs(index)
    text = {s: f"filler text {s}" for s in index["seg_id"]}
    text[7] = "this segment happens to contain cue of 0 verbatim"
    p = params(n_train=30, n_val=0, mix={"fine_grained": 1.0})
    for seed in range(20):
        train, _, _ = synthesize(qa, index, p, SEG, seed=seed, segment_text=text)
        for row in train.to_pandas().itertuples():
            if list(row.gold_segments) == [0]:
                assert 7 not in list(row.context_segments)


def test_lengths_are_balanced_over_the_range():
    index = corpus(n_docs=500)
    qa = qa_pairs(index)
    qa = qa[qa["gold_segments"].map(lambda g: all(index["n_tokens"][s] == SEG for s in g))]
    c = ContextLength(min=256, max=2048, bins=7)
    p = params(n_train=1400, n_val=0, mix={"fine_grained": 1.0}, context_tokens=c)
    _, _, st = synthesize(qa, index, p, SEG, seed=1)
    counts = list(st.length_hist["train"].values())
    assert sum(counts) == 1400
    # 1,400 examples over 7 bins of 256 tokens: 2 lengths per bin, 200 examples each
    assert counts == [200] * 7


def test_each_context_lands_in_its_target_bin_whatever_the_gold_length():
    index = corpus(n_docs=500)  # a fifth of the gold segments are 50-token tails
    c = ContextLength(min=256, max=1024, bins=3)
    p = params(n_train=900, n_val=0, mix={"fine_grained": 0.8, "integration": 0.2})
    _, _, st = synthesize(
        qa_pairs(index), index, p.model_copy(update={"context_tokens": c}), SEG, 2
    )
    assert list(st.length_hist["train"].values()) == [300, 300, 300]


def test_gold_slots_are_uniform_and_a_bias_would_show():
    rng = np.random.default_rng(0)
    n, m = 20_000, 9
    pool = FillerPool(np.arange(1000), np.arange(1000) // 4)
    gold_doc = np.full(n, 999)
    fillers = pool.draw(rng, gold_doc, m)
    _, slots = place_gold(rng, np.full((n, 1), 5000), fillers, shuffle=False)
    rel = (slots[:, 0] + rng.random(n)) / (m + 1)
    assert stats.kstest(rel, "uniform").pvalue > 0.001
    assert stats.kstest(rel * 0.6, "uniform").pvalue < 1e-6


@pytest.mark.parametrize("shuffle", [False, True])
def test_integration_golds_take_a_uniform_subset_of_slots(shuffle):
    rng = np.random.default_rng(1)
    n, m = 20_000, 6
    gold = np.tile([5000, 5001], (n, 1))
    fillers = np.tile(np.arange(m), (n, 1))
    contexts, slots = place_gold(rng, gold, fillers, shuffle)
    assert (contexts[np.arange(n), slots[:, 0]] == 5000).all()
    assert (contexts[np.arange(n), slots[:, 1]] == 5001).all()
    assert (slots[:, 0] != slots[:, 1]).all()
    in_order = (slots[:, 0] < slots[:, 1]).mean()
    assert in_order == 1.0 if not shuffle else 0.45 < in_order < 0.55
    pooled = (slots.ravel() + rng.random(2 * n)) / (m + 2)
    assert stats.kstest(pooled, "uniform").pvalue > 0.001


def test_same_params_same_bytes_and_seed_matters(tmp_path):
    index = corpus()
    qa = qa_pairs(index)

    def md5(seed: int, name: str) -> str:
        train, _, _ = synthesize(qa, index, params(), SEG, seed=seed)
        pq.write_table(train, tmp_path / name)
        return hashlib.md5((tmp_path / name).read_bytes()).hexdigest()

    assert md5(3, "a.parquet") == md5(3, "b.parquet")
    assert md5(3, "a.parquet") != md5(4, "c.parquet")


def test_contaminated_documents_and_their_pairs_are_dropped():
    index = corpus(n_docs=40)
    qa = qa_pairs(index)
    dirty = {"doc001", "doc002"}
    train, val, st = synthesize(qa, index, params(n_train=60, n_val=6), SEG, 0, dirty)
    assert st.contaminated_documents == 2
    assert st.dropped_qa_contaminated == {"fine_grained": 10, "general": 2, "integration": 2}
    doc_of = index["doc_id"].to_numpy()
    for frame in (train.to_pandas(), val.to_pandas()):
        assert not set(frame["source_doc"]) & dirty
        assert not {doc_of[s] for c in frame["context_segments"] for s in c} & dirty


def test_ngram_overlap_is_found_across_segment_boundaries():
    docs = [
        ("a", "one two three four five six seven eight nine ten eleven"),
        ("b", "completely different words that never appear in any probe at all"),
    ]
    probe = ["prefix one two three four five six seven eight nine ten suffix"]
    assert contaminated(docs, probe, 10) == {"a"}
    assert contaminated(docs, probe, 11) == set()


def test_shortage_and_infeasible_lengths_say_which_knob_to_turn():
    index = corpus(n_docs=10)
    qa = qa_pairs(index)
    with pytest.raises(SynthesisError, match=r"train: need \d+ fine_grained QA pairs \(for fine"):
        synthesize(qa, index, params(n_train=1000), SEG, seed=0)
    with pytest.raises(SynthesisError, match=r"could not draw \d+ distinct fillers from other doc"):
        p = params(
            n_train=3,
            n_val=0,
            mix={"fine_grained": 1.0},
            context_tokens=ContextLength(min=896, max=1024, bins=1),
        )
        synthesize(qa_pairs(corpus(n_docs=2)), corpus(n_docs=2), p, SEG, seed=0)
    with pytest.raises(
        SynthesisError, match=r"up to 49 but data/segments has 10; .* `dvc repro qa`"
    ):
        synthesize(qa, corpus(n_docs=2), params(), SEG, seed=0)
    with pytest.raises(SynthesisError, match=r"widen synthesize\.context_tokens"):
        filler_counts(np.array([300]), np.array([410.0]), SEG, ContextLength(min=400, max=420))


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
