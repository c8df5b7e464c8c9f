"""The data quality gate: clean IN2 data passes; each kind of corruption fails, named in the text.

The clean dataset is built here, independently of in2.synth.build, with exactly the properties
the gate checks (uniform slots, configured mix, lengths in range, fillers from other documents),
so a failure on it is a false alarm of the gate, not a synthesis bug.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from in2.gate.expectations import uniformity_tests
from in2.gate.inputs import GateInputs
from in2.gate.runner import validate_dataset
from in2.gate.tables import relative_position, template_grounded
from in2.model import load_tokenizer
from in2.params import Params
from in2.registry import EXAMPLE_KINDS

REPO = Path(__file__).resolve().parents[1]
SEG_TOKENS = 128
N_DOCS, SEGS_PER_DOC = 80, 10
SPLIT_DOCS = {"train": range(0, 64), "val": range(64, 80)}
"""Train and val examples draw gold and filler segments from disjoint documents."""
PARAMS = Params()
"""Defaults: mix 63/17/9/11, contexts of 256-1024 tokens (2-8 segments), alpha 0.001."""

Slots = Callable[[np.random.Generator, int, int], list[int]]


def uniform_slots(rng: np.random.Generator, n_slots: int, k: int) -> list[int]:
    return rng.choice(n_slots, size=k, replace=False).tolist()


def early_slots(rng: np.random.Generator, n_slots: int, k: int) -> list[int]:
    """The bug the gate exists for: answers always in the first 10% of the context."""
    return list(range(k))


LENGTH_BINS = ((2, 3), (4, 5), (6, 7))
"""Context sizes in segments per length bin of the defaults (256-1024 tokens, 3 bins)."""
Lengths = Callable[[np.random.Generator, int], int]


def balanced_lengths(rng: np.random.Generator, k: int) -> int:
    """A bin at random, then a size in it: lengths balanced over the bins, as synthesis does."""
    sizes = [n for n in LENGTH_BINS[rng.integers(len(LENGTH_BINS))] if n > k] or [k + 1]
    return int(rng.choice(sizes))


def short_lengths(rng: np.random.Generator, k: int) -> int:
    """A synthesis bug: every context in the shortest bin."""
    return k + 1


def segment_text(seg: int) -> str:
    """Text of a segment: a cue and the words after it, in words no other segment has."""
    d, j = divmod(seg, SEGS_PER_DOC)
    return f"d{d}s{j} opening words. cue of segment {seg} words after {seg}. d{d}s{j} closing."


PROBES = [
    "the quick brown fox jumps over the lazy dog near the old river bank today",
    "def parse_header(line): return line.split(':', 1)[0].strip().lower() if line else None",
]


def make_qa(segments: pd.DataFrame) -> pd.DataFrame:
    """Template-style QA pairs: one per segment, and one integration pair per document."""
    rows = []
    for seg, doc in zip(segments["seg_id"], segments["doc_id"], strict=True):
        cue, ans = f"cue of segment {seg}", f"words after {seg}."
        rows.append(("fine_grained", [seg], doc, ans, [cue]))
        if seg % SEGS_PER_DOC == 1:
            pair = [seg - 1, seg]
            answer = " ".join(f"{i}. words after {s}." for i, s in enumerate(pair, 1))
            rows.append(("integration", pair, doc, answer, [f"cue of segment {s}" for s in pair]))
    return pd.DataFrame(
        [
            {
                "qa_id": f"qa-{i}",
                "kind": kind,
                "gold_segments": gold,
                "source_doc": doc,
                "question": f"Which words follow {' and '.join(cues)}?",
                "answer": answer,
                "keywords": cues,
                "generator": "template-v1",
                "prompt_hash": f"h{i}",
            }
            for i, (kind, gold, doc, answer, cues) in enumerate(rows)
        ]
    )


def make_segments() -> pd.DataFrame:
    n = N_DOCS * SEGS_PER_DOC
    seg = np.arange(n)
    return pd.DataFrame(
        {
            "seg_id": seg.astype("int64"),
            "doc_id": [f"doc{d:03d}" for d in seg // SEGS_PER_DOC],
            "start": (seg * SEG_TOKENS).astype("int64"),
            "n_tokens": np.full(n, SEG_TOKENS, dtype="int32"),
            "index_in_doc": (seg % SEGS_PER_DOC).astype("int32"),
        }
    )


def make_split(
    split: str,
    n: int,
    mix: dict[str, float],
    seed: int,
    slots: Slots = uniform_slots,
    lengths: Lengths = balanced_lengths,
) -> pd.DataFrame:
    """n examples in the given mix; long contexts of 2-7 full segments (256-896 tokens)."""
    rng = np.random.default_rng(seed)
    docs = SPLIT_DOCS[split]
    counts = {k: round(n * mix[k]) for k in EXAMPLE_KINDS}
    counts["fine_grained"] += n - sum(counts.values())
    rows = []
    for kind in EXAMPLE_KINDS:
        for i in range(counts[kind]):
            doc = int(rng.choice(docs))
            k = 2 if kind == "integration" else 1
            gold = (doc * SEGS_PER_DOC + rng.choice(SEGS_PER_DOC, k, replace=False)).tolist()
            if kind in ("fine_grained", "integration"):
                n_slots = lengths(rng, k)
                others = [d for d in docs if d != doc]
                fillers = [
                    int(d * SEGS_PER_DOC + rng.integers(SEGS_PER_DOC))
                    for d in rng.choice(others, n_slots - k, replace=False)
                ]
                gold_slots = slots(rng, n_slots, k)
                context = [-1] * n_slots
                for slot, seg in zip(gold_slots, gold, strict=True):
                    context[slot] = seg
                context = [c if c >= 0 else fillers.pop() for c in context]
            elif kind == "short":
                context, gold_slots = list(gold), list(range(k))
            else:
                context, gold, gold_slots = [], [], []
            rows.append(
                {
                    "example_id": f"{split}-{kind}-{i:04d}",
                    "qa_id": f"qa-{split}-{kind}-{i:04d}",
                    "kind": kind,
                    "context_segments": context,
                    "gold_segments": gold,
                    "gold_slots": gold_slots,
                    "source_doc": f"doc{doc:03d}",
                    "question": f"What follows cue {i} of {kind} in {split}?",
                    "answer": f"answer {i}",
                    "n_tokens": SEG_TOKENS * len(context),
                }
            )
    return pd.DataFrame(rows).sample(frac=1, random_state=seed).reset_index(drop=True)


def roundtrip(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Through parquet, so the tests see the types the stage reads (int64 arrays, str)."""
    frame.to_parquet(path, index=False)
    return pd.read_parquet(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    tmp = tmp_path_factory.mktemp("quality")
    mix = PARAMS.synthesize.mix
    segments = make_segments()
    return {
        "train": roundtrip(make_split("train", 400, mix, seed=1), tmp / "train.parquet"),
        "val": roundtrip(make_split("val", 40, mix, seed=2), tmp / "val.parquet"),
        "segments": segments,
        "qa": roundtrip(make_qa(segments), tmp / "qa.parquet"),
        "text": {int(s): segment_text(int(s)) for s in segments["seg_id"]},
    }


def run_gate(train: pd.DataFrame, val: pd.DataFrame, data: dict, **changed):
    """The gate with every input; `changed` replaces some (qa, text, probes)."""
    inputs = {"qa": data["qa"], "text": data["text"], "probes": PROBES, **changed}
    gate_inputs = GateInputs(
        train,
        val,
        segments=data["segments"],
        qa=inputs["qa"],
        segment_text=inputs["text"],
        probe_texts=inputs["probes"],
    )
    return validate_dataset(gate_inputs, PARAMS, docs_dir=None)


def first_of(frame: pd.DataFrame, kind: str) -> int:
    return int(np.flatnonzero(frame["kind"] == kind)[0])


def test_relative_position_is_deterministic_and_uniform_under_the_null():
    rng = np.random.default_rng(0)
    n_slots = rng.integers(1, 12, size=5000)
    slots = rng.integers(0, n_slots)
    cases = [
        (f"ex{i}", int(s), int(n)) for i, (s, n) in enumerate(zip(slots, n_slots, strict=True))
    ]
    u = np.asarray([relative_position(eid, 0, s, n) for eid, s, n in cases])
    assert relative_position("ex7", 0, *cases[7][1:]) == u[7]
    assert relative_position("ex7", 1, *cases[7][1:]) != u[7]  # each gold has its own jitter
    assert all(s / n <= x < (s + 1) / n for x, (_, s, n) in zip(u, cases, strict=True))
    tests = uniformity_tests(u, bins=10)
    assert tests["ks_p"] > 0.01 and tests["chi2_p"] > 0.01
    assert uniformity_tests(np.zeros(0), bins=10)["n"] == 0


def test_clean_data_passes(data):
    report = run_gate(data["train"], data["val"], data)
    assert report.success, report.failures_text()
    assert report.failures_text() == ""
    summary = report.to_summary()
    json.dumps(summary)  # the DVC metrics file must be plain JSON
    checks = summary["expectations"]
    assert summary["n_failed"] == 0 and len(checks) == len(report.results) > 30
    uniform = checks["gold_positions_uniform.all"]["observed"]
    both = pd.concat([data["train"], data["val"]])
    n_gold = both.loc[both["kind"].isin(["fine_grained", "integration"]), "gold_slots"].map(len)
    assert uniform["status"] == "tested" and uniform["n"] == n_gold.sum()
    assert uniform["ks_p"] >= 0.001 and uniform["chi2_p"] >= 0.001
    assert checks["gold_positions_uniform.integration"]["kind"] == "integration"
    assert checks["kind.mix.train"]["observed"]["observed"]["fine_grained"] == pytest.approx(0.63)
    metrics = report.metrics()
    assert metrics["dq.success"] == 1.0
    assert "dq.gold_positions_uniform.fine_grained.ks_p" in metrics


def _bias_to_start(data):
    train = make_split("train", 400, PARAMS.synthesize.mix, seed=1, slots=early_slots)
    return train, data["val"]


def _mix_off_by_5_points(data):
    mix = {**PARAMS.synthesize.mix, "fine_grained": 0.58, "integration": 0.22}
    return make_split("train", 400, mix, seed=1), data["val"]


def _replace(frame: pd.DataFrame, i: int, column: str, value: list[int]) -> pd.DataFrame:
    out = frame.copy()
    out[column] = [np.asarray(value) if j == i else v for j, v in enumerate(out[column])]
    return out


def _context_over_max(data):
    """Nine 128-token segments: 1152 tokens, over the max of 1024."""
    train = data["train"]
    i = first_of(train, "fine_grained")
    context = [int(s) for s in train["context_segments"][i]]
    own = int(train["source_doc"][i].removeprefix("doc"))
    donors = [d * SEGS_PER_DOC for d in range(N_DOCS) if d != own][: 9 - len(context)]
    train = _replace(train, i, "context_segments", context + donors)
    train.loc[i, "n_tokens"] = 9 * SEG_TOKENS
    return train, data["val"]


def _gold_slot_points_elsewhere(data):
    train = data["train"]
    i = first_of(train, "fine_grained")
    wrong = (int(train["gold_slots"][i][0]) + 1) % len(train["context_segments"][i])
    return _replace(train, i, "gold_slots", [wrong]), data["val"]


def _duplicated_example(data):
    train = data["train"]
    return pd.concat([train, train.iloc[[5]]], ignore_index=True), data["val"]


def _same_content_new_id(data):
    train = data["train"]
    copy = train.iloc[[first_of(train, "fine_grained")]].assign(example_id="train-copy")
    return pd.concat([train, copy], ignore_index=True), data["val"]


def _short_contexts_only(data):
    train = make_split("train", 400, PARAMS.synthesize.mix, seed=1, lengths=short_lengths)
    return train, data["val"]


def _val_filler_from_a_train_doc(data):
    val = data["val"]
    i = first_of(val, "fine_grained")
    context = [int(s) for s in val["context_segments"][i]]
    slot = int(val["gold_slots"][i][0])
    context[(slot + 1) % len(context)] = 0  # segment 0 belongs to doc000, a train document
    return data["train"], _replace(val, i, "context_segments", context)


def _leaked_probe_sentence(data):
    train = data["train"]
    i = first_of(train, "fine_grained")
    gold, slot = int(train["gold_segments"][i][0]), int(train["gold_slots"][i][0])
    filler = int(train["context_segments"][i][(slot + 1) % len(train["context_segments"][i])])
    text = {**data["text"], filler: f"{data['text'][filler]} {PROBES[0]}"}
    assert filler != gold
    return train, data["val"], {"text": text}


def _ungrounded_template_answer(data):
    qa = data["qa"].copy()
    qa.loc[7, "answer"] = "words that the segment does not contain."
    return data["train"], data["val"], {"qa": qa}


def _empty_answer(data):
    val = data["val"].copy()
    val.at[3, "answer"] = "  "
    return data["train"], val


def _filler_from_answer_doc(data):
    train = data["train"]
    i = first_of(train, "fine_grained")
    context = [int(s) for s in train["context_segments"][i]]
    gold, slot = int(train["gold_segments"][i][0]), int(train["gold_slots"][i][0])
    context[(slot + 1) % len(context)] = gold - gold % SEGS_PER_DOC + (gold + 1) % SEGS_PER_DOC
    return _replace(train, i, "context_segments", context), data["val"]


@pytest.mark.parametrize(
    ("corrupt", "failed", "says"),
    [
        (
            _bias_to_start,
            {
                "gold_positions_uniform.all",
                "gold_positions_uniform.fine_grained",
                "gold_positions_uniform.integration",
            },
            ["gold_positions_uniform.fine_grained", "KS p=", "chi-square p="],
        ),
        (_mix_off_by_5_points, {"kind.mix.train"}, ["fine_grained 0.580 (expected 0.630)"]),
        (_context_over_max, {"n_tokens.long_range"}, ["train-fine_grained-", "[1152]"]),
        (
            _gold_slot_points_elsewhere,
            {"gold_slot.holds_gold_segment"},
            ["context_segments[gold_slot] is the gold segment", "train-fine_grained-"],
        ),
        (
            _duplicated_example,
            {"example_id.unique", "example.content_unique"},
            ["example_id is unique", "2 of 441 rows"],
        ),
        (_same_content_new_id, {"example.content_unique"}, ["train-copy"]),
        (_short_contexts_only, {"n_tokens.balanced.train"}, ["chi-square p="]),
        (
            _val_filler_from_a_train_doc,
            {"splits.disjoint_by_document"},
            ["n_docs_in_other_split [1"],
        ),
        (_leaked_probe_sentence, {"leakage.probe_ngrams"}, ["train-fine_grained-"]),
        (_ungrounded_template_answer, {"qa.template.grounded"}, ["1 of"]),
        (_empty_answer, {"answer.non_empty"}, ["val-"]),
        (_filler_from_answer_doc, {"fillers.from_other_docs"}, ["answer's own document"]),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_corruption_fails_the_named_expectation(data, corrupt, failed, says):
    train, val, *changed = corrupt(data)
    report = run_gate(train, val, data, **(changed[0] if changed else {}))
    assert not report.success
    assert {r.check for r in report.failed} == failed, report.failures_text()
    text = report.failures_text()
    assert text.startswith(f"data quality gate FAILED: {len(failed)} of ")
    for words in [*sorted(failed), *says]:
        assert words in text, text


def test_broken_schema_fails_and_skips_the_rest(data):
    train, val = (data[split].drop(columns=["answer"]) for split in ("train", "val"))
    report = run_gate(train, val, data)
    assert not report.success
    assert report.skipped == ["in2_examples", "in2_gold_slots"]
    text = report.failures_text()
    assert "schema.columns" in text and "answer" in text and "fix the schema first" in text


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One store for both stage runs: creating MLflow's tables costs seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.mark.parametrize("corrupt", [None, _duplicated_example], ids=["clean", "duplicate"])
def test_stage_writes_docs_summary_and_sets_the_exit_code(
    data, tmp_path, mlflow_uri, corrupt, tiny_model_dir
):
    """The real stage script on a small dataset: too small for per-kind position tests.

    Its inputs are laid out as the pipeline leaves them: the segments' token ids (the stage
    decodes them with models/base's tokenizer), the QA pairs and the probe contexts.
    """
    small = {
        "train": make_split("train", 60, PARAMS.synthesize.mix, seed=3),
        "val": make_split("val", 10, PARAMS.synthesize.mix, seed=4),
    }
    if corrupt is not None:
        small["train"], small["val"] = corrupt(small)
    for folder in ("data/in2", "data/segments", "data/qa", "data/probes/document", "models"):
        (tmp_path / folder).mkdir(parents=True)
    for split, frame in small.items():
        frame.to_parquet(tmp_path / f"data/in2/{split}.parquet", index=False)
    shutil.copytree(tiny_model_dir, tmp_path / "models/base")
    tokenizer = load_tokenizer(tiny_model_dir)
    pad = tokenizer(" pad", add_special_tokens=False)["input_ids"]
    ids = []
    for seg in data["segments"]["seg_id"]:
        own = tokenizer(segment_text(int(seg)), add_special_tokens=False)["input_ids"]
        ids += (own + pad * SEG_TOKENS)[:SEG_TOKENS]
    np.save(tmp_path / "data/segments/tokens.npy", np.asarray(ids, dtype=np.uint16))
    data["segments"].to_parquet(tmp_path / "data/segments/segments.parquet", index=False)
    data["qa"].to_parquet(tmp_path / "data/qa/qa.parquet", index=False)
    (tmp_path / "data/probes/document/contexts.jsonl").write_text(
        "".join(json.dumps({"context_id": i, "text": t}) + "\n" for i, t in enumerate(PROBES))
    )
    params = PARAMS.model_dump(by_alias=True, mode="json")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "GX_ANALYTICS_ENABLED": "false",
    }
    env.pop("DVC_ROOT", None)
    out = subprocess.run(
        [sys.executable, str(REPO / "stages/validate.py"), "--params", "params.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    summary = json.loads((tmp_path / "reports/data_quality/summary.json").read_text())
    assert (tmp_path / "reports/data_quality/docs/index.html").is_file()
    assert len(summary["dataset"]["md5"]) == 36 and summary["dataset"]["md5"].endswith(".dir")
    if corrupt is None:
        assert out.returncode == 0, out.stderr[-3000:]
        assert summary["success"] is True
        assert summary["expectations"]["qa.template.grounded"]["success"] is True
        assert summary["expectations"]["leakage.probe_ngrams"]["success"] is True
        per_kind = summary["expectations"]["gold_positions_uniform.integration"]
        assert per_kind["success"] is True
        assert per_kind["observed"]["status"] == "insufficient data"
        assert per_kind["observed"]["n"] < per_kind["observed"]["min_n"]
        assert "ks_p" not in per_kind["observed"]
        db = sqlite3.connect(mlflow_uri.removeprefix("sqlite:///"))
        run = db.execute(
            "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE r.name = 'validate' AND t.key = 'dataset_md5' AND t.value = ?",
            (summary["dataset"]["md5"],),
        ).fetchone()
        assert run is not None
        metrics = {k for (k,) in db.execute("SELECT key FROM metrics WHERE run_uuid = ?", run)}
        assert {"dq.success", "dq.gold_positions_uniform.all.ks_p"} <= metrics
    else:
        assert out.returncode == 1, out.stderr[-3000:]
        assert summary["success"] is False
        assert summary["failed"] == ["example_id.unique", "example.content_unique"]
        assert "example_id.unique" in out.stderr


def test_template_grounding_follows_each_cue_and_survives_numbers_in_answers():
    text = "The road was built in 1990. It is Route 2. The bridge opened in May 2001 after delays."
    assert template_grounded("in 1990.", ["The road was built"], text)
    assert not template_grounded("in 1991.", ["The road was built"], text)
    cues = ["It is", "The bridge opened"]
    assert template_grounded("1. Route 2. 2. in May 2001", cues, text)  # " 2. " inside part 1
    assert not template_grounded("1. Route 3. 2. in May 2001", cues, text)
    assert not template_grounded("1. Route 2.", cues, text)  # a part missing
