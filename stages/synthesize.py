"""Stage synthesize: QA pairs + general instructions + fillers -> long-context data (data/in2/)."""

from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from in2.data.leakage import contaminated
from in2.data.segments import SegmentStore
from in2.model import BASE_DIR, load_tokenizer
from in2.outputs import atomic_dir, read_jsonl, write_json
from in2.stage import run_stage
from in2.synth.build import synthesize
from in2.synth.general import load_general


def main(params, args) -> None:
    p = params.synthesize
    store = SegmentStore.open("data/segments")
    docs = pd.read_parquet("data/corpus/train.parquet")
    qa = pd.read_parquet("data/qa/qa.parquet")
    general, general_stats = load_general(p.general, docs, params.seed)
    probe_texts = [
        row["text"]
        for f in sorted(Path("data/probes").glob("*/contexts.jsonl"))
        for row in read_jsonl(f)
    ]
    # paper: no source text may share a 10-gram with an evaluation set; external instructions
    # are their own source
    instructions = general[~general["source_doc"].isin(docs["doc_id"])]
    dirty = contaminated(
        zip(docs["doc_id"], docs["text"], strict=True), probe_texts, p.decontam_ngram
    )
    dirty |= contaminated(
        zip(
            instructions["source_doc"],
            instructions["question"] + "\n" + instructions["answer"],
            strict=True,
        ),
        probe_texts,
        p.decontam_ngram,
    )
    # the cue check of fillers needs segment text: decode only when some pair has cues
    texts = store.texts(load_tokenizer(BASE_DIR)) if qa["keywords"].map(len).any() else None
    train, val, stats = synthesize(
        pd.concat([qa, general], ignore_index=True),
        store.index,
        p,
        params.segment.length,
        params.seed,
        contaminated_docs=dirty,
        segment_text=texts,
    )
    with atomic_dir("data/in2") as out:
        pq.write_table(train, out / "train.parquet")
        pq.write_table(val, out / "val.parquet")
    write_json("metrics/synthesize.json", {**asdict(stats), "general_source": general_stats})


if __name__ == "__main__":
    run_stage(main, __doc__)
