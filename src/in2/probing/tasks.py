"""VaL probing data: one long context per set, every item position in it queried once.

A task is one registry entry (lm-evaluation-harness style): how an item reads in the context, the
question, which item fields are the answer, the metric, and one loader of its items per source of
raw material (`SOURCES`): `offline` (held-out documents and the standard library, the default) or
`pieces` (the paper's released pieces, a folder given by params `probe.pieces`). The builder is
task- and source-agnostic: for any tokenizer and each target length it packs as many sampled items
as fit into a context (counted with the same tokenization the runner uses), then asks about each
position with the first candidate keyword of its item that occurs exactly once in that context
(the paper skips ambiguous queries; trying the other candidates first loses fewer positions).

Tasks (paper, arXiv 2404.16811, section 4): document sentence retrieval (bi-directional), code
function retrieval (backward), database entity retrieval (forward). Item fields keep the names of
the paper's released pieces (`sentence`; `function_name`, `function_define`; `id`, `label`, `dcpt`).
"""

from __future__ import annotations

import ast
import json
import logging
import re
import sysconfig
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from in2.outputs import atomic_dir, read_jsonl, write_json, write_jsonl
from in2.prompting import PromptEncoder

log = logging.getLogger(__name__)

PIECE_WORDS = 8
"""Words in a document keyword (the paper's pieces are ~8-word spans)."""
SENTENCE_WORDS = (12, 60)
"""Sentences kept for the document task: long enough that the piece is not the whole sentence."""
CODE_LINES = 3
"""Body lines shown per function (as the paper's `function_define`)."""
MAX_CODE_LINE_CHARS = 100
MIN_NAME_CHARS = 4
"""Shorter function names would substring-match too many unrelated answers (`get`, `run`)."""
SKIPPED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages"})


SOURCES = ("offline", "pieces")
"""Kinds of raw material; every task has one loader per kind (`TaskSpec.loaders`)."""


@dataclass(frozen=True)
class ProbeSources:
    """Raw material the task loaders draw from."""

    heldout: pd.DataFrame
    """Held-out documents (columns title, text, description): never seen in training."""
    code_root: Path = field(default_factory=lambda: Path(sysconfig.get_paths()["stdlib"]))
    """Folder of Python files for the code task: the running interpreter's standard library."""
    pieces: Path | None = None
    """Folder of the paper's pieces (`PIECES_HELP`); when set, every task loads from it."""

    @property
    def kind(self) -> str:
        """Which loader of each task reads these sources (a key of `SOURCES`)."""
        return "offline" if self.pieces is None else "pieces"


@dataclass(frozen=True)
class Item:
    """One probe item: its fields and the candidate keywords to ask about it, best first."""

    fields: Mapping[str, str]
    keywords: tuple[str, ...]


Loader = Callable[[ProbeSources, np.random.Generator], list[Item]]


@dataclass(frozen=True)
class TaskSpec:
    """Everything that makes one probing task; the builder and runner need nothing else."""

    name: str
    title: str
    """What is retrieved, for humans (plots)."""
    retrieval: str
    """Direction of retrieval in the paper's terms: forward, backward or bi-directional."""
    render: str
    """Format template of an item in the context, over the item's fields."""
    separator: str
    """Text between two items of a context."""
    question: str
    """Format template of the question, over `keyword`."""
    answer: Mapping[str, str]
    """Query answer field -> item field; the query rows carry these gold fields."""
    metric: str
    """Key of in2.probing.metrics.SCORERS."""
    loaders: Mapping[str, Loader]
    """Source kind (`SOURCES`) -> loader of the task's items from that material."""


# --- document: sentences of held-out Wikipedia articles --------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_ABBREVIATION = re.compile(r"(?:\b[A-Z]|\b(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|Prof|Mt|No|vs|Inc|Ltd|Co))\.$")


def split_sentences(text: str) -> list[str]:
    """Sentences of a text with normalised whitespace; initials (`Arthur C. Clarke`) do not split.

    A rare wrong split is harmless: the gold answer is the item exactly as it reads in the context.
    """
    sentences: list[str] = []
    for part in _SENTENCE_END.split(" ".join(text.split())):
        if sentences and _ABBREVIATION.search(sentences[-1]):
            sentences[-1] += " " + part
        else:
            sentences.append(part)
    return sentences


def load_sentences(sources: ProbeSources, rng: np.random.Generator) -> list[Item]:
    """Distinct sentences of the held-out documents; keywords are 8-word spans at random offsets."""
    items, seen = [], set()
    for text in sources.heldout["text"]:
        for sentence in split_sentences(str(text)):
            words = sentence.split()
            if not SENTENCE_WORDS[0] <= len(words) <= SENTENCE_WORDS[1] or sentence in seen:
                continue
            seen.add(sentence)
            starts = rng.permutation(len(words) - PIECE_WORDS + 1)[:3]
            spans = tuple(" ".join(words[s : s + PIECE_WORDS]) for s in starts)
            items.append(Item({"sentence": sentence}, spans))
    return items


# --- code: functions of the standard library ----------------------------------------------


def _python_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*.py")
        if not SKIPPED_DIRS.intersection(p.relative_to(root).parts[:-1])
    )


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> list[str]:
    """First body lines after the docstring, stripped of indentation; [] if unsuitable."""
    body = node.body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    if not body or node.end_lineno is None:
        return []
    out = []
    for raw in lines[body[0].lineno - 1 : node.end_lineno]:
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append(line)
        if len(out) == CODE_LINES:
            break
    nested = ("def ", "async def ", "class ", "@")
    if len(out) < CODE_LINES or any(
        len(line) > MAX_CODE_LINE_CHARS or line.startswith(nested) for line in out
    ):
        return []
    return out


def load_functions(sources: ProbeSources, rng: np.random.Generator) -> list[Item]:
    """One function per distinct name, shown as `def NAME:` and its first 3 body lines."""
    found: list[tuple[str, list[str]]] = []
    for path in _python_files(sources.code_root):
        source = path.read_bytes()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # invalid escapes etc. in old modules
                tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        lines = source.decode("utf-8", errors="replace").splitlines()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                body = _body_lines(node, lines)
                if body and len(node.name) >= MIN_NAME_CHARS:
                    found.append((node.name, body))
    items, names = [], set()
    for i in rng.permutation(len(found)):  # a random one of the functions sharing a name
        name, body = found[i]
        if name in names:
            continue
        names.add(name)
        define = "\n".join("    " + line for line in body)
        keywords = tuple(body[j] for j in rng.permutation(len(body)))
        items.append(Item({"function_name": name, "function_define": define}, keywords))
    return items


# --- database: held-out Wikipedia titles and short descriptions, with made-up ids -----------


def load_entities(sources: ProbeSources, rng: np.random.Generator) -> list[Item]:
    """Titles with a description, each with a unique made-up id `Q` + 7 digits.

    Equal-length ids can never occur inside one another, so an id is always an unambiguous key.
    """
    frame = sources.heldout[["title", "description"]].dropna().astype(str)
    frame = frame.assign(
        title=frame["title"].str.strip(), description=frame["description"].str.strip()
    )
    usable = frame["title"].str.strip(".") != ""  # the metric strips dots: never an empty gold
    frame = frame[usable & (frame["description"].str.strip(".") != "")]
    frame = frame.drop_duplicates("title")
    ids = rng.choice(9_000_000, size=len(frame), replace=False) + 1_000_000
    return [
        Item({"id": f"Q{qid}", "label": title, "dcpt": description}, (f"Q{qid}",))
        for qid, title, description in zip(ids, frame["title"], frame["description"], strict=True)
    ]


# --- the paper's pieces (microsoft/FILM, VaLProbing/pieces/) ------------------------------

PIECES_HELP = (
    "probe.pieces must be a folder holding the paper's pieces (document_sentences.jsonl, "
    "code_functions.jsonl, database_entities.jsonl) as released in the public microsoft/FILM "
    "repository, folder VaLProbing/pieces/: download them from there unchanged"
)


def read_pieces(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    """Rows of one pieces file; a missing file or a row without a required string field is an
    error naming the file, the line and the key."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; {PIECES_HELP}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}, line {line_no}: not valid JSON ({e}); {PIECES_HELP}"
                ) from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}, line {line_no}: not a JSON object; {PIECES_HELP}")
            for key in required:
                if not isinstance(row.get(key), str) or not row[key].strip():
                    raise ValueError(
                        f"{path}, line {line_no}: no text in required key '{key}' "
                        f"(each row needs {', '.join(required)}); {PIECES_HELP}"
                    )
            rows.append(row)
    return rows


def pieces_loader(file: str, fields: tuple[str, ...], keyword: str) -> Loader:
    """Loader of one pieces file: items of `fields`, asked about with the row's `keyword` field.

    Rows repeating an earlier row's fields are dropped (one item, one position).
    """

    def load(sources: ProbeSources, rng: np.random.Generator) -> list[Item]:
        if sources.pieces is None:
            raise ValueError(f"no probe.pieces folder to read {file} from")
        items, seen = [], set()
        for row in read_pieces(sources.pieces / file, tuple(dict.fromkeys((*fields, keyword)))):
            values = tuple(row[f] for f in fields)
            if values not in seen:
                seen.add(values)
                items.append(Item(dict(zip(fields, values, strict=True)), (row[keyword],)))
        return items

    return load


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="document",
            title="Document sentence retrieval",
            retrieval="bi-directional",
            render="{sentence}",
            separator="\n",
            question='Which sentence contains the piece "{keyword}"? Return the whole sentence.',
            answer={"completion": "sentence"},
            metric="word_recall",
            loaders={
                "offline": load_sentences,
                "pieces": pieces_loader("document_sentences.jsonl", ("sentence",), "piece"),
            },
        ),
        TaskSpec(
            name="code",
            title="Code function retrieval",
            retrieval="backward",
            render="def {function_name}:\n{function_define}",
            separator="\n\n",
            question='Which function contains the code snip "{keyword}"? '
            "Answer with the function name.",
            answer={"completion": "function_name"},
            metric="name_match",
            loaders={
                "offline": load_functions,
                "pieces": pieces_loader(
                    "code_functions.jsonl", ("function_name", "function_define"), "piece"
                ),
            },
        ),
        TaskSpec(
            name="database",
            title="Database entity retrieval",
            retrieval="forward",
            render="<id: {id}, label: {label}, description: {dcpt}>",
            separator="\n",
            question="What are the label and description for the id {keyword}?",
            answer={"label": "label", "description": "dcpt"},
            metric="relaxed_match",
            loaders={
                "offline": load_entities,
                "pieces": pieces_loader("database_entities.jsonl", ("id", "label", "dcpt"), "id"),
            },
        ),
    )
}
"""The probing tasks by name; adding a task is adding one entry."""


# --- the builder -------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeSet:
    """One context (a `contexts.jsonl` row) and its queries (`queries.jsonl` rows)."""

    context: dict[str, Any]
    queries: list[dict[str, Any]]
    n_skipped: int
    """Positions not asked because none of their keywords is unique in the context."""


def _stream(n: int, rng: np.random.Generator) -> Iterator[int]:
    """Item indices, one random permutation after another: sets reuse items only when they must."""
    while True:
        yield from (int(i) for i in rng.permutation(n))


def _pack(
    items: list[Item],
    spec: TaskSpec,
    encoder: PromptEncoder,
    target: int,
    stream: Iterator[int],
    pending: list[int],
) -> tuple[list[Item], str, int]:
    """Fill one context up to `target` tokens; the item that did not fit is left in `pending`."""
    chosen: list[int] = []
    total = 0
    too_big = 0
    while too_big <= len(items):
        index = pending.pop() if pending else next(stream)
        if index in chosen:  # the pool is exhausted for this context
            pending.append(index)
            break
        text = spec.render.format(**items[index].fields)
        cost = len(encoder.context(spec.separator + text if chosen else text))
        if total + cost <= target:
            chosen.append(index)
            total += cost
            too_big = 0
        elif chosen:
            pending.append(index)
            break
        else:
            too_big += 1  # longer than a whole context on its own: never usable
    if not chosen:
        raise ValueError(
            f"a context of {target} tokens (probe.context_tokens) is too small for any "
            f"{spec.name} item; raise that length"
        )
    # Tokens can merge across item boundaries: trust only the count of the joined text.
    while True:
        text = spec.separator.join(spec.render.format(**items[i].fields) for i in chosen)
        n_tokens = len(encoder.context(text))
        if n_tokens <= target:  # always true for one item: its cost above is exact
            return [items[i] for i in chosen], text, n_tokens
        pending.append(chosen.pop())


def build_task(
    spec: TaskSpec,
    items: list[Item],
    encoder: PromptEncoder,
    context_tokens: int,
    n_sets: int,
    rng: np.random.Generator,
) -> list[ProbeSet]:
    """`n_sets` contexts of <= `context_tokens` tokens; each position asked once if unambiguous.

    Every set holds the same number of items, the fewest that any set's packing fitted (the
    longer sets lose their last items), as the paper's sets hold a fixed 800 or 750 positions:
    then every set has every position, and no position bin is made of one set's stragglers —
    a bin of the one extra item of one set would weigh as much in Avg as a full bin.
    A position is asked with the first keyword of its item that occurs in the item and nowhere
    else in the context, so the question points at exactly one item.
    """
    if not items:
        raise ValueError(f"no items for the {spec.name} probe; check its source material")
    stream, pending = _stream(len(items), rng), []
    packed = [_pack(items, spec, encoder, context_tokens, stream, pending) for _ in range(n_sets)]
    n_items = min(len(chosen) for chosen, _, _ in packed)
    sets = []
    for set_id, (chosen, text, n_tokens) in enumerate(packed):
        if len(chosen) > n_items:  # cut to the common count: re-join and re-count
            chosen = chosen[:n_items]
            text = spec.separator.join(spec.render.format(**item.fields) for item in chosen)
            n_tokens = len(encoder.context(text))
        context_id = f"{spec.name}-{context_tokens}-{set_id}"
        queries, skipped = [], 0
        for position_id, item in enumerate(chosen):
            rendered = spec.render.format(**item.fields)
            keyword = next((k for k in item.keywords if k in rendered and text.count(k) == 1), None)
            if keyword is None:
                skipped += 1
                continue
            queries.append(
                {
                    "task": spec.name,
                    "context_tokens": context_tokens,
                    "set_id": set_id,
                    "position_id": position_id,
                    "context_id": context_id,
                    "question": spec.question.format(keyword=keyword),
                    "keyword": keyword,
                    **{out: item.fields[name] for out, name in spec.answer.items()},
                }
            )
        context = {
            "context_id": context_id,
            "context_tokens": context_tokens,
            "set_id": set_id,
            "text": text,
            "n_tokens": n_tokens,
            "n_items": len(chosen),
        }
        sets.append(ProbeSet(context, queries, skipped))
    return sets


def task_rng(seed: int, task: str, *more: int) -> np.random.Generator:
    """One generator per (seed, task, ...): adding or reordering tasks or lengths never changes
    another's data."""
    return np.random.default_rng([seed, zlib.crc32(task.encode()), *more])


def build_probes(
    sources: ProbeSources,
    encoder: PromptEncoder,
    tasks: list[str],
    context_tokens: Sequence[int],
    n_sets: int,
    seed: int,
) -> dict[str, list[ProbeSet]]:
    """`n_sets` probe sets per task and target length (lengths in the given order), deterministic
    for a seed, source material and tokenizer."""
    probes = {}
    for name in tasks:
        spec = TASKS[name]
        items = spec.loaders[sources.kind](sources, task_rng(seed, name))
        probes[name] = [
            probe_set
            for target in context_tokens
            for probe_set in build_task(
                spec, items, encoder, target, n_sets, task_rng(seed, name, target)
            )
        ]
        n_queries = sum(len(s.queries) for s in probes[name])
        n_skipped = sum(s.n_skipped for s in probes[name])
        log.info(
            "%s: %d %s items in the pool, %d sets at each of %s tokens, %d queries, "
            "%d ambiguous positions skipped",
            name,
            len(items),
            sources.kind,
            n_sets,
            list(context_tokens),
            n_queries,
            n_skipped,
        )
    return probes


def probe_stats(probes: Mapping[str, list[ProbeSet]]) -> dict[str, Any]:
    """Item and query counts per task and set (`data/probes/stats.json`)."""
    return {
        name: {
            "n_queries": sum(len(s.queries) for s in sets),
            "sets": [
                {
                    "context_tokens": s.context["context_tokens"],
                    "set_id": s.context["set_id"],
                    "n_items": s.context["n_items"],
                    "n_queries": len(s.queries),
                    "n_skipped": s.n_skipped,
                    "n_tokens": s.context["n_tokens"],
                }
                for s in sets
            ],
        }
        for name, sets in probes.items()
    }


def write_probes(probes: Mapping[str, list[ProbeSet]], out_dir: str | Path) -> None:
    """Write `<task>/contexts.jsonl`, `<task>/queries.jsonl` and `stats.json`, as one atomic dir."""
    with atomic_dir(out_dir) as tmp:
        for name, sets in probes.items():
            write_jsonl(tmp / name / "contexts.jsonl", [s.context for s in sets])
            write_jsonl(tmp / name / "queries.jsonl", [q for s in sets for q in s.queries])
        write_json(tmp / "stats.json", probe_stats(probes))


def read_probes(probes_dir: str | Path, task: str) -> tuple[list[dict], list[dict]]:
    """Contexts and queries of one task, as written by `write_probes`."""
    folder = Path(probes_dir) / task
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist; run `dvc repro probe_data`")
    return read_jsonl(folder / "contexts.jsonl"), read_jsonl(folder / "queries.jsonl")
