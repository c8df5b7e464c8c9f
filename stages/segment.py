"""Stage segment: training documents -> 128-token segments and record units (data/segments/).

The corpus is streamed: documents are read and tokenized in batches and their ids written to
`tokens.npy` as they come; only the index (numpy columns) and, for record units, the documents
with a title are held.

Past one machine (docs/scale-out.md): `--shard K --of N` cuts only the K-th of N runs of corpus
rows into data/segments-shards/K/, and `--merge N` joins shards 0..N-1 into data/segments/,
byte for byte what one run writes.
"""

import argparse
from dataclasses import asdict

import pandas as pd

from in2 import layout
from in2.data.segments import (
    INDEX_FILE,
    TOKENS_FILE,
    CorpusTexts,
    SegmentStats,
    TokenFile,
    segment_batches,
    token_dtype,
)
from in2.data.shards import (
    Shard,
    merge_shards,
    read_shards,
    shard_dir,
    shard_inputs,
    shard_rows,
)
from in2.data.units import UNITS_FILE, append_units, render_units
from in2.model import load_tokenizer
from in2.outputs import atomic_dir, write_json
from in2.params import InputError, Params
from in2.stage import log, run_stage


def configure(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--shard", type=int, metavar="K", help="cut only shard K (0-based) of --of")
    mode.add_argument("--merge", type=int, metavar="N", help="join shards 0..N-1 into one output")
    parser.add_argument("--of", type=int, metavar="N", help="the number of shards, with --shard")


def main(params: Params, args: argparse.Namespace) -> None:
    if (args.shard is None) != (args.of is None):
        raise InputError("--shard K and --of N go together: shard K of N (K = 0..N-1)")
    if args.shard is not None:
        cut_shard(params, args.shard, args.of)
        return
    p = params.segment
    texts = CorpusTexts(layout.CORPUS_TRAIN, keep_titled=bool(p.units))
    shards = None
    if args.merge is not None:
        shards = read_shards(args.merge, shard_inputs(layout.CORPUS_TRAIN, layout.BASE_MODEL, p))
    tokenizer = load_tokenizer(layout.BASE_MODEL)
    with atomic_dir(layout.SEGMENTS) as out:
        with TokenFile(out / TOKENS_FILE, token_dtype(len(tokenizer))) as tokens:
            if shards is None:
                index, stats = segment_batches(texts, tokenizer, p, tokens.append)
                titled = texts.titled()
            else:
                index, stats = merge_shards(shards, tokens.append)
                titled = texts.read_titled()
            units = render_units(
                titled,
                p.units,
                params.seed,
                p.entry_words,
                p.entry_line_words,
                tuple(p.entry_layouts),
            )
            prose = tokens.view()
            ids, index, unit_table = append_units(prose, index, units, tokenizer)
            tokens.append(ids[len(prose) :])  # the units' ids, after the prose segments
        index.to_parquet(out / INDEX_FILE, index=False)
        unit_table.to_parquet(out / UNITS_FILE, index=False)
    write_metrics(stats, unit_table)


def cut_shard(params: Params, shard: int, of: int) -> None:
    """Segment the rows of one shard into data/segments-shards/<shard>/ (no units: the merge
    renders them)."""
    p = params.segment
    rows = shard_rows(layout.CORPUS_TRAIN, shard, of)
    inputs = shard_inputs(layout.CORPUS_TRAIN, layout.BASE_MODEL, p)
    tokenizer = load_tokenizer(layout.BASE_MODEL)
    texts = CorpusTexts(layout.CORPUS_TRAIN, keep_titled=False, rows=rows)
    with atomic_dir(shard_dir(shard)) as out:
        with TokenFile(out / TOKENS_FILE, token_dtype(len(tokenizer))) as tokens:
            index, stats = segment_batches(texts, tokenizer, p, tokens.append)
        index.to_parquet(out / INDEX_FILE, index=False)
        Shard(shard, of, [rows.start, rows.stop], inputs, asdict(stats)).write(out)
    log.info("segment shard %d of %d (rows %d..%d): %s", shard, of, rows.start, rows.stop, stats)


def write_metrics(stats: SegmentStats, unit_table: pd.DataFrame) -> None:
    counts = unit_table["unit"].value_counts().sort_index()
    unit_counts = {str(k): int(v) for k, v in counts.items()}
    log.info("segment: %s; units %s", stats, unit_counts)
    write_json(layout.SEGMENT_METRICS, {**asdict(stats), "units": unit_counts})


if __name__ == "__main__":
    run_stage(main, __doc__, configure)
