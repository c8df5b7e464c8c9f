"""Corpus sources: messy files are cleaned and counted exactly; config mistakes fail at once."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from in2.data.corpus import COLUMNS, build_corpus, read_rows
from in2.params import CorpusParams, InputError

REPO = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _line(item: object) -> bytes:
    """Bytes and str are written as they are (bad lines), anything else as JSON."""
    if isinstance(item, bytes):
        return item
    return item.encode() if isinstance(item, str) else json.dumps(item).encode()


def _jsonl(path: Path, lines: list[object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(_line(line) + b"\n" for line in lines))


def _messy_folder(root: Path) -> Path:
    """5 good documents among 14 bad records of every kind, in jsonl, parquet and txt."""
    docs = root / "docs"
    _jsonl(
        docs / "a.jsonl",
        [
            {"title": "A1", "text": "alpha beta gamma delta"},
            {"title": "A2", "text": "  alpha   beta gamma\ndelta "},  # duplicate
            "not json at all",  # bad_json
            b'{"text": "caf\xe9 latte mocha"}',  # undecodable (latin-1)
            {"body": "no text key here"},  # no_text_field
            {"text": "   \n\t "},  # empty
            {"text": ""},  # empty
            {"text": None},  # empty
            {"text": "two words"},  # too_short
            [1, 2],  # bad_json (not an object)
            {"text": 42},  # not_text
            "",  # blank line: not a record
            {"text": "epsilon zeta eta theta"},
        ],
    )
    (docs / "sub").mkdir()
    pd.DataFrame(
        {
            "text": ["iota kappa lambda mu", "alpha beta gamma delta", None, "nu xi omicron pi"],
            "title": ["B1", "dup", "n", None],
        }
    ).to_parquet(docs / "sub" / "b.parquet")
    (docs / "c.txt").write_text("rho sigma tau upsilon\n")
    (docs / "d.txt").write_bytes(b"\xff\xfe\x00bad bytes here")  # undecodable
    (docs / "e.txt").write_text("   \n")  # empty
    (docs / "notes.md").write_text("not a supported file")
    _jsonl(docs / ".hidden" / "x.jsonl", [{"text": "hidden files are not read at all"}])
    return docs


def _local(path: Path, **kw) -> CorpusParams:
    return CorpusParams(source="local", path=str(path), min_words=3, **kw)


def test_local_folder_counts_every_dropped_record(tmp_path):
    docs = _messy_folder(tmp_path)
    train, heldout, stats = build_corpus(_local(docs), seed=0)
    table = pd.concat([train, heldout]).set_index("text")
    assert list(train.columns) == COLUMNS
    assert sorted(table.index) == [
        "alpha beta gamma delta",
        "epsilon zeta eta theta",
        "iota kappa lambda mu",
        "nu xi omicron pi",
        "rho sigma tau upsilon",
    ]
    assert stats.dropped == {
        "duplicate": 2,
        "bad_json": 2,
        "undecodable": 2,
        "no_text_field": 1,
        "empty": 5,
        "too_short": 1,
        "not_text": 1,
    }
    assert (stats.read, stats.kept) == (19, 5)
    assert stats.read == stats.kept + sum(stats.dropped.values())
    assert stats.train_docs + stats.heldout_docs == 5
    first = table.loc["alpha beta gamma delta"]
    sha = hashlib.sha1(b"alpha beta gamma delta").hexdigest()
    assert (first.doc_id, first.title, first.source) == (f"local-{sha[:16]}", "A1", "local:a.jsonl")
    assert table.loc["nu xi omicron pi"].title == ""
    assert table.loc["rho sigma tau upsilon"][["title", "source"]].tolist() == ["c", "local:c.txt"]
    assert (table["description"] == "").all()
    files = stats.source["files"]
    assert [f["path"] for f in files] == ["a.jsonl", "c.txt", "d.txt", "e.txt", "sub/b.parquet"]
    blob = (docs / "c.txt").read_bytes()
    assert files[1] == {
        "path": "c.txt",
        "bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
    }
    assert stats.source["name"] == "local"


def test_same_input_gives_the_same_tables(tmp_path):
    docs = _messy_folder(tmp_path)
    first, second = build_corpus(_local(docs), 0), build_corpus(_local(docs), 0)
    pd.testing.assert_frame_equal(first[0], second[0])
    pd.testing.assert_frame_equal(first[1], second[1])


def test_configurable_text_and_title_fields(tmp_path):
    path = tmp_path / "news.jsonl"
    _jsonl(path, [{"headline": "H", "body": "one two three four"}, {"headline": "G"}])
    train, _, stats = build_corpus(
        _local(path, text_field="body", title_field="headline", heldout_fraction=0.01), 0
    )
    assert train[["title", "text"]].values.tolist() == [["H", "one two three four"]]
    assert stats.dropped == {"no_text_field": 1}
    assert stats.source["files"][0]["path"] == "news.jsonl"


def test_json_array_file_and_max_documents_sample(tmp_path):
    rows = [{"text": f"document number {i} has words"} for i in range(10)]
    path = tmp_path / "docs.json"
    path.write_text(json.dumps([*rows, "oops"]))
    train, heldout, stats = build_corpus(_local(path, max_documents=4), seed=3)
    assert stats.kept == 4
    assert stats.dropped == {"bad_json": 1, "beyond_max_documents": 6}
    assert stats.read == 11
    assert pd.concat([train, heldout])["doc_id"].is_unique


def test_missing_path_fails_at_once_naming_the_key(tmp_path):
    with pytest.raises(InputError, match=r"corpus\.path: .*nope does not exist; point it at a"):
        build_corpus(_local(tmp_path / "nope"), 0)


def test_folder_without_supported_files(tmp_path):
    (tmp_path / "readme.md").write_text("hello")
    with pytest.raises(InputError, match=r"holds no \.jsonl / \.json / \.parquet / \.txt file"):
        build_corpus(_local(tmp_path), 0)
    with pytest.raises(InputError, match=r"readme\.md is not a supported file"):
        build_corpus(_local(tmp_path / "readme.md"), 0)


def test_text_field_that_no_row_has_names_file_and_fields(tmp_path):
    path = tmp_path / "d.jsonl"
    _jsonl(path, [{"content": "a b c d", "id": 1}, {"content": "e f g h", "id": 2}])
    expected = (
        r"no row has the field\(s\) 'text' \(corpus\.text_field\); "
        r"the fields found are \['content', 'id'\]"
    )
    with pytest.raises(InputError, match=rf"d\.jsonl: {expected}"):
        build_corpus(_local(path), 0)
    pd.DataFrame({"content": ["a b c d"], "id": [1]}).to_parquet(tmp_path / "d.parquet")
    with pytest.raises(InputError, match=rf"d\.parquet: {expected}"):
        build_corpus(_local(tmp_path / "d.parquet"), 0)


def test_nothing_kept_is_an_error(tmp_path):
    _jsonl(tmp_path / "d.jsonl", [{"text": "too short"}])
    with pytest.raises(
        InputError, match=r"no document kept of 1 read \(dropped: \{'too_short': 1\}\)"
    ):
        build_corpus(_local(tmp_path), 0)


def test_hf_source_streams_and_stops_at_the_document_limit(tmp_path, monkeypatch):
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    rows = [{"text": f"streamed document {i} with words"} for i in range(200)]
    rows.insert(1, rows[0])  # a duplicate early on
    _jsonl(tmp_path / "ds" / "train.jsonl", rows)
    params = CorpusParams(
        source="hf",
        dataset=str(tmp_path / "ds"),
        max_documents=5,
        min_words=3,
        heldout_fraction=0.01,
    )
    train, heldout, stats = build_corpus(params, 0)
    assert (stats.read, stats.kept, stats.dropped) == (6, 5, {"duplicate": 1})
    assert sorted(pd.concat([train, heldout])["text"]) == sorted({r["text"] for r in rows[:6]})
    assert set(train["source"]) == {f"hf:{tmp_path / 'ds'}"}
    assert train["doc_id"].str.fullmatch(r"hf-[0-9a-f]{16}").all()
    assert stats.source["split"] == "train" and stats.source["dataset"] == str(tmp_path / "ds")


def test_hf_source_with_a_misnamed_text_field(tmp_path):
    _jsonl(tmp_path / "ds" / "train.jsonl", [{"body": "a b c d"}])
    params = CorpusParams(source="hf", dataset=str(tmp_path / "ds"), max_documents=5)
    with pytest.raises(InputError, match=r"no row has the field\(s\) 'text' .*\['body'\]"):
        build_corpus(params, 0)


def _stage(cwd: Path, params: dict) -> subprocess.CompletedProcess:
    import yaml

    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / "corpus.py")],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **OFFLINE},
    )


def test_stage_on_a_local_folder_writes_tables_and_metrics(tmp_path):
    _messy_folder(tmp_path)
    out = _stage(tmp_path, {"corpus": {"source": "local", "path": "docs", "min_words": 3}})
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "metrics" / "corpus.json").read_text())
    assert metrics["kept"] == 5 and metrics["dropped"]["empty"] == 5
    assert metrics["source"]["path"] == "docs" and len(metrics["source"]["files"]) == 5
    tables = [
        pd.read_parquet(tmp_path / "data" / "corpus" / f)
        for f in ("train.parquet", "heldout.parquet")
    ]
    assert sum(len(t) for t in tables) == 5


def test_stage_drops_and_counts_empty_binary_undecodable_and_huge_documents(tmp_path):
    """The bad-input matrix of one corpus: every bad document is a counted drop, the stage
    completes, and its outputs are whole tables (a 12 MB .txt file is not even read)."""
    docs = tmp_path / "docs"
    good = [f"document {i} tells of rivers, hills and the towns between them." for i in range(6)]
    huge = "word " * 2_500_000  # 12.5 MB
    _jsonl(
        docs / "a.jsonl",
        [
            *({"text": text} for text in good),
            {"text": ""},  # empty
            {"text": "header\u0000\u0001\u0002 bytes of a decodable image file"},  # binary
            {"text": huge},  # too_long
        ],
    )
    (docs / "empty.txt").write_bytes(b"")  # empty
    (docs / "image.txt").write_bytes(bytes(range(1, 32)) * 40 + b"then some text")  # binary
    (docs / "latin1.txt").write_bytes("Caf\xe9 cr\xe8me, na\xefve text".encode("latin-1"))
    (docs / "huge.txt").write_text(huge)  # too_long, never read
    out = _stage(tmp_path, {"corpus": {"source": "local", "path": "docs", "min_words": 3}})
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "metrics/corpus.json").read_text())
    assert metrics["dropped"] == {"empty": 2, "binary": 2, "undecodable": 1, "too_long": 2}
    assert (metrics["read"], metrics["kept"]) == (13, 6)
    tables = [pd.read_parquet(tmp_path / f"data/corpus/{f}.parquet") for f in ("train", "heldout")]
    assert sorted(pd.concat(tables)["text"]) == sorted(good)
    assert sorted(p.name for p in (tmp_path / "data/corpus").iterdir()) == [
        "heldout.parquet",
        "train.parquet",
    ]


def test_max_chars_null_keeps_long_documents(tmp_path):
    path = tmp_path / "long.jsonl"
    _jsonl(path, [{"text": "long " * 300_000}])
    with pytest.raises(InputError) as err:
        build_corpus(_local(path, max_chars=1_000_000), 0)
    assert str(err.value) == (
        "corpus: no document kept of 1 read (dropped: {'too_long': 1}); check corpus.text_field, "
        "corpus.min_words, corpus.max_chars and the source"
    )
    train, heldout, stats = build_corpus(_local(path, max_chars=None, heldout_fraction=0.01), 0)
    assert stats.dropped == {} and len(train) + len(heldout) == 1


def test_stage_stops_on_a_missing_path(tmp_path):
    out = _stage(tmp_path, {"corpus": {"source": "local", "path": "nope"}})
    assert out.returncode == 2
    assert "error: corpus.path: nope does not exist; point it at" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "data").exists()


def test_stage_stops_quickly_on_an_unknown_dataset(tmp_path):
    start = time.monotonic()
    params = {
        "corpus": {"source": "hf", "dataset": "no-such-org/no-such-dataset", "split": "train"}
    }
    out = _stage(tmp_path, params)
    assert out.returncode == 2
    assert (
        "error: corpus.dataset: cannot open dataset 'no-such-org/no-such-dataset' "
        "(config None, split 'train')" in out.stderr
    )
    assert "HF_HUB_OFFLINE=1" in out.stderr and "Traceback" not in out.stderr
    assert time.monotonic() - start < 60  # no retry loop against an unreachable hub


# --- compressed and sharded corpora ------------------------------------------------------------

BROKEN = "the file is truncated or corrupt; re-download it or remove it from the folder"


def _hex_docs(n: int, chars: int, seed: int) -> list[dict]:
    """`n` documents of about `chars` characters of random hex words: text that compresses
    about 2:1, so a cut at half a compressed file lands inside a known document."""
    rng = random.Random(seed)
    return [
        {"text": " ".join(f"{rng.getrandbits(32):08x}" for _ in range(chars // 9))}
        for _ in range(n)
    ]


def _gzip(path: Path, rows: list[object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(b"".join(_line(r) + b"\n" for r in rows), mtime=0))


def _zstd(path: Path, rows: list[object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.output_stream(str(path), compression="zstd") as f:
        f.write(b"".join(_line(r) + b"\n" for r in rows))


def _truncated_gzip(path: Path, docs: list[dict]) -> None:
    """A .jsonl.gz cut at half its compressed size, as an interrupted download leaves it."""
    _gzip(path, docs)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


def _shards(root: Path) -> list[tuple[str, str]]:
    """A folder of every kind of shard, compressed or not; (file, text) in reading order."""
    docs = root / "docs"
    files = {
        "a.json.gz": "a",
        "b.jsonl.gz": "b",
        "c.json.gz": "c",
        "d.jsonl": "d",
        "shards/e.jsonl.zst": "e",
        "shards/f.parquet": "f",
    }
    texts = {k: [f"shard {k} document {i} with words" for i in range(3)] for k in files.values()}
    blob = json.dumps([{"text": t} for t in texts["a"]]).encode()
    docs.mkdir()
    (docs / "a.json.gz").write_bytes(gzip.compress(b" \n" + blob, mtime=0))  # one JSON array
    _gzip(docs / "b.jsonl.gz", [{"text": t} for t in texts["b"]])
    _gzip(docs / "c.json.gz", ["not json", *({"text": t} for t in texts["c"])])  # JSON Lines
    _jsonl(docs / "d.jsonl", [{"text": t} for t in texts["d"]])
    _zstd(docs / "shards" / "e.jsonl.zst", [{"text": t} for t in texts["e"]])
    pd.DataFrame({"text": texts["f"]}).to_parquet(docs / "shards" / "f.parquet")
    return [(name, text) for name, key in files.items() for text in texts[key]]


def test_stage_reads_gzip_zstd_and_parquet_shards_of_one_folder_in_sorted_order(tmp_path):
    expected = _shards(tmp_path)
    params = {"corpus": {"source": "local", "path": "docs", "min_words": 3}}
    out = _stage(tmp_path, params)
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "metrics/corpus.json").read_text())
    assert (metrics["read"], metrics["kept"], metrics["dropped"]) == (19, 18, {"bad_json": 1})
    files = metrics["source"]["files"]
    assert [f["path"] for f in files] == list(dict.fromkeys(name for name, _ in expected))
    for f in files:
        blob = (tmp_path / "docs" / f["path"]).read_bytes()
        assert (f["bytes"], f["sha256"]) == (len(blob), hashlib.sha256(blob).hexdigest())
    paths = [tmp_path / "data/corpus" / f"{split}.parquet" for split in ("train", "heldout")]
    tables = [pd.read_parquet(path) for path in paths]
    assert sum(len(table) for table in tables) == 18
    for table in tables:  # each split keeps the reading order: sorted files, then lines
        kept = set(table["text"])
        assert list(zip(table["source"], table["text"], strict=True)) == [
            (f"local:{name}", text) for name, text in expected if text in kept
        ]
    written = [path.read_bytes() for path in paths]
    assert _stage(tmp_path, params).returncode == 0
    assert [path.read_bytes() for path in paths] == written


@pytest.mark.parametrize(
    ("name", "write", "line", "reason"),
    [
        ("cut.jsonl.gz", "truncated", 2, "Truncated compressed stream"),
        ("bad.jsonl.zst", "garbage", 1, "ZSTD decompress failed: Unknown frame descriptor"),
    ],
)
def test_stage_stops_on_a_broken_shard_naming_the_file_and_line(
    tmp_path, name, write, line, reason
):
    """Three ~40 KB documents: the truncated file ends 19.6 KB into the second one, further from
    either end than the 8 KB a broken stream may lose."""
    docs = tmp_path / "docs"
    _gzip(docs / "good.jsonl.gz", [{"text": "a good shard read before the broken one"}])
    if write == "truncated":
        _truncated_gzip(docs / name, _hex_docs(3, 40_000, seed=0))
    else:
        (docs / name).write_bytes(b"these bytes are not zstandard data\n" * 100)
    out = _stage(tmp_path, {"corpus": {"source": "local", "path": "docs", "min_words": 3}})
    assert out.returncode == 2
    message = f"error: docs/{name}: cannot read line {line} ({reason}): {BROKEN}"
    assert [ln for ln in out.stderr.splitlines() if "error:" in ln] == [message]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "data/corpus/train.parquet").exists()


def test_a_corrupt_parquet_shard_names_the_file_and_row_batch(tmp_path):
    """Row groups of 1,024 rows, one row batch each: a broken page header in the second."""
    path = tmp_path / "docs.parquet"
    pd.DataFrame({"text": [f"row {i} has a few words" for i in range(3000)]}).to_parquet(
        path, row_group_size=1024
    )
    header = pq.ParquetFile(path).metadata.row_group(1).column(0).dictionary_page_offset
    blob = bytearray(path.read_bytes())
    blob[header : header + 16] = bytes(16)
    path.write_bytes(bytes(blob))
    with pytest.raises(InputError) as err:
        build_corpus(_local(path), 0)
    assert str(err.value) == (
        f"{path}: cannot read row batch 2, rows from 1025 (Couldn't deserialize thrift: "
        f"TProtocolException: Invalid data Deserializing page header failed.): {BROKEN}"
    )
    path.write_bytes(b"not parquet at all" * 10)
    with pytest.raises(InputError) as err:
        build_corpus(_local(path), 0)
    assert str(err.value) == (
        f"{path}: not a readable parquet file (Parquet magic bytes not found in footer. Either "
        "the file is corrupted or this is not a parquet file.); re-download it or remove it "
        "from the folder"
    )


@pytest.mark.parametrize("name", ["big.jsonl.gz", "big.json.gz"])
def test_a_compressed_shard_is_read_as_a_stream(tmp_path, name):
    """90 documents of ~40 KB cut at half (the cut ends 39.5 KB into document 45): the first
    document comes out before the break is reached, where a reader that decompressed the whole
    file first would fail before yielding anything."""
    path = tmp_path / name
    _truncated_gzip(path, _hex_docs(90, 40_000, seed=1))
    rows = read_rows(path, {"text": "corpus.text_field"})
    assert next(rows) == _hex_docs(1, 40_000, seed=1)[0]
    with pytest.raises(InputError) as err:
        list(rows)
    assert str(err.value) == f"{path}: cannot read line 45 (Truncated compressed stream): {BROKEN}"


def test_unsupported_kinds_name_the_compressed_suffixes(tmp_path):
    (tmp_path / "docs.jsonl.bz2").write_bytes(b"")
    with pytest.raises(InputError) as err:
        build_corpus(_local(tmp_path), 0)
    assert str(err.value) == (
        f"corpus.path: folder {tmp_path} holds no .jsonl / .json / .parquet / .txt file (or "
        "compressed: .jsonl.gz / .json.gz / .jsonl.zst); add some or fix the path"
    )
