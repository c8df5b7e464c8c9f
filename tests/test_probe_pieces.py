"""Probe sets from the paper's released pieces (microsoft/FILM, VaLProbing/pieces/), any lengths."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from in2.model import load_tokenizer
from in2.probing.build import ProbeSet, build_probes, read_probes, write_probes
from in2.probing.tasks import ProbeSources
from in2.prompting import PromptEncoder
from in2.registry import PROBE_TASKS

SHARED_PIECES = Path(__file__).resolve().parents[2] / "shared" / "data" / "valprobing"
NO_HELDOUT = pd.DataFrame(columns=["title", "text", "description"])
WORDS = ["amber", "birch", "cedar", "dune", "ember", "fjord", "grove", "heath", "inlet", "jade"]


def sentence_rows() -> list[dict[str, str]]:
    """Twelve sentences of distinct words; the piece is an 8-word span of its sentence."""
    rows = []
    for i in range(12):
        words = [f"{w}{i}" for w in WORDS] + ["end."]
        rows.append({"sentence": " ".join(words).capitalize(), "piece": " ".join(words[2:10])})
    return rows


def function_rows() -> list[dict[str, str]]:
    """Ten functions; functions 0 and 1 share the line asked about (ambiguous together)."""
    rows = []
    for i in range(10):
        lines = [f"a{i} = load({i})", "f.write('Hello')" if i < 2 else f"b{i} = a{i} + 1", "pass"]
        rows.append(
            {
                "function_name": f"fn_{i}",
                "function_define": "\n".join("    " + line for line in lines),
                "piece": lines[1],
            }
        )
    rows.append(dict(rows[5]))  # a repeated row: one item, one position
    return rows


def entity_rows() -> list[dict[str, str]]:
    """Entities; the id Q12 also occurs inside Q123 (ambiguous when both are in a context)."""
    ids = ["Q12", "Q123", *(f"Q9{i:03d}" for i in range(8))]
    return [
        {"id": q, "label": f"Label {chr(65 + i)}", "dcpt": f"description {chr(65 + i)}"}
        for i, q in enumerate(ids)
    ]


def write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def pieces_folder(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_rows(root / "document_sentences.jsonl", sentence_rows())
    write_rows(root / "code_functions.jsonl", function_rows())
    write_rows(root / "database_entities.jsonl", entity_rows())
    return root


@pytest.fixture(scope="module")
def encoder(tiny_model_dir: Path) -> PromptEncoder:
    return PromptEncoder.create(load_tokenizer(tiny_model_dir), "chat")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pieces_folder(tmp_path_factory.mktemp("pieces"))


def build(folder: Path, encoder: PromptEncoder, lengths: list[int], n_sets: int = 2) -> dict:
    sources = ProbeSources(NO_HELDOUT, pieces=folder)
    return build_probes(sources, encoder, list(PROBE_TASKS), lengths, n_sets, seed=0)


def check_set(task: str, s: ProbeSet, encoder: PromptEncoder) -> list[str]:
    """The invariants of any set; returns the items of its context, in position order."""
    text = s.context["text"]
    items = text.split(PROBE_TASKS[task].separator)
    assert len(items) == s.context["n_items"]
    assert s.context["n_tokens"] == len(encoder.context(text)) <= s.context["context_tokens"]
    positions = [q["position_id"] for q in s.queries]
    assert positions == sorted(set(positions)), "every position is asked at most once"
    assert len(positions) + s.n_skipped == len(items), "...and every position is asked or skipped"
    for q in s.queries:
        assert text.count(q["keyword"]) == 1, f"ambiguous query {q['question']!r}"
        assert q["keyword"] in items[q["position_id"]]
    return items


def test_paper_pieces_render_and_ask_as_the_paper(folder: Path, encoder: PromptEncoder) -> None:
    probes = build(folder, encoder, [2000], n_sets=1)  # room for every item: all in one context

    (doc,) = probes["document"]
    items = check_set("document", doc, encoder)
    rows = {r["sentence"]: r for r in sentence_rows()}
    assert sorted(items) == sorted(rows)
    assert len(doc.queries) == 12
    for q in doc.queries:
        sentence = items[q["position_id"]]
        assert q["keyword"] == rows[sentence]["piece"]
        assert q["question"] == (
            f'Which sentence contains the piece "{q["keyword"]}"? Return the whole sentence.'
        )
        assert q["completion"] == sentence

    (code,) = probes["code"]
    items = check_set("code", code, encoder)
    assert "def fn_3:\n    a3 = load(3)\n    b3 = a3 + 1\n    pass" in items
    assert len(items) == 10, "the repeated row is one item"
    asked = {q["completion"]: q for q in code.queries}
    assert sorted(asked) == [f"fn_{i}" for i in range(2, 10)], "fn_0/fn_1 share their piece"
    assert asked["fn_3"]["question"] == (
        'Which function contains the code snip "b3 = a3 + 1"? Answer with the function name.'
    )
    assert items[asked["fn_3"]["position_id"]].startswith("def fn_3:\n")
    assert code.n_skipped == 2

    (db,) = probes["database"]
    items = check_set("database", db, encoder)
    assert "<id: Q123, label: Label B, description: description B>" in items
    asked = {q["keyword"]: q for q in db.queries}
    assert "Q12" not in asked, "Q12 also occurs inside Q123"
    assert len(asked) == 9
    assert asked["Q123"]["question"] == "What are the label and description for the id Q123?"
    assert (asked["Q123"]["label"], asked["Q123"]["description"]) == ("Label B", "description B")


def test_several_lengths_give_their_own_sets(
    folder: Path, encoder: PromptEncoder, tmp_path: Path
) -> None:
    lengths = [60, 150]
    probes = build(folder, encoder, lengths)
    write_probes(probes, tmp_path / "probes")
    stats = json.loads((tmp_path / "probes" / "stats.json").read_text())
    for task, sets in probes.items():
        assert [(s.context["context_tokens"], s.context["set_id"]) for s in sets] == [
            (60, 0),
            (60, 1),
            (150, 0),
            (150, 1),
        ]
        n_items = {
            t: [s.context["n_items"] for s in sets if s.context["context_tokens"] == t]
            for t in lengths
        }
        assert min(n_items[150]) > max(n_items[60]), f"{task}: longer contexts hold more items"
        for s in sets:
            check_set(task, s, encoder)
            assert all(q["context_tokens"] == s.context["context_tokens"] for q in s.queries)
        contexts, queries = read_probes(tmp_path / "probes", task)
        assert [c["context_id"] for c in contexts] == [
            f"{task}-60-0",
            f"{task}-60-1",
            f"{task}-150-0",
            f"{task}-150-1",
        ]
        assert len(queries) == stats[task]["n_queries"] == sum(len(s.queries) for s in sets)
        assert [s["context_tokens"] for s in stats[task]["sets"]] == [60, 60, 150, 150]


def test_a_missing_pieces_file_says_where_to_get_it(tmp_path: Path, encoder: PromptEncoder) -> None:
    folder = pieces_folder(tmp_path / "pieces")
    (folder / "code_functions.jsonl").unlink()
    with pytest.raises(FileNotFoundError) as err:
        build(folder, encoder, [200])
    message = str(err.value)
    assert message.startswith(f"{folder / 'code_functions.jsonl'} does not exist; probe.pieces")
    assert "public microsoft/FILM repository, folder VaLProbing/pieces/" in message


@pytest.mark.parametrize(
    ("file", "line", "message"),
    [
        (
            "document_sentences.jsonl",
            '{"sentence": "A whole sentence here."}',
            "line 13: no text in required key 'piece' (each row needs sentence, piece)",
        ),
        (
            "database_entities.jsonl",
            '{"id": "Q5", "label": "", "dcpt": "x"}',
            "line 11: no text in required key 'label' (each row needs id, label, dcpt)",
        ),
        ("code_functions.jsonl", "def f(): pass", "line 12: not valid JSON (Expecting value"),
        ("code_functions.jsonl", '["fn", "body"]', "line 12: not a JSON object"),
    ],
)
def test_a_bad_pieces_row_names_file_line_and_key(
    tmp_path: Path, encoder: PromptEncoder, file: str, line: str, message: str
) -> None:
    folder = pieces_folder(tmp_path / "pieces")
    with (folder / file).open("a") as f:
        f.write(line + "\n")
    with pytest.raises(ValueError) as err:
        build(folder, encoder, [200])
    assert str(err.value).startswith(f"{folder / file}, {message}")
    assert "download them from there unchanged" in str(err.value)


@pytest.mark.skipif(
    not SHARED_PIECES.is_dir(),
    reason=f"the paper's pieces are not at {SHARED_PIECES} (copy microsoft/FILM "
    "VaLProbing/pieces/ there to run this test)",
)
def test_the_papers_released_pieces_at_a_small_length(encoder: PromptEncoder) -> None:
    probes = build(SHARED_PIECES, encoder, [400], n_sets=4)
    for task, sets in probes.items():
        assert len(sets) == 4
        for s in sets:
            items = check_set(task, s, encoder)
            assert len(items) >= 5, f"{task}: a 400-token context holds several items"
            assert s.context["n_tokens"] > 400 * 0.7, "a context should be nearly full"
        contexts = [s.context["text"] for s in sets]
        assert len(set(contexts)) == 4, f"{task}: the 4 sets differ"
