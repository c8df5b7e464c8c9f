"""Stage qa: segments -> grounded QA pairs (data/qa/qa.parquet), by the `qa.generator` chosen."""

from in2.data.segments import SegmentStore
from in2.model import BASE_DIR, load_tokenizer
from in2.outputs import atomic_file, write_json
from in2.qa.pairs import get_generator
from in2.stage import run_stage


def main(params, args) -> None:
    store = SegmentStore.open("data/segments")
    texts = store.texts(load_tokenizer(BASE_DIR))
    segments = store.index.assign(text=store.index["seg_id"].map(texts))
    units = store.units()
    if not units.empty:  # the fields of record units, for their lookup questions
        segments = segments.merge(units.drop(columns="unit"), on="seg_id", how="left")
    generate = get_generator(params.qa.generator)
    qa, stats = generate(segments, params.qa, params.seed)
    with atomic_file("data/qa/qa.parquet") as tmp:
        qa.to_parquet(tmp, index=False)
    write_json("metrics/qa.json", stats.metrics())


if __name__ == "__main__":
    run_stage(main, __doc__)
