"""The segment table and the QA pairs' gold segments as flat numpy arrays.

Synthesis never walks rows in Python: a segment is an id into the arrays of `SegmentIndex`, and
a column of lists (each pair's gold segments, the contexts written out) is one ragged array of
offsets + values. The gold is checked against the segments once, up front, so that a stale
data/qa fails with the command that fixes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from in2.data.units import TEXT_UNIT
from in2.synth.mix import SynthesisError


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
            {doc: code for code, doc in enumerate(uniques)},
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


def ragged(lists: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, values) of a column of lists: row i is values[offsets[i]:offsets[i + 1]]."""
    lengths = lists.map(len).to_numpy(np.int64)
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate([np.asarray(v, dtype=np.int64) for v in lists]) if len(lists) else []
    return offsets, np.asarray(values, dtype=np.int64)


def ragged_sum(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sum of each row of a ragged array (rows may be empty)."""
    cumulative = np.concatenate([[0], np.cumsum(values)])
    return cumulative[offsets[1:]] - cumulative[offsets[:-1]]


def check_gold(qa: pd.DataFrame, segments: SegmentIndex) -> None:
    """Every gold segment exists and belongs to its pair's source document."""
    offsets, gold = ragged(qa["gold_segments"])
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


def list_array(offsets: np.ndarray, values: np.ndarray) -> pa.Array:
    """A list column straight from offsets + values: no Python list per row."""
    if offsets[-1] < 2**31:
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))
