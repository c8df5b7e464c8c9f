"""Any corpus runs end to end: `dvc repro` on the smoke profile over plain, untitled documents.

A user's own corpus (C4, say) has neither titles nor descriptions. Then the database probe draws
its entities from the wiki_offline package instead of the held-out split, the `record` and
`entry` QA tasks (no unit without a title) pass their share to the prose tasks, the `general`
kind asks to complete the documents' first sentences (instead of "what is <title>?"), and the
gate and the report run as on the default corpus. The documents are gzipped JSON Lines with only
a `text` field, generated here from a fixed word list with a seeded RNG.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_ok, smoke_repo_copy

pytestmark = pytest.mark.e2e

N_DOCS = 400
SHARDS = 2
WIKI_ENTITIES = 9862
"""Titles with a description in the wiki_offline package, each once: the database probe's pool."""
SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "vo", "shi", "den", "mar", "tel", "gro", "pa")
WORDS = [a + b + c for a in SYLLABLES for b in SYLLABLES for c in ("", "s", "n", "ta")]
"""676 made-up words: sentences drawn from them are distinct, and no probe shares a 10-gram."""
STAGES = (
    *("base_model", "corpus", "segment", "probe_data", "qa", "synthesize", "validate", "train"),
    *("probe@base", "probe@in2", "report"),
)


def untitled_document(rng: random.Random) -> str:
    """8-20 sentences of 10-22 words drawn from WORDS: prose without a title."""
    sentences = []
    for _ in range(rng.randint(8, 20)):
        words = [rng.choice(WORDS) for _ in range(rng.randint(10, 22))]
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def write_untitled_corpus(folder: Path, seed: int = 18) -> None:
    """N_DOCS documents as SHARDS `.jsonl.gz` shards of `{"text": ...}` rows, byte-deterministic."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    for shard in range(SHARDS):
        rows = [json.dumps({"text": untitled_document(rng)}) for _ in range(N_DOCS // SHARDS)]
        path = folder / f"part-{shard:05d}.jsonl.gz"
        with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
            f.write(("\n".join(rows) + "\n").encode())


@pytest.fixture(scope="module")
def untitled_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`dvc repro` of a smoke-profile copy on the untitled corpus, with the default recipe's
    record units and QA task shares."""
    root = tmp_path_factory.mktemp("any_corpus")
    repo, env = smoke_repo_copy(root)
    write_untitled_corpus(root / "corpus")
    default = yaml.safe_load((REPO / "params.yaml").read_text())
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["corpus"] |= {"source": "local", "path": str(root / "corpus")}
    params["segment"]["units"] = default["segment"]["units"]
    params["qa"]["tasks"] = default["qa"]["tasks"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    repro = run_ok(["dvc", "repro"], repo, env)
    return repo, repro.stdout + repro.stderr


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_every_stage_runs_and_the_gate_and_the_report_pass(untitled_run):
    repo, log = untitled_run
    for stage in STAGES:
        assert f"Running stage '{stage}'" in log
    assert "Traceback" not in log
    corpus = read_json(repo / "metrics/corpus.json")
    assert (corpus["read"], corpus["kept"], corpus["dropped"]) == (N_DOCS, N_DOCS, {})
    assert [f["path"] for f in corpus["source"]["files"]] == [
        "part-00000.jsonl.gz",
        "part-00001.jsonl.gz",
    ]
    assert read_json(repo / "reports/data_quality/summary.json")["success"] is True
    for model in ("base", "in2"):
        scores = read_json(repo / f"results/probe/{model}/scores.json")
        assert {"document", "code", "database", "all"} <= set(scores)
    page = (repo / "reports/index.html").read_text()
    assert 'id="run-scores"' in page and 'id="paper-scores"' in page


def test_the_database_probe_names_its_fallback_source(untitled_run):
    repo, log = untitled_run
    stats = read_json(repo / "data/probes/stats.json")
    assert stats["database"]["source"] == "wiki_offline package"
    assert stats["database"]["items_by_source"] == {
        "heldout": 0,
        "wiki_offline package": WIKI_ENTITIES,
    }
    assert (stats["document"]["source"], stats["code"]["source"]) == ("heldout", "stdlib")
    assert (
        "database probe: 0 items from heldout cannot fill a 384-token context; "
        f"its {WIKI_ENTITIES} items come from wiki_offline package"
    ) in log


def test_record_and_entry_shares_go_to_the_prose_tasks(untitled_run):
    repo, log = untitled_run
    accepted = read_json(repo / "metrics/qa.json")["accepted"]
    assert accepted["fine_grained:record"] == accepted["fine_grained:entry"] == 0
    prose = accepted["fine_grained:continuation"] + accepted["fine_grained:quote"]
    assert accepted["fine_grained"] == prose > 0
    assert accepted["fine_grained:redistributed"] == prose - round(0.1 * prose) - round(0.3 * prose)
    assert "qa (template): no record or entry pair" in log


def test_general_pairs_complete_sentences_of_an_untitled_corpus(untitled_run):
    repo, log = untitled_run
    general = read_json(repo / "metrics/synthesize.json")["general_source"]
    assert general["source"]["pairs"] == (
        "sentence completion: no document has a title and a description"
    )
    assert general["kept"] > 0 and "no_title" not in general["dropped"]
    assert "general: sentence completion: no document has a title" in log
