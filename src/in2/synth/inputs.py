"""The synthesize stage's inputs, read from their contract paths and decontaminated.

Kept out of the stage script so that it stays a thin shell, and beside `synthesize` because
decontamination decides what synthesis may use (the paper: no source text may share a
`decontam_ngram`-gram with an evaluation set).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from in2.data.leakage import contaminated, read_probe_texts
from in2.data.segment_text import DecodedTexts, SegmentTexts
from in2.data.segments import SegmentStore
from in2.layout import BASE_MODEL, CORPUS_TRAIN, PROBES, QA_PAIRS, SEGMENTS
from in2.model import load_tokenizer
from in2.params import Params
from in2.synth.general import load_general


@dataclass(frozen=True)
class SynthesisInputs:
    """The arguments of `synthesize`, plus what the metrics say about the general source."""

    qa: pd.DataFrame
    """Every kind's QA pairs, the general instructions included."""
    index: pd.DataFrame
    """The segment table (data/segments)."""
    contaminated_docs: set[str]
    segment_text: Mapping[int, str] | None
    """Decoded segments for the cue check of fillers; None when no pair has cues."""
    general_stats: dict


def contaminated_sources(
    docs: pd.DataFrame, general: pd.DataFrame, probe_texts: list[str], n: int
) -> set[str]:
    """Documents and external instructions sharing an n-gram with a probe context.

    External instructions (not drawn from the corpus) are their own source.
    """
    dirty = contaminated(zip(docs["doc_id"], docs["text"], strict=True), probe_texts, n)
    instructions = general[~general["source_doc"].isin(docs["doc_id"])]
    texts = instructions["question"] + "\n" + instructions["answer"]
    return dirty | contaminated(zip(instructions["source_doc"], texts, strict=True), probe_texts, n)


def load_inputs(params: Params) -> SynthesisInputs:
    """Segments, corpus, QA pairs and general instructions, with the contaminated sources."""
    store = SegmentStore.open(SEGMENTS)
    docs = pd.read_parquet(CORPUS_TRAIN)
    qa = pd.read_parquet(QA_PAIRS)
    general, general_stats = load_general(params.synthesize.general, docs, params.seed)
    probe_texts = read_probe_texts(PROBES)
    dirty = contaminated_sources(docs, general, probe_texts, params.synthesize.decontam_ngram)
    # the cue check of fillers needs segment text: decode only when some pair has cues
    has_cues = qa["keywords"].map(len).any()
    texts = DecodedTexts(SegmentTexts(store, load_tokenizer(BASE_MODEL))) if has_cues else None
    return SynthesisInputs(
        pd.concat([qa, general], ignore_index=True), store.index, dirty, texts, general_stats
    )
