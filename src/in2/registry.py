"""The names a user can choose in `params.yaml`, each defined once.

A registry maps a name to the thing it names: a probe task's spec, a QA generator, a corpus
adapter, an example kind. Implementations live in their subpackages and are named here as
`"module:attribute"`, imported only when first used, so `params` (which validates every choice
against these names) never imports the code behind them and the ground floor stays below every
subpackage. Adding a probe task is one entry here pointing at its spec (or, at run time,
`PROBE_TASKS.register(name, spec)`); params validation, the builder, the metrics and the report
all read it from here.

`tests/test_dvc_deps.py` counts a registry's target modules as code deps of every stage that
reads the registry's params key, so `dvc repro` re-runs them when a target changes.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> objects, given as the objects or as lazily imported `"module:attribute"`."""

    def __init__(self, what: str, key: str, entries: Mapping[str, T | str]) -> None:
        self.what = what
        """What an entry is, for messages ("probe task")."""
        self.key = key
        """The dotted params key whose values are names of this registry."""
        self._entries: dict[str, T | str] = dict(entries)

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __getitem__(self, name: str) -> T:
        try:
            entry = self._entries[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.what} {name!r} ({self.key}); known: {', '.join(self._entries)}"
            ) from None
        if isinstance(entry, str):  # "module:attribute", imported on first use
            module, attribute = entry.split(":")
            entry = getattr(importlib.import_module(module), attribute)
            self._entries[name] = entry
        return entry

    def validate(self, name: str) -> str:
        """`name` if registered, else a ValueError worded as pydantic words a bad choice (params
        validation shows it under the dotted key, with the value given)."""
        if name not in self._entries:
            known = [repr(n) for n in self._entries]
            choices = " or ".join([", ".join(known[:-1]), known[-1]] if len(known) > 1 else known)
            raise ValueError(f"Input should be {choices}")
        return name

    def register(self, name: str, entry: T | str) -> None:
        """Add an entry (a plug-in, or a test's throwaway task); a taken name is an error."""
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._entries[name] = entry

    def unregister(self, name: str) -> None:
        """Remove an entry added with `register`."""
        del self._entries[name]

    def target_modules(self) -> list[str]:
        """The modules the lazy entries point at (for the deps check)."""
        targets = self._entries.values()
        return sorted({e.split(":")[0] for e in targets if isinstance(e, str)})


PROBE_TASKS: Registry = Registry(
    "probe task",
    "probe.tasks",
    {
        "document": "in2.probing.tasks:DOCUMENT",
        "code": "in2.probing.tasks:CODE",
        "database": "in2.probing.tasks:DATABASE",
    },
)
"""VaL probing tasks (in2.probing.tasks.TaskSpec), in the paper's order."""

QA_GENERATORS: Registry = Registry(
    "QA generator",
    "qa.generator",
    {
        "template": "in2.qa.template:generate_template_qa",
        "openai": "in2.qa.llm:generate_openai_qa",
    },
)
"""QA generators: `(segments, qa params, seed) -> (qa frame, QAStats)` (in2.qa.pairs)."""

CORPUS_SOURCES: Registry = Registry(
    "corpus source",
    "corpus.source",
    {
        "wiki_offline": "in2.data.corpus:read_wiki_offline",
        "local": "in2.data.corpus:read_local",
        "hf": "in2.data.corpus:read_hf",
    },
)
"""Corpus adapters: `(corpus params, stats) -> raw records` (in2.data.corpus)."""


@dataclass(frozen=True)
class ExampleKind:
    """What kind of IN2 example a `synthesize.mix` entry makes."""

    long_context: bool
    """Its context is a haystack of filler segments with the gold ones at random slots (paper:
    4K-32K tokens); these are also the kinds of QA pair a generator writes."""
    description: str


EXAMPLE_KINDS: Registry[ExampleKind] = Registry(
    "example kind",
    "synthesize.mix",
    {
        "fine_grained": ExampleKind(True, "one segment's QA pair, that segment at a random slot"),
        "integration": ExampleKind(
            True, "a QA pair needing >= 2 segments of one text, each at its own random slot"
        ),
        "short": ExampleKind(False, "a fine-grained pair with its gold segment alone"),
        "general": ExampleKind(False, "instruction data without a context (paper: OpenOrca)"),
    },
)
"""Kinds of IN2 example (paper mix 63/17/9/11), in the fixed order that breaks rounding ties."""

LONG_KINDS: tuple[str, ...] = tuple(n for n in EXAMPLE_KINDS if EXAMPLE_KINDS[n].long_context)
"""`fine_grained`, `integration`: the long-context kinds, and the kinds of a QA pair."""

REGISTRIES: tuple[Registry, ...] = (PROBE_TASKS, QA_GENERATORS, CORPUS_SOURCES, EXAMPLE_KINDS)
"""Every registry; the deps check (in2.lineage.code_deps) reads their targets from here."""
