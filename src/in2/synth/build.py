"""Long-context IN2 examples: QA pairs placed at uniformly random slots among filler segments.

An example is stored as segment ids, not text (see in2.data.segments), so the exact slot of every
answer-bearing segment is known — the quality gate and the per-position analysis rely on it.

Per example of a long-context kind (fine_grained, integration):
  1. a target length is drawn inside one of `bins` equal-width bins of [min, max], the bins taken
     in turn, so context lengths are balanced over the range;
  2. m full-length filler segments are drawn: the most that keep gold + m × length within the
     target, inside the target's bin (see `filler_counts`);
     fillers are distinct, never come from the gold document, never quote a cue of the question
     and never come from a document that overlaps the probes (decontamination);
  3. the k gold segments take a uniformly random k-subset of the m + k slots: in source order
     (`gold_order: source`) or shuffled. Pooled over examples, gold slots are uniform.

A QA pair about a record unit (in2.data.units: short lines such as `CE-4821 | name | description`)
gets a context of units of its own type instead of prose: units of other documents are added
until the next one would pass the target (one more if the total is still below the target's
bin), so its length is in range and balanced like the others (`unit_fillers`).

Everything is numpy over whole arrays, grouped by (k, m) so that a group is one dense
(examples × slots) matrix: the paper's 1.75M examples over 10M segments take about a minute on
two cores (bench/synthesis_scale.py). Only the optional cue check touches text.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from in2.data.corpus import unit_hash
from in2.data.units import TEXT_UNIT
from in2.params import KINDS, ContextLength, InputError, SynthesizeParams

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
LONG_KINDS = ("fine_grained", "integration")
MAX_REDRAWS = 100
"""Rounds of redrawing rejected fillers before the pool is declared too small."""


class SynthesisError(InputError):
    """The inputs cannot give the configured dataset; the message says which knob to turn."""


def mix_counts(n: int, mix: dict[str, float]) -> dict[str, int]:
    """Examples per kind: floor of n × fraction, remainders to the largest fractional parts.

    The counts always sum to n exactly, and ties are broken in the fixed order of KINDS.
    """
    exact = {k: n * mix.get(k, 0.0) for k in KINDS}
    counts = {k: math.floor(v) for k, v in exact.items()}
    left = n - sum(counts.values())
    by_remainder = sorted(KINDS, key=lambda k: (-(exact[k] - counts[k]), KINDS.index(k)))
    for k in by_remainder[:left]:
        counts[k] += 1
    return counts


# ------------------------------------------------------------------------- long contexts


def target_lengths(n: int, c: ContextLength, rng: np.random.Generator) -> np.ndarray:
    """Target length of the i-th long example: uniform within bin (i mod bins) of [min, max]."""
    width = (c.max - c.min) / c.bins
    return c.min + width * (np.arange(n) % c.bins + rng.random(n))


def filler_counts(
    gold_tokens: np.ndarray, targets: np.ndarray, seg_len: int, c: ContextLength
) -> np.ndarray:
    """Fillers m per example: the most with gold + m × seg_len <= its target, kept in range and,
    where the gold length allows, inside the target's length bin.

    Contexts grow in whole segments while gold lengths vary (a document's tail is short), so a
    plain rounding would spill examples into a neighbouring bin; bins of a width that is a
    multiple of seg_len always hold a feasible count, so lengths stay balanced over the bins.
    """
    lo = np.maximum(0, np.ceil((c.min - gold_tokens) / seg_len)).astype(np.int64)
    hi = (c.max - gold_tokens) // seg_len
    if (bad := lo > hi).any():
        raise SynthesisError(
            f"{int(bad.sum())} example(s) have gold segments of {int(gold_tokens[bad].max())} "
            f"tokens that no count of {seg_len}-token fillers brings into [{c.min}, {c.max}]; "
            "widen synthesize.context_tokens"
        )
    width = (c.max - c.min) / c.bins
    b = np.minimum((targets - c.min) // width, c.bins - 1)
    last, bin_lo = b == c.bins - 1, c.min + b * width
    # bins are [lo, lo + width), the last one [lo, max]
    in_lo = np.ceil((bin_lo - gold_tokens) / seg_len).astype(np.int64)
    room = bin_lo + width - gold_tokens
    in_hi = np.where(last, np.floor(room / seg_len), np.ceil(room / seg_len) - 1).astype(np.int64)
    a, z = np.maximum(lo, in_lo), np.minimum(hi, in_hi)
    a, z = np.where(a <= z, a, lo), np.where(a <= z, z, hi)
    return np.clip(np.floor((targets - gold_tokens) / seg_len).astype(np.int64), a, z)


def unit_fillers(
    pool: FillerPool,
    lengths: np.ndarray,
    rng: np.random.Generator,
    gold_doc: np.ndarray,
    gold_tokens: np.ndarray,
    targets: np.ndarray,
    c: ContextLength,
    keywords: list[list[str]] | None = None,
) -> list[np.ndarray]:
    """Fillers of variable length (units) per example: as many as keep gold + fillers within
    the target, plus one more if that total is still below the lower edge of the target's bin.

    `lengths` are the token counts of every segment id. A bin wider than the longest unit always
    leaves room for that one more, so lengths stay in [min, max] and balanced over the bins.
    """
    n = len(gold_doc)
    if n == 0:
        return []
    shortest = int(lengths[pool.segments].min())
    width_needed = int(np.max(targets - gold_tokens)) // max(shortest, 1) + 2
    fillers = pool.draw(rng, gold_doc, width_needed, keywords)
    total = gold_tokens[:, None] + np.cumsum(lengths[fillers], axis=1)
    m = (total <= targets[:, None]).sum(axis=1)
    width = (c.max - c.min) / c.bins
    bin_lo = c.min + np.minimum((targets - c.min) // width, c.bins - 1) * width
    reached = np.where(m > 0, total[np.arange(n), np.maximum(m - 1, 0)], gold_tokens)
    m = np.where(reached < bin_lo, m + 1, m)
    if (m > width_needed).any():  # cannot happen: the draw is long enough to pass any target
        raise SynthesisError("internal: unit fillers too short for their targets")
    return [fillers[i, : m[i]] for i in range(n)]


@dataclass
class FillerPool:
    """Segments a context may be filled with, and what a draw must avoid."""

    segments: np.ndarray
    """Candidate segment ids (full-length, in the split, not contaminated)."""
    seg_doc: np.ndarray
    """Document code of every segment id (not only the pool's)."""
    text: dict[int, str] | None = None
    """Segment text, for the cue check; None when no question has cues."""

    def draw(
        self,
        rng: np.random.Generator,
        gold_doc: np.ndarray,
        m: int,
        keywords: list[list[str]] | None = None,
    ) -> np.ndarray:
        """(n, m) distinct fillers per row, none from that row's document or quoting its cues.

        Rejected draws are redrawn until none is left: rejection sampling keeps every accepted
        filler uniform over the allowed segments.
        """
        n = len(gold_doc)
        if m == 0 or n == 0:
            return np.zeros((n, m), dtype=np.int64)
        if len(self.segments) < m + 1:
            raise self._too_small(m)
        fillers = self.segments[rng.integers(len(self.segments), size=(n, m))]
        quotes = np.zeros((n, m), dtype=bool)
        fresh = np.ones((n, m), dtype=bool)
        for _ in range(MAX_REDRAWS):
            if keywords is not None and self.text is not None:
                quotes[fresh] = self._quotes_a_cue(fillers, fresh, keywords)
            bad = quotes | _repeats(fillers) | (self.seg_doc[fillers] == gold_doc[:, None])
            if not bad.any():
                return fillers
            fillers[bad] = self.segments[rng.integers(len(self.segments), size=int(bad.sum()))]
            fresh = bad
        raise self._too_small(m)

    def _quotes_a_cue(
        self, fillers: np.ndarray, cells: np.ndarray, keywords: list[list[str]]
    ) -> list[bool]:
        """For each selected cell (row-major): does its filler's text contain a cue of the row?"""
        rows, cols = np.nonzero(cells)
        return [
            any(cue in self.text[int(fillers[r, c])] for cue in keywords[r])
            for r, c in zip(rows, cols, strict=True)
        ]

    def _too_small(self, m: int) -> SynthesisError:
        return SynthesisError(
            f"could not draw {m} distinct fillers from other documents (pool of "
            f"{len(self.segments)} segments); use more documents (corpus.max_documents) or "
            "shorter contexts (synthesize.context_tokens.max)"
        )


def _repeats(rows: np.ndarray) -> np.ndarray:
    """Mask of the cells repeating an id found earlier in sorted order in the same row."""
    order = np.argsort(rows, axis=1, kind="stable")
    ranked = np.take_along_axis(rows, order, axis=1)
    repeat = np.zeros(rows.shape, dtype=bool)
    repeat[:, 1:] = ranked[:, 1:] == ranked[:, :-1]
    mask = np.zeros(rows.shape, dtype=bool)
    np.put_along_axis(mask, order, repeat, axis=1)
    return mask


def _ragged_sum(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sum of each row of a ragged array (rows may be empty)."""
    cumulative = np.concatenate([[0], np.cumsum(values)])
    return cumulative[offsets[1:]] - cumulative[offsets[:-1]]


def place_gold(
    rng: np.random.Generator, gold: np.ndarray, fillers: np.ndarray, shuffle: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Contexts (n, m + k) with the k gold segments at a uniformly random k-subset of slots.

    Returns the contexts and each gold's slot, aligned with `gold`'s columns.
    """
    n, k = gold.shape
    width = fillers.shape[1] + k
    slots = rng.integers(width, size=(n, k))
    while k > 1 and (clash := _repeats(slots).any(axis=1)).any():
        slots[clash] = rng.integers(width, size=(int(clash.sum()), k))
    slots.sort(axis=1)
    if shuffle:  # which gold takes which (sorted) slot
        slots = rng.permuted(slots, axis=1)
    order = np.argsort(slots, axis=1)
    is_gold = np.zeros((n, width), dtype=bool)
    np.put_along_axis(is_gold, slots, True, axis=1)
    contexts = np.empty((n, width), dtype=np.int64)
    contexts[is_gold] = np.take_along_axis(gold, order, axis=1).ravel()  # row-major = slot order
    contexts[~is_gold] = fillers.ravel()
    return contexts, slots


# ------------------------------------------------------------------------- splits


@dataclass
class SynthesisStats:
    """What a user checks in the DVC metrics of the synthesize stage."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    contaminated_documents: int = 0
    dropped_qa_contaminated: dict[str, int] = field(default_factory=dict)
    length_hist: dict[str, dict[str, int]] = field(default_factory=dict)
    position_hist: dict[str, dict[str, int]] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)


@dataclass
class SegmentIndex:
    """The segment table as arrays: document code and token count per segment id."""

    doc: np.ndarray
    n_tokens: np.ndarray
    doc_codes: dict[str, int]
    unit: np.ndarray | None = None
    """Unit type per segment id (in2.data.units; `text` for prose); None: all prose."""

    @classmethod
    def from_frame(cls, index: pd.DataFrame) -> SegmentIndex:
        codes, uniques = pd.factorize(index["doc_id"], sort=True)
        return cls(
            codes.astype(np.int64),
            index["n_tokens"].to_numpy(np.int64),
            {d: i for i, d in enumerate(uniques)},
            index["unit"].astype(str).to_numpy() if "unit" in index else None,
        )

    def unit_of(self, seg_ids: np.ndarray) -> np.ndarray:
        """Unit type of each segment id."""
        if self.unit is None:
            return np.full(len(seg_ids), TEXT_UNIT, dtype=object)
        return self.unit[seg_ids].astype(object)

    def code(self, docs: pd.Series) -> np.ndarray:
        """Document codes; -1 for a document without segments (e.g. general instructions)."""
        return docs.map(self.doc_codes).fillna(-1).to_numpy(np.int64)


def _ragged(lists: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    lengths = lists.map(len).to_numpy(np.int64)
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate([np.asarray(v, dtype=np.int64) for v in lists]) if len(lists) else []
    return offsets, np.asarray(values, dtype=np.int64)


def _list_array(offsets: np.ndarray, values: np.ndarray) -> pa.Array:
    """A list column straight from offsets + values: no Python list per row."""
    if offsets[-1] < 2**31:
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))


def _example_ids(split: str, kinds: np.ndarray, qa_ids: np.ndarray) -> list[str]:
    return [
        "ex-" + hashlib.sha1(f"{split}|{kind}|{qa_id}".encode()).hexdigest()[:16]
        for kind, qa_id in zip(kinds, qa_ids, strict=True)
    ]


def pick_qa(
    split: str, n: int, qa: pd.DataFrame, mix: dict[str, float], rng: np.random.Generator
) -> pd.DataFrame:
    """The QA rows of a split, with the example kind each becomes, in the configured mix."""
    counts = mix_counts(n, mix)
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


def build_split(
    split: str,
    n: int,
    qa: pd.DataFrame,
    segments: SegmentIndex,
    pools: dict[str, FillerPool],
    params: SynthesizeParams,
    seg_len: int,
    rng: np.random.Generator,
) -> pa.Table:
    """Examples of one split, in the configured mix, in a shuffled order.

    `pools` holds a filler pool per unit type (`text`: full-length prose segments). For prose
    the context layout (row lengths, hence offsets) is known before any filler is drawn; unit
    fillers, of variable length, are drawn first. Every group of long examples then writes
    straight into the final flat array.
    """
    rows = pick_qa(split, n, qa, params.mix, rng)
    rows = rows.iloc[rng.permutation(len(rows))].reset_index(drop=True)
    kind = rows["example_kind"].to_numpy()
    gold_offsets, gold_segments = _ragged(rows["gold_segments"])
    k = np.diff(gold_offsets)
    gold_tokens = _ragged_sum(segments.n_tokens[gold_segments], gold_offsets)

    # short: the gold segments alone, in order; general: no context (and no gold)
    long = np.flatnonzero(np.isin(kind, LONG_KINDS))
    m = np.zeros(len(rows), dtype=np.int64)
    filler_tokens = np.zeros(len(rows), dtype=np.int64)
    targets = target_lengths(len(long), params.context_tokens, rng)
    unit = segments.unit_of(gold_segments[gold_offsets[long]])
    prose = unit == TEXT_UNIT
    m[long[prose]] = filler_counts(
        gold_tokens[long[prose]], targets[prose], seg_len, params.context_tokens
    )
    filler_tokens[long[prose]] = m[long[prose]] * seg_len
    doc = segments.code(rows["source_doc"])
    keywords = rows["keywords"]
    unit_drawn: dict[int, np.ndarray] = {}  # row -> its unit fillers
    for u in sorted(set(unit[~prose])):
        members, pool = long[unit == u], pools.get(u)
        if pool is None:
            raise SynthesisError(f"{split}: QA pairs about {u} units but no {u} units to fill with")
        cues = [list(keywords.iloc[r]) for r in members] if pool.text is not None else None
        drawn = unit_fillers(
            pool,
            segments.n_tokens,
            rng,
            doc[members],
            gold_tokens[members],
            targets[unit == u],
            params.context_tokens,
            cues,
        )
        for r, fill in zip(members, drawn, strict=True):
            unit_drawn[int(r)] = fill
            m[r], filler_tokens[r] = len(fill), int(segments.n_tokens[fill].sum())
    ctx_len = np.where(kind == "general", 0, k + m)
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(ctx_len, out=offsets[1:])
    id_dtype = np.int32 if len(segments.n_tokens) < 2**31 else np.int64
    context = np.empty(offsets[-1], dtype=id_dtype)
    slots = np.empty(len(gold_segments), dtype=np.int32)

    short, short_gold = kind == "short", np.repeat(kind == "short", k)
    within_row = np.arange(len(gold_segments)) - np.repeat(gold_offsets[:-1], k)
    context[np.repeat(short, ctx_len)] = gold_segments[short_gold]
    slots[short_gold] = within_row[short_gold]

    text_pool = pools[TEXT_UNIT]
    groups = (
        pd.DataFrame({"k": k[long], "m": m[long], "prose": prose})
        .groupby(["k", "m", "prose"], sort=True)
        .indices
    )
    for (kk, mm, is_prose), members in groups.items():
        group = long[members]
        gold = gold_segments[gold_offsets[group][:, None] + np.arange(kk)]
        if is_prose:
            cues = [list(keywords.iloc[r]) for r in group] if text_pool.text is not None else None
            fillers = text_pool.draw(rng, doc[group], int(mm), cues)
        else:
            fillers = np.stack([unit_drawn[int(r)] for r in group]).reshape(len(group), int(mm))
        ctx, gold_slots = place_gold(rng, gold, fillers, params.gold_order == "shuffle")
        context[offsets[group][:, None] + np.arange(kk + mm)] = ctx
        slots[gold_offsets[group][:, None] + np.arange(kk)] = gold_slots

    # prose fillers are full-length segments and unit fillers were summed when drawn, so a
    # context's length needs no gather over its ids
    n_tokens = np.where(kind == "general", 0, gold_tokens + filler_tokens)
    return pa.table(
        {
            "example_id": _example_ids(split, kind, rows["qa_id"].to_numpy()),
            "qa_id": rows["qa_id"].astype(str).to_numpy(),
            "kind": kind.astype(str),
            "context_segments": _list_array(offsets, context),
            "gold_segments": _list_array(gold_offsets, gold_segments),
            "gold_slots": _list_array(gold_offsets, slots),
            "source_doc": rows["source_doc"].astype(str).to_numpy(),
            "question": rows["question"].astype(str).to_numpy(),
            "answer": rows["answer"].astype(str).to_numpy(),
            "n_tokens": n_tokens.astype(np.int64),
        }
    )


def histograms(table: pa.Table, c: ContextLength, bins: int = 10) -> tuple[dict, dict]:
    """Context-length counts per length bin and gold-slot counts per relative-position decile."""
    kind = table["kind"].to_numpy()
    long = np.isin(kind, LONG_KINDS)
    edges = np.linspace(c.min, c.max, c.bins + 1)
    lengths = np.histogram(table["n_tokens"].to_numpy()[long], bins=edges)[0]
    spans = zip(edges[:-1], edges[1:], lengths, strict=True)
    length_hist = {f"{int(a)}-{int(b)}": int(n) for a, b, n in spans}
    slots = table["gold_slots"].combine_chunks()
    n_slots = np.diff(slots.offsets.to_numpy())
    width = np.diff(table["context_segments"].combine_chunks().offsets.to_numpy())
    keep = np.repeat(long, n_slots)
    rel = (slots.values.to_numpy()[keep] + 0.5) / np.repeat(width, n_slots)[keep]
    pos = np.histogram(rel, bins=bins, range=(0, 1))[0]
    position_hist = {f"{i / bins:.1f}": int(n) for i, n in enumerate(pos)}
    return length_hist, position_hist


def check_gold(qa: pd.DataFrame, segments: SegmentIndex) -> None:
    """Every gold segment exists and belongs to its pair's source document."""
    offsets, gold = _ragged(qa["gold_segments"])
    if not len(gold):
        return
    if gold.min() < 0 or gold.max() >= len(segments.doc):
        raise SynthesisError(
            f"data/qa names segment ids up to {gold.max()} but data/segments has "
            f"{len(segments.doc)}; they are out of sync: run `dvc repro qa`"
        )
    claimed = np.repeat(segments.code(qa["source_doc"]), np.diff(offsets))
    if (wrong := np.flatnonzero(segments.doc[gold] != claimed)).size:
        row = int(np.searchsorted(offsets, wrong[0], side="right") - 1)
        raise SynthesisError(
            f"QA pair {qa['qa_id'].iloc[row]}: gold segment {gold[wrong[0]]} is not from its "
            f"source document {qa['source_doc'].iloc[row]}; data/qa and data/segments are out "
            "of sync: run `dvc repro qa`"
        )


def synthesize(
    qa: pd.DataFrame,
    index: pd.DataFrame,
    params: SynthesizeParams,
    seg_len: int,
    seed: int,
    contaminated_docs: set[str] = frozenset(),
    segment_text: dict[int, str] | None = None,
) -> tuple[pa.Table, pa.Table, SynthesisStats]:
    """Build the train and val splits; returns (train, val, stats).

    `qa` holds every kind's pairs (general ones included); `contaminated_docs` are documents
    that overlap a probe: none of their pairs and none of their segments is used.
    `segment_text` enables the cue check of fillers (pairs with `keywords`).
    """
    stats = SynthesisStats(contaminated_documents=len(contaminated_docs))
    dirty = qa["source_doc"].isin(contaminated_docs).to_numpy()
    stats.dropped_qa_contaminated = {
        k: int(v) for k, v in qa.loc[dirty, "kind"].value_counts().sort_index().items()
    }
    qa = qa[~dirty]

    def in_val(docs: pd.Series) -> np.ndarray:  # split by document: a hash keeps its side
        unique = docs.drop_duplicates()
        side = dict(zip(unique, (unit_hash(f"{seed}:val", d) for d in unique), strict=True))
        return (docs.map(side) < params.val_doc_fraction).to_numpy()

    segments = SegmentIndex.from_frame(index)
    check_gold(qa, segments)
    doc_names = pd.Series(list(segments.doc_codes), dtype=object)
    is_val_doc = in_val(doc_names)
    clean_doc = ~doc_names.isin(contaminated_docs).to_numpy()
    unit = segments.unit_of(np.arange(len(segments.doc)))
    full = segments.n_tokens == seg_len  # prose fillers are full-length; units any length
    usable = {
        u: clean_doc[segments.doc] & (unit == u) & (full | (u != TEXT_UNIT))
        for u in sorted(set(unit) | {TEXT_UNIT})
    }
    qa_is_val = in_val(qa["source_doc"])
    rng = np.random.default_rng(seed)
    cues = segment_text if segment_text and qa["keywords"].map(len).any() else None
    splits = {}
    for split, n, val in (("train", params.n_train, False), ("val", params.n_val, True)):
        side = is_val_doc[segments.doc] == val
        pools = {
            u: FillerPool(np.flatnonzero(ok & side), segments.doc, cues) for u, ok in usable.items()
        }
        table = build_split(split, n, qa[qa_is_val == val], segments, pools, params, seg_len, rng)
        splits[split] = table
        stats.counts[split] = dict(sorted(table["kind"].to_pandas().value_counts().items()))
        stats.length_hist[split], stats.position_hist[split] = histograms(
            table, params.context_tokens
        )
        stats.tokens[split] = int(table["n_tokens"].to_numpy().sum())
    log.info(
        "synthesize: %s; %d contaminated documents (%s QA pairs dropped)",
        stats.counts,
        stats.contaminated_documents,
        stats.dropped_qa_contaminated,
    )
    return splits["train"], splits["val"], stats
