"""Stage train: IN2 training of the base model on data/in2 (answer-only loss) -> models/in2/."""

from pathlib import Path

import pandas as pd

from in2.data.segments import SegmentStore
from in2.lineage.tracking import stage_inputs
from in2.model import load_model, load_tokenizer
from in2.prompting import PromptEncoder
from in2.stage import log, run_stage
from in2.train.batching import ExampleEncoder
from in2.train.loop import TrainOutputs, init_distributed, require_passed_gate, train

BASE = Path("models/base")
TRAIN = Path("data/in2/train.parquet")
VAL = Path("data/in2/val.parquet")
GATE = Path("reports/data_quality/summary.json")
BUILT_BY = {BASE: "base_model", TRAIN: "synthesize", VAL: "synthesize"}


def main(params, args) -> None:
    for path, stage in BUILT_BY.items():
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing; run `dvc repro {stage}` to build it")
    dataset_md5 = require_passed_gate(GATE, [TRAIN, VAL])
    state = init_distributed()  # before loading: FSDP's rank-0-only loading needs the group
    tokenizer = load_tokenizer(BASE)
    model = load_model(BASE)
    encoder = ExampleEncoder(
        PromptEncoder.create(tokenizer, params.train.prompt_format),
        SegmentStore.open("data/segments", populate=True),
        params.train.max_seq_len,
    )
    train_examples = encoder.encode_frame(pd.read_parquet(TRAIN))
    val_examples = encoder.encode_frame(pd.read_parquet(VAL))
    log.info(
        "train: %d examples (%d tokens), val: %d examples",
        len(train_examples),
        sum(e.n_tokens for e in train_examples),
        len(val_examples),
    )
    train(
        model,
        tokenizer,
        encoder,
        train_examples,
        val_examples,
        params,
        TrainOutputs(),
        dataset_md5,
        inputs=stage_inputs("train"),
    )
    state.destroy_process_group()  # a clean exit under torchrun / accelerate launch


if __name__ == "__main__":
    run_stage(main, __doc__)
