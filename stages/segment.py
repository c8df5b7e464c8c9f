"""Stage segment: training documents -> 128-token segments and record units (data/segments/)."""

from dataclasses import asdict

import numpy as np
import pandas as pd

from in2 import layout
from in2.data.segments import INDEX_FILE, TOKENS_FILE, segment_documents
from in2.data.units import UNITS_FILE, append_units, render_units
from in2.model import load_tokenizer
from in2.outputs import atomic_dir, write_json
from in2.stage import log, run_stage


def main(params, args) -> None:
    docs = pd.read_parquet(layout.CORPUS_TRAIN)
    tokenizer = load_tokenizer(layout.BASE_MODEL)
    tokens, index, stats = segment_documents(docs, tokenizer, params.segment)
    units = render_units(
        docs,
        params.segment.units,
        params.seed,
        params.segment.entry_words,
        params.segment.entry_line_words,
        tuple(params.segment.entry_layouts),
    )
    tokens, index, unit_table = append_units(tokens, index, units, tokenizer)
    with atomic_dir(layout.SEGMENTS) as out:
        np.save(out / TOKENS_FILE, tokens)
        index.to_parquet(out / INDEX_FILE, index=False)
        unit_table.to_parquet(out / UNITS_FILE, index=False)
    counts = unit_table["unit"].value_counts().sort_index()
    unit_counts = {str(k): int(v) for k, v in counts.items()}
    log.info("segment: %s; units %s", stats, unit_counts)
    write_json(layout.SEGMENT_METRICS, {**asdict(stats), "units": unit_counts})


if __name__ == "__main__":
    run_stage(main, __doc__)
