"""What the train stage learns from: the IN2 examples of data/in2, encoded for the base model.

The stage script stays a shell: it checks that the inputs exist and passed the quality gate,
loads the model, and calls `read_inputs`, which opens data/segments and encodes every example
(its exact length checked up front; see in2.train.batching).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from transformers import PreTrainedTokenizerBase

from in2.data.segments import SegmentStore
from in2.layout import BASE_MODEL, IN2_TRAIN, IN2_VAL, SEGMENTS
from in2.params import TrainParams
from in2.prompting import PromptEncoder
from in2.train.batching import EncodedExample, ExampleEncoder


@dataclass(frozen=True)
class TrainInputs:
    """One training run's inputs, besides the model and the params."""

    base_model: Path
    """The folder the model was loaded from: its md5 is part of the checkpoint run key."""
    encoder: ExampleEncoder
    train_examples: list[EncodedExample]
    val_examples: list[EncodedExample]
    dataset_md5: str | None = None
    """The data version the quality gate passed: MLflow tag, trainer_state and run key."""


def read_inputs(
    tokenizer: PreTrainedTokenizerBase, train_params: TrainParams, dataset_md5: str | None
) -> TrainInputs:
    """Encode data/in2's train and val examples for `tokenizer` and the train params' prompt
    format and length limit; the contexts stay segment ids of the memory-mapped data/segments."""
    encoder = ExampleEncoder(
        PromptEncoder.create(tokenizer, train_params.prompt_format),
        SegmentStore.open(SEGMENTS, populate=True),
        train_params.max_seq_len,
    )
    return TrainInputs(
        base_model=BASE_MODEL,
        encoder=encoder,
        train_examples=encoder.encode_frame(pd.read_parquet(IN2_TRAIN)),
        val_examples=encoder.encode_frame(pd.read_parquet(IN2_VAL)),
        dataset_md5=dataset_md5,
    )
