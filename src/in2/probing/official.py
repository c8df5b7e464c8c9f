"""The paper's released probes (`In2Training/VaLProbing-32K`), read and scored with our own code.

Why: our probe sets are rebuilt from offline material, so a score on them says nothing about the
paper's numbers. Reading the released task files into `in2.probing.tasks` structures lets
`run_task` run the very same probes, and scoring the released prediction files with
`in2.probing.metrics` checks that our metric and binning reproduce the paper's (see
docs/official-probes.md).

Formats (microsoft/FILM, VaLProbing/plot.py and vllm_inference/vllm_inference.py):
- task file, one JSON object a line: `prompt` (the whole FILM-7B prompt: context and question),
  the gold (`completion`; the database task: `label` and `description`), `position_id`, `set_id`;
- skip list: a JSON list of 0-based row numbers of the task file (ambiguous examples);
- prediction file: line i answers row i, `{"samples": [text, ...]}` (vLLM; the first is scored)
  or `{"sample": text}` (the GPT-4-Turbo results).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from in2.params import InputError
from in2.probing.metrics import Binning, Bins, PositionCurve, position_curve, score
from in2.prompting import INSTRUCTION_HEAD, INSTRUCTION_MID
from in2.registry import PROBE_TASKS

OFFICIAL_STEMS = {
    "document": "document_bi_32k",
    "code": "code_backward_32k",
    "database": "database_forward_32k",
}
"""Our task -> stem of its released files: `<stem>.jsonl`, `<stem>_skip_list.json`, and the
predictions `results/<model>/sample_<stem>.jsonl`."""
OFFICIAL_CONTEXT_TOKENS = 32768
"""Nominal context length of the released sets (VaLProbing-32K)."""

_PROMPT_START = re.compile(r"\s*(?:<s>)?\s*\[INST\]\s*" + re.escape(INSTRUCTION_HEAD))
_PROMPT_END = re.compile(r"\s*\[/INST\]\s*$")


@dataclass(frozen=True)
class OfficialRow:
    """One row of a released task file; `prompt` is empty when only scoring (it is ~32K tokens)."""

    line: int
    set_id: int
    position_id: int
    gold: dict[str, str]
    prompt: str


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) of every line; rows pair with skip lists and predictions by
    line, so a blank line (which would shift them) is an error, not skipped."""
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                raise InputError(
                    f"{path}:{n}: blank line; rows are counted by line (skip lists and "
                    "prediction files refer to them by number), so remove it"
                )
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{n}: not valid JSON ({err.msg})") from None


def _int(row: dict[str, Any], key: str, where: str) -> int:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"{where}: key '{key}' must be an integer >= 0, got {value!r}")
    return value


def read_rows(task: str, path: str | Path, keep_prompt: bool = False) -> list[OfficialRow]:
    """Rows of a released task file, checked: set, position and the task's gold fields."""
    path = Path(path)
    answer_keys = list(PROBE_TASKS[task].answer)
    rows = []
    for n, row in _json_lines(path):
        where = f"{path}:{n}"
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
        keys = answer_keys + (["prompt"] if keep_prompt else [])
        for key in keys:
            if not isinstance(row.get(key), str):
                problem = "missing" if key not in row else f"not a string ({row[key]!r})"
                raise InputError(
                    f"{where}: key '{key}' is {problem}; the {task} task needs "
                    f"{keys}: is this {OFFICIAL_STEMS[task]}.jsonl?"
                )
        rows.append(
            OfficialRow(
                line=n,
                set_id=_int(row, "set_id", where),
                position_id=_int(row, "position_id", where),
                gold={key: row[key] for key in answer_keys},
                prompt=row["prompt"] if keep_prompt else "",
            )
        )
    if not rows:
        raise InputError(f"{path} holds no rows")
    return rows


def read_skip_list(path: str | Path | None, n_rows: int) -> set[int]:
    """0-based row numbers to leave out; none without a file (the paper has one per task)."""
    if path is None:
        return set()
    path = Path(path)
    try:
        skip = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(skip, list):
        raise InputError(f"{path}: a skip list is a JSON list of row numbers, got {skip!r:.60}")
    for i, index in enumerate(skip):
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n_rows:
            raise InputError(
                f"{path}: entry {i} is {index!r}, not a row number 0..{n_rows - 1} of the task "
                "file; is this the skip list of another task?"
            )
    return set(skip)


def split_prompt(prompt: str, where: str) -> tuple[str, str]:
    """(context, question) of a prompt in the FILM-7B template, or an error naming `where`.

    The template (microsoft/FILM README.md) is `[INST] <head>### Context:\\n{context}\\n\\n###
    Instruction:\\n{question} [/INST]`, the layout `in2.prompting` renders for `film`.
    """
    start = _PROMPT_START.match(prompt)
    end = _PROMPT_END.search(prompt)
    if start is None or end is None:
        raise InputError(
            f"{where}: key 'prompt' is not in the FILM-7B template "
            f"('[INST] {INSTRUCTION_HEAD[:30]}...### Context:' ... '[/INST]'); "
            "convert the file to that template first"
        )
    body = prompt[start.end() : end.start()]
    count = body.count(INSTRUCTION_MID)
    if count != 1:
        raise InputError(
            f"{where}: key 'prompt' holds the '### Instruction:' header {count} times; "
            "the context cannot be told from the question"
        )
    context, question = body.split(INSTRUCTION_MID)
    if not context.strip() or not question.strip():
        raise InputError(f"{where}: key 'prompt' has an empty context or question")
    return context, question.strip()


def question_keyword(task: str, question: str, where: str) -> str:
    """The keyword a released question asks about (the strict metrics need it).

    The questions open as ours do (`PROBE_TASKS[task].question`, up to `{keyword}`); the keyword
    runs to the last occurrence of the character that follows it in the template (the
    closing quote, or the id's question mark), whatever wording comes after.
    """
    head, tail = PROBE_TASKS[task].question.split("{keyword}")
    end = question.rfind(tail[:1]) if tail else len(question)
    if not question.startswith(head) or end <= len(head):
        raise InputError(
            f"{where}: the question {question[:80]!r} does not open like the {task} template "
            f"{PROBE_TASKS[task].question!r}; the file is not a VaLProbing {task} file"
        )
    return question[len(head) : end]


def read_official_probes(
    task: str,
    probes_path: str | Path,
    skip_path: str | Path | None = None,
    context_tokens: int = OFFICIAL_CONTEXT_TOKENS,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Contexts and queries of a released task file, as `in2.probing.tasks.read_probes` returns
    them.

    Every row of a set must carry the same context (the set's one long text); skip-listed rows
    are not asked. Queries keep `row`, the row number predictions and skip lists refer to.
    `context_tokens` is the set's nominal length (the released files are the 32K ones): the
    runner groups curves by it.
    """
    rows = read_rows(task, probes_path, keep_prompt=True)
    skip = read_skip_list(skip_path, len(rows))
    contexts: dict[int, dict[str, Any]] = {}
    first_line: dict[int, int] = {}
    queries = []
    for index, row in enumerate(rows):
        where = f"{probes_path}:{row.line}"
        text, question = split_prompt(row.prompt, where)
        context = contexts.get(row.set_id)
        if context is None:
            context = {
                "context_id": f"{task}-{context_tokens}-{row.set_id}",
                "context_tokens": context_tokens,
                "set_id": row.set_id,
                "text": text,
                "n_items": 0,
            }
            contexts[row.set_id] = context
            first_line[row.set_id] = row.line
        elif context["text"] != text:
            raise InputError(
                f"{where}: the context differs from that of set {row.set_id} at line "
                f"{first_line[row.set_id]}; a set's rows must share one context"
            )
        context["n_items"] += 1
        if index in skip:
            continue
        queries.append(
            {
                "task": task,
                "keyword": question_keyword(task, question, where),
                "context_tokens": context_tokens,
                "set_id": row.set_id,
                "position_id": row.position_id,
                "context_id": context["context_id"],
                "question": question,
                "row": index,
                **row.gold,
            }
        )
    return list(contexts.values()), queries


def read_predictions(path: str | Path) -> list[str]:
    """The scored text of every line: `samples[0]`, or `sample` (the paper's two formats)."""
    path = Path(path)
    texts = []
    for n, row in _json_lines(path):
        where = f"{path}:{n}"
        keys = {"samples", "sample"} & set(row) if isinstance(row, dict) else set()
        if len(keys) != 1:
            raise InputError(
                f"{where}: expected an object with key 'samples' (a list of texts) or "
                f"'sample' (a text), got {str(row)[:80]}"
            )
        value = row.get("sample")
        if "samples" in keys:
            samples = row["samples"]
            value = samples[0] if isinstance(samples, list) and samples else None
        if not isinstance(value, str):
            raise InputError(f"{where}: key '{keys.pop()}' holds no text: {str(row)[:80]}")
        texts.append(value)
    return texts


def score_official(
    task: str,
    probes_path: str | Path,
    predictions_path: str | Path,
    skip_path: str | Path | None,
    bin_size: int,
    binning: Binning = "paper",
) -> PositionCurve:
    """Score a released-format prediction file with `in2.probing.metrics`, skip-listed rows out.

    `paper` binning keeps the whole bins of the task file's positions (the script's
    `total_len`: 1 + its largest position_id, skip-listed rows included)."""
    rows = read_rows(task, probes_path)
    skip = read_skip_list(skip_path, len(rows))
    predictions = read_predictions(predictions_path)
    if len(predictions) != len(rows):
        raise InputError(
            f"{predictions_path} has {len(predictions)} predictions but {probes_path} has "
            f"{len(rows)} rows; line i answers row i, so they must match"
        )
    scored = []
    metric = PROBE_TASKS[task].metric
    for index, (row, prediction) in enumerate(zip(rows, predictions, strict=True)):
        if index in skip:
            continue
        try:
            value = score(metric, row.gold, prediction)
        except ValueError as err:
            raise InputError(
                f"{probes_path}:{row.line}: {err}; add row {index} to the skip list or fix it"
            ) from None
        scored.append((row.set_id, row.position_id, value))
    if not scored:
        raise InputError(f"every row of {probes_path} is in the skip list {skip_path}")
    n_positions = 1 + max(row.position_id for row in rows)
    return position_curve(scored, Bins(bin_size, binning, n_positions))
