"""The synthesize stage's inputs, read from their contract paths and decontaminated.

Kept out of the stage script so that it stays a thin shell, and beside `synthesize` because
decontamination decides what synthesis may use (the paper: no source text may share a
`decontam_ngram`-gram with an evaluation set).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from in2.data.leakage import CHUNK_TEXTS, ProbeNgrams, read_probe_texts
from in2.data.segment_text import SegmentTexts
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
    """Segment text for the cue check of fillers (decoded in chunks); None when no pair has
    cues."""
    general_stats: dict


def contaminated_sources(
    corpus: Path, external: pd.DataFrame, probe_texts: list[str], n: int
) -> set[str]:
    """Documents of the corpus table, and `external` instructions (not drawn from the corpus:
    each is its own source), that share an n-gram with a probe context.

    The corpus is read in batches of CHUNK_TEXTS documents: at paper scale it is ~5 GB of text.
    """
    probe = ProbeNgrams.of(probe_texts, n)
    dirty = set()
    table = pq.ParquetFile(corpus)
    for batch in table.iter_batches(batch_size=CHUNK_TEXTS, columns=["doc_id", "text"]):
        doc_ids = batch.column("doc_id")
        dirty.update(doc_ids[i].as_py() for i in probe.find(batch.column("text")))
    texts = (external["question"] + "\n" + external["answer"]).tolist()
    sources = external["source_doc"].tolist()
    return dirty | {sources[i] for i in probe.find(texts)}


def load_inputs(params: Params) -> SynthesisInputs:
    """Segments, QA pairs and general instructions, with the contaminated sources.

    The corpus' documents are read whole only for the `corpus` general source, which draws its
    pairs from them; decontamination streams them.
    """
    store = SegmentStore.open(SEGMENTS)
    qa = pd.read_parquet(QA_PAIRS)
    from_corpus = params.synthesize.general.source == "corpus"
    docs = pd.read_parquet(CORPUS_TRAIN) if from_corpus else None
    general, general_stats = load_general(params.synthesize.general, docs, params.seed)
    external = general.iloc[:0] if from_corpus else general  # corpus pairs: their documents
    dirty = contaminated_sources(
        CORPUS_TRAIN, external, read_probe_texts(PROBES), params.synthesize.decontam_ngram
    )
    # the cue check of fillers reads segment text: only when some pair has cues
    has_cues = qa["keywords"].map(len).any()
    texts = SegmentTexts(store, load_tokenizer(BASE_MODEL)) if has_cues else None
    return SynthesisInputs(
        pd.concat([qa, general], ignore_index=True), store.index, dirty, texts, general_stats
    )
