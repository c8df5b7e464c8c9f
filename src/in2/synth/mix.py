"""What a split is asked to hold: examples per kind, and context lengths balanced over bins.

These are the numbers a user sets (`synthesize.mix`, `synthesize.context_tokens`), kept apart from
the drawing of fillers (fillers.py) and the assembly of examples (build.py). The bin arithmetic
lives here once: the prose and the unit fillers both aim at the target's bin.
"""

from __future__ import annotations

import math

import numpy as np

from in2.params import ContextLength, InputError
from in2.registry import EXAMPLE_KINDS


class SynthesisError(InputError):
    """The inputs cannot give the configured dataset; the message says which knob to turn."""


def mix_counts(n_examples: int, mix: dict[str, float]) -> dict[str, int]:
    """Examples per kind: floor of n × fraction, remainders to the largest fractional parts.

    The counts always sum to n exactly, and ties are broken in the fixed order of EXAMPLE_KINDS.
    """
    kinds = EXAMPLE_KINDS.names()
    exact = {kind: n_examples * mix.get(kind, 0.0) for kind in kinds}
    counts = {kind: math.floor(share) for kind, share in exact.items()}
    left = n_examples - sum(counts.values())
    by_remainder = sorted(
        kinds, key=lambda kind: (-(exact[kind] - counts[kind]), kinds.index(kind))
    )
    for kind in by_remainder[:left]:
        counts[kind] += 1
    return counts


def target_lengths(
    n_examples: int, context_tokens: ContextLength, rng: np.random.Generator
) -> np.ndarray:
    """Target length of the i-th long example: uniform within bin (i mod bins) of [min, max]."""
    width = (context_tokens.max - context_tokens.min) / context_tokens.bins
    # bin i mod bins, then a uniform offset inside it
    return context_tokens.min + width * (
        np.arange(n_examples) % context_tokens.bins + rng.random(n_examples)
    )


def target_bins(
    targets: np.ndarray, context_tokens: ContextLength
) -> tuple[np.ndarray, np.ndarray, float]:
    """Per target: its bin's lower edge and whether it is the last bin; and the bins' width.

    Bins are [lo, lo + width), the last one [lo, max] (a target at max falls in it).
    """
    width = (context_tokens.max - context_tokens.min) / context_tokens.bins
    index = np.minimum((targets - context_tokens.min) // width, context_tokens.bins - 1)
    return context_tokens.min + index * width, index == context_tokens.bins - 1, width


def filler_counts(
    gold_tokens: np.ndarray, targets: np.ndarray, seg_len: int, context_tokens: ContextLength
) -> np.ndarray:
    """Fillers per example: the most with gold + n × seg_len <= its target, kept in range and,
    where the gold length allows, inside the target's length bin.

    Contexts grow in whole segments while gold lengths vary (a document's tail is short), so a
    plain rounding would spill examples into a neighbouring bin; bins of a width that is a
    multiple of seg_len always hold a feasible count, so lengths stay balanced over the bins.
    """
    shortest, longest = context_tokens.min, context_tokens.max
    # counts in [fewest, most] keep gold + n × seg_len inside [min, max]
    fewest = np.maximum(0, np.ceil((shortest - gold_tokens) / seg_len)).astype(np.int64)
    most = (longest - gold_tokens) // seg_len
    if (bad := fewest > most).any():
        raise SynthesisError(
            f"{int(bad.sum())} example(s) have gold segments of {int(gold_tokens[bad].max())} "
            f"tokens that no count of {seg_len}-token fillers brings into [{shortest}, {longest}]; "
            "widen synthesize.context_tokens"
        )
    bin_lo, last_bin, width = target_bins(targets, context_tokens)
    # counts that land in the target's bin: gold + n × seg_len >= bin_lo, and < the upper edge
    # (<= for the last bin, which is closed)
    in_bin_fewest = np.ceil((bin_lo - gold_tokens) / seg_len).astype(np.int64)
    room = bin_lo + width - gold_tokens
    in_bin_most = np.where(last_bin, np.floor(room / seg_len), np.ceil(room / seg_len) - 1).astype(
        np.int64
    )
    low, high = np.maximum(fewest, in_bin_fewest), np.minimum(most, in_bin_most)
    # a gold length that no count brings into the bin: fall back to the whole range
    in_bin = low <= high
    low, high = np.where(in_bin, low, fewest), np.where(in_bin, high, most)
    # the most fillers within the target, clipped into those bounds
    within_target = np.floor((targets - gold_tokens) / seg_len).astype(np.int64)
    return np.clip(within_target, low, high)
