"""Shards of the segment stage: the corpus cut into N runs of rows, each segmented on its own
machine (or DVC stage), then merged into exactly the `data/segments/` of one run.

Tokenizing is the data stage that outgrows one machine first (docs/scale-out.md). A shard is a
contiguous run of rows of the corpus table in file order, so its prose segments are one run of
the unsharded index and of `tokens.npy`: the merge appends the shards in order and shifts
`seg_id` and `start` by the segments and tokens before each. Record units come after all prose
segments and are at most one per titled document; the stage renders them in the merge from the
corpus table, as one run does, so nothing downstream can tell the two apart.

A shard records what it was cut from (the md5s of the corpus table and the tokenizer files, the
params that cut, its row range), and the merge refuses a shard that disagrees, naming it and the
command that rebuilds it: shards of two corpora never mix.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from in2 import layout
from in2.data.segments import INDEX_FILE, TOKENS_FILE, SegmentStats, map_tokens
from in2.lineage.fingerprint import file_md5
from in2.params import InputError, SegmentParams

SHARDS = layout.SEGMENTS.with_name("segments-shards")
"""`data/segments-shards/<K>/`: shard K's tokens.npy, segments.parquet (shard-local seg_id and
start) and SHARD_FILE. Not in in2.layout: the default pipeline has no shard stage."""
SHARD_FILE = "shard.json"
CUT_PARAMS = ("length", "min_tokens", "tail")
"""The `segment` params that decide a shard's segments; the others only shape the units."""


def shard_dir(shard: int) -> Path:
    return SHARDS / str(shard)


def shard_command(shard: int, of: int) -> str:
    """The command that builds one shard (named in every error about it)."""
    return f"python stages/segment.py --shard {shard} --of {of}"


def shard_rows(corpus: Path, shard: int, of: int) -> range:
    """Rows of shard `shard` of `of`: near-equal runs of the corpus table in file order, which
    laid end to end are the whole table."""
    if of < 1 or not 0 <= shard < of:
        raise InputError(
            f"--shard {shard} --of {of}: the shard must be one of 0..{of - 1} and --of at least 1"
        )
    n_rows = pq.ParquetFile(corpus).metadata.num_rows
    return range(shard * n_rows // of, (shard + 1) * n_rows // of)


def shard_inputs(corpus: Path, tokenizer_dir: Path, params: SegmentParams) -> dict[str, Any]:
    """What a shard's segments follow from: the md5 (as dvc.lock records it) of the corpus table
    and of each tokenizer file, and the cutting params."""
    files = [corpus, *sorted(tokenizer_dir.glob("tokenizer*"))]
    return {
        "files": {p.as_posix(): file_md5(p) for p in files},
        "segment": {key: getattr(params, key) for key in CUT_PARAMS},
    }


@dataclass(frozen=True)
class Shard:
    """One shard's metadata (SHARD_FILE) and where it lies."""

    shard: int
    of: int
    rows: list[int]
    """[first, last + 1) rows of the corpus table."""
    inputs: dict[str, Any]
    stats: dict[str, int]
    """Its SegmentStats; the merge sums them."""

    @property
    def folder(self) -> Path:
        return shard_dir(self.shard)

    def write(self, folder: Path) -> None:
        """Write the metadata into `folder` (the shard's folder being built)."""
        (folder / SHARD_FILE).write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")


def read_shards(of: int, inputs: dict[str, Any]) -> list[Shard]:
    """Shards 0..of-1, each checked to be complete, a shard of `of` and cut from `inputs`; else
    one line naming the shard and the command that (re)builds it."""
    if of < 1:
        raise InputError(f"--merge {of}: the number of shards must be at least 1")
    return [_read_shard(k, of, inputs) for k in range(of)]


def _read_shard(k: int, of: int, inputs: dict[str, Any]) -> Shard:
    folder, rebuild = shard_dir(k), f"`{shard_command(k, of)}`"
    missing = [n for n in (TOKENS_FILE, INDEX_FILE, SHARD_FILE) if not (folder / n).is_file()]
    if missing:
        what = "is missing" if not folder.is_dir() else f"has no {missing[0]}"
        raise InputError(f"shard {k} of {of}: {folder} {what}; build it with {rebuild}")
    try:
        shard = Shard(**json.loads((folder / SHARD_FILE).read_text()))
    except (json.JSONDecodeError, TypeError) as err:
        raise InputError(
            f"shard {k} of {of}: {folder / SHARD_FILE} is not a shard's metadata ({err}); "
            f"rebuild it with {rebuild}"
        ) from None
    if (shard.shard, shard.of) != (k, of):
        raise InputError(
            f"shard {k} of {of}: {folder} holds shard {shard.shard} of {shard.of}; "
            f"rebuild it with {rebuild}"
        )
    for path, md5 in inputs["files"].items():
        if shard.inputs["files"].get(path) != md5:
            raise InputError(
                f"shard {k} of {of}: {folder} was cut from another {path} "
                f"(md5 {shard.inputs['files'].get(path)}, now {md5}); rebuild it with {rebuild}"
            )
    if shard.inputs["segment"] != inputs["segment"]:
        raise InputError(
            f"shard {k} of {of}: {folder} was cut with segment params {shard.inputs['segment']}, "
            f"params.yaml says {inputs['segment']}; rebuild it with {rebuild}"
        )
    return shard


def merge_shards(
    shards: Sequence[Shard], write: Callable[[np.ndarray], None]
) -> tuple[pd.DataFrame, SegmentStats]:
    """The shards' token ids to `write`, in shard order; their indexes as one (seg_id and start
    shifted by the segments and tokens before each) and their counts summed, as one run of
    in2.data.segments.segment_batches over the whole corpus returns them."""
    frames, total = [], SegmentStats()
    segments = tokens = 0
    for shard in shards:
        ids = map_tokens(shard.folder / TOKENS_FILE)
        index = pd.read_parquet(shard.folder / INDEX_FILE)
        write(ids)
        frames.append(
            index.assign(seg_id=index["seg_id"] + segments, start=index["start"] + tokens)
        )
        segments, tokens = segments + len(index), tokens + len(ids)
        for key, value in shard.stats.items():
            setattr(total, key, getattr(total, key) + value)
    return pd.concat(frames, ignore_index=True), total
