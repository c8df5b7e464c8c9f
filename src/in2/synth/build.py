"""Long-context IN2 examples: QA pairs placed at uniformly random slots among filler segments.

An example is stored as segment ids, not text (see in2.data.segments), so the exact slot of every
answer-bearing segment is known — the quality gate and the per-position analysis rely on it.

Per example of a long-context kind (fine_grained, integration):
  1. a target length is drawn inside one of `bins` equal-width bins of [min, max], the bins taken
     in turn, so context lengths are balanced over the range (mix.target_lengths);
  2. n_fillers full-length filler segments are drawn: the most that keep gold + n_fillers × length
     within the target, inside the target's bin (mix.filler_counts);
     fillers are distinct, never come from the gold document, never quote a cue of the question
     and never come from a document that overlaps the probes (decontamination; fillers.py);
  3. the n_gold gold segments take a uniformly random n_gold-subset of the n_fillers + n_gold
     slots: in source order (`gold_order: source`) or shuffled (fillers.place_gold). Pooled over
     examples, gold slots are uniform.

A QA pair about a record unit (in2.data.units: short lines such as `CE-4821 | name | description`)
gets a context of units of its own type instead of prose: units of other documents are added
until the next one would pass the target (one more if the total is still below the target's
bin), so its length is in range and balanced like the others (fillers.unit_fillers).

Everything is numpy over whole arrays, grouped by (n_gold, n_fillers) so that a group is one dense
(examples × slots) matrix: the paper's 1.75M examples over 10M segments take about a minute on
two cores (bench/synthesis_scale.py). Only the cue check reads text, once, into an index of which
segment quotes which cue (cues.py).

This module assembles the splits; mix.py says how many examples and how long, fillers.py draws.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from in2.data.corpus import unit_hash
from in2.data.segment_text import text_chunks
from in2.data.units import TEXT_UNIT
from in2.params import ContextLength, SynthesizeParams
from in2.registry import LONG_KINDS
from in2.synth.cues import CueIndex, RowCues
from in2.synth.fillers import FillerPool, LongExamples, place_gold, unit_fillers
from in2.synth.index import SegmentIndex, check_gold, list_array, ragged, ragged_sum
from in2.synth.mix import SynthesisError, filler_counts, mix_counts, target_lengths

log = logging.getLogger(__name__)

COLUMNS = [
    "example_id",
    "qa_id",
    "kind",
    "context_segments",
    "gold_segments",
    "gold_slots",
    "source_doc",
    "question",
    "answer",
    "n_tokens",
]
"""The columns of data/in2/{train,val}.parquet, in order."""


@dataclass
class SynthesisStats:
    """What a user checks in the DVC metrics of the synthesize stage."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    contaminated_documents: int = 0
    dropped_qa_contaminated: dict[str, int] = field(default_factory=dict)
    length_hist: dict[str, dict[str, int]] = field(default_factory=dict)
    position_hist: dict[str, dict[str, int]] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SplitInputs:
    """What one split is built from: its name and size, its QA pairs and its filler pools."""

    name: str
    n_examples: int
    qa: pd.DataFrame
    pools: dict[str, FillerPool]
    """A filler pool per unit type (`text`: full-length prose segments)."""


# ------------------------------------------------------------------------- one split


def pick_qa(
    split: str, n_examples: int, qa: pd.DataFrame, mix: dict[str, float], rng: np.random.Generator
) -> pd.DataFrame:
    """The QA rows of a split, with the example kind each becomes, in the configured mix."""
    counts = mix_counts(n_examples, mix)
    need = {
        "fine_grained": counts["fine_grained"] + counts["short"],
        "integration": counts["integration"],
        "general": counts["general"],
    }
    picked = []
    for kind, want in need.items():
        pool = qa[qa["kind"] == kind]
        if len(pool) < want:
            also = " (for fine_grained and short)" if kind == "fine_grained" else ""
            hint = "check synthesize.general" if kind == "general" else "use more documents"
            raise SynthesisError(
                f"{split}: need {want} {kind} QA pairs{also} but only {len(pool)} are available; "
                f"lower synthesize.n_train/n_val or {hint}"
            )
        chosen = pool.iloc[np.sort(rng.permutation(len(pool))[:want])]
        as_kind = np.array([kind] * want, dtype=object)
        if kind == "fine_grained":  # a random part of the fine-grained pairs become short ones
            as_kind[rng.permutation(want)[: counts["short"]]] = "short"
        picked.append(chosen.assign(example_kind=as_kind))
    return pd.concat(picked, ignore_index=True)


@dataclass(frozen=True)
class _Rows:
    """A split's QA rows in example order, their gold segments as one ragged array."""

    frame: pd.DataFrame
    kind: np.ndarray
    gold_offsets: np.ndarray
    gold_segments: np.ndarray
    n_gold: np.ndarray
    gold_tokens: np.ndarray
    doc: np.ndarray
    """Document code of each row's source (-1: none, as for external instructions)."""

    cue_hashes: RowCues | None
    """Every row's cues, for the cue check; None: no check."""

    def cues(self, rows: np.ndarray, pool: FillerPool) -> RowCues | None:
        """The questions' cues for the cue check of `pool`'s fillers; None: no check."""
        if pool.cue_index is None or self.cue_hashes is None:
            return None
        return self.cue_hashes.take(rows)


def _rows(
    split: SplitInputs, segments: SegmentIndex, mix: dict[str, float], rng: np.random.Generator
) -> _Rows:
    """The split's QA rows, picked in the mix and shuffled so that the kinds interleave."""
    frame = pick_qa(split.name, split.n_examples, split.qa, mix, rng)
    frame = frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
    gold_offsets, gold_segments = ragged(frame["gold_segments"])
    index = next((p.cue_index for p in split.pools.values() if p.cue_index is not None), None)
    return _Rows(
        frame,
        frame["example_kind"].to_numpy(),
        gold_offsets,
        gold_segments,
        np.diff(gold_offsets),
        ragged_sum(segments.n_tokens[gold_segments], gold_offsets),
        segments.code(frame["source_doc"]),
        index.row_cues(frame["keywords"].tolist()) if index is not None else None,
    )


@dataclass(frozen=True)
class _Fillers:
    """How many fillers each row gets and their tokens; the unit fillers are drawn already."""

    long: np.ndarray
    """Rows of a long kind."""
    prose: np.ndarray
    """Per long row: its gold is prose (else a unit type)."""
    n_fillers: np.ndarray
    filler_tokens: np.ndarray
    unit_drawn: dict[int, np.ndarray]
    """Row -> its unit fillers."""


def _count_fillers(
    split: SplitInputs,
    rows: _Rows,
    segments: SegmentIndex,
    params: SynthesizeParams,
    seg_len: int,
    rng: np.random.Generator,
) -> _Fillers:
    """Filler counts per row: computed for prose, drawn for units (they vary in length)."""
    # short: the gold segments alone; general: no context (and no gold); both get no filler
    long = np.flatnonzero(np.isin(rows.kind, LONG_KINDS))
    n_fillers = np.zeros(len(rows.kind), dtype=np.int64)
    filler_tokens = np.zeros(len(rows.kind), dtype=np.int64)
    targets = target_lengths(len(long), params.context_tokens, rng)
    unit = segments.unit_of(rows.gold_segments[rows.gold_offsets[long]])  # of the first gold
    prose = unit == TEXT_UNIT
    prose_rows = long[prose]
    n_fillers[prose_rows] = filler_counts(
        rows.gold_tokens[prose_rows], targets[prose], seg_len, params.context_tokens
    )
    filler_tokens[prose_rows] = n_fillers[prose_rows] * seg_len  # prose fillers are full-length
    unit_drawn: dict[int, np.ndarray] = {}
    for unit_type in sorted(set(unit[~prose])):
        of_type = unit == unit_type
        members, pool = long[of_type], split.pools.get(unit_type)
        if pool is None:
            raise SynthesisError(
                f"{split.name}: QA pairs about {unit_type} units but no {unit_type} units to "
                "fill with"
            )
        examples = LongExamples(
            rows.doc[members], rows.gold_tokens[members], targets[of_type], rows.cues(members, pool)
        )
        drawn = unit_fillers(pool, segments.n_tokens, examples, params.context_tokens, rng)
        for row, fill in zip(members, drawn, strict=True):
            unit_drawn[int(row)] = fill
            n_fillers[row], filler_tokens[row] = len(fill), int(segments.n_tokens[fill].sum())
    return _Fillers(long, prose, n_fillers, filler_tokens, unit_drawn)


@dataclass(frozen=True)
class _Contexts:
    """Every row's context and gold slots, as flat arrays filled in place."""

    offsets: np.ndarray
    """Row i's context is segments[offsets[i]:offsets[i + 1]]."""
    segments: np.ndarray
    slots: np.ndarray
    """Slot of each gold segment, aligned with the rows' ragged gold segments."""


def _lay_out(rows: _Rows, fillers: _Fillers, n_segment_ids: int) -> _Contexts:
    """Every context's place in the flat array (known before any prose filler is drawn), and the
    short contexts filled in."""
    n_slots = np.where(rows.kind == "general", 0, rows.n_gold + fillers.n_fillers)
    offsets = np.zeros(len(rows.kind) + 1, dtype=np.int64)
    np.cumsum(n_slots, out=offsets[1:])
    id_dtype = np.int32 if n_segment_ids < 2**31 else np.int64
    contexts = _Contexts(
        offsets,
        np.empty(offsets[-1], dtype=id_dtype),
        np.empty(len(rows.gold_segments), dtype=np.int32),
    )
    # a short context is its gold segments, in order: gold j of a row sits in slot j
    short = rows.kind == "short"
    short_gold = np.repeat(short, rows.n_gold)
    within_row = np.arange(len(rows.gold_segments)) - np.repeat(rows.gold_offsets[:-1], rows.n_gold)
    contexts.segments[np.repeat(short, n_slots)] = rows.gold_segments[short_gold]
    contexts.slots[short_gold] = within_row[short_gold]
    return contexts


def _fill_long(
    split: SplitInputs,
    rows: _Rows,
    fillers: _Fillers,
    contexts: _Contexts,
    shuffle: bool,
    rng: np.random.Generator,
) -> None:
    """Draw the prose fillers and place the gold, one dense group per (n_gold, n_fillers)."""
    text_pool = split.pools[TEXT_UNIT]
    long = fillers.long
    groups = (
        pd.DataFrame(
            {
                "n_gold": rows.n_gold[long],
                "n_fillers": fillers.n_fillers[long],
                "prose": fillers.prose,
            }
        )
        .groupby(["n_gold", "n_fillers", "prose"], sort=True)
        .indices
    )
    for (n_gold, n_fillers, is_prose), members in groups.items():
        group = long[members]
        gold = rows.gold_segments[rows.gold_offsets[group][:, None] + np.arange(n_gold)]
        if is_prose:
            cues = rows.cues(group, text_pool)
            drawn = text_pool.draw(rng, rows.doc[group], int(n_fillers), cues)
        else:
            drawn = np.stack([fillers.unit_drawn[int(row)] for row in group])
            drawn = drawn.reshape(len(group), int(n_fillers))
        placed, gold_slots = place_gold(rng, gold, drawn, shuffle)
        contexts.segments[contexts.offsets[group][:, None] + np.arange(n_gold + n_fillers)] = placed
        contexts.slots[rows.gold_offsets[group][:, None] + np.arange(n_gold)] = gold_slots


def _example_ids(split: str, kinds: np.ndarray, qa_ids: np.ndarray) -> list[str]:
    return [
        "ex-" + hashlib.sha1(f"{split}|{kind}|{qa_id}".encode()).hexdigest()[:16]
        for kind, qa_id in zip(kinds, qa_ids, strict=True)
    ]


def _table(split: str, rows: _Rows, fillers: _Fillers, contexts: _Contexts) -> pa.Table:
    # prose fillers are full-length segments and unit fillers were summed when drawn, so a
    # context's length needs no gather over its ids
    n_tokens = np.where(rows.kind == "general", 0, rows.gold_tokens + fillers.filler_tokens)
    frame = rows.frame
    columns = {
        "example_id": _example_ids(split, rows.kind, frame["qa_id"].to_numpy()),
        "qa_id": frame["qa_id"].astype(str).to_numpy(),
        "kind": rows.kind.astype(str),
        "context_segments": list_array(contexts.offsets, contexts.segments),
        "gold_segments": list_array(rows.gold_offsets, rows.gold_segments),
        "gold_slots": list_array(rows.gold_offsets, contexts.slots),
        "source_doc": frame["source_doc"].astype(str).to_numpy(),
        "question": frame["question"].astype(str).to_numpy(),
        "answer": frame["answer"].astype(str).to_numpy(),
        "n_tokens": n_tokens.astype(np.int64),
    }
    return pa.table({name: columns[name] for name in COLUMNS})


def build_split(
    split: SplitInputs,
    segments: SegmentIndex,
    params: SynthesizeParams,
    seg_len: int,
    rng: np.random.Generator,
) -> pa.Table:
    """Examples of one split, in the configured mix, in a shuffled order.

    For prose the context layout (row lengths, hence offsets) is known before any filler is
    drawn; unit fillers, of variable length, are drawn first. Every group of long examples then
    writes straight into the final flat array.
    """
    rows = _rows(split, segments, params.mix, rng)
    fillers = _count_fillers(split, rows, segments, params, seg_len, rng)
    contexts = _lay_out(rows, fillers, len(segments.n_tokens))
    _fill_long(split, rows, fillers, contexts, params.gold_order == "shuffle", rng)
    return _table(split.name, rows, fillers, contexts)


# ------------------------------------------------------------------------- both splits


def histograms(table: pa.Table, context_tokens: ContextLength, bins: int = 10) -> tuple[dict, dict]:
    """Context-length counts per length bin and gold-slot counts per relative-position decile."""
    kind = table["kind"].to_numpy()
    long = np.isin(kind, LONG_KINDS)
    edges = np.linspace(context_tokens.min, context_tokens.max, context_tokens.bins + 1)
    lengths = np.histogram(table["n_tokens"].to_numpy()[long], bins=edges)[0]
    spans = zip(edges[:-1], edges[1:], lengths, strict=True)
    length_hist = {f"{int(lo)}-{int(hi)}": int(count) for lo, hi, count in spans}
    slots = table["gold_slots"].combine_chunks()
    n_slots = np.diff(slots.offsets.to_numpy())
    width = np.diff(table["context_segments"].combine_chunks().offsets.to_numpy())
    keep = np.repeat(long, n_slots)
    # a slot's relative position: its centre over the context's width, in (0, 1)
    relative = (slots.values.to_numpy()[keep] + 0.5) / np.repeat(width, n_slots)[keep]
    per_decile = np.histogram(relative, bins=bins, range=(0, 1))[0]
    position_hist = {f"{i / bins:.1f}": int(count) for i, count in enumerate(per_decile)}
    return length_hist, position_hist


def _in_val(docs: pd.Series, seed: int, val_doc_fraction: float) -> np.ndarray:
    """Whether each document is on the val side: split by document, a hash keeps its side."""
    unique = docs.drop_duplicates()
    side = dict(zip(unique, (unit_hash(f"{seed}:val", doc) for doc in unique), strict=True))
    return (docs.map(side) < val_doc_fraction).to_numpy()


def _filler_candidates(
    segments: SegmentIndex, seg_len: int, contaminated_docs: set[str]
) -> dict[str, np.ndarray]:
    """Per unit type, the mask of segment ids that may fill a context of that type."""
    doc_names = pd.Series(list(segments.doc_codes), dtype=object)
    clean_doc = ~doc_names.isin(contaminated_docs).to_numpy()
    unit = segments.unit_of(np.arange(len(segments.doc)))
    full = segments.n_tokens == seg_len  # prose fillers are full-length; units any length
    return {
        unit_type: clean_doc[segments.doc] & (unit == unit_type) & (full | (unit_type != TEXT_UNIT))
        for unit_type in sorted(set(unit) | {TEXT_UNIT})
    }


def synthesize(
    qa: pd.DataFrame,
    index: pd.DataFrame,
    params: SynthesizeParams,
    seg_len: int,
    seed: int,
    contaminated_docs: set[str] = frozenset(),
    segment_text: Mapping[int, str] | None = None,
) -> tuple[pa.Table, pa.Table, SynthesisStats]:
    """Build the train and val splits; returns (train, val, stats).

    `qa` holds every kind's pairs (general ones included); `contaminated_docs` are documents
    that overlap a probe: none of their pairs and none of their segments is used.
    `segment_text` enables the cue check of fillers (pairs with `keywords`); a `SegmentTexts` is
    decoded chunk by chunk, never held.
    """
    stats = SynthesisStats(contaminated_documents=len(contaminated_docs))
    dirty = qa["source_doc"].isin(contaminated_docs).to_numpy()
    dropped = qa.loc[dirty, "kind"].value_counts().sort_index()
    stats.dropped_qa_contaminated = {kind: int(count) for kind, count in dropped.items()}
    qa = qa[~dirty]

    segments = SegmentIndex.from_frame(index)
    check_gold(qa, segments)
    doc_names = pd.Series(list(segments.doc_codes), dtype=object)
    is_val_doc = _in_val(doc_names, seed, params.val_doc_fraction)
    candidates = _filler_candidates(segments, seg_len, contaminated_docs)
    qa_is_val = _in_val(qa["source_doc"], seed, params.val_doc_fraction)
    rng = np.random.default_rng(seed)
    cue_index = None
    if segment_text is not None and qa["keywords"].map(len).any():  # the cue check's index
        pool_ids = np.flatnonzero(np.logical_or.reduce(list(candidates.values())))
        cue_index = CueIndex.build(qa["keywords"].tolist(), text_chunks(segment_text, pool_ids))
    tables = {}
    for name, n_examples, val in (("train", params.n_train, False), ("val", params.n_val, True)):
        side = is_val_doc[segments.doc] == val
        pools = {
            unit_type: FillerPool(np.flatnonzero(ok & side), segments.doc, cue_index)
            for unit_type, ok in candidates.items()
        }
        split = SplitInputs(name, n_examples, qa[qa_is_val == val], pools)
        tables[name] = table = build_split(split, segments, params, seg_len, rng)
        stats.counts[name] = dict(sorted(table["kind"].to_pandas().value_counts().items()))
        stats.length_hist[name], stats.position_hist[name] = histograms(
            table, params.context_tokens
        )
        stats.tokens[name] = int(table["n_tokens"].to_numpy().sum())
    log.info(
        "synthesize: %s; %d contaminated documents (%s QA pairs dropped)",
        stats.counts,
        stats.contaminated_documents,
        stats.dropped_qa_contaminated,
    )
    return tables["train"], tables["val"], stats
