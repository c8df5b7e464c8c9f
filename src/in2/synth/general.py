"""General instruction data: the `general` kind, instruction-response pairs with no long context.

The paper mixes ~11% general instruction data (OpenOrca) into IN2 training so the model keeps
following ordinary instructions. Sources (`synthesize.general.source`):

- `corpus` (offline default): "In a few words, what is <title>?" answered by the document's short
  description, for every corpus training document that has one (as the template QA generator did);
  a corpus without titled, described documents gets "Complete the sentence: ..." pairs instead;
- `local`: a .jsonl / .json / .parquet file (or a folder of them) with `instruction_field` and
  `response_field`;
- `hf`: a Hugging Face `datasets` name, streamed (e.g. `Open-Orca/OpenOrca`).

An OpenOrca-style `system_prompt` field, when present and non-empty, is put before the
instruction (separated by a blank line): its responses follow it ("answer step by step", ...), so
dropping it would train answers to instructions the model never saw.

The output has the QA table's columns (kind `general`, no gold segments, no keywords), so the
synthesize stage treats it like any other QA pair. Rows that cannot be used are dropped and counted,
never a crash halfway; a missing file, an unknown dataset or misnamed fields fail at once.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import pandas as pd

from in2.data.corpus import (
    check_features,
    describe_files,
    find_files,
    guard_fields,
    open_hf,
    package_version,
    read_rows,
    unit_hash,
)
from in2.data.units import sentences
from in2.params import GeneralParams
from in2.qa.pairs import COLUMNS

log = logging.getLogger(__name__)

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
SYSTEM_FIELD = "system_prompt"
KEY = "synthesize.general"

#: (source_doc, question, answer), or the reason (a drop key of the stats) a row is unusable.
Pair = tuple[str | None, str, str] | str


@dataclass
class GeneralStats:
    """What was read, kept and dropped (by reason), and exactly what was read."""

    read: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _text(value: Any) -> str | None:
    """A field's value as stripped text; None when it is not text at all."""
    if value is None:
        return ""
    return value.strip() if isinstance(value, str) else None


def _pair(row: dict[str, Any] | str, params: GeneralParams) -> Pair:
    """An instruction row as a pair, with its system prompt (if any) before the instruction."""
    if isinstance(row, str):
        return row
    if params.instruction_field not in row or params.response_field not in row:
        return "no_field"
    instruction = _text(row[params.instruction_field])
    response = _text(row[params.response_field])
    system = _text(row.get(SYSTEM_FIELD))
    if instruction is None or response is None:
        return "not_text"
    if not instruction or not response:
        return "empty"
    question = f"{system}\n\n{instruction}" if system else instruction
    return None, question, response


def _required(params: GeneralParams) -> dict[str, str]:
    return {
        params.instruction_field: f"{KEY}.instruction_field",
        params.response_field: f"{KEY}.response_field",
    }


def corpus_pairs(params: GeneralParams, docs: pd.DataFrame, stats: GeneralStats) -> Iterator[Pair]:
    """Offline default: "what is <title>?" answered by the description of a corpus document.

    A corpus in which no document has both (C4 and most web text) gets sentence completions
    from its documents instead, so any corpus runs on the default recipe.
    """
    stats.source = {"name": "corpus", "documents": len(docs)}
    described = (docs["title"].astype(str).str.strip() != "") & (
        docs["description"].astype(str).str.strip() != ""
    )
    if len(docs) and not described.any():
        stats.source["pairs"] = "sentence completion: no document has a title and a description"
        log.warning("general: %s; asking to complete their first sentences", stats.source["pairs"])
        return (_completion(doc.doc_id, str(doc.text)) for doc in docs.itertuples(index=False))
    return _described(docs)


def _described(docs: pd.DataFrame) -> Iterator[Pair]:
    for doc in docs.itertuples(index=False):
        title, description = str(doc.title).strip(), str(doc.description).strip()
        if not title:
            yield "no_title"
        elif not description:
            yield "no_description"
        else:
            yield doc.doc_id, f"In a few words, what is {title}?", description


COMPLETION_MIN_WORDS = 8
"""A sentence shorter than this is too short to cut into a prompt and its completion."""


def _completion(doc_id: str, text: str) -> Pair:
    """ "Complete the sentence: <its first half> ..." answered by the second half, for the first
    sentence of a document long enough to cut."""
    for sentence in sentences(text):
        words = sentence.split()
        if len(words) >= COMPLETION_MIN_WORDS:
            cut = len(words) // 2
            head, tail = " ".join(words[:cut]), " ".join(words[cut:])
            return doc_id, f"Complete the sentence: {head} ...", tail
    return "no_sentence"


def local_pairs(params: GeneralParams, docs: pd.DataFrame, stats: GeneralStats) -> Iterator[Pair]:
    """A file (or folder) of instructions; checked and described before anything is read."""
    root = Path(str(params.path))
    files = find_files(root, f"{KEY}.path", LOCAL_SUFFIXES)
    stats.source = {
        "name": "local",
        "path": params.path,
        "instruction_field": params.instruction_field,
        "response_field": params.response_field,
        "files": describe_files(files, root),
    }
    rows = (row for path in files for row in read_rows(path, _required(params), [SYSTEM_FIELD]))
    return (_pair(row, params) for row in rows)


def hf_pairs(params: GeneralParams, docs: pd.DataFrame, stats: GeneralStats) -> Iterator[Pair]:
    """A `datasets` split, streamed: only the rows used are downloaded."""
    dataset = str(params.dataset)
    ds = open_hf(dataset, params.dataset_config, params.split, f"{KEY}.dataset")
    where = f"dataset {dataset!r} (config {params.dataset_config!r}, split {params.split!r})"
    check_features(ds, where, _required(params))
    stats.source = {
        "name": "hf",
        "dataset": dataset,
        "config": params.dataset_config,
        "split": params.split,
        "instruction_field": params.instruction_field,
        "response_field": params.response_field,
        "datasets_version": package_version("datasets"),
    }
    if params.max_examples is None:
        log.warning("general: no %s.max_examples; streaming the whole of %s", KEY, where)
    return (_pair(row, params) for row in guard_fields(ds, where, _required(params)))


READERS: dict[str, Callable[[GeneralParams, pd.DataFrame, GeneralStats], Iterator[Pair]]] = {
    "corpus": corpus_pairs,
    "local": local_pairs,
    "hf": hf_pairs,
}


def generator_name(params: GeneralParams) -> str:
    suffix = f":{params.dataset}" if params.source == "hf" else ""
    return f"instructions:{params.source}{suffix}"


def _rows(pairs: Iterable[Pair], generator: str, stats: GeneralStats) -> Iterator[dict[str, Any]]:
    """QA-table rows; a repeated question (same id) is dropped as a duplicate."""
    seen: set[str] = set()
    for pair in pairs:
        stats.read += 1
        if isinstance(pair, str):
            stats.drop(pair)
            continue
        doc, question, answer = pair
        source_doc = doc or f"instr-{_sha1(question)[:12]}"
        qa_id = f"ge-{_sha1(f'{generator}|{source_doc}|{question}')[:12]}"
        if qa_id in seen:
            stats.drop("duplicate")
            continue
        seen.add(qa_id)
        yield {
            "qa_id": qa_id,
            "kind": "general",
            "gold_segments": [],
            "source_doc": source_doc,
            "question": question,
            "answer": answer,
            "keywords": [],
            "generator": generator,
            "prompt_hash": _sha1(question),
        }


def _select(
    rows: Iterator[dict[str, Any]], params: GeneralParams, seed: int, stats: GeneralStats
) -> pd.DataFrame:
    """Apply max_examples: the first N of a stream, else a seeded hash sample of all."""
    if params.max_examples is None:
        return pd.DataFrame(list(rows), columns=COLUMNS)
    if params.source == "hf":
        kept = list(islice(rows, params.max_examples))
    else:
        kept = heapq.nsmallest(params.max_examples, rows, key=lambda r: unit_hash(seed, r["qa_id"]))
        beyond = stats.read - sum(stats.dropped.values()) - len(kept)
        if beyond:
            stats.drop("beyond_max_examples", beyond)
    return pd.DataFrame(kept, columns=COLUMNS).sort_values("qa_id", ignore_index=True)


def load_general(
    params: GeneralParams, docs: pd.DataFrame | None, seed: int
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """`general` examples in the QA table format, and their stats (read, kept, dropped, source).

    `docs` is the corpus training table, read by the `corpus` source only (None for the others).
    """
    stats = GeneralStats()
    pairs = READERS[params.source](params, docs, stats)
    table = _select(_rows(pairs, generator_name(params), stats), params, seed, stats)
    stats.kept = len(table)
    if table.empty:
        log.warning("general: no example kept of %d read (dropped %s)", stats.read, stats.dropped)
    log.info("general: %d read, %d kept, dropped %s", stats.read, stats.kept, stats.dropped)
    return table, asdict(stats)
