"""Stage synthesize: QA pairs + filler segments -> long-context IN2 data (data/in2/)."""

from dataclasses import asdict
from pathlib import Path

import pandas as pd

from in2.model import BASE_DIR, load_tokenizer
from in2.outputs import atomic_dir, read_jsonl, write_json
from in2.segments import SegmentStore
from in2.stage import run_stage
from in2.synthesis import synthesize


def main(params, args) -> None:
    store = SegmentStore.open("data/segments")
    texts = store.texts(load_tokenizer(BASE_DIR))
    probe_texts = [
        row["text"]
        for f in sorted(Path("data/probes").glob("*/contexts.jsonl"))
        for row in read_jsonl(f)
    ]
    qa = pd.read_parquet("data/qa/qa.parquet")
    train, val, stats = synthesize(
        qa, store.index, texts, probe_texts, params.synthesize, params.segment.length, params.seed
    )
    with atomic_dir("data/in2") as out:
        train.to_parquet(out / "train.parquet", index=False)
        val.to_parquet(out / "val.parquet", index=False)
    write_json("metrics/synthesize.json", asdict(stats))


if __name__ == "__main__":
    run_stage(main, __doc__)
