"""The tables the suites check, derived from the data: one row per example, QA pair or gold slot.

GX checks columns, so each property of the data becomes a number in a row: list columns reduced
to counts, what only the segment index knows (documents, token counts), probe n-grams shared
(`Leakage`), whether a QA answer is grounded in its gold text (`grounded`), and for every gold
segment its slot and relative position `u`.

Uniformity is tested on a randomized probability integral transform of each gold slot of the
long-context kinds: `u = (slot + v) / n_slots` with `v ~ U(0, 1)`. If the slot is uniform on
`{0, ..., n_slots - 1}`, `u` is exactly Uniform(0, 1) whatever the context sizes, so one
Kolmogorov–Smirnov test and one chi-square test over `validate.position_bins` equal bins cover
contexts of every length at once. `v` comes from a hash of the example id, so the same data always
gives the same p-values. The tests need `5 × position_bins` positions (the chi-square rule of
five expected counts per bin); with fewer, the check passes and reports "insufficient data" and
the observed n rather than pretending to know. The gold slots of one integration example are
distinct (drawn without replacement), which if anything makes the tests conservative.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from in2.data.leakage import ProbeNgrams
from in2.data.segment_text import text_chunks
from in2.qa.lookup import QUOTING_GENERATORS


def relative_position(example_id: str, gold_index: int, slot: int, n_slots: int) -> float:
    """Randomized PIT of a slot: Uniform(0, 1) exactly when the slot is uniform over n_slots.

    The jitter `v` is a hash of (example id, gold index), so it is reproducible and independent of
    the slot itself.
    """
    digest = hashlib.blake2b(f"{example_id}\x1f{gold_index}".encode(), digest_size=8).digest()
    v = int.from_bytes(digest, "big") / 2.0**64
    return (slot + v) / n_slots


def _with_split(train: pd.DataFrame, val: pd.DataFrame) -> pd.DataFrame:
    data = pd.concat([train, val], ignore_index=True)
    data["split"] = ["train"] * len(train) + ["val"] * len(val)
    return data


@dataclass(frozen=True)
class Lists:
    """A list column as Arrow holds it: all values in one array, row i = values[offsets[i]:
    offsets[i + 1]]. 201M context ids at paper scale: as Python objects they would not fit."""

    values: np.ndarray
    offsets: np.ndarray

    @classmethod
    def of(cls, column: pd.Series) -> Lists:
        """From a column of arrays (or lists) of integers, as pandas reads them from parquet."""
        items = column.to_list()
        lengths = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
        values = np.concatenate(items) if lengths.sum() else np.zeros(0, np.int32)
        return cls(_narrow(values), np.concatenate([[0], np.cumsum(lengths)]))

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def rows(self) -> np.ndarray:
        """The row of each value."""
        return np.repeat(_narrow(np.arange(len(self.offsets) - 1)), self.lengths)


def _narrow(ids: np.ndarray) -> np.ndarray:
    """int32 where every id fits: 201M context ids are 0.8 GB instead of 1.6 GB."""
    if ids.dtype == np.int32:
        return ids
    small = not len(ids) or (ids.min() >= -(2**31) and ids.max() < 2**31)
    return ids.astype(np.int32) if small else ids.astype(np.int64)


def schema_frame(train: pd.DataFrame, val: pd.DataFrame, list_columns: list[str]) -> pd.DataFrame:
    """train + val as the schema suite checks them: a list column whose every value is an array
    of integers (as parquet reads it) becomes one Arrow list column, which GX fingerprints and
    checks as one array instead of 201M Python objects; any other stays as it is, to be reported
    value by value."""
    raw = pd.concat([train, val], ignore_index=True)
    for column in list_columns:
        if column in raw and all(
            isinstance(v, np.ndarray) and v.ndim == 1 and v.dtype.kind in "iu"
            for v in raw[column].to_list()
        ):
            lists = Lists.of(raw[column])
            array = pa.ListArray.from_arrays(pa.array(lists.offsets.astype(np.int32)), lists.values)
            raw[column] = pd.Series(array, dtype=pd.ArrowDtype(array.type), index=raw.index)
    return raw


def example_table(
    train: pd.DataFrame,
    val: pd.DataFrame,
    segments: pd.DataFrame | None = None,
    leakage: Leakage | None = None,
) -> pd.DataFrame:
    """One row per example with the counts the checks need (list columns reduced to numbers).

    With `segments` (seg_id, doc_id, n_tokens) it also counts what only the segment index knows
    (see `_segment_counts`) and which documents the other split uses too. With `leakage`, the
    probe n-grams in the example's question, answer and context segments.
    """
    data = _with_split(train, val)
    ctx, gold = Lists.of(data["context_segments"]), Lists.of(data["gold_segments"])
    table = _example_counts(data, ctx, gold)
    if leakage is not None:
        table["n_probe_ngrams"] = leakage.per_example(data["question"], data["answer"], ctx)
    docs = None
    if segments is not None:
        docs = DocCodes.of(segments, data["source_doc"])
        table = table.assign(**_segment_counts(ctx, gold, segments, docs))
    table["n_docs_in_other_split"] = _docs_in_other_split(data, ctx, docs)
    return table


def _example_counts(data: pd.DataFrame, ctx: Lists, gold: Lists) -> pd.DataFrame:
    """What each example's own row says: sizes of its lists and text, and a key of its content."""
    context_hash = _list_hashes(ctx)
    return pd.DataFrame(
        {
            "example_id": data["example_id"],
            "split": data["split"],
            "kind": data["kind"],
            "n_tokens": data["n_tokens"].astype("int64"),
            "n_context": ctx.lengths.astype("int64"),
            "n_gold": gold.lengths.astype("int64"),
            "n_gold_slots": np.fromiter(
                map(len, data["gold_slots"].to_list()), np.int64, len(data)
            ),
            "question_chars": data["question"].str.strip().str.len(),
            "answer_chars": data["answer"].str.strip().str.len(),
            "content_key": [
                hashlib.sha1(repr((k, q, a, n, h)).encode()).hexdigest()
                for k, q, a, n, h in zip(
                    data["kind"].to_list(),
                    data["question"].to_list(),
                    data["answer"].to_list(),
                    ctx.lengths.tolist(),
                    context_hash.tolist(),
                    strict=True,
                )
            ],
        }
    )


def _list_hashes(lists: Lists) -> np.ndarray:
    """A 64-bit hash of each row's list, order-sensitive: sum of a mix of (value, position)."""
    position = np.arange(len(lists.values)) - np.repeat(lists.offsets[:-1], lists.lengths)
    with np.errstate(over="ignore"):
        mixed = _mix64(lists.values.astype(np.uint64) ^ _mix64(position.astype(np.uint64)))
    if not len(mixed):
        return np.zeros(len(lists.lengths), dtype=np.uint64)
    starts = np.minimum(lists.offsets[:-1], len(mixed) - 1)
    sums = np.add.reduceat(mixed, starts)  # uint64 sums wrap, as a hash should
    return np.where(lists.lengths > 0, sums, np.uint64(0))


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit moves every output bit."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


@dataclass(frozen=True)
class DocCodes:
    """Documents as integer codes: of every segment (by seg_id) and of each example's source."""

    of_segment: np.ndarray
    """Code of the document of segment id i; -1 for an id the index does not have."""
    n_tokens: np.ndarray
    """Token count of segment id i; 0 for an unknown id."""
    of_source: np.ndarray
    """Code of each example's source_doc; -1 where it has none."""

    @classmethod
    def of(cls, segments: pd.DataFrame, source_doc: pd.Series) -> DocCodes:
        codes, names = pd.factorize(segments["doc_id"].astype(str))
        seg_ids = segments["seg_id"].to_numpy().astype(np.int64)
        size = int(seg_ids.max()) + 1 if len(seg_ids) else 0
        of_segment, n_tokens = np.full(size, -1, np.int32), np.zeros(size, np.int32)
        of_segment[seg_ids] = codes
        n_tokens[seg_ids] = segments["n_tokens"].to_numpy()
        source = source_doc.astype("string")
        known = pd.Index(names).get_indexer(source.fillna(""))
        extra, _ = pd.factorize(source.where(known < 0))  # documents without segments
        of_source = np.where(known >= 0, known, np.where(extra >= 0, len(names) + extra, -1))
        of_source = np.where(source.isna(), -1, of_source).astype(np.int32)
        return cls(of_segment, n_tokens, of_source)

    def segment_docs(self, seg_ids: np.ndarray) -> np.ndarray:
        inside = (seg_ids >= 0) & (seg_ids < len(self.of_segment))
        return np.where(inside, self.of_segment[np.where(inside, seg_ids, 0)], -1)

    def segment_tokens(self, seg_ids: np.ndarray) -> np.ndarray:
        inside = (seg_ids >= 0) & (seg_ids < len(self.n_tokens))
        return np.where(inside, self.n_tokens[np.where(inside, seg_ids, 0)], 0)


def _segment_counts(
    ctx: Lists, gold: Lists, segments: pd.DataFrame, docs: DocCodes
) -> dict[str, np.ndarray]:
    """Per example, what only the segment index knows.

    The counts: unknown ids, the context's real token count, gold segments from another document
    than `source_doc` and fillers from the answer's own document (which the recipe forbids).
    """
    n = len(ctx.lengths)
    ctx_rows, gold_rows = ctx.rows, gold.rows
    ctx_doc, gold_doc = docs.segment_docs(ctx.values), docs.segment_docs(gold.values)
    # (row, segment) of each gold segment, to tell a context's fillers from its golds
    is_gold = _is_gold(ctx, gold)
    source = docs.of_source
    same_doc = (ctx_doc == source[ctx_rows]) & (ctx_doc >= 0)

    def per_example(rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return np.bincount(rows, weights=weights, minlength=n).astype(np.int64)

    return {
        "n_unknown_segments": per_example(ctx_rows, ctx_doc < 0),
        "n_tokens_from_segments": per_example(ctx_rows, docs.segment_tokens(ctx.values)),
        "n_gold_from_other_docs": per_example(
            gold_rows, (gold_doc != source[gold_rows]) | (gold_doc < 0)
        ),
        "n_fillers_from_source_doc": per_example(ctx_rows, ~is_gold & same_doc),
    }


def _is_gold(ctx: Lists, gold: Lists) -> np.ndarray:
    """For each context entry: is its segment one of its row's gold segments?

    Compared with each row's (few) golds in turn: linear in the context ids, no sort of them.
    """
    is_gold = np.zeros(len(ctx.values), dtype=bool)
    rows = ctx.rows
    for k in range(int(gold.lengths.max()) if len(gold.lengths) else 0):
        has = gold.lengths > k
        kth = np.where(
            has, gold.values[np.minimum(gold.offsets[:-1] + k, len(gold.values) - 1)], -1
        )
        is_gold |= has[rows] & (ctx.values == kth[rows])
    return is_gold


def _member(values: np.ndarray, members: np.ndarray, size: int) -> np.ndarray:
    """values in members, for codes in [0, size): a lookup table instead of a sort."""
    table = np.zeros(size, dtype=bool)
    table[members] = True
    return table[values]


def _distinct(values: np.ndarray) -> np.ndarray:
    """The distinct ids, sorted; a presence table where the ids are dense (segment ids are)."""
    if len(values) and values.min() >= 0 and values.max() < 4 * len(values) + (1 << 24):
        present = np.zeros(int(values.max()) + 1, dtype=bool)
        present[values] = True
        return np.flatnonzero(present)
    return np.unique(values)


def _docs_in_other_split(data: pd.DataFrame, ctx: Lists, docs: DocCodes | None) -> np.ndarray:
    """Per example: how many of its documents (source and, if known, context) the other split
    uses too. Train and val must not share a document, or val measures memorisation."""
    n = len(data)
    if docs is None:  # the source documents only
        rows, doc = np.arange(n), pd.factorize(data["source_doc"])[0]
    else:
        rows = np.concatenate([np.arange(n, dtype=np.int32), ctx.rows])
        doc = np.concatenate([docs.of_source, docs.segment_docs(ctx.values)])
    known = doc >= 0
    rows, doc = rows[known], doc[known]
    in_val = (data["split"] == "val").to_numpy()[rows]
    size = int(doc.max()) + 1 if len(doc) else 0
    hit = _member(doc, doc[in_val], size) & _member(doc, doc[~in_val], size)  # in both splits
    pairs = np.unique((rows[hit].astype(np.int64) << 32) | doc[hit])  # distinct (row, doc)
    return np.bincount(pairs >> 32, minlength=n).astype(np.int64)


@dataclass(frozen=True)
class Leakage:
    """What the leakage check compares: segment text and the probe contexts' n-grams."""

    segment_text: Mapping[int, str]
    probe: ProbeNgrams

    @classmethod
    def of(cls, segment_text: Mapping[int, str], probe_texts: list[str], n: int) -> Leakage:
        return cls(segment_text, ProbeNgrams.of(probe_texts, n))

    def per_example(self, questions: pd.Series, answers: pd.Series, ctx: Lists) -> np.ndarray:
        """Distinct probe n-grams of each example in its question + answer and its segments.

        Decided once per unique context segment and once per example's question and answer, then
        united per example; an n-gram that exists only across the join of two segments (or of
        the answer and the context) is not counted: see docs/architecture.md.
        """
        dirty: dict[int, frozenset] = {}
        for ids, texts in text_chunks(self.segment_text, _distinct(ctx.values)):
            dirty.update({int(ids[i]): shared for i, shared in self.probe.find(texts).items()})
        qa = self.probe.find([f"{q}\n{a}\n" for q, a in zip(questions, answers, strict=True)])
        dirty_ids = np.fromiter(dirty, dtype=np.int64, count=len(dirty))
        flagged = np.unique(ctx.rows[np.isin(ctx.values, dirty_ids, kind="table")])
        counts = np.zeros(len(ctx.lengths), dtype=np.int64)
        for row in {*qa, *flagged.tolist()}:
            segs = ctx.values[ctx.offsets[row] : ctx.offsets[row + 1]]
            found = qa.get(row, frozenset()).union(*(dirty.get(int(s), ()) for s in segs))
            counts[row] = len(found)
        return counts


def template_grounded(answer: str, cues: list[str], gold_text: str) -> bool:
    """Is a template answer recoverable from the gold text: each cue followed by its part?

    Fine-grained: "<cue> <answer>" occurs in the gold text. Integration: the answer is
    "1. <part> 2. <part> ...", and "<cue i> <part i>" occurs for every i (each split point of the
    numbering is tried, so a part that itself contains " 2. " does not break the check).
    """
    text = " ".join(gold_text.split())
    answer = " ".join(answer.split())
    if len(cues) == 1:
        return f"{cues[0]} {answer}" in text

    def rest_ok(i: int, rest: str) -> bool:
        head = f"{i + 1}. "
        if not rest.startswith(head):
            return False
        body = rest[len(head) :]
        if i == len(cues) - 1:
            return f"{cues[i]} {body}" in text
        marker = f" {i + 2}. "
        cuts = [j for j in range(len(body)) if body.startswith(marker, j)]
        return any(f"{cues[i]} {body[:j]}" in text and rest_ok(i + 1, body[j + 1 :]) for j in cuts)

    return bool(cues) and rest_ok(0, answer)


def quoted_grounded(answer: str, cues: list[str], gold_text: str) -> bool:
    """Is a quoting answer (sentence quote, record lookup) a verbatim piece of the gold text,
    and does every cue of its question occur there?"""
    text = " ".join(gold_text.split())
    return bool(cues) and all(" ".join(c.split()) in text for c in [answer, *cues])


def quotes_its_text(generator: str) -> bool:
    """Does this generator's answer quote its gold text (so grounding can be checked)?"""
    return generator in QUOTING_GENERATORS or generator.startswith("template")


def grounded(generator: str, answer: str, cues: list[str], gold_text: str) -> bool:
    """Grounding of one QA pair by its generator's rule; True for LLM pairs (an LLM answer
    need not quote its text)."""
    if generator in QUOTING_GENERATORS:
        return quoted_grounded(answer, cues, gold_text)
    if generator.startswith("template"):
        return template_grounded(answer, cues, gold_text)
    return True


def qa_table(
    qa: pd.DataFrame, segments: pd.DataFrame | None, segment_text: Mapping[int, str] | None
) -> pd.DataFrame:
    """One row per QA pair of data/qa: counts, and grounding of template pairs in gold text
    (`grounded` is True for other generators: an LLM answer need not quote its text, and its
    segments are not decoded)."""
    gold = Lists.of(qa["gold_segments"])
    table = pd.DataFrame(
        {
            "qa_id": qa["qa_id"].astype(str),
            "kind": qa["kind"].astype(str),
            "generator": qa["generator"].astype(str),
            "n_gold": gold.lengths.astype("int64"),
            "question_chars": qa["question"].str.strip().str.len(),
            "answer_chars": qa["answer"].str.strip().str.len(),
        }
    )
    if segment_text is not None:
        table["grounded"] = [
            not quotes_its_text(generator)
            or grounded(
                generator,
                answer,
                list(cues),
                " ".join(segment_text.get(int(s), "") for s in gold.values[start:end]),
            )
            for answer, cues, start, end, generator in zip(
                qa["answer"],
                qa["keywords"],
                gold.offsets[:-1],
                gold.offsets[1:],
                table["generator"],
                strict=True,
            )
        ]
    if segments is not None:
        docs = DocCodes.of(segments, qa["source_doc"])
        gold_doc = docs.segment_docs(gold.values)
        other = (gold_doc != docs.of_source[gold.rows]) | (gold_doc < 0)
        table["n_gold_from_other_docs"] = np.bincount(
            gold.rows, weights=other, minlength=len(qa)
        ).astype(np.int64)
    return table


def gold_slot_table(train: pd.DataFrame, val: pd.DataFrame) -> pd.DataFrame:
    """One row per gold segment: its recorded slot, what the context holds there, and `u`.

    `segment_at_slot` is -1 and `u` is NaN when the slot is outside the context. A gold segment
    without a slot (or a slot without a gold segment) has no row: the example suite counts both.
    """
    data = _with_split(train, val)
    ctx, gold, slots = (
        Lists.of(data[c]) for c in ("context_segments", "gold_segments", "gold_slots")
    )
    paired = np.minimum(gold.lengths, slots.lengths)
    rows = np.repeat(np.arange(len(data)), paired)
    index = np.arange(len(rows)) - np.repeat(np.cumsum(paired) - paired, paired)
    segment = gold.values[gold.offsets[rows] + index]
    slot = slots.values[slots.offsets[rows] + index]
    n_slots = ctx.lengths[rows]
    inside = (slot >= 0) & (slot < n_slots)
    at_slot = np.where(inside, ctx.values[np.where(inside, ctx.offsets[rows] + slot, 0)], -1)
    ids = data["example_id"].to_numpy()[rows]
    u = [
        relative_position(e, int(i), int(s), int(n)) if ok else np.nan
        for e, i, s, n, ok in zip(ids, index, slot, n_slots, inside, strict=True)
    ]
    return pd.DataFrame(
        {
            "example_id": ids.astype(str),
            "split": data["split"].to_numpy()[rows].astype(str),
            "kind": data["kind"].to_numpy()[rows].astype(str),
            "gold_index": index.astype("int64"),
            "gold_segment": segment.astype("int64"),
            "slot": slot.astype("int64"),
            "n_slots": n_slots.astype("int64"),
            "segment_at_slot": at_slot.astype("int64"),
            "u": np.asarray(u, dtype="float64"),
        }
    )
