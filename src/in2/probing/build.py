"""The VaL probe builder: one long context per set, every item position in it queried once.

Task- and source-agnostic (the tasks are in2.probing.tasks, looked up by name in
in2.registry.PROBE_TASKS): for any tokenizer and each target length it packs as many sampled
items as fit into a context (counted with the same tokenization the runner uses), then asks
about each position with the first candidate keyword of its item that occurs exactly once in that
context (the paper skips ambiguous queries; trying the other candidates first loses fewer
positions). Written as `data/probes/<task>/{contexts,queries}.jsonl` and `stats.json`.

Offline items come from the held-out documents unless they cannot fill the longest context (a
corpus without titles or descriptions has no entity): then from the task's fallback material, and
`stats.json` says which (`load_pool`).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from in2.outputs import atomic_dir, read_jsonl, write_json, write_jsonl
from in2.params import InputError
from in2.probing.tasks import Item, ItemSource, Loader, ProbeSources, TaskSpec
from in2.prompting import PromptEncoder
from in2.registry import PROBE_TASKS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Provenance:
    """Where a task's items came from, for `stats.json`: a fallback must never go unnoticed."""

    source: str
    """The material drawn from (`heldout`, `stdlib`, `pieces`, `wiki_offline package`)."""
    items_by_source: dict[str, int]
    """Items each material tried gave, in the order tried; the last one is `source`."""


@dataclass(frozen=True)
class Pool:
    """The items a task's sets are drawn from (never none: `load_pool` says why there are none),
    and their provenance."""

    items: list[Item]
    provenance: Provenance

    def __post_init__(self) -> None:
        if not self.items:  # an empty pool would make `_stream` loop forever
            raise ValueError(f"an empty pool of {self.provenance.source} items")


@dataclass(frozen=True)
class ProbeSet:
    """One context (a `contexts.jsonl` row) and its queries (`queries.jsonl` rows)."""

    context: dict[str, Any]
    queries: list[dict[str, Any]]
    n_skipped: int
    """Positions not asked because none of their keywords is unique in the context."""
    provenance: Provenance


def source_name(loader: ItemSource | Loader, kind: str) -> str:
    """The name of a loader's material; a plain loader (a plug-in task) is named by its kind."""
    return loader.name if isinstance(loader, ItemSource) else kind


def fills(items: list[Item], spec: TaskSpec, encoder: PromptEncoder, target: int) -> bool:
    """Whether the items that fit a `target`-token context hold that many tokens together; only
    as many items are tokenized as it takes to know."""
    total = 0
    for item in items:
        cost = len(encoder.context(spec.separator + spec.render.format(**item.fields)))
        total += cost if cost <= target else 0
        if total >= target:
            return True
    return False


def _tried(found: dict[str, int]) -> str:
    """`0 items from heldout and 9862 from wiki_offline package`."""
    (first, n_first), *rest = found.items()
    return " and ".join([f"{n_first} items from {first}", *(f"{n} from {m}" for m, n in rest)])


def load_pool(
    spec: TaskSpec, sources: ProbeSources, encoder: PromptEncoder, target: int, seed: int
) -> Pool:
    """The task's items: from its loader of `sources.kind`, unless offline items cannot fill a
    `target`-token context; then from the fallback documents, unless the corpus holds them too
    (its other documents are training data).

    The paper's pieces are used however few they are (a context holds what there is); too few
    offline items are an error naming the task, the counts, the sources and what to do.
    """
    primary = spec.loaders[sources.kind]
    name = source_name(primary, sources.kind)
    items = primary(sources, task_rng(seed, spec.name))
    found = {name: len(items)}
    enough = bool(items) if sources.kind == "pieces" else fills(items, spec, encoder, target)
    if enough:
        return Pool(items, Provenance(name, found))
    fallback, note = sources.fallback, ""
    if sources.kind == "offline" and fallback is not None and spec.fallback is not None:
        docs = fallback.read()
        if sources.corpus_sources.isdisjoint(docs["source"]):
            items = spec.fallback(replace(sources, heldout=docs), task_rng(seed, spec.name))
            found[fallback.name] = len(items)
            if fills(items, spec, encoder, target):
                log.warning(
                    "%s probe: %d items from %s cannot fill a %d-token context; its %d items "
                    "come from %s",
                    spec.name,
                    found[name],
                    name,
                    target,
                    len(items),
                    fallback.name,
                )
                return Pool(items, Provenance(fallback.name, found))
        else:
            note = f"; {fallback.name} is no fallback: the corpus is read from it"
    needs = primary.needs if isinstance(primary, ItemSource) else "items"
    raise InputError(
        f"{spec.name} probe: {_tried(found)} cannot fill one {target}-token context "
        f"(probe.context_tokens); lower probe.context_tokens or give it more {needs}{note}"
    )


def _stream(n: int, rng: np.random.Generator) -> Iterator[int]:
    """Item indices, one random permutation after another: sets reuse items only when they must."""
    while True:
        yield from (int(i) for i in rng.permutation(n))


def _pack(
    items: list[Item],
    spec: TaskSpec,
    encoder: PromptEncoder,
    target: int,
    stream: Iterator[int],
    pending: list[int],
) -> tuple[list[Item], str, int]:
    """Fill one context up to `target` tokens; the item that did not fit is left in `pending`."""
    chosen: list[int] = []
    total = 0
    too_big = 0
    while too_big <= len(items):
        index = pending.pop() if pending else next(stream)
        if index in chosen:  # the pool is exhausted for this context
            pending.append(index)
            break
        text = spec.render.format(**items[index].fields)
        cost = len(encoder.context(spec.separator + text if chosen else text))
        if total + cost <= target:
            chosen.append(index)
            total += cost
            too_big = 0
        elif chosen:
            pending.append(index)
            break
        else:
            too_big += 1  # longer than a whole context on its own: never usable
    if not chosen:
        raise InputError(
            f"a context of {target} tokens (probe.context_tokens) is too small for any "
            f"{spec.name} item; raise that length"
        )
    # Tokens can merge across item boundaries: trust only the count of the joined text.
    while True:
        text = spec.separator.join(spec.render.format(**items[i].fields) for i in chosen)
        n_tokens = len(encoder.context(text))
        if n_tokens <= target:  # always true for one item: its cost above is exact
            return [items[i] for i in chosen], text, n_tokens
        pending.append(chosen.pop())


def _take(
    items: list[Item], spec: TaskSpec, encoder: PromptEncoder, n: int, stream: Iterator[int]
) -> tuple[list[Item], str, int]:
    """`n` distinct items in one context, whatever their tokens (`probe.items_per_context`)."""
    if n > len(items):
        raise InputError(
            f"probe.items_per_context.{spec.name}: {n} items per context, but the pool holds "
            f"{len(items)}; lower it or give the task more material (probe.pieces)"
        )
    chosen = [items[next(stream)] for _ in range(n)]  # from one permutation: all distinct
    text = spec.separator.join(spec.render.format(**item.fields) for item in chosen)
    return chosen, text, len(encoder.context(text))


def build_task(
    spec: TaskSpec,
    pool: Pool,
    encoder: PromptEncoder,
    context_tokens: int,
    n_sets: int,
    rng: np.random.Generator,
    items_per_context: int | None = None,
) -> list[ProbeSet]:
    """`n_sets` contexts of <= `context_tokens` tokens, or of `items_per_context` items (the
    paper's fixed counts); each position asked once if unambiguous.

    Every set holds the same number of items, the fewest that any set's packing fitted (the
    longer sets lose their last items), as the paper's sets hold a fixed 800 or 750 positions:
    then every set has every position, and no position bin is made of one set's stragglers —
    a bin of the one extra item of one set would weigh as much in Avg as a full bin.
    A position is asked with the first keyword of its item that occurs in the item and nowhere
    else in the context, so the question points at exactly one item.
    """
    items = pool.items
    if items_per_context is None:
        stream, pending = _stream(len(items), rng), []
        packed = [
            _pack(items, spec, encoder, context_tokens, stream, pending) for _ in range(n_sets)
        ]
    else:  # a fresh permutation per set: a set's items are distinct
        packed = [
            _take(items, spec, encoder, items_per_context, _stream(len(items), rng))
            for _ in range(n_sets)
        ]
    n_items = min(len(chosen) for chosen, _, _ in packed)
    sets = []
    for set_id, (chosen, text, n_tokens) in enumerate(packed):
        if len(chosen) > n_items:  # cut to the common count: re-join and re-count
            chosen = chosen[:n_items]
            text = spec.separator.join(spec.render.format(**item.fields) for item in chosen)
            n_tokens = len(encoder.context(text))
        context_id = f"{spec.name}-{context_tokens}-{set_id}"
        queries, skipped = [], 0
        for position_id, item in enumerate(chosen):
            rendered = spec.render.format(**item.fields)
            keyword = next((k for k in item.keywords if k in rendered and text.count(k) == 1), None)
            if keyword is None:
                skipped += 1
                continue
            queries.append(
                {
                    "task": spec.name,
                    "context_tokens": context_tokens,
                    "set_id": set_id,
                    "position_id": position_id,
                    "context_id": context_id,
                    "question": spec.question.format(keyword=keyword),
                    "keyword": keyword,
                    **{out: item.fields[name] for out, name in spec.answer.items()},
                }
            )
        context = {
            "context_id": context_id,
            "context_tokens": context_tokens,
            "set_id": set_id,
            "text": text,
            "n_tokens": n_tokens,
            "n_items": len(chosen),
        }
        sets.append(ProbeSet(context, queries, skipped, pool.provenance))
    return sets


def task_rng(seed: int, task: str, *more: int) -> np.random.Generator:
    """One generator per (seed, task, ...): adding or reordering tasks or lengths never changes
    another's data."""
    return np.random.default_rng([seed, zlib.crc32(task.encode()), *more])


def build_probes(
    sources: ProbeSources,
    encoder: PromptEncoder,
    tasks: list[str],
    context_tokens: Sequence[int],
    n_sets: int,
    seed: int,
    items_per_context: Mapping[str, int] | None = None,
) -> dict[str, list[ProbeSet]]:
    """`n_sets` probe sets per task and target length (lengths in the given order), deterministic
    for a seed, source material and tokenizer; a task in `items_per_context` gets that many
    items per context instead of filling the length."""
    probes = {}
    for name in tasks:
        spec: TaskSpec = PROBE_TASKS[name]
        pool = load_pool(spec, sources, encoder, max(context_tokens), seed)
        count = (items_per_context or {}).get(name)
        probes[name] = [
            probe_set
            for target in context_tokens
            for probe_set in build_task(
                spec, pool, encoder, target, n_sets, task_rng(seed, name, target), count
            )
        ]
        n_queries = sum(len(s.queries) for s in probes[name])
        n_skipped = sum(s.n_skipped for s in probes[name])
        tokens = [s.context["n_tokens"] for s in probes[name]]
        log.info(
            "%s: %d %s items in the pool, %d sets at each of %s tokens (%s), %d queries, "
            "%d ambiguous positions skipped; contexts of %d-%d tokens",
            name,
            len(pool.items),
            pool.provenance.source,
            n_sets,
            list(context_tokens),
            f"{count} items each" if count else "filled",
            n_queries,
            n_skipped,
            min(tokens),
            max(tokens),
        )
    return probes


def probe_stats(probes: Mapping[str, list[ProbeSet]]) -> dict[str, Any]:
    """Where the items came from, item and query counts per task and set
    (`data/probes/stats.json`)."""
    return {
        name: {
            "source": sets[0].provenance.source,
            "items_by_source": sets[0].provenance.items_by_source,
            "n_queries": sum(len(s.queries) for s in sets),
            "sets": [
                {
                    "context_tokens": s.context["context_tokens"],
                    "set_id": s.context["set_id"],
                    "n_items": s.context["n_items"],
                    "n_queries": len(s.queries),
                    "n_skipped": s.n_skipped,
                    "n_tokens": s.context["n_tokens"],
                }
                for s in sets
            ],
        }
        for name, sets in probes.items()
    }


def write_probes(probes: Mapping[str, list[ProbeSet]], out_dir: str | Path) -> None:
    """Write `<task>/contexts.jsonl`, `<task>/queries.jsonl` and `stats.json`, as one atomic dir."""
    with atomic_dir(out_dir) as tmp:
        for name, sets in probes.items():
            write_jsonl(tmp / name / "contexts.jsonl", [s.context for s in sets])
            write_jsonl(tmp / name / "queries.jsonl", [q for s in sets for q in s.queries])
        write_json(tmp / "stats.json", probe_stats(probes))


def read_probes(probes_dir: str | Path, task: str) -> tuple[list[dict], list[dict]]:
    """Contexts and queries of one task, as written by `write_probes`."""
    folder = Path(probes_dir) / task
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist; run `dvc repro probe_data`")
    return read_jsonl(folder / "contexts.jsonl"), read_jsonl(folder / "queries.jsonl")
