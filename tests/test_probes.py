"""Probe builder invariants on a tiny corpus: the output contract other tools read."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from in2.model import load_tokenizer
from in2.outputs import read_jsonl
from in2.params import InputError, ProbeParams
from in2.probing.build import Pool, Provenance, build_probes, build_task, write_probes
from in2.probing.fallback import WIKI_OFFLINE, wiki_offline_documents
from in2.probing.tasks import Item, ProbeSources, load_entities, load_functions, split_sentences
from in2.prompting import PromptEncoder
from in2.registry import PROBE_TASKS

REPO = Path(__file__).resolve().parents[1]
WORDS = [
    *("river", "stone", "light", "music", "paper", "garden", "window", "city", "forest"),
    *("winter", "market", "bridge", "letter", "silver", "engine", "harbor", "castle"),
    *("mirror", "planet", "valley", "island", "candle", "thunder", "meadow", "theory"),
]

QUERY_COLUMNS = {
    "document": {"completion"},
    "code": {"completion"},
    "database": {"label", "description"},
}
COMMON_QUERY_COLUMNS = {
    *("task", "context_tokens", "set_id", "position_id", "context_id", "question", "keyword"),
}
CONTEXT_COLUMNS = {"context_id", "context_tokens", "set_id", "text", "n_tokens", "n_items"}


def tiny_corpus(n_docs: int = 30) -> pd.DataFrame:
    """Documents of random 14-word sentences: no two share an 8-word span."""
    rng = np.random.default_rng(123)
    rows = []
    for i in range(n_docs):
        sentences = [" ".join(rng.choice(WORDS, 14)).capitalize() + "." for _ in range(3)]
        rows.append(
            {
                "doc_id": i,
                "title": f"Topic {i:03d}",
                "text": " ".join(sentences),
                "description": f"a made-up subject number {i}",
                "source": "test",
            }
        )
    return pd.DataFrame(rows)


def tiny_code_root(root: Path) -> Path:
    """A folder of Python files, with a test folder the loader must skip."""
    functions = [
        f'def func_{i:02d}(x):\n    """Doc."""\n    a{i} = x + {i}\n\n    # note\n'
        f"    b{i} = a{i} * {i + 2}\n    return b{i} - {i}\n"
        for i in range(40)
    ]
    nested = "def outer_fn():\n    def inner():\n        pass\n    return inner\n    pass\n"
    short = "def f(x):\n    y = x\n    z = y\n    return z\n"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("\n".join([*functions, nested, short]))
    (root / "tests").mkdir()
    (root / "tests" / "test_mod.py").write_text(
        "def test_something_long():\n    a = 1\n    b = 2\n    assert a < b\n"
    )
    return root


@pytest.fixture(scope="module")
def encoder(tiny_model_dir: Path) -> PromptEncoder:
    return PromptEncoder.create(load_tokenizer(tiny_model_dir), "chat")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> ProbeSources:
    return ProbeSources(tiny_corpus(), tiny_code_root(tmp_path_factory.mktemp("code")))


PARAMS = ProbeParams(context_tokens=200, sets_per_task=2)
TARGET = PARAMS.context_tokens[0]


def build(sources: ProbeSources, encoder: PromptEncoder, seed: int = 0) -> dict:
    return build_probes(sources, encoder, PARAMS.tasks, PARAMS.context_tokens, 2, seed)


def pool(items: list[Item]) -> Pool:
    return Pool(items, Provenance("test", {"test": len(items)}))


def test_output_contract_and_stats(
    sources: ProbeSources, encoder: PromptEncoder, tmp_path: Path
) -> None:
    write_probes(build(sources, encoder), tmp_path / "probes")
    stats = json.loads((tmp_path / "probes" / "stats.json").read_text())
    for task in PARAMS.tasks:
        contexts = read_jsonl(tmp_path / "probes" / task / "contexts.jsonl")
        queries = read_jsonl(tmp_path / "probes" / task / "queries.jsonl")
        assert [c["set_id"] for c in contexts] == [0, 1]
        assert all(set(c) == CONTEXT_COLUMNS for c in contexts)
        assert all(set(q) == COMMON_QUERY_COLUMNS | QUERY_COLUMNS[task] for q in queries)
        assert all(q["task"] == task for q in queries)
        assert stats[task]["n_queries"] == len(queries)
        assert [s["n_items"] for s in stats[task]["sets"]] == [c["n_items"] for c in contexts]
    assert not list(tmp_path.glob(".probes*")), "no temporary folder may be left behind"


def test_every_position_asked_once_with_a_unique_keyword_of_its_own_item(
    sources: ProbeSources, encoder: PromptEncoder
) -> None:
    for task, sets in build(sources, encoder).items():
        spec = PROBE_TASKS[task]
        for s in sets:
            text = s.context["text"]
            items = text.split(spec.separator)
            assert len(items) == s.context["n_items"] > 1
            # the tiny corpus has no ambiguous keyword: every position is asked, once
            assert [q["position_id"] for q in s.queries] == list(range(len(items)))
            assert s.n_skipped == 0
            for q in s.queries:
                assert q["context_id"] == s.context["context_id"]
                assert text.count(q["keyword"]) == 1
                assert q["keyword"] in items[q["position_id"]]
                assert q["keyword"] in q["question"]
                for gold in (q.get("completion"), q.get("label"), q.get("description")):
                    assert gold is None or gold in items[q["position_id"]]


def test_contexts_fit_the_token_budget_and_sets_use_different_items(
    sources: ProbeSources, encoder: PromptEncoder
) -> None:
    for task, sets in build(sources, encoder).items():
        for s in sets:
            n_tokens = s.context["n_tokens"]
            assert n_tokens == len(encoder.context(s.context["text"])) <= TARGET
            assert n_tokens > TARGET * 0.7, "a context should be nearly full"
        items = [set(s.context["text"].split(PROBE_TASKS[task].separator)) for s in sets]
        assert not items[0] & items[1], f"{task}: sets share items although the pool is large"


def test_every_set_holds_the_same_number_of_items(encoder: PromptEncoder) -> None:
    # items of 1 to 9 words: packed alone, the sets would hold different numbers of items
    spec = replace(
        PROBE_TASKS["document"], name="toy", render="{text}", answer={"completion": "text"}
    )
    items = [Item({"text": f"item{i} " + "word " * (i % 9)}, (f"item{i} ",)) for i in range(200)]
    sets = build_task(spec, pool(items), encoder, 60, 6, np.random.default_rng(0))
    assert len({s.context["n_items"] for s in sets}) == 1
    for s in sets:
        n = s.context["n_items"]
        assert len(s.context["text"].split("\n")) == n and s.context["n_tokens"] <= 60
        assert [q["position_id"] for q in s.queries] == list(range(n))


def test_items_per_context_gives_every_set_that_many_distinct_items(
    encoder: PromptEncoder,
) -> None:
    # items of 1 to 9 words: filling 60 tokens would give ~10 items; the count wins over it
    spec = replace(
        PROBE_TASKS["document"], name="toy", render="{text}", answer={"completion": "text"}
    )
    items = [Item({"text": f"item{i} " + "word " * (i % 9)}, (f"item{i} ",)) for i in range(200)]
    sets = build_task(spec, pool(items), encoder, 60, 3, np.random.default_rng(0), 40)
    for s in sets:
        lines = s.context["text"].split("\n")
        assert s.context["n_items"] == len(lines) == len(set(lines)) == 40
        assert s.context["n_tokens"] == len(encoder.context(s.context["text"])) > 60
        assert [q["position_id"] for q in s.queries] == list(range(40))
    with pytest.raises(
        InputError, match=r"probe.items_per_context.toy: 300 items per context, but the pool "
    ):
        build_task(spec, pool(items), encoder, 60, 1, np.random.default_rng(0), 300)


def test_deterministic_for_a_seed(sources: ProbeSources, encoder: PromptEncoder) -> None:
    def dump(probes: dict) -> str:
        return json.dumps({t: [(s.context, s.queries) for s in sets] for t, sets in probes.items()})

    assert dump(build(sources, encoder, seed=0)) == dump(build(sources, encoder, seed=0))
    assert dump(build(sources, encoder, seed=0)) != dump(build(sources, encoder, seed=1))


def test_ambiguous_keywords_are_never_asked(encoder: PromptEncoder) -> None:
    spec = replace(
        PROBE_TASKS["document"], name="toy", render="{text}", answer={"completion": "text"}
    )
    items = [
        Item({"text": "alpha shared words here"}, ("shared words",)),  # only candidate: twice
        Item({"text": "beta shared words there"}, ("shared words", "beta")),  # falls back
        Item({"text": "gamma unique"}, ("gamma",)),
    ]
    rng = np.random.default_rng(0)
    (s,) = build_task(spec, pool(items), encoder, context_tokens=1000, n_sets=1, rng=rng)
    text = s.context["text"]
    assert s.context["n_items"] == 3
    asked = {text.split("\n")[q["position_id"]].split()[0]: q["keyword"] for q in s.queries}
    assert asked == {"beta": "beta", "gamma": "gamma"}
    assert s.n_skipped == 1


def test_too_small_budget_is_a_clear_error(sources: ProbeSources, encoder: PromptEncoder) -> None:
    items = PROBE_TASKS["document"].loaders["offline"](sources, np.random.default_rng(0))
    with pytest.raises(
        ValueError, match=r"a context of 3 tokens \(probe\.context_tokens\) is too small"
    ):
        build_task(PROBE_TASKS["document"], pool(items), encoder, 3, 1, np.random.default_rng(0))


def test_code_loader_skips_tests_nested_defs_and_short_names(sources: ProbeSources) -> None:
    items = load_functions(sources, np.random.default_rng(0))
    names = {i.fields["function_name"] for i in items}
    assert names == {f"func_{i:02d}" for i in range(40)}
    item = next(i for i in items if i.fields["function_name"] == "func_07")
    # docstring and comment skipped, lines flattened to 4 spaces as the paper's pieces
    assert item.fields["function_define"] == "    a7 = x + 7\n    b7 = a7 * 9\n    return b7 - 7"
    assert sorted(item.keywords) == ["a7 = x + 7", "b7 = a7 * 9", "return b7 - 7"]


def test_entities_get_unique_fixed_length_ids(sources: ProbeSources) -> None:
    items = load_entities(sources, np.random.default_rng(0))
    ids = [i.fields["id"] for i in items]
    assert len(ids) == len(set(ids)) == 30
    assert all(len(i) == 8 and i[0] == "Q" and i[1:].isdigit() for i in ids)


def test_split_sentences_keeps_initials_together() -> None:
    text = "It was written by Arthur C. Clarke in 1968.  It stars  Keir Dullea. Done!"
    assert split_sentences(text) == [
        "It was written by Arthur C. Clarke in 1968.",
        "It stars Keir Dullea.",
        "Done!",
    ]


def untitled_corpus() -> pd.DataFrame:
    """The tiny corpus as a local corpus of plain texts gives it: no title, no description."""
    return tiny_corpus().assign(title="", description="", source="local:docs.jsonl")


def test_a_corpus_without_titles_draws_entities_from_the_wiki_offline_package(
    sources: ProbeSources, encoder: PromptEncoder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="in2.probing.build"):
        probes = build(replace(sources, heldout=untitled_corpus(), fallback=WIKI_OFFLINE), encoder)
    write_probes(probes, tmp_path / "probes")
    stats = json.loads((tmp_path / "probes" / "stats.json").read_text())
    wiki = wiki_offline_documents()
    n_wiki = len(load_entities(ProbeSources(wiki), np.random.default_rng(0)))
    assert n_wiki == 9862  # the package's titles with a description, each once
    assert stats["database"]["source"] == "wiki_offline package"
    assert stats["database"]["items_by_source"] == {"heldout": 0, "wiki_offline package": n_wiki}
    # the prose and the code need no title: they keep their own material
    assert (stats["document"]["source"], stats["document"]["items_by_source"]) == (
        "heldout",
        {"heldout": 90},
    )
    assert stats["code"]["source"] == "stdlib"
    warnings = [r.getMessage() for r in caplog.records if r.name == "in2.probing.build"]
    assert warnings == [
        f"database probe: 0 items from heldout cannot fill a {TARGET}-token context; "
        f"its {n_wiki} items come from wiki_offline package"
    ]
    labels = dict(zip(wiki["title"].str.strip(), wiki["description"].str.strip(), strict=True))
    queries = [q for s in probes["database"] for q in s.queries]
    assert queries and all(labels[q["label"]] == q["description"] for q in queries)


def test_a_wiki_offline_corpus_never_falls_back_on_its_own_package(
    sources: ProbeSources, encoder: PromptEncoder
) -> None:
    """Its other articles are training data: a held-out split too small is an error instead."""
    small = replace(sources, heldout=tiny_corpus(3).assign(source="wiki_offline"))
    with pytest.raises(InputError) as err:
        build_probes(replace(small, fallback=WIKI_OFFLINE), encoder, ["database"], [TARGET], 1, 0)
    assert str(err.value) == (
        f"database probe: 3 items from heldout cannot fill one {TARGET}-token context "
        "(probe.context_tokens); lower probe.context_tokens or give it more held-out documents "
        "with a title and a description (corpus.heldout_fraction); wiki_offline package is no "
        "fallback: the corpus is read from it"
    )


def test_too_few_items_and_no_fallback_is_one_line(
    sources: ProbeSources, encoder: PromptEncoder, tmp_path: Path
) -> None:
    no_code = replace(sources, code_root=tmp_path)
    with pytest.raises(InputError) as err:
        build_probes(no_code, encoder, ["code"], [TARGET], 1, 0)
    assert str(err.value) == (
        f"code probe: 0 items from stdlib cannot fill one {TARGET}-token context "
        "(probe.context_tokens); lower probe.context_tokens or give it more Python files "
        "(the standard library's .py sources)"
    )


def test_the_stage_reports_too_few_items_in_one_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`stages/probe_data.py` on a wiki_offline corpus whose held-out split is too small: exit 2
    and one line naming the task, the count, the source and what to do; no traceback."""
    shutil.copytree(tiny_model_dir, tmp_path / "models" / "base")
    (tmp_path / "data" / "corpus").mkdir(parents=True)
    tiny_corpus(3).assign(source="wiki_offline").to_parquet(
        tmp_path / "data" / "corpus" / "heldout.parquet"
    )
    params = {"probe": {"tasks": ["database"], "context_tokens": TARGET, "sets_per_task": 1}}
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    out = subprocess.run(
        [sys.executable, str(REPO / "stages" / "probe_data.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.splitlines()[-1] == (
        f"error: database probe: 3 items from heldout cannot fill one {TARGET}-token context "
        "(probe.context_tokens); lower probe.context_tokens or give it more held-out documents "
        "with a title and a description (corpus.heldout_fraction); wiki_offline package is no "
        "fallback: the corpus is read from it"
    )
    assert not (tmp_path / "data" / "probes").exists()
