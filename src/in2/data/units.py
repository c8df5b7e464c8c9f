"""Record units: short structured lines rendered from corpus documents, stored beside segments.

IN2's fine-grained QA asks about one segment of prose. Prose alone never shows a small model
a context made of many short, similar items in which exactly one must be found — the situation
of every retrieval task. Record units add that situation, built from the training corpus only:

- `record`: a key (made up, e.g. `CE-4821`) with a document's title and short description, in
  one of a few layouts (`RECORD_LAYOUTS`); asked forward: the key -> what is filed under it;
- `entry`: a document's title as a heading over its first sentence(s), on one line or broken
  into short lines (`wrap_lines`); asked backward: a quoted piece of the text, or one whole
  line -> the heading it sits under.

Each document gives at most one unit of each type. A unit is stored in `data/segments` like a
segment (its token ids in the flat array, a row in the index with `unit` = its type), so an
example whose context is made of units is still a list of segment ids; its fields (key, name,
value, answer) are kept in `units.parquet` beside the index, for the QA generator.
Keys are unique in the corpus and share a short alphabet, so a context of 30 records holds keys
that differ in one or two characters: a lookup must read the whole key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import pandas as pd
from transformers import PreTrainedTokenizerBase

UNIT_TYPES = ("record", "entry")
"""Unit types a corpus document can be rendered as (params `segment.units`)."""
TEXT_UNIT = "text"
"""`unit` of an ordinary prose segment."""
UNITS_FILE = "units.parquet"
UNIT_COLUMNS = ["seg_id", "unit", "key", "name", "value", "answer"]

KEY_LETTERS = "ABCDE"
"""Letters of a key's prefix: a short alphabet, so keys of one context are near-duplicates."""
KEY_DIGITS = 4
RECORD_LAYOUTS = (
    ("{key} | {name} | {value}", "{name} | {value}"),
    ("[{key}] {name}: {value}", "{name}: {value}"),
    ("{key} = {name} ({value})", "{name} ({value})"),
)
"""(line, answer) templates of a record: the answer is the part of the line after the key."""
ENTRY_LAYOUTS = {
    "heading": ("## {name}", ""),
    "colon": ("{name}:", "  "),
    "bracket": ("[{name}]", ""),
    "bullet": ("{name}", "- "),
}
"""Entry layout name -> (heading line, prefix of each text line): ways a titled block is written
in plain text (markdown, an outline, an ini-style section, a list). A mix teaches "the first
line of the block" rather than one marker."""
MAX_FIELD_CHARS = 120

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


@dataclass(frozen=True)
class Unit:
    """One rendered unit of a document."""

    doc_id: str
    unit: str
    key: str
    name: str
    value: str
    answer: str
    text: str
    """The unit as it reads in a context, one newline-terminated block."""


def sentences(text: str) -> list[str]:
    """A text's sentences (split after . ! ? before a capital, digit or quote), whitespace
    normalised. Rough on abbreviations; a unit only needs whole sentences in order."""
    return [s for s in _SENTENCE_END.split(" ".join(text.split())) if s]


def make_keys(n: int, rng: np.random.Generator) -> list[str]:
    """`n` distinct keys `XY-dddd` (letters of KEY_LETTERS), drawn without replacement."""
    space = len(KEY_LETTERS) ** 2 * 10**KEY_DIGITS
    if n > space:
        raise ValueError(f"{n} records need more than the {space} possible keys")
    keys = []
    for code in rng.choice(space, size=n, replace=False):
        letters, number = divmod(int(code), 10**KEY_DIGITS)
        a, b = divmod(letters, len(KEY_LETTERS))
        keys.append(f"{KEY_LETTERS[a]}{KEY_LETTERS[b]}-{number:0{KEY_DIGITS}d}")
    return keys


def _field(value: object) -> str:
    text = " ".join(str(value or "").split())
    return text if len(text) <= MAX_FIELD_CHARS else ""


def wrap_lines(text: str, line_words: int) -> str:
    """`text` broken into the fewest lines of at most `line_words` words, of near-equal length
    (so no line is a one-word stub)."""
    words = text.split()
    n_lines = -(-len(words) // line_words)
    bounds = [round(i * len(words) / n_lines) for i in range(n_lines + 1)]
    return "\n".join(" ".join(words[a:b]) for a, b in pairwise(bounds))


def render_units(
    docs: pd.DataFrame,
    types: list[str],
    seed: int,
    entry_words: int = 40,
    entry_line_words: int | None = None,
    entry_layouts: tuple[str, ...] = ("heading",),
) -> list[Unit]:
    """Units of the requested types for the documents (doc_id, title, description, text).

    An entry's text is its document's first sentences, whole, up to `entry_words` words, on one
    line or broken into lines of at most `entry_line_words` words, written in one of
    `entry_layouts` (ENTRY_LAYOUTS) drawn per entry (params `segment.*`).
    A document without a usable title (or description, for a record; or first sentence, for an
    entry) gives no unit of that type. Deterministic for a seed and document table.
    """
    unknown = set(types) - set(UNIT_TYPES)
    if unknown:
        raise ValueError(f"unknown unit type(s) {sorted(unknown)}; known: {list(UNIT_TYPES)}")
    unknown = set(entry_layouts) - set(ENTRY_LAYOUTS)
    if unknown or not entry_layouts:
        raise ValueError(
            f"entry layouts must be some of {list(ENTRY_LAYOUTS)}, got {entry_layouts}"
        )
    rng = np.random.default_rng([seed, 7411])
    units: list[Unit] = []
    frame = docs.sort_values("doc_id")
    if "record" in types:
        usable = [
            (str(d.doc_id), _field(d.title), _field(d.description))
            for d in frame.itertuples(index=False)
        ]
        usable = [u for u in usable if u[1] and u[2] and u[1] != u[2]]
        keys = make_keys(len(usable), rng)
        layouts = rng.integers(len(RECORD_LAYOUTS), size=len(usable))
        for (doc, name, value), key, layout in zip(usable, keys, layouts, strict=True):
            line, answer = RECORD_LAYOUTS[int(layout)]
            fields = {"key": key, "name": name, "value": value}
            text = line.format(**fields) + "\n"
            units.append(Unit(doc, "record", key, name, value, answer.format(**fields), text))
    if "entry" in types:
        for d in frame.itertuples(index=False):
            name, body = _field(d.title), []
            for sentence in sentences(str(d.text or "")):
                if body and len(" ".join([*body, sentence]).split()) > entry_words:
                    break
                body.append(sentence)
            value = " ".join(body)
            if not name or not value or len(value.split()) > 2 * entry_words:
                continue
            if entry_line_words is not None:
                value = wrap_lines(value, entry_line_words)
            heading, prefix = ENTRY_LAYOUTS[entry_layouts[int(rng.integers(len(entry_layouts)))]]
            lines = [heading.format(name=name), *(prefix + line for line in value.split("\n"))]
            text = "\n".join(lines) + "\n\n"
            units.append(Unit(str(d.doc_id), "entry", "", name, value, name, text))
    return units


def append_units(
    tokens: np.ndarray,
    index: pd.DataFrame,
    units: list[Unit],
    tokenizer: PreTrainedTokenizerBase,
) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """Add units after the segments: their ids to the flat array, rows to the index (`unit` =
    the type; prose segments get `TEXT_UNIT`), and their fields as the units table.

    seg_id stays the row number; a unit's `index_in_doc` continues its document's numbering.
    """
    index = index.assign(unit=TEXT_UNIT)
    if not units:
        return tokens, index, pd.DataFrame(columns=UNIT_COLUMNS)
    encoded = tokenizer([u.text for u in units], add_special_tokens=False)["input_ids"]
    lengths = np.array([len(ids) for ids in encoded], dtype=np.int64)
    flat = np.concatenate([np.asarray(ids, dtype=tokens.dtype) for ids in encoded])
    starts = len(tokens) + np.concatenate([[0], np.cumsum(lengths)[:-1]])
    seg_ids = len(index) + np.arange(len(units))
    docs = pd.Series([u.doc_id for u in units])
    next_in_doc = index.groupby("doc_id")["index_in_doc"].max() + 1
    first = docs.map(next_in_doc).fillna(0).astype("int64").to_numpy()
    added = pd.DataFrame(
        {
            "seg_id": seg_ids,
            "doc_id": docs,
            "start": starts,
            "n_tokens": lengths,
            "index_in_doc": first + docs.groupby(docs).cumcount().to_numpy(),
            "unit": [u.unit for u in units],
        }
    ).astype(index.dtypes.to_dict())
    table = pd.DataFrame(
        {
            "seg_id": seg_ids,
            "unit": [u.unit for u in units],
            "key": [u.key for u in units],
            "name": [u.name for u in units],
            "value": [u.value for u in units],
            "answer": [u.answer for u in units],
        }
    )
    return np.concatenate([tokens, flat]), pd.concat([index, added], ignore_index=True), table
