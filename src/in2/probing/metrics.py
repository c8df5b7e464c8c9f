"""VaL probing scores, computed exactly as the paper's evaluation script (microsoft/FILM plot.py).

Per query: word-level recall (document), substring match of the function name (code), relaxed
match of label or description (database). Per task: per-position scores are averaged into bins of
`bin_size` positions within each set, the bins are averaged over sets (std over sets = error bar),
Avg is the mean of the bins and Gap the max bin minus the min bin.

Two binnings (`Bins`): `paper` is the script's arithmetic exactly — its loop
`range(span_start, span_start + span_len - 1)` leaves the last position of every bin out, and it
keeps `int(total_len / span_len)` whole bins — so a released prediction file scores as Table 1
does; `all` keeps every position, a last partial bin included (with bins of 5, `paper` would
throw away one query in five).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

Binning = Literal["paper", "all"]
BINNINGS: tuple[Binning, ...] = ("paper", "all")


def _gold(text: str) -> str:
    gold = text.strip().strip(".")
    if not gold:
        raise ValueError(f"gold answer {text!r} is empty; probe data must never hold one")
    return gold


def word_recall(gold: str, prediction: str) -> float:
    """Share of the gold's distinct words (lowercased, whitespace split) found in the prediction."""
    gold_words = set(gold.strip().lower().split())
    if not gold_words:
        raise ValueError(f"gold answer {gold!r} is empty; probe data must never hold one")
    pred_words = set(prediction.strip().lower().split())
    return len(gold_words & pred_words) / len(gold_words)


def name_match(name: str, prediction: str) -> float:
    """1 if the function name (surrounding '.' stripped) occurs in the prediction (case kept)."""
    return float(_gold(name) in prediction)


def relaxed_match(label: str, description: str, prediction: str) -> float:
    """1 if the label or the description (lowercased, '.' stripped) occurs in the prediction."""
    pred = prediction.lower()
    return float(_gold(label).lower() in pred or _gold(description).lower() in pred)


def word_recall_beyond_keyword(gold: str, keyword: str, prediction: str) -> float:
    """Word recall over the gold's words that are NOT in the question's keyword.

    Strict variant of `word_recall`: the keyword is ~8 words of the gold sentence, so echoing the
    question back earns ~0.40 recall under the paper's rule (the bare keyword, on the default
    probes) without retrieving anything. A sentence with no word outside its keyword falls back
    to plain recall.
    """
    words = set(gold.strip().lower().split())
    beyond = words - set(keyword.strip().lower().split())
    if not beyond:
        return word_recall(gold, prediction)
    pred_words = set(prediction.strip().lower().split())
    return len(beyond & pred_words) / len(beyond)


def label_match(label: str, prediction: str) -> float:
    """1 if the label (lowercased, '.' stripped) occurs in the lowercased prediction.

    Strict variant of `relaxed_match`: descriptions are shared by many records ("scientific
    article", "species of insect"), so the paper's label-OR-description rule credits a model
    that returns the wrong record's description.
    """
    return float(_gold(label).lower() in prediction.lower())


Scorer = Callable[[Mapping[str, str], str], float]

SCORERS: dict[str, Scorer] = {
    "word_recall": lambda gold, pred: word_recall(gold["completion"], pred),
    "name_match": lambda gold, pred: name_match(gold["completion"], pred),
    "relaxed_match": lambda gold, pred: relaxed_match(gold["label"], gold["description"], pred),
    "word_recall_beyond_keyword": lambda gold, pred: word_recall_beyond_keyword(
        gold["completion"], gold["keyword"], pred
    ),
    "label_match": lambda gold, pred: label_match(gold["label"], pred),
}
"""Metric name -> scorer of one prediction against a query's answer fields (and keyword)."""


def score(metric: str, gold: Mapping[str, str], prediction: str) -> float:
    """Score one prediction with the named metric (see SCORERS)."""
    try:
        scorer = SCORERS[metric]
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(SCORERS)}") from None
    return scorer(gold, prediction)


@dataclass(frozen=True)
class Bins:
    """Which bin a position falls in: bins of `size` positions, the `binning` rule, and for
    `paper` the number of positions of a set (`total_len` in the script)."""

    size: int
    binning: Binning = "all"
    n_positions: int | None = None
    """`paper` only: whole bins of these many positions are kept (int(n_positions / size));
    None: 1 + the largest position scored."""

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"bin_size must be > 0, got {self.size}")
        if self.binning not in BINNINGS:
            raise ValueError(f"binning must be one of {BINNINGS}, got {self.binning!r}")

    def of(self, position: int, n_positions: int) -> int | None:
        """The bin of `position`, or None where the `paper` rule leaves it out."""
        b = position // self.size
        if self.binning == "all":
            return b
        if position % self.size == self.size - 1 or b >= n_positions // self.size:
            return None
        return b

    def assign(self, positions: list[int]) -> list[int | None]:
        """The bin of every position, with `n_positions` resolved over all of them."""
        if not positions:
            raise ValueError("no scored queries to bin")
        n = self.n_positions if self.n_positions is not None else 1 + max(positions)
        return [self.of(p, n) for p in positions]


@dataclass(frozen=True)
class PositionCurve:
    """Score per position bin (mean over sets), its std over sets, and the paper's Avg and Gap.

    A bin in which every query was skipped as ambiguous is None, so bin i always covers positions
    [i * bin_size, (i + 1) * bin_size); Avg and Gap are taken over the bins that have scores.
    """

    bins: list[float | None]
    bins_std: list[float | None]
    avg: float
    gap: float
    n_queries: int
    """Queries in the bins (under `paper` binning, fewer than were scored)."""
    bin_size: int
    binning: Binning = "all"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def position_curve(
    scored: Iterable[tuple[Hashable, int, float]], bin_size: int | Bins
) -> PositionCurve:
    """Bin (set key, position_id, score) triples by position, per set, then average over sets.

    Sets may differ in size: a bin is averaged over the sets that have a query in it, so a last
    partial bin (or a bin only the longer set reaches) still counts, with the sets it has.
    """
    bins = bin_size if isinstance(bin_size, Bins) else Bins(bin_size)
    rows = list(scored)
    per_set: dict[Hashable, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    n_queries = 0
    for (set_id, _, value), b in zip(rows, bins.assign([p for _, p, _ in rows]), strict=True):
        if b is not None:
            per_set[set_id][b].append(value)
            n_queries += 1
    if not n_queries:
        raise ValueError(f"no scored query falls in a bin of {bins.size} ({bins.binning})")
    n_bins = 1 + max(max(b) for b in per_set.values())
    means: list[float | None] = []
    stds: list[float | None] = []
    for b in range(n_bins):
        set_means = [float(np.mean(cells[b])) for cells in per_set.values() if b in cells]
        means.append(float(np.mean(set_means)) if set_means else None)
        stds.append(float(np.std(set_means)) if set_means else None)
    present = [m for m in means if m is not None]
    return PositionCurve(
        bins=means,
        bins_std=stds,
        avg=float(np.mean(present)),
        gap=float(max(present) - min(present)),
        n_queries=n_queries,
        bin_size=bins.size,
        binning=bins.binning,
    )


def overall(curves: Mapping[str, PositionCurve]) -> dict[str, float]:
    """The paper's "All" column: task Avgs and task Gaps averaged over tasks."""
    if not curves:
        raise ValueError("no task curves to average")
    return {
        "avg": float(np.mean([c.avg for c in curves.values()])),
        "gap": float(np.mean([c.gap for c in curves.values()])),
    }


def summary(
    curves: Mapping[str, PositionCurve],
    by_length: Mapping[str, Mapping[int, PositionCurve]] | None = None,
    strict: Mapping[str, PositionCurve] | None = None,
) -> dict[str, object]:
    """`scores.json`: each task's curve, Avg and Gap (and, when given, those of each context
    length under `by_length` and of the strict variant under `strict`), plus the paper's "All"
    column (and `all_strict`).

    One function for every producer (the probe stage, `in2 score-official`), so their files compare.
    """
    out: dict[str, object] = {}
    for task, curve in curves.items():
        entry = curve.to_dict()
        if by_length is not None:
            entry["by_length"] = {str(t): c.to_dict() for t, c in by_length[task].items()}
        if strict is not None:
            entry["strict"] = strict[task].to_dict()
        out[task] = entry
    out["all"] = overall(curves)
    if strict is not None:
        out["all_strict"] = overall(strict)
    return out
