"""The fillers of a long context, and the slots its gold segments take among them.

Both are drawn for many examples at once, as one (examples × slots) matrix, and both reject and
redraw rather than steer a draw: rejection sampling keeps every accepted filler uniform over the
allowed segments and every set of gold slots uniform over the context (the property the
per-position analysis relies on).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from in2.params import ContextLength
from in2.synth.cues import CueIndex, RowCues
from in2.synth.mix import SynthesisError, target_bins

MAX_REDRAWS = 100
"""Rounds of redrawing rejected fillers before the pool is declared too small."""


@dataclass
class FillerPool:
    """Segments a context may be filled with, and what a draw must avoid."""

    segments: np.ndarray
    """Candidate segment ids (full-length, in the split, not contaminated)."""
    seg_doc: np.ndarray
    """Document code of every segment id (not only the pool's)."""
    cue_index: CueIndex | None = None
    """Which segments quote which cues, for the cue check; None when no question has cues."""

    def draw(
        self,
        rng: np.random.Generator,
        gold_doc: np.ndarray,
        n_fillers: int,
        cues: RowCues | None = None,
    ) -> np.ndarray:
        """(examples, n_fillers) distinct fillers per row, none from that row's document or
        quoting its cues.

        Rejected draws are redrawn until none is left: rejection sampling keeps every accepted
        filler uniform over the allowed segments.
        """
        n_examples = len(gold_doc)
        if n_fillers == 0 or n_examples == 0:
            return np.zeros((n_examples, n_fillers), dtype=np.int64)
        if len(self.segments) < n_fillers + 1:
            raise self._too_small(n_fillers)
        shape = (n_examples, n_fillers)
        fillers = self.segments[rng.integers(len(self.segments), size=shape)]
        quotes = np.zeros(shape, dtype=bool)
        fresh = np.ones(shape, dtype=bool)  # cells drawn this round: only they need a cue check
        for _ in range(MAX_REDRAWS):
            if cues is not None and self.cue_index is not None:
                quotes[fresh] = self._quotes_a_cue(fillers, fresh, cues)
            bad = quotes | repeats(fillers) | (self.seg_doc[fillers] == gold_doc[:, None])
            if not bad.any():
                return fillers
            fillers[bad] = self.segments[rng.integers(len(self.segments), size=int(bad.sum()))]
            fresh = bad
        raise self._too_small(n_fillers)

    def _quotes_a_cue(self, fillers: np.ndarray, cells: np.ndarray, cues: RowCues) -> np.ndarray:
        """For each selected cell (row-major): does its filler quote a cue of the row?"""
        rows, cols = np.nonzero(cells)
        of_cells = cues.take(rows)  # every cue of every cell's row, cell after cell
        cell = np.repeat(np.arange(len(rows)), of_cells.counts)
        quoted = self.cue_index.quotes(fillers[rows, cols][cell], of_cells.hashes)
        return np.bincount(cell[quoted], minlength=len(rows)) > 0

    def _too_small(self, n_fillers: int) -> SynthesisError:
        return SynthesisError(
            f"could not draw {n_fillers} distinct fillers from other documents (pool of "
            f"{len(self.segments)} segments); use more documents (corpus.max_documents) or "
            "shorter contexts (synthesize.context_tokens.max)"
        )


def repeats(rows: np.ndarray) -> np.ndarray:
    """Mask of the cells repeating an id found earlier in sorted order in the same row."""
    order = np.argsort(rows, axis=1, kind="stable")
    ranked = np.take_along_axis(rows, order, axis=1)
    repeat = np.zeros(rows.shape, dtype=bool)
    repeat[:, 1:] = ranked[:, 1:] == ranked[:, :-1]  # equal ids are neighbours once sorted
    mask = np.zeros(rows.shape, dtype=bool)
    np.put_along_axis(mask, order, repeat, axis=1)  # back to the original columns
    return mask


@dataclass(frozen=True)
class LongExamples:
    """The long examples a draw of unit fillers is for, one entry per example."""

    gold_doc: np.ndarray
    """Document code of the gold: fillers come from other documents."""
    gold_tokens: np.ndarray
    """Tokens of the gold segments together."""
    targets: np.ndarray
    """Target context length (see mix.target_lengths)."""
    cues: RowCues | None = None
    """Cues of each question, for the cue check; None: no check."""


def unit_fillers(
    pool: FillerPool,
    seg_tokens: np.ndarray,
    examples: LongExamples,
    context_tokens: ContextLength,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Fillers of variable length (units) per example: as many as keep gold + fillers within
    the target, plus one more if that total is still below the lower edge of the target's bin.

    `seg_tokens` are the token counts of every segment id. A bin wider than the longest unit
    always leaves room for that one more, so lengths stay in [min, max] and balanced over bins.
    """
    n_examples = len(examples.gold_doc)
    if n_examples == 0:
        return []
    gold_tokens, targets = examples.gold_tokens, examples.targets
    shortest = int(seg_tokens[pool.segments].min())
    # enough to pass any target even if every filler is the shortest unit, and one more
    n_drawn = int(np.max(targets - gold_tokens)) // max(shortest, 1) + 2
    fillers = pool.draw(rng, examples.gold_doc, n_drawn, examples.cues)
    # context length after each filler: gold + running sum of the fillers
    length_after = gold_tokens[:, None] + np.cumsum(seg_tokens[fillers], axis=1)
    n_fillers = (length_after <= targets[:, None]).sum(axis=1)
    bin_lo, _, _ = target_bins(targets, context_tokens)
    last_kept = np.maximum(n_fillers - 1, 0)
    reached = np.where(n_fillers > 0, length_after[np.arange(n_examples), last_kept], gold_tokens)
    n_fillers = np.where(reached < bin_lo, n_fillers + 1, n_fillers)  # short of the bin: one more
    if (n_fillers > n_drawn).any():  # cannot happen: the draw is long enough to pass any target
        raise SynthesisError("internal: unit fillers too short for their targets")
    return [fillers[row, : n_fillers[row]] for row in range(n_examples)]


def place_gold(
    rng: np.random.Generator, gold: np.ndarray, fillers: np.ndarray, shuffle: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Contexts (examples, fillers + gold) with the gold at a uniformly random set of slots.

    Returns the contexts and each gold's slot, aligned with `gold`'s columns.
    """
    n_examples, n_gold = gold.shape
    n_slots = fillers.shape[1] + n_gold
    # n_gold distinct slots out of n_slots: redraw the rows where two collide
    slots = rng.integers(n_slots, size=(n_examples, n_gold))
    while n_gold > 1 and (clash := repeats(slots).any(axis=1)).any():
        slots[clash] = rng.integers(n_slots, size=(int(clash.sum()), n_gold))
    slots.sort(axis=1)
    if shuffle:  # which gold takes which (sorted) slot
        slots = rng.permuted(slots, axis=1)
    order = np.argsort(slots, axis=1)
    is_gold = np.zeros((n_examples, n_slots), dtype=bool)
    np.put_along_axis(is_gold, slots, True, axis=1)
    contexts = np.empty((n_examples, n_slots), dtype=np.int64)
    contexts[is_gold] = np.take_along_axis(gold, order, axis=1).ravel()  # row-major = slot order
    contexts[~is_gold] = fillers.ravel()
    return contexts, slots
