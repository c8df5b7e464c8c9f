"""Stage train: IN2 training of the base model on data/in2 (answer-only loss) -> models/in2/."""

from in2.layout import BASE_MODEL, GATE_SUMMARY, IN2_TRAIN, IN2_VAL
from in2.lineage.tracking import stage_inputs
from in2.model import load_model, load_tokenizer
from in2.stage import log, run_stage
from in2.train.inputs import read_inputs
from in2.train.loop import init_distributed, require_passed_gate, train

BUILT_BY = {BASE_MODEL: "base_model", IN2_TRAIN: "synthesize", IN2_VAL: "synthesize"}


def main(params, args) -> None:
    for path, stage in BUILT_BY.items():
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing; run `dvc repro {stage}` to build it")
    dataset_md5 = require_passed_gate(GATE_SUMMARY, [IN2_TRAIN, IN2_VAL])
    state = init_distributed()  # before loading: FSDP's rank-0-only loading needs the group
    tokenizer = load_tokenizer(BASE_MODEL)
    model = load_model(BASE_MODEL)
    inputs = read_inputs(tokenizer, params.train, dataset_md5)
    log.info(
        "train: %d examples (%d tokens), val: %d examples",
        len(inputs.train_examples),
        sum(e.n_tokens for e in inputs.train_examples),
        len(inputs.val_examples),
    )
    train(model, tokenizer, inputs, params, deps=stage_inputs("train"))
    state.destroy_process_group()  # a clean exit under torchrun / accelerate launch


if __name__ == "__main__":
    run_stage(main, __doc__)
