"""The VaL probing tasks: what an item is, how it reads in a context, what is asked and scored.

A task is one `TaskSpec`, named in the registry in2.registry.PROBE_TASKS (lm-evaluation-harness
style): how an item reads in the context, the question, which item fields are the answer, the
metric and its strict variant, the answer's decoding budget, and one loader of its items per
source of raw material (`SOURCES`): `offline` (held-out documents and the standard library, the
default) or `pieces` (the paper's released pieces, a folder given by params `probe.pieces`), and
a loader over fallback documents for when the held-out ones cannot fill a context (a corpus
without titles or descriptions; in2.probing.fallback). The builder (in2.probing.build) and the
runners need nothing else.

Tasks (paper, arXiv 2404.16811, section 4): document sentence retrieval (bi-directional), code
function retrieval (backward), database entity retrieval (forward). Item fields keep the names of
the paper's released pieces (`sentence`; `function_name`, `function_define`; `id`, `label`, `dcpt`).
"""

from __future__ import annotations

import ast
import json
import re
import sysconfig
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from in2.params import InputError, ProbeParams
from in2.registry import PROBE_TASKS

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
class FallbackDocuments:
    """Documents the offline tasks draw from when the held-out ones cannot fill a context (a
    corpus without titles or descriptions): in2.probing.fallback."""

    name: str
    """As `data/probes/stats.json` and the log name it (`wiki_offline package`)."""
    read: Callable[[], pd.DataFrame]
    """The documents (columns title, text, description, source), read only when needed."""


@dataclass(frozen=True)
class ProbeSources:
    """Raw material the task loaders draw from."""

    heldout: pd.DataFrame
    """Held-out documents (columns title, text, description, and source when known): never seen
    in training."""
    code_root: Path = field(default_factory=lambda: Path(sysconfig.get_paths()["stdlib"]))
    """Folder of Python files for the code task: the running interpreter's standard library."""
    pieces: Path | None = None
    """Folder of the paper's pieces (`PIECES_HELP`); when set, every task loads from it."""
    fallback: FallbackDocuments | None = None
    """Documents of the tasks' `fallback` loaders; None: no fallback."""

    @property
    def kind(self) -> str:
        """Which loader of each task reads these sources (a key of `SOURCES`)."""
        return "offline" if self.pieces is None else "pieces"

    @property
    def corpus_sources(self) -> frozenset[str]:
        """The `source` of the held-out documents: which corpus they were read from."""
        if "source" not in self.heldout:
            return frozenset()
        return frozenset(self.heldout["source"].astype(str))


@dataclass(frozen=True)
class Item:
    """One probe item: its fields and the candidate keywords to ask about it, best first."""

    fields: Mapping[str, str]
    keywords: tuple[str, ...]


Loader = Callable[[ProbeSources, np.random.Generator], list[Item]]


@dataclass(frozen=True)
class ItemSource:
    """A loader named after its material, as `data/probes/stats.json` and the log name it."""

    name: str
    load: Loader
    needs: str
    """What more items take, as a too-few-items error advises: "give it more <needs>"."""

    def __call__(self, sources: ProbeSources, rng: np.random.Generator) -> list[Item]:
        return self.load(sources, rng)


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
    """The paper's metric: a key of in2.probing.metrics.SCORERS."""
    strict_metric: str
    """Its strict variant, reported beside it and labelled "strict" (docs/probing.md)."""
    max_new_tokens: int
    """Greedy decoding budget of an answer, unless `probe.max_new_tokens` names the task."""
    loaders: Mapping[str, ItemSource | Loader]
    """Source kind (`SOURCES`) -> loader of the task's items from that material."""
    fallback: Loader | None = None
    """Loader of the items from `ProbeSources.fallback` (read as held-out documents), when the
    `offline` loader's items cannot fill a context."""


# --- document: sentences of the held-out documents ------------------------------------------

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


# --- database: titles and short descriptions of held-out documents, with made-up ids -------


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
                raise InputError(
                    f"{path}, line {line_no}: not valid JSON ({e}); {PIECES_HELP}"
                ) from None
            if not isinstance(row, dict):
                raise InputError(f"{path}, line {line_no}: not a JSON object; {PIECES_HELP}")
            for key in required:
                if not isinstance(row.get(key), str) or not row[key].strip():
                    raise InputError(
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


def pieces_source(file: str, fields: tuple[str, ...], keyword: str) -> ItemSource:
    """The `pieces` material of a task: one file of the probe.pieces folder."""
    return ItemSource("pieces", pieces_loader(file, fields, keyword), f"rows in {file}")


DOCUMENT = TaskSpec(
    name="document",
    title="Document sentence retrieval",
    retrieval="bi-directional",
    render="{sentence}",
    separator="\n",
    question='Which sentence contains the piece "{keyword}"? Return the whole sentence.',
    answer={"completion": "sentence"},
    metric="word_recall",
    strict_metric="word_recall_beyond_keyword",
    loaders={
        "offline": ItemSource(
            "heldout",
            load_sentences,
            "held-out documents with sentences of 12-60 words (corpus.heldout_fraction)",
        ),
        "pieces": pieces_source("document_sentences.jsonl", ("sentence",), "piece"),
    },
    max_new_tokens=48,
    fallback=load_sentences,
)

CODE = TaskSpec(
    name="code",
    title="Code function retrieval",
    retrieval="backward",
    render="def {function_name}:\n{function_define}",
    separator="\n\n",
    question='Which function contains the code snip "{keyword}"? Answer with the function name.',
    answer={"completion": "function_name"},
    metric="name_match",
    strict_metric="name_match",  # the question shows a body line, not the name
    loaders={
        "offline": ItemSource(
            "stdlib", load_functions, "Python files (the standard library's .py sources)"
        ),
        "pieces": pieces_source(
            "code_functions.jsonl", ("function_name", "function_define"), "piece"
        ),
    },
    max_new_tokens=16,
)

DATABASE = TaskSpec(
    name="database",
    title="Database entity retrieval",
    retrieval="forward",
    render="<id: {id}, label: {label}, description: {dcpt}>",
    separator="\n",
    question="What are the label and description for the id {keyword}?",
    answer={"label": "label", "description": "dcpt"},
    metric="relaxed_match",
    strict_metric="label_match",
    loaders={
        "offline": ItemSource(
            "heldout",
            load_entities,
            "held-out documents with a title and a description (corpus.heldout_fraction)",
        ),
        "pieces": pieces_source("database_entities.jsonl", ("id", "label", "dcpt"), "id"),
    },
    max_new_tokens=32,
    fallback=load_entities,
)


def answer_budget(params: ProbeParams, task: str) -> int:
    """Greedy decoding budget of one answer: `probe.max_new_tokens[task]`, else the spec's."""
    spec: TaskSpec = PROBE_TASKS[task]
    return params.max_new_tokens.get(task, spec.max_new_tokens)
