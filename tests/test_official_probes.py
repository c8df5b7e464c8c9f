"""The paper's released probe and prediction formats, on tiny hand-made files (hand-computed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from in2.cli import main
from in2.model import load_model, load_tokenizer
from in2.params import InputError
from in2.probing.local import Decoding, run_task
from in2.probing.metrics import Bins
from in2.probing.official import read_official_probes, read_predictions, score_official
from in2.prompting import INSTRUCTION_HEAD, INSTRUCTION_MID, PromptEncoder

QUESTION = 'Which sentence contains the piece "{keyword}"?'


def film_prompt(context: str, question: str) -> str:
    """A prompt as the released files hold it: the FILM-7B template (microsoft/FILM README)."""
    return f"[INST] {INSTRUCTION_HEAD}{context}{INSTRUCTION_MID}{question} [/INST]"


def write_lines(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def task_rows(
    golds: list[dict[str, str]], n_sets: int = 2, n_positions: int = 4
) -> list[dict[str, Any]]:
    """Rows of n_sets x n_positions, set-major as released; one context per set."""
    rows = []
    for set_id in range(n_sets):
        context = "\n".join(f"item {set_id}-{p}" for p in range(n_positions))
        for position_id in range(n_positions):
            rows.append(
                {
                    "prompt": film_prompt(
                        context, QUESTION.format(keyword=f"{set_id}-{position_id}")
                    ),
                    "set_id": set_id,
                    "position_id": position_id,
                    **golds[n_positions * set_id + position_id],
                }
            )
    return rows


GOLD = "alpha beta gamma delta"
# word recall per row: set 0 -> 1, 1/2, 0, 1; set 1 -> 0, 1/2, 1, 1/4
DOC_PREDICTIONS = [GOLD, "alpha beta", "nothing", GOLD, "", "beta ALPHA x", GOLD, "Delta"]


@pytest.fixture
def document(tmp_path: Path) -> Path:
    return write_lines(tmp_path / "document_bi_32k.jsonl", task_rows([{"completion": GOLD}] * 8))


def test_document_scores_in_the_samples_format(document: Path, tmp_path: Path) -> None:
    preds = write_lines(
        tmp_path / "p.jsonl", [{"samples": [p, "ignored"]} for p in DOC_PREDICTIONS]
    )
    curve = score_official("document", document, preds, None, bin_size=2, binning="all")
    # set 0 bins: (1 + .5)/2 = .75, (0 + 1)/2 = .5; set 1 bins: (0 + .5)/2 = .25, (1 + .25)/2 = .625
    assert curve.bins == [0.5, 0.5625]
    assert curve.bins_std == [0.25, 0.0625]
    assert curve.avg == 0.53125
    assert curve.gap == 0.0625
    assert curve.n_queries == 8


def test_skip_listed_rows_are_left_out(document: Path, tmp_path: Path) -> None:
    preds = write_lines(tmp_path / "p.jsonl", [{"sample": p} for p in DOC_PREDICTIONS])
    skip = tmp_path / "skip.json"
    skip.write_text("[1, 6]")  # set 0 position 1 (score .5), set 1 position 2 (score 1)
    curve = score_official("document", document, preds, skip, bin_size=2, binning="all")
    # set 0 bins: 1, (0 + 1)/2 = .5; set 1 bins: (0 + .5)/2 = .25, .25
    assert curve.bins == [0.625, 0.375]
    assert curve.bins_std == [0.375, 0.125]
    assert curve.avg == 0.5
    assert curve.gap == 0.25
    assert curve.n_queries == 6


def test_cli_writes_the_probe_stage_scores_json(tmp_path: Path, capsys) -> None:
    golds = [{"label": "Paris", "description": "capital of France."}] * 8
    probes = write_lines(tmp_path / "database_forward_32k.jsonl", task_rows(golds))
    # relaxed match: set 0 -> 1, 1, 0, 0; set 1 -> 1, 0, 1, 1
    texts = ["paris", "The Capital of France", "London", "", "PARIS!", "Lyon", "paris", "paris"]
    preds = write_lines(tmp_path / "sample.jsonl", [{"sample": t} for t in texts])
    out = tmp_path / "scores.json"
    main(
        [
            *("score-official", "--task", "database", "--probes", str(probes)),
            *("--predictions", str(preds), "--bin-size", "2", "--out", str(out)),
        ]
    )
    # the paper's binning (the default) scores positions 0 and 2 only, the first of each bin:
    # bins: set 0 -> 1, 0; set 1 -> 1, 1; means 1, .5; std 0, .5
    curve = {
        "bins": [1.0, 0.5],
        "bins_std": [0.0, 0.5],
        "avg": 0.75,
        "gap": 0.5,
        "n_queries": 4,
        "bin_size": 2,
        "binning": "paper",
    }
    assert json.loads(out.read_text()) == {"database": curve, "all": {"avg": 0.75, "gap": 0.5}}
    assert "database Avg 0.7500, Gap 0.5000 over 4 queries in bins of 2 (paper binning)" in (
        capsys.readouterr().out
    )


def plot_py_avg_gap(
    rows: list[dict], predictions: list[str], skip: list[int], total_len: int, span_len: int
) -> tuple[float, float]:
    """The document task of microsoft/FILM VaLProbing/plot.py, transcribed line for line (its
    loops, its `range(span_start, span_end)` with `span_end = start + span_len - 1`)."""
    set_ids = sorted({f"set_{r['set_id']}" for r in rows})
    position2acc = {s: {i: [] for i in range(total_len)} for s in set_ids}
    for idx, (pred, label) in enumerate(zip(predictions, rows, strict=True)):
        if idx in skip:
            continue
        gt_words = set(label["completion"].strip().lower().split())
        pred_words = set(pred.strip().lower().split())
        position2acc[f"set_{label['set_id']}"][label["position_id"]].append(
            len(gt_words & pred_words) / len(gt_words)
        )
    span_num = int(total_len / span_len)
    span_acc_list = []
    for i in range(span_num):
        accs = []
        for set_id in set_ids:
            span_accs = []
            for position_id in range(span_len * i, span_len * i + span_len - 1):
                span_accs += position2acc[set_id][position_id]
            accs.append(sum(span_accs) / len(span_accs))
        span_acc_list.append(sum(accs) / len(accs))
    return sum(span_acc_list) / len(span_acc_list), max(span_acc_list) - min(span_acc_list)


def test_paper_binning_is_the_scripts_arithmetic_and_all_is_not(tmp_path: Path) -> None:
    """3 sets x 23 positions in bins of 5: 4 whole bins, whose last positions (4, 9, 14, 19)
    score apart from the rest, and 3 positions past the last whole bin; one row skip-listed."""
    rows = task_rows([{"completion": GOLD}] * 69, n_sets=3, n_positions=23)
    texts = []
    for row in rows:
        position_id, set_id = row["position_id"], row["set_id"]
        last_of_bin = position_id % 5 == 4 or position_id >= 20
        texts.append(" ".join(GOLD.split()[: 4 if last_of_bin else (position_id * 7 + set_id) % 4]))
    probes = write_lines(tmp_path / "document_bi_32k.jsonl", rows)
    preds = write_lines(tmp_path / "sample.jsonl", [{"sample": t} for t in texts])
    skip = tmp_path / "skip.json"
    skip.write_text("[7]")
    want_avg, want_gap = plot_py_avg_gap(rows, texts, [7], total_len=23, span_len=5)
    paper = score_official("document", probes, preds, skip, bin_size=5)
    assert paper.binning == "paper" and len(paper.bins) == 4
    assert paper.avg == pytest.approx(want_avg, abs=1e-9)
    assert paper.gap == pytest.approx(want_gap, abs=1e-9)
    every = score_official("document", probes, preds, skip, bin_size=5, binning="all")
    assert len(every.bins) == 5
    assert abs(every.avg - want_avg) > 0.01 and abs(every.gap - want_gap) > 0.01


def test_official_probes_become_contexts_and_queries(document: Path, tmp_path: Path) -> None:
    skip = tmp_path / "skip.json"
    skip.write_text("[5]")
    contexts, queries = read_official_probes("document", document, skip)
    assert contexts == [
        {
            "context_id": f"document-32768-{s}",
            "context_tokens": 32768,
            "set_id": s,
            "text": f"item {s}-0\nitem {s}-1\nitem {s}-2\nitem {s}-3",
            "n_items": 4,
        }
        for s in range(2)
    ]
    assert [(q["set_id"], q["position_id"], q["row"]) for q in queries] == [
        (0, 0, 0),
        (0, 1, 1),
        (0, 2, 2),
        (0, 3, 3),
        (1, 0, 4),
        (1, 2, 6),
        (1, 3, 7),
    ]
    assert queries[6] == {
        "task": "document",
        "keyword": "1-3",
        "context_tokens": 32768,
        "set_id": 1,
        "position_id": 3,
        "context_id": "document-32768-1",
        "question": QUESTION.format(keyword="1-3"),
        "row": 7,
        "completion": GOLD,
    }


def test_the_runner_answers_official_probes_with_the_paper_prompt(
    document: Path, tiny_model_dir: Path
) -> None:
    contexts, queries = read_official_probes("document", document)
    encoder = PromptEncoder.create(load_tokenizer(tiny_model_dir), "film")
    first = json.loads(document.read_text().splitlines()[0])["prompt"]
    bos = encoder.tokenizer.bos_token or ""
    assert encoder.template.render(contexts[0]["text"], queries[0]["question"]) == bos + first

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model's ops are too small to split over busy cores
    try:
        decoding = Decoding.of(encoder, max_new_tokens=2, batch_size=4)
        run = run_task(
            load_model(tiny_model_dir), encoder, "document", contexts, queries, decoding, Bins(2)
        )
    finally:
        torch.set_num_threads(threads)
    assert [(p["set_id"], p["position_id"]) for p in run.predictions] == [
        (q["set_id"], q["position_id"]) for q in queries
    ]
    assert run.curve.n_queries == 8


def test_bad_task_files_name_file_line_and_key(tmp_path: Path) -> None:
    rows = task_rows([{"completion": GOLD}] * 8)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n{not json\n")
    with pytest.raises(InputError, match=r"bad.jsonl:2: not valid JSON"):
        read_official_probes("document", bad)

    write_lines(bad, rows)
    with pytest.raises(
        InputError,
        match=r"bad.jsonl:1: key 'label' is missing; the database task needs \['label', "
        r"'description', 'prompt'\]: is this database_forward_32k.jsonl\?",
    ):
        read_official_probes("database", bad)

    write_lines(bad, [rows[0], {**rows[1], "position_id": "1"}])
    with pytest.raises(InputError, match=r"bad.jsonl:2: key 'position_id' must be an integer"):
        read_official_probes("document", bad)

    write_lines(bad, [rows[0], {**rows[1], "prompt": rows[1]["prompt"].replace("item 0-2", "x")}])
    with pytest.raises(
        InputError, match=r"bad.jsonl:2: the context differs from that of set 0 at line 1"
    ):
        read_official_probes("document", bad)

    write_lines(bad, [{**rows[0], "prompt": "Context: item\nQuestion: which?"}])
    with pytest.raises(InputError, match=r"bad.jsonl:1: key 'prompt' is not in the FILM-7B"):
        read_official_probes("document", bad)

    twice = film_prompt(f"a{INSTRUCTION_MID}b", "which?")
    write_lines(bad, [{**rows[0], "prompt": twice}])
    with pytest.raises(InputError, match=r"bad.jsonl:1: .* '### Instruction:' header 2 times"):
        read_official_probes("document", bad)

    bad.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    with pytest.raises(InputError, match=r"bad.jsonl:2: blank line; rows are counted by line"):
        read_official_probes("document", bad)


def test_bad_predictions_and_skip_lists_say_what_is_wrong(document: Path, tmp_path: Path) -> None:
    preds = tmp_path / "p.jsonl"
    write_lines(preds, [{"samples": ["a"]}, {"output": "b"}])
    with pytest.raises(InputError, match=r"p.jsonl:2: expected an object with key 'samples'"):
        read_predictions(preds)
    write_lines(preds, [{"samples": []}])
    with pytest.raises(InputError, match=r"p.jsonl:1: key 'samples' holds no text"):
        read_predictions(preds)

    write_lines(preds, [{"sample": "a"}] * 7)
    with pytest.raises(InputError, match=r"p.jsonl has 7 predictions but .* has 8 rows"):
        score_official("document", document, preds, None, 2)

    write_lines(preds, [{"sample": "a"}] * 8)
    skip = tmp_path / "skip.json"
    skip.write_text("[3, 8]")
    with pytest.raises(InputError, match=r"skip.json: entry 1 is 8, not a row number 0..7"):
        score_official("document", document, preds, skip, 2)


def test_empty_gold_names_the_row_to_skip(tmp_path: Path) -> None:
    golds = [{"label": "Paris", "description": "capital"}] * 8
    golds[2] = {"label": ".", "description": "."}
    probes = write_lines(tmp_path / "db.jsonl", task_rows(golds))
    preds = write_lines(tmp_path / "p.jsonl", [{"sample": "paris"}] * 8)
    with pytest.raises(InputError, match=r"db.jsonl:3: gold answer .* add row 2 to the skip list"):
        score_official("database", probes, preds, None, 2)
    skip = tmp_path / "skip.json"
    skip.write_text("[2]")
    assert score_official("database", probes, preds, skip, 2).avg == 1.0


def test_cli_reports_bad_input_as_one_line(document: Path, tmp_path: Path, capsys) -> None:
    preds = write_lines(tmp_path / "p.jsonl", [{"sample": "a"}])
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                *("score-official", "--task", "document", "--probes", str(document)),
                *("--predictions", str(preds), "--out", str(tmp_path / "s.json")),
            ]
        )
    assert exit_info.value.code == 2
    assert "error: " in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()
