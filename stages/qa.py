"""Stage qa: segments -> grounded QA pairs (data/qa/qa.parquet), by the `qa.generator` chosen."""

from in2 import layout
from in2.outputs import atomic_file, write_json
from in2.qa.pairs import segments_for_qa
from in2.registry import QA_GENERATORS
from in2.stage import run_stage


def main(params, args) -> None:
    segments = segments_for_qa(layout.SEGMENTS, layout.BASE_MODEL, params.qa, params.seed)
    generate = QA_GENERATORS[params.qa.generator]
    qa, stats = generate(segments, params.qa, params.seed)
    with atomic_file(layout.QA_PAIRS) as tmp:
        qa.to_parquet(tmp, index=False)
    write_json(layout.QA_METRICS, stats.metrics())


if __name__ == "__main__":
    run_stage(main, __doc__)
