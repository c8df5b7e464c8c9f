"""What the gate reads: the synthesized examples and the data they are checked against.

Besides `data/in2/` itself the gate needs the segment index (documents, token counts), the
segments' text (grounding of QA answers, leakage), the QA pairs and the probe contexts. The
segment text is decoded from the token ids with the base model's tokenizer, as `qa` and
`synthesize` saw it, chunk by chunk as the checks read it (`in2.data.segment_text`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from in2.data.leakage import read_probe_texts
from in2.data.segment_text import SegmentTexts
from in2.data.segments import SegmentStore
from in2.layout import BASE_MODEL, IN2_TRAIN, IN2_VAL, PROBES, QA_PAIRS, SEGMENTS
from in2.model import load_tokenizer


@dataclass(frozen=True)
class GateInputs:
    """The tables the gate validates; each optional one enables the checks that need it."""

    train: pd.DataFrame
    val: pd.DataFrame
    segments: pd.DataFrame | None = None
    """data/segments/segments.parquet: checks against the segment index."""
    qa: pd.DataFrame | None = None
    """data/qa/qa.parquet: the suite of QA pairs."""
    segment_text: Mapping[int, str] | None = None
    """Decoded segment text: grounding of QA pairs, and with `probe_texts` the leakage check."""
    probe_texts: list[str] | None = None
    """The probe contexts: the leakage check."""


def load_inputs() -> GateInputs:
    """Every input of the pipeline's gate, from the contract paths of `in2.layout`."""
    train, val = (pd.read_parquet(p) for p in (IN2_TRAIN, IN2_VAL))
    store = SegmentStore.open(SEGMENTS)
    probe_texts = read_probe_texts(PROBES)
    return GateInputs(
        train=train,
        val=val,
        segments=store.index,
        qa=pd.read_parquet(QA_PAIRS),
        segment_text=SegmentTexts(store, load_tokenizer(BASE_MODEL)),
        probe_texts=probe_texts,
    )
