"""Stage synthesize: QA pairs + general instructions + fillers -> long-context data (data/in2/)."""

from dataclasses import asdict

import pyarrow.parquet as pq

from in2.layout import IN2_DATA, IN2_TRAIN, IN2_VAL, SYNTHESIZE_METRICS
from in2.outputs import atomic_dir, write_json
from in2.stage import run_stage
from in2.synth.build import synthesize
from in2.synth.inputs import load_inputs


def main(params, args) -> None:
    inputs = load_inputs(params)
    train, val, stats = synthesize(
        inputs.qa,
        inputs.index,
        params.synthesize,
        params.segment.length,
        params.seed,
        contaminated_docs=inputs.contaminated_docs,
        segment_text=inputs.segment_text,
    )
    with atomic_dir(IN2_DATA) as out:
        pq.write_table(train, out / IN2_TRAIN.name)
        pq.write_table(val, out / IN2_VAL.name)
    write_json(SYNTHESIZE_METRICS, {**asdict(stats), "general_source": inputs.general_stats})


if __name__ == "__main__":
    run_stage(main, __doc__)
