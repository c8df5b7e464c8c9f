"""The data contract of `data/in2/` that the gate holds `synthesize` to.

Columns and types of the train/val tables, which of them may be missing, the kinds the
position checks are about, and the smallest sample the statistical checks test. The suites,
tables and report all read these names, so the contract is stated once.
"""

from __future__ import annotations

from in2.registry import LONG_KINDS

LONG = "+".join(LONG_KINDS)
"""The `kind` of checks over both long-context kinds in summary.json."""
MIN_PER_BIN = 5
"""Fewest expected positions per bin before the uniformity tests are run (chi-square rule)."""

CONTRACT: dict[str, str] = {
    "example_id": "str",
    "qa_id": "str",
    "kind": "str",
    "context_segments": "int_list",
    "gold_segments": "int_list",
    "gold_slots": "int_list",
    "source_doc": "str",
    "question": "str",
    "answer": "str",
    "n_tokens": "int64",
}
"""Columns of data/in2/{train,val}.parquet and their types, as written by `synthesize`."""
NULLABLE = ("source_doc",)
"""General instruction data has no gold segments, so it need not name a source document."""

ID_COLUMNS = ("example_id", "qa_id")
"""Columns that name a row in failure messages: the first one a suite's table has."""
