"""Names are defined once: a probe task added in one place is validated, built and scored."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from in2.model import load_tokenizer
from in2.params import ParamsError, parse_params
from in2.probing.build import build_probes
from in2.probing.metrics import Bins
from in2.probing.results import scores_summary, task_run
from in2.probing.tasks import Item, ProbeSources, answer_budget
from in2.prompting import PromptEncoder
from in2.registry import EXAMPLE_KINDS, LONG_KINDS, PROBE_TASKS, QA_GENERATORS, Registry

COLOURS = ("red", "green", "blue", "amber", "olive", "coral", "ivory", "mauve", "slate", "teal")


def colour_items(sources: ProbeSources, rng: np.random.Generator) -> list[Item]:
    """Items of a throwaway task: a made-up code per colour, asked by the code."""
    return [Item({"sentence": f"K{i:03d} is {c}."}, (f"K{i:03d}",)) for i, c in enumerate(COLOURS)]


COLOUR = replace(  # the document task's item layout and metric; its own question and items
    PROBE_TASKS["document"],
    name="colour",
    question="Which colour is {keyword}?",
    loaders={"offline": colour_items},
    max_new_tokens=3,
)


@pytest.fixture
def colour_task() -> Iterator[str]:
    PROBE_TASKS.register("colour", COLOUR)
    yield "colour"
    PROBE_TASKS.unregister("colour")


def test_an_unknown_task_names_the_key_and_the_known_tasks() -> None:
    with pytest.raises(ParamsError) as err:
        parse_params({"probe": {"tasks": ["colour"]}})
    assert "probe.tasks.0: Input should be 'document', 'code' or 'database' (got 'colour')" in str(
        err.value
    )


def test_a_task_added_in_one_place_is_validated_built_and_scored(
    colour_task: str, tiny_model_dir: Path
) -> None:
    params = parse_params({"probe": {"tasks": [colour_task], "context_tokens": [64]}}).probe
    assert params.tasks == ["colour"] and answer_budget(params, colour_task) == 3

    encoder = PromptEncoder.create(load_tokenizer(tiny_model_dir), "chat")
    sources = ProbeSources(heldout=pd.DataFrame(columns=["title", "text", "description"]))
    (sets,) = build_probes(sources, encoder, params.tasks, params.context_tokens, 2, 0).values()
    queries = [q for s in sets for q in s.queries]
    assert queries and all(q["task"] == "colour" for q in queries)
    assert all(q["question"] == f"Which colour is {q['keyword']}?" for q in queries)

    answers = [q["completion"] if i % 2 else "no idea" for i, q in enumerate(queries)]
    run = task_run(colour_task, queries, answers, bins=Bins(2), seconds=1.0)
    assert [p["score"] for p in run.predictions] == [float(i % 2) for i in range(len(queries))]
    assert set(scores_summary({colour_task: run})) >= {"colour", "all", "all_strict"}


def test_a_taken_name_is_refused_and_an_unknown_one_names_the_known() -> None:
    with pytest.raises(ValueError, match="probe task 'code' is already registered"):
        PROBE_TASKS.register("code", COLOUR)
    with pytest.raises(KeyError, match=r"unknown QA generator 'gpt' \(qa.generator\)"):
        QA_GENERATORS["gpt"]


def test_lazy_entries_import_on_first_use_only() -> None:
    registry: Registry = Registry("thing", "x.thing", {"json": "json:dumps"})
    assert registry.target_modules() == ["json"]
    import json

    assert registry["json"] is json.dumps


def test_example_kinds_are_the_paper_mix_and_long_kinds_follow() -> None:
    assert EXAMPLE_KINDS.names() == ("fine_grained", "integration", "short", "general")
    assert LONG_KINDS == ("fine_grained", "integration")
    mix = parse_params({}).synthesize.mix
    assert set(mix) == set(EXAMPLE_KINDS.names())
