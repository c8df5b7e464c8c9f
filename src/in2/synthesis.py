"""Long-context IN2 examples: QA pairs placed at uniformly random slots among filler segments.

An example is stored as segment ids, not text (see in2.segments), so the exact slot of every
answer-bearing segment is known — the quality gate and the per-position analysis rely on it.

Per example of a long-context kind:
  1. a target length is drawn inside one of `bins` equal-width bins of [min, max], the bins taken
     in turn, so context lengths are balanced over the range;
  2. m full-length filler segments are drawn such that gold + m × length lands in [min, max];
     fillers never come from the gold document, never quote a cue of the question and never
     overlap the probes (decontamination);
  3. each gold segment is put at its own uniformly random slot among the m + k slots.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm import tqdm

from in2.corpus import unit_hash
from in2.params import KINDS, InputError, SynthesizeParams

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
_WORD = re.compile(r"\w+")


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


def ngrams(text: str, n: int) -> set[int]:
    """Hashes of the lower-cased word n-grams of a text."""
    words = _WORD.findall(text.lower())
    return {hash(tuple(words[i : i + n])) for i in range(len(words) - n + 1)}


def contaminated_segments(segment_text: dict[int, str], probe_texts: list[str], n: int) -> set[int]:
    """Segments that share any word n-gram with a probe context (paper: 10-gram decontamination)."""
    probe = set().union(*(ngrams(t, n) for t in probe_texts)) if probe_texts else set()
    return {s for s, text in segment_text.items() if not ngrams(text, n).isdisjoint(probe)}


@dataclass
class SynthesisStats:
    """What a user checks in the DVC metrics of the synthesize stage."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    decontaminated_segments: int = 0
    dropped_qa_contaminated: int = 0
    length_hist: dict[str, dict[str, int]] = field(default_factory=dict)
    position_hist: dict[str, dict[str, int]] = field(default_factory=dict)


def filler_count_range(gold_tokens: int, seg_len: int, lo: int, hi: int) -> tuple[int, int]:
    """Smallest and largest filler count m with gold_tokens + m × seg_len in [lo, hi]."""
    return max(0, math.ceil((lo - gold_tokens) / seg_len)), (hi - gold_tokens) // seg_len


class ContextBuilder:
    """Draws fillers and slots for the examples of one split."""

    def __init__(
        self,
        index: pd.DataFrame,
        segment_text: dict[int, str],
        filler_pool: np.ndarray,
        params: SynthesizeParams,
        seg_len: int,
        rng: np.random.Generator,
    ) -> None:
        self.doc_of = index["doc_id"].to_numpy()
        self.n_tokens = index["n_tokens"].to_numpy()
        self.text = segment_text
        self.pool = filler_pool
        self.params = params
        self.seg_len = seg_len
        self.rng = rng

    def target_length(self, i: int) -> float:
        """Target for the i-th long example: uniform within the (i mod bins)-th bin."""
        c = self.params.context_tokens
        width = (c.max - c.min) / c.bins
        return c.min + width * (i % c.bins + self.rng.random())

    def fillers(self, m: int, gold_doc: str, keywords: list[str]) -> list[int]:
        chosen: list[int] = []
        seen: set[int] = set()
        for _ in range(100 * (m + 1)):
            if len(chosen) == m:
                return chosen
            s = int(self.pool[self.rng.integers(len(self.pool))])
            if s in seen or self.doc_of[s] == gold_doc:
                continue
            seen.add(s)
            if any(kw in self.text[s] for kw in keywords):
                continue
            chosen.append(s)
        raise SynthesisError(
            f"could not draw {m} fillers (pool of {len(self.pool)} segments); "
            "use more documents (corpus.max_documents) or shorter contexts"
        )

    def long_context(
        self, i: int, gold: list[int], gold_doc: str, keywords: list[str]
    ) -> tuple[list[int], list[int]]:
        """(context segment ids, slot of each gold segment)."""
        gold_tokens = int(self.n_tokens[gold].sum())
        c = self.params.context_tokens
        m_lo, m_hi = filler_count_range(gold_tokens, self.seg_len, c.min, c.max)
        if m_lo > m_hi:
            raise SynthesisError(
                f"no filler count puts {gold_tokens} gold tokens in [{c.min}, {c.max}] with "
                f"{self.seg_len}-token fillers; widen synthesize.context_tokens"
            )
        m = int(np.clip(round((self.target_length(i) - gold_tokens) / self.seg_len), m_lo, m_hi))
        context = self.fillers(m, gold_doc, keywords)
        slots = self.rng.choice(m + len(gold), size=len(gold), replace=False)
        for slot, seg in sorted(zip(slots.tolist(), gold, strict=True)):
            context.insert(slot, seg)
        return context, slots.tolist()


def _example_id(split: str, qa_id: str, kind: str) -> str:
    return "ex-" + hashlib.sha1(f"{split}|{kind}|{qa_id}".encode()).hexdigest()[:16]


def build_split(
    split: str,
    n: int,
    qa: pd.DataFrame,
    builder: ContextBuilder,
    params: SynthesizeParams,
) -> pd.DataFrame:
    """Examples of one split, in the configured mix, in a shuffled order."""
    rng = builder.rng
    counts = mix_counts(n, params.mix)
    by_kind = {k: qa[qa["kind"] == k] for k in ("fine_grained", "integration", "general")}
    need = {
        "fine_grained": counts["fine_grained"] + counts["short"],
        "integration": counts["integration"],
        "general": counts["general"],
    }
    picked = {}
    for kind, want in need.items():
        have = len(by_kind[kind])
        if have < want:
            also = " (for fine_grained and short)" if kind == "fine_grained" else ""
            raise SynthesisError(
                f"{split}: need {want} {kind} QA pairs{also} but only {have} are available; "
                "lower synthesize.n_train/n_val or use more documents"
            )
        picked[kind] = by_kind[kind].iloc[rng.permutation(have)[:want]]
    plan = [
        ("fine_grained", picked["fine_grained"].iloc[: counts["fine_grained"]]),
        ("short", picked["fine_grained"].iloc[counts["fine_grained"] :]),
        ("integration", picked["integration"]),
        ("general", picked["general"]),
    ]
    rows = []
    for kind, frame in plan:
        for i, qa_row in enumerate(
            tqdm(
                frame.itertuples(index=False), total=len(frame), desc=f"{split}/{kind}", leave=False
            )
        ):
            gold = [int(s) for s in qa_row.gold_segments]
            if kind in LONG_KINDS:
                context, slots = builder.long_context(
                    i, gold, qa_row.source_doc, list(qa_row.keywords)
                )
            else:  # short: the gold segment(s) alone; general: no context
                context, slots = gold, list(range(len(gold)))
            rows.append(
                {
                    "example_id": _example_id(split, qa_row.qa_id, kind),
                    "qa_id": qa_row.qa_id,
                    "kind": kind,
                    "context_segments": context,
                    "gold_segments": gold,
                    "gold_slots": slots,
                    "source_doc": qa_row.source_doc,
                    "question": qa_row.question,
                    "answer": qa_row.answer,
                    "n_tokens": int(builder.n_tokens[context].sum()) if context else 0,
                }
            )
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)


def histograms(frame: pd.DataFrame, params: SynthesizeParams, bins: int = 10) -> tuple[dict, dict]:
    """Context-length counts per length bin and gold-slot counts per relative-position decile."""
    c = params.context_tokens
    long = frame[frame["kind"].isin(LONG_KINDS)]
    edges = np.linspace(c.min, c.max, c.bins + 1)
    lengths = np.histogram(long["n_tokens"], bins=edges)[0]
    spans = zip(edges[:-1], edges[1:], lengths, strict=True)
    length_hist = {f"{int(a)}-{int(b)}": int(n) for a, b, n in spans}
    rel = [
        (s + 0.5) / len(ctx)
        for ctx, slots in zip(long["context_segments"], long["gold_slots"], strict=True)
        for s in slots
    ]
    pos = np.histogram(rel, bins=bins, range=(0, 1))[0]
    position_hist = {f"{i / bins:.1f}": int(n) for i, n in enumerate(pos)}
    return length_hist, position_hist


def synthesize(
    qa: pd.DataFrame,
    index: pd.DataFrame,
    segment_text: dict[int, str],
    probe_texts: list[str],
    params: SynthesizeParams,
    seg_len: int,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame, SynthesisStats]:
    """Build the train and val splits; returns (train, val, stats)."""
    stats = SynthesisStats()
    dirty = contaminated_segments(segment_text, probe_texts, params.decontam_ngram)
    stats.decontaminated_segments = len(dirty)
    clean_qa = qa[[dirty.isdisjoint(map(int, g)) for g in qa["gold_segments"]]]
    stats.dropped_qa_contaminated = len(qa) - len(clean_qa)

    val_docs = {
        d for d in index["doc_id"].unique() if unit_hash(f"{seed}:val", d) < params.val_doc_fraction
    }
    full = index["n_tokens"].to_numpy() == seg_len
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in (("train", params.n_train), ("val", params.n_val)):
        in_split = index["doc_id"].isin(val_docs).to_numpy() == (split == "val")
        pool = index["seg_id"].to_numpy()[full & in_split]
        pool = np.array([s for s in pool if s not in dirty], dtype=np.int64)
        qa_split = clean_qa[clean_qa["source_doc"].isin(val_docs) == (split == "val")]
        builder = ContextBuilder(index, segment_text, pool, params, seg_len, rng)
        splits[split] = build_split(split, n, qa_split, builder, params)
        stats.counts[split] = dict(Counter(splits[split]["kind"]))
        stats.length_hist[split], stats.position_hist[split] = histograms(splits[split], params)
    log.info(
        "synthesize: %s; %d segments dropped by decontamination",
        stats.counts,
        stats.decontaminated_segments,
    )
    return splits["train"], splits["val"], stats
