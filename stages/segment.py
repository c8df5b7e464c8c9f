"""Stage segment: training documents -> 128-token segments (data/segments/)."""

from dataclasses import asdict

import numpy as np
import pandas as pd

from in2.model import BASE_DIR, load_tokenizer
from in2.outputs import atomic_dir, write_json
from in2.segments import INDEX_FILE, TOKENS_FILE, segment_documents
from in2.stage import log, run_stage


def main(params, args) -> None:
    docs = pd.read_parquet("data/corpus/train.parquet")
    tokenizer = load_tokenizer(BASE_DIR)
    tokens, index, stats = segment_documents(docs, tokenizer, params.segment)
    with atomic_dir("data/segments") as out:
        np.save(out / TOKENS_FILE, tokens)
        index.to_parquet(out / INDEX_FILE, index=False)
    log.info("segment: %s", stats)
    write_json("metrics/segment.json", asdict(stats))


if __name__ == "__main__":
    run_stage(main, __doc__)
