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
from dataclasses import dataclass

import numpy as np
import pandas as pd

from in2.data.leakage import ngrams, probe_ngrams
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


def example_table(
    train: pd.DataFrame,
    val: pd.DataFrame,
    segments: pd.DataFrame | None = None,
    leakage: Leakage | None = None,
) -> pd.DataFrame:
    """One row per example with the counts the checks need (list columns reduced to numbers).

    With `segments` (seg_id, doc_id, n_tokens) it also counts what only the segment index knows
    (see `_segment_counts`) and which documents the other split uses too. With `leakage`, the
    probe n-grams in the example's text.
    """
    data = _with_split(train, val)
    table = _example_counts(data)
    if leakage is not None:
        table["n_probe_ngrams"] = [
            leakage.hits(f"{q}\n{a}\n" + " ".join(leakage.segment_text[int(s)] for s in c))
            for q, a, c in zip(
                data["question"], data["answer"], data["context_segments"], strict=True
            )
        ]
    ctx_doc: pd.Series | None = None
    if segments is not None:
        counts, ctx_doc = _segment_counts(data, segments)
        table = table.assign(**counts)
    table["n_docs_in_other_split"] = _docs_in_other_split(data, ctx_doc)
    return table


def _example_counts(data: pd.DataFrame) -> pd.DataFrame:
    """What each example's own row says: sizes of its lists and text, and a key of its content."""
    return pd.DataFrame(
        {
            "example_id": data["example_id"],
            "split": data["split"],
            "kind": data["kind"],
            "n_tokens": data["n_tokens"].astype("int64"),
            "n_context": data["context_segments"].map(len).astype("int64"),
            "n_gold": data["gold_segments"].map(len).astype("int64"),
            "n_gold_slots": data["gold_slots"].map(len).astype("int64"),
            "question_chars": data["question"].str.strip().str.len(),
            "answer_chars": data["answer"].str.strip().str.len(),
            "content_key": [
                hashlib.sha1(repr((k, q, a, [int(s) for s in c])).encode()).hexdigest()
                for k, q, a, c in zip(
                    data["kind"],
                    data["question"],
                    data["answer"],
                    data["context_segments"],
                    strict=True,
                )
            ],
        }
    )


def _segment_counts(
    data: pd.DataFrame, segments: pd.DataFrame
) -> tuple[dict[str, pd.Series], pd.Series]:
    """Per example, what only the segment index knows, and the document of each context segment.

    The counts: unknown ids, the context's real token count, gold segments from another document
    than `source_doc` and fillers from the answer's own document (which the recipe forbids).
    """
    index = segments.set_index("seg_id")
    seg_doc = index["doc_id"].astype(str)
    source = data["source_doc"].astype(str)
    ctx = data["context_segments"].explode().dropna().astype("int64")
    gold = data["gold_segments"].explode().dropna().astype("int64")
    ctx_doc = ctx.map(seg_doc)
    gold_doc = gold.map(seg_doc)
    is_gold = pd.MultiIndex.from_arrays([ctx.index, ctx.to_numpy()]).isin(
        pd.MultiIndex.from_arrays([gold.index, gold.to_numpy()])
    )

    def per_example(flags: pd.Series) -> pd.Series:
        return flags.groupby(level=0).sum().reindex(data.index, fill_value=0).astype("int64")

    other_doc = gold_doc.to_numpy() != source.loc[gold.index].to_numpy()
    same_doc = ctx_doc.to_numpy() == source.loc[ctx.index].to_numpy()
    counts = {
        "n_unknown_segments": per_example(ctx_doc.isna()),
        "n_tokens_from_segments": per_example(ctx.map(index["n_tokens"]).fillna(0)),
        "n_gold_from_other_docs": per_example(pd.Series(other_doc, index=gold.index)),
        "n_fillers_from_source_doc": per_example(pd.Series(~is_gold & same_doc, index=ctx.index)),
    }
    return counts, ctx_doc


def _docs_in_other_split(data: pd.DataFrame, ctx_doc: pd.Series | None) -> list[int]:
    """Per example: how many of its documents (source and, if known, context) the other split
    uses too. Train and val must not share a document, or val measures memorisation."""
    docs = pd.DataFrame({"doc": data["source_doc"].astype(str), "split": data["split"]})
    if ctx_doc is not None:
        from_ctx = pd.DataFrame({"doc": ctx_doc.astype(str), "split": data["split"][ctx_doc.index]})
        docs = pd.concat([docs, from_ctx.dropna()])
    splits_of = docs.groupby("doc")["split"].agg(set)
    shared = {d for d, splits in splits_of.items() if len(splits) > 1}
    per_example = docs[docs["doc"].isin(shared)].groupby(level=0)["doc"].nunique()
    return per_example.reindex(data.index, fill_value=0).astype("int64").tolist()


@dataclass(frozen=True)
class Leakage:
    """What the leakage check compares: segment text and the probe contexts' n-grams."""

    segment_text: dict[int, str]
    probe: set[int]
    n: int

    @classmethod
    def of(cls, segment_text: dict[int, str], probe_texts: list[str], n: int) -> Leakage:
        return cls(segment_text, probe_ngrams(probe_texts, n), n)

    def hits(self, text: str) -> int:
        """Number of distinct probe n-grams in a text."""
        return len(ngrams(text, self.n) & self.probe)


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


def grounded(generator: str, answer: str, cues: list[str], gold_text: str) -> bool:
    """Grounding of one QA pair by its generator's rule; True for LLM pairs (an LLM answer
    need not quote its text)."""
    if generator in QUOTING_GENERATORS:
        return quoted_grounded(answer, cues, gold_text)
    if generator.startswith("template"):
        return template_grounded(answer, cues, gold_text)
    return True


def qa_table(
    qa: pd.DataFrame, segments: pd.DataFrame | None, segment_text: dict[int, str] | None
) -> pd.DataFrame:
    """One row per QA pair of data/qa: counts, and grounding of template pairs in gold text
    (`grounded` is True for other generators: an LLM answer need not quote its text)."""
    gold = qa["gold_segments"].map(lambda g: [int(s) for s in g])
    table = pd.DataFrame(
        {
            "qa_id": qa["qa_id"].astype(str),
            "kind": qa["kind"].astype(str),
            "generator": qa["generator"].astype(str),
            "n_gold": gold.map(len).astype("int64"),
            "question_chars": qa["question"].str.strip().str.len(),
            "answer_chars": qa["answer"].str.strip().str.len(),
        }
    )
    if segment_text is not None:
        table["grounded"] = [
            grounded(generator, a, list(cues), " ".join(segment_text.get(s, "") for s in g))
            for a, cues, g, generator in zip(
                qa["answer"], qa["keywords"], gold, table["generator"], strict=True
            )
        ]
    if segments is not None:
        doc_of = segments.set_index("seg_id")["doc_id"].astype(str)
        table["n_gold_from_other_docs"] = [
            sum(doc_of.get(s) != doc for s in g)
            for g, doc in zip(gold, qa["source_doc"].astype(str), strict=True)
        ]
    return table


def gold_slot_table(train: pd.DataFrame, val: pd.DataFrame) -> pd.DataFrame:
    """One row per gold segment: its recorded slot, what the context holds there, and `u`.

    `segment_at_slot` is -1 and `u` is NaN when the slot is outside the context.
    """
    data = _with_split(train, val)
    rows = []
    for eid, split, kind, ctx, gold, slots in zip(
        data["example_id"],
        data["split"],
        data["kind"],
        data["context_segments"],
        data["gold_segments"],
        data["gold_slots"],
        strict=True,
    ):
        n = len(ctx)
        for i, (segment, slot) in enumerate(zip(gold, slots, strict=False)):
            inside = 0 <= slot < n
            rows.append(
                (
                    eid,
                    split,
                    kind,
                    i,
                    int(segment),
                    int(slot),
                    n,
                    int(ctx[slot]) if inside else -1,
                    relative_position(eid, i, int(slot), n) if inside else np.nan,
                )
            )
    columns = {
        "example_id": "str",
        "split": "str",
        "kind": "str",
        "gold_index": "int64",
        "gold_segment": "int64",
        "slot": "int64",
        "n_slots": "int64",
        "segment_at_slot": "int64",
        "u": "float64",
    }
    return pd.DataFrame(rows, columns=list(columns)).astype(columns)
