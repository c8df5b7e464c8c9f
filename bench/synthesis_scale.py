"""Paper-scale synthesis on this machine: 1.75M examples of 4K-32K tokens over 10M segments.

    python bench/synthesis_scale.py [--examples 1750000] [--segments 10000000] [--repeats 3]

Measures, side by side in one run:
  1. `in2.synth.build.synthesize` + writing the parquet index (the real stage code path) on a
     synthetic corpus of `--segments` segments (token ids are random: the index never reads them);
     wall time (median of `--repeats`), peak RSS and the size of the index on disk;
  2. a naive baseline that builds each context as text and re-tokenizes it to measure its length,
     timed on a subsample with the real SmolLM2 tokenizer and extrapolated to all examples;
  3. gathering the token ids of training batches from the memory-mapped token array
     (`SegmentStore.context_ids`): from a fresh map, from a populated one (as the train stage
     opens it), and against a per-segment slicing loop.
Targets (issue 3): synthesis <= 2 min and <= 2 GB on disk; gather >= 50M tokens/s.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from transformers import AutoTokenizer

from in2.data.segments import INDEX_FILE, TOKENS_FILE, SegmentStore
from in2.model import gguf_path
from in2.params import ContextLength, ModelParams, SynthesizeParams
from in2.registry import LONG_KINDS
from in2.synth.build import synthesize

SEG_LEN = 128
SEGMENTS_PER_DOC = 10
QUESTION = "According to the passage, what did the committee decide about the proposal {}?"
ANSWER = "It postponed the vote on proposal {} until the next session."


def synthetic_corpus(n_segments: int, rng: np.random.Generator) -> pd.DataFrame:
    """Segment index of documents of 10 segments; the last one of a document is a short tail."""
    seg = np.arange(n_segments)
    doc = seg // SEGMENTS_PER_DOC
    last = (seg % SEGMENTS_PER_DOC == SEGMENTS_PER_DOC - 1) | (seg == n_segments - 1)
    n_tokens = np.where(last, rng.integers(32, SEG_LEN, n_segments), SEG_LEN)
    starts = np.concatenate([[0], np.cumsum(n_tokens)[:-1]])
    names = pd.Series(doc).map("doc{:08d}".format)
    return pd.DataFrame(
        {
            "seg_id": seg,
            "doc_id": names,
            "start": starts,
            "n_tokens": n_tokens.astype(np.int32),
            "index_in_doc": (seg % SEGMENTS_PER_DOC).astype(np.int32),
        }
    )


def synthetic_qa(index: pd.DataFrame, counts: dict[str, int], rng: np.random.Generator):
    """QA pairs as a generator writes them: fine-grained on one segment, integration on two."""
    n_docs = int(index["doc_id"].nunique())
    fine = rng.choice(len(index), counts["fine_grained"], replace=False)
    docs = rng.choice(n_docs, counts["integration"], replace=False)
    pairs = np.stack([docs * SEGMENTS_PER_DOC, docs * SEGMENTS_PER_DOC + 1 + docs % 8], axis=1)
    frames = []
    for kind, gold, source in (
        ("fine_grained", [[int(s)] for s in fine], index["doc_id"].to_numpy()[fine]),
        ("integration", pairs.tolist(), index["doc_id"].to_numpy()[pairs[:, 0]]),
        ("general", [[]] * counts["general"], [f"instr-{i}" for i in range(counts["general"])]),
    ):
        n = len(gold)
        ids = [f"{kind[:2]}-{i:09d}" for i in range(n)]
        frames.append(
            pd.DataFrame(
                {
                    "qa_id": ids,
                    "kind": kind,
                    "gold_segments": gold,
                    "source_doc": source,
                    "question": [QUESTION.format(i) for i in range(n)],
                    "answer": [ANSWER.format(i) for i in range(n)],
                    "keywords": [[]] * n,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def write_tokens(folder: Path, index: pd.DataFrame, vocab: int, rng: np.random.Generator) -> None:
    total = int(index["n_tokens"].sum())
    tokens = np.lib.format.open_memmap(folder / TOKENS_FILE, "w+", np.uint16, (total,))
    step = 1 << 26
    for i in range(0, total, step):
        tokens[i : i + step] = rng.integers(0, vocab, min(step, total - i), dtype=np.uint16)
    tokens.flush()
    index.to_parquet(folder / INDEX_FILE, index=False)


def naive_seconds_per_example(table, store: SegmentStore, tokenizer, n: int) -> float:
    """Build the context as text (decode each segment), then re-tokenize it to count tokens."""
    rows = table.slice(0, n).to_pylist()
    t0 = time.perf_counter()
    for row in rows:
        text = "".join(tokenizer.decode(store.ids(s).tolist()) for s in row["context_segments"])
        tokenizer(text, add_special_tokens=False)
    return (time.perf_counter() - t0) / n


def slicing_loop(store: SegmentStore, seg_ids: np.ndarray) -> np.ndarray:
    """The obvious gather: one memory-map slice per segment, then concatenate."""
    return np.concatenate(
        [store.tokens[store.starts[s] : store.starts[s] + store.lengths[s]] for s in seg_ids]
    )


def gather_rate(fn, store: SegmentStore, batches: list[list[np.ndarray]]) -> float:
    """Median tokens/s over batches."""
    rates = []
    for batch in batches:
        t0 = time.perf_counter()
        n = sum(len(fn(store, ctx)) for ctx in batch)
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def fast_gather(store: SegmentStore, seg_ids: np.ndarray) -> np.ndarray:
    return store.context_ids(seg_ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=1_750_000)
    parser.add_argument("--segments", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-sample", type=int, default=40)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    params = SynthesizeParams(
        n_train=args.examples,
        n_val=2_000,
        context_tokens=ContextLength(min=4096, max=32768, bins=28),
    )
    t0 = time.perf_counter()
    index = synthetic_corpus(args.segments, rng)
    # enough pairs for the train split after 15% of documents go to validation
    want = {
        "fine_grained": int(0.72 * args.examples / 0.8),
        "integration": int(0.17 * args.examples / 0.8),
        "general": int(0.11 * args.examples / 0.8),
    }
    qa = synthetic_qa(index, want, rng)
    print(
        f"inputs: {len(index):,} segments, {len(qa):,} QA pairs ({time.perf_counter() - t0:.0f} s)"
    )

    work = Path(args.workdir or tempfile.mkdtemp(prefix="in2-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    times = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        train, val, stats = synthesize(qa, index, params, SEG_LEN, seed=r)
        pq.write_table(train, work / "train.parquet")
        pq.write_table(val, work / "val.parquet")
        times.append(time.perf_counter() - t0)
        print(f"  synthesize + write, run {r + 1}: {times[-1]:.1f} s")
    disk = sum((work / f).stat().st_size for f in ("train.parquet", "val.parquet"))
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    ids = len(train["context_segments"].combine_chunks().values)
    print(f"counts {stats.counts['train']}, tokens {stats.tokens['train']:,}")

    mp = ModelParams()
    tokenizer = AutoTokenizer.from_pretrained(gguf_path(mp).parent, gguf_file=mp.gguf_file)
    seg_dir = work / "segments"
    seg_dir.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    write_tokens(seg_dir, index, len(tokenizer), rng)
    print(
        f"token array: {(seg_dir / TOKENS_FILE).stat().st_size / 2**30:.2f} GiB written in "
        f"{time.perf_counter() - t0:.0f} s"
    )
    store = SegmentStore.open(seg_dir)
    long = train.filter(pc.is_in(train["kind"], pa.array(list(LONG_KINDS))))
    naive = naive_seconds_per_example(long, store, tokenizer, args.naive_sample)
    n_long = len(long)
    naive_total = naive * n_long
    ours = statistics.median(times)

    # batches of examples the naive baseline did not read: their pages are not mapped yet
    picked = long.slice(len(long) // 2, 8 * 20)["context_segments"].to_pylist()
    batches = [[np.asarray(c) for c in picked[i : i + 8]] for i in range(0, len(picked), 8)]
    cold = gather_rate(fast_gather, SegmentStore.open(seg_dir), batches)  # faults on each page
    t0 = time.perf_counter()
    populated = SegmentStore.open(seg_dir, populate=True)  # what the train stage opens
    populate_s = time.perf_counter() - t0
    first = gather_rate(fast_gather, populated, batches)
    fast, slow = [], []
    for _ in range(3):  # interleaved, so that neither method gets the quieter moments
        fast.append(gather_rate(fast_gather, populated, batches))
        slow.append(gather_rate(slicing_loop, populated, batches))
    fast, slow = statistics.median(fast), statistics.median(slow)

    rows = [
        ("examples (train + val)", f"{len(train) + len(val):,}"),
        ("corpus segments", f"{len(index):,}"),
        ("context segment ids stored", f"{ids:,}"),
        (f"synthesize + write, median of {args.repeats}", f"{ours:.1f} s"),
        ("index on disk (train + val parquet)", f"{disk / 2**30:.2f} GiB"),
        ("peak RSS", f"{peak_rss:.1f} GiB"),
        (f"naive baseline per long example ({args.naive_sample} timed)", f"{naive * 1e3:.0f} ms"),
        (f"naive baseline extrapolated to {n_long:,} examples", f"{naive_total / 3600:.1f} h"),
        ("speed-up over the naive baseline", f"{naive_total / ours:,.0f}x"),
        (f"gather, fresh map, first read ({len(batches)} x 8)", f"{cold / 1e6:.0f}M tok/s"),
        ("open with populate=True (maps every page)", f"{populate_s:.2f} s"),
        ("gather, populated map, first read", f"{first / 1e6:.0f}M tok/s"),
        ("gather, populated map, warm (median of 3)", f"{fast / 1e6:.0f}M tok/s"),
        ("gather, per-segment slicing loop, warm (median of 3)", f"{slow / 1e6:.0f}M tok/s"),
        ("gather speed-up (warm)", f"{fast / slow:.1f}x"),
    ]
    print("\n| measure | value |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
