"""The shared-prefix runner must decode exactly what per-query `model.generate` decodes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import PROBE_CONTEXT_TOKENS, PROBE_TASKS, vary_weights
from transformers import PreTrainedModel

from in2.model import load_model, load_tokenizer
from in2.params import ProbeParams
from in2.probing.build import read_probes
from in2.probing.local import Decoding, generate_shared, probe_model
from in2.probing.results import TaskRun, scores_summary
from in2.prompting import PromptEncoder
from in2.report.tables import write_report

MAX_NEW = 6


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The tiny model's ops are too small to split: on a busy 2-core machine two threads wait
    for each other far longer than they compute (measured: 18 s instead of 0.4 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> PreTrainedModel:
    return vary_weights(load_model(tiny_model_dir))


@pytest.fixture(scope="module")
def encoder(tiny_model_dir: Path) -> PromptEncoder:
    return PromptEncoder.create(load_tokenizer(tiny_model_dir), "chat")


def reference(model: PreTrainedModel, ids: list[int], stop_ids: set[int], pad_id: int) -> list[int]:
    """Plain greedy `generate` on the full prompt, stop token dropped."""
    prompt = torch.tensor([ids])
    out = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=MAX_NEW,
        do_sample=False,
        eos_token_id=sorted(stop_ids),
        pad_token_id=pad_id,
    )[0, prompt.shape[1] :].tolist()
    return [t for t in out if t not in stop_ids]


def test_batched_suffixes_of_different_lengths_match_generate(
    model: PreTrainedModel, encoder: PromptEncoder
) -> None:
    shared = encoder.prefix() + encoder.context("Alpha beta gamma.\nThe quick brown fox jumps.")
    questions = ["What?", "Which line has the fox in it, and why?", "A", "Name the first word."]
    suffixes = [encoder.suffix(q) for q in questions]
    assert len({len(s) for s in suffixes}) == len(suffixes), "lengths must differ to test padding"
    pad_id = encoder.tokenizer.pad_token_id
    stop_ids = encoder.stop_ids()
    expected = [reference(model, shared + s, stop_ids, pad_id) for s in suffixes]
    assert len({tuple(e) for e in expected}) > 1, "degenerate model: the test would prove nothing"

    decoding = Decoding(MAX_NEW, frozenset(stop_ids), pad_id, batch_size=3)
    got = generate_shared(model, shared, suffixes, decoding)
    assert got == expected

    # Rows stop at different steps: make the 3rd token of one answer a stop token.
    stop_early = stop_ids | {expected[1][2]}
    expected = [reference(model, shared + s, stop_early, pad_id) for s in suffixes]
    assert min(map(len, expected)) < MAX_NEW == max(map(len, expected)), "rows must end apart"
    early = Decoding(MAX_NEW, frozenset(stop_early), pad_id, batch_size=3)
    assert generate_shared(model, shared, suffixes, early) == expected


@pytest.fixture(scope="module")
def runs(model: PreTrainedModel, tiny_model_dir: Path, probes_dir: Path) -> dict[str, TaskRun]:
    params = ProbeParams(
        tasks=list(PROBE_TASKS),
        context_tokens=PROBE_CONTEXT_TOKENS,
        bin_size=2,
        max_new_tokens=dict.fromkeys(PROBE_TASKS, MAX_NEW),
        batch_size=4,
    )
    return probe_model(model, load_tokenizer(tiny_model_dir), params, probes_dir)


def test_probe_model_predictions_match_generate(
    runs: dict[str, TaskRun], model: PreTrainedModel, encoder: PromptEncoder, probes_dir: Path
) -> None:
    stop_ids, pad_id = encoder.stop_ids(), encoder.tokenizer.pad_token_id
    for task, run in runs.items():
        contexts, queries = read_probes(probes_dir, task)
        assert [(p["set_id"], p["position_id"]) for p in run.predictions] == [
            (q["set_id"], q["position_id"]) for q in queries
        ]
        texts = {c["context_id"]: c["text"] for c in contexts}
        for query, pred in zip(queries, run.predictions, strict=True):
            ids = (
                encoder.prefix()
                + encoder.context(texts[query["context_id"]])
                + encoder.suffix(query["question"])
            )
            want = encoder.tokenizer.decode(
                reference(model, ids, stop_ids, pad_id), skip_special_tokens=True
            ).strip()
            assert pred["prediction"] == want
            assert 0.0 <= pred["score"] <= 1.0
        assert run.curve.n_queries == len(queries)
        assert run.seconds > 0


def test_scores_summary_feeds_the_report(runs: dict[str, TaskRun], tmp_path: Path) -> None:
    scores = scores_summary(runs)
    assert set(scores) == {*PROBE_TASKS, "all", "all_strict"}
    doc, db = scores["document"], scores["database"]
    curve_keys = {"avg", "gap", "bins", "bins_std", "n_queries", "bin_size", "binning"}
    assert set(doc) == curve_keys | {"by_length", "strict", "uncertainty"}
    length = str(PROBE_CONTEXT_TOKENS)
    assert list(doc["by_length"]) == [length], "one length: its curve is the task's"
    assert doc["by_length"][length] == {k: doc[k] for k in curve_keys}
    assert set(doc["strict"]) == curve_keys | {"uncertainty"}
    for entry in (doc, doc["strict"]):
        u = entry["uncertainty"]
        assert u["avg_ci"][0] <= entry["avg"] <= u["avg_ci"][1]
        assert 0.0 <= u["gap_ci"][0] <= u["gap_ci"][1] <= 1.0
        assert 0.0 <= u["gap_noise_floor"] <= u["gap_noise_95"] <= 1.0
    assert scores["all_strict"]["avg"] == pytest.approx(
        (doc["strict"]["avg"] + db["strict"]["avg"]) / 2
    )
    assert scores["all"]["avg"] == pytest.approx((doc["avg"] + db["avg"]) / 2)

    write_report({"base": scores, "in2": scores}, list(PROBE_TASKS), tmp_path)
    table = (tmp_path / "scores.md").read_text()
    assert "| model | Document Avg/Gap | Database Avg/Gap | All Avg/Gap |" in table
    row = f"| in2 | {100 * doc['avg']:.1f} / {100 * doc['gap']:.1f} | "
    assert row in table
    assert (tmp_path / "probe_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "scores.json").read_text()) == {"base": scores, "in2": scores}


def test_the_fused_shared_part_equals_its_definition() -> None:
    """The CPU kernel behind the shared-prefix attention gives the explicit form's output and
    log-sum-exp (the explicit form is what other devices run)."""
    from in2.probing.local import attend_with_lse, explicit_attention_with_lse

    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(1, 3, n, 64, generator=generator) for n in (90, 1054, 1054))
    fused, fused_lse = attend_with_lse(query, key, value, 0.125)
    explicit, explicit_lse = explicit_attention_with_lse(query, key, value, 0.125)
    torch.testing.assert_close(fused, explicit)
    torch.testing.assert_close(fused_lse, explicit_lse)
    assert fused.shape == (1, 3, 90, 64) and fused_lse.shape == (1, 3, 90)
