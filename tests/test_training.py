"""IN2 training: answer-only labels and loss, global batch arithmetic, and a tiny end-to-end run."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_random_segments

from in2.data.segments import SegmentStore
from in2.lineage.fingerprint import dataset_fingerprint
from in2.model import load_model, load_tokenizer
from in2.params import InputError, TrainParams, parse_params
from in2.prompting import PromptEncoder
from in2.train import loop as training
from in2.train.batching import (
    IGNORE_INDEX,
    ExampleEncoder,
    collate,
    plan_batches,
    process_micro_batches,
    step_schedule,
)
from in2.train.inputs import TrainInputs
from in2.train.loop import AnswerOnlyLoss, TrainOutputs, require_passed_gate, train
from in2.train.trainable import freeze

SEG_LEN = 16
N_SEGMENTS = 8


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def segments(tmp_path_factory: pytest.TempPathFactory) -> SegmentStore:
    """A small data/segments/ folder: random token ids, fixed-length segments."""
    folder = tmp_path_factory.mktemp("segments")
    write_random_segments(folder, N_SEGMENTS, SEG_LEN, np.random.default_rng(0))
    return SegmentStore.open(folder)


@pytest.fixture(scope="module")
def encoder(tokenizer, segments: SegmentStore) -> ExampleEncoder:
    return ExampleEncoder(PromptEncoder.create(tokenizer, "chat"), segments, max_seq_len=512)


def test_labels_are_exactly_the_answer_ids(encoder: ExampleEncoder) -> None:
    prompts = encoder.prompts
    ex = encoder.encode("ex0", [3, 1, 5], "What follows the cue?", "the answer", n_context=48)
    input_ids, labels = encoder.ids(ex)

    context = encoder.segments.context_ids([3, 1, 5]).astype(np.int64).tolist()
    prompt = prompts.prefix() + context + prompts.suffix("What follows the cue?")
    answer = prompts.answer("the answer")
    assert input_ids.tolist() == prompt + answer
    assert ex.n_tokens == len(input_ids)
    assert (labels[: len(prompt)] == IGNORE_INDEX).all()  # context and question: no loss
    assert labels[len(prompt) :].tolist() == answer


def test_example_without_context_uses_the_no_context_prompt(encoder: ExampleEncoder) -> None:
    ex = encoder.encode("gen0", [], "Name a colour.", "Blue.", n_context=0)
    input_ids, labels = encoder.ids(ex)
    prompt = encoder.prompts.no_context("Name a colour.")
    assert input_ids.tolist() == prompt + encoder.prompts.answer("Blue.")
    assert (labels[: len(prompt)] == IGNORE_INDEX).all()


def test_overlong_example_raises_naming_it(encoder: ExampleEncoder) -> None:
    short = ExampleEncoder(encoder.prompts, encoder.segments, max_seq_len=64)
    with pytest.raises(InputError, match=r"example too-long-7: \d+ tokens .* > train\.max_seq_len"):
        short.encode("too-long-7", list(range(N_SEGMENTS)), "Q?", "A.")


def test_context_length_mismatch_is_reported(encoder: ExampleEncoder) -> None:
    with pytest.raises(InputError, match="n_tokens is 10 but its segments hold 32"):
        encoder.encode("ex1", [0, 1], "Q?", "A.", n_context=10)


def test_answer_only_loss_equals_full_logits_masked_loss(
    tiny_model_dir: Path, encoder: ExampleEncoder
) -> None:
    """Two right-padded examples of different lengths: the sliced-logits loss and its gradients
    equal those of a full forward with labels -100 outside the answers."""
    examples = [
        encoder.encode("a", [0, 1, 2], "Which words follow?", "these words here"),
        encoder.encode("b", [4], "And now?", "short"),
    ]
    batch = collate([encoder.ids(e) for e in examples], encoder.prompts.tokenizer.pad_token_id)
    assert batch.attention_mask[1].sum() < batch.attention_mask.shape[1]  # padding is exercised
    lm = load_model(tiny_model_dir)

    n_answer = sum(len(e.answer) for e in examples)
    sliced = AnswerOnlyLoss(lm)(batch.input_ids, batch.attention_mask, batch.labels) / n_answer
    sliced.backward()
    sliced_grads = [p.grad.clone() for p in lm.parameters()]
    lm.zero_grad()
    full = lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels)
    full.loss.backward()

    torch.testing.assert_close(sliced, full.loss, rtol=1e-5, atol=1e-6)
    for got, want in zip(sliced_grads, (p.grad for p in lm.parameters()), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_a_prompt_without_gradients_gives_the_same_loss_and_cuts_its_backward(
    tiny_model_dir: Path, encoder: ExampleEncoder
) -> None:
    """train.backprop_prompt: false computes the same loss (the prompt as a cache of
    constants), but its gradients come from the answer positions only."""
    examples = [
        encoder.encode("a", [0, 1, 2], "Which words follow?", "these words here"),
        encoder.encode("b", [4], "And now?", "short"),
    ]
    batch = collate([encoder.ids(e) for e in examples], encoder.prompts.tokenizer.pad_token_id)
    lm = load_model(tiny_model_dir)
    losses, grads = [], []
    for backprop_prompt in (True, False):
        lm.zero_grad()
        loss = AnswerOnlyLoss(lm, backprop_prompt)(
            batch.input_ids, batch.attention_mask, batch.labels
        )
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None})
    full, cut = grads
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    assert set(cut) == set(full)  # every weight still learns, from the answer positions
    key = "model.layers.0.self_attn.k_proj.weight"  # the prompt's keys: only the answer's remain
    assert cut[key].norm() < 0.9 * full[key].norm()
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in cut.values())


def test_a_prompt_cache_and_gradient_checkpointing_are_refused_together() -> None:
    with pytest.raises(ValueError, match="backprop_prompt: false needs the prompt's key/value"):
        TrainParams(backprop_prompt=False, gradient_checkpointing=True)


def test_gradient_checkpointing_gives_the_same_gradients(
    tiny_model_dir: Path, encoder: ExampleEncoder
) -> None:
    """Recomputing activations must not change the gradients, with frozen (tied) embeddings."""
    example = encoder.encode("a", [0, 1], "Which words follow?", "these words here")
    batch = collate([encoder.ids(example)], encoder.prompts.tokenizer.pad_token_id)
    grads = []
    for checkpointing in (False, True):
        lm = load_model(tiny_model_dir)
        lm.get_input_embeddings().weight.requires_grad_(False)
        if checkpointing:
            lm.activation_checkpointing_enable()
        lm.train()
        AnswerOnlyLoss(lm)(batch.input_ids, batch.attention_mask, batch.labels).backward()
        grads.append([p.grad for p in lm.parameters() if p.requires_grad])
    assert all(g is not None for g in grads[1])
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    ("micro", "global_", "world", "n", "epochs", "accumulation", "steps", "repeated"),
    [
        (1, 4, 1, 96, 1, 4, 24, 0),  # the default profile
        (2, 8, 2, 10, 1, 2, 2, 6),  # last step filled with 6 repeated examples
        (4, 128, 8, 1000, 3, 4, 24, 72),
    ],
)
def test_global_batch_arithmetic(
    micro: int,
    global_: int,
    world: int,
    n: int,
    epochs: int,
    accumulation: int,
    steps: int,
    repeated: int,
) -> None:
    plan = plan_batches(micro, global_, world, n, epochs)
    assert plan.gradient_accumulation == accumulation
    assert micro * plan.gradient_accumulation * world == global_
    assert (plan.optimizer_steps, plan.repeated_examples) == (steps, repeated)

    schedule = step_schedule(plan, seed=0)
    assert schedule.shape == (steps, global_)
    assert np.array_equal(schedule, step_schedule(plan, seed=0))  # deterministic
    counts = np.bincount(schedule.ravel(), minlength=n)
    assert counts.min() >= epochs  # every example seen every epoch
    shares = [process_micro_batches(schedule[0], plan, r) for r in range(world)]
    assert all(len(s) == accumulation and all(len(m) == micro for m in s) for s in shares)
    assert sorted(np.concatenate([m for s in shares for m in s])) == sorted(schedule[0])


@pytest.mark.parametrize(
    ("micro", "global_", "world", "message"),
    [
        (2, 6, 2, "global_batch_size (6) must be a multiple of .* = 2 × 2 = 4"),
        (1, 4, 3, "global_batch_size (4) must be a multiple of .* = 1 × 3 = 3"),
    ],
)
def test_global_batch_that_does_not_divide_is_an_error(
    micro: int, global_: int, world: int, message: str
) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_batches(micro, global_, world, n_examples=10, epochs=1)


def test_training_refuses_data_the_quality_gate_did_not_pass(tmp_path: Path) -> None:
    data = tmp_path / "train.parquet"
    data.write_bytes(b"examples v1")
    summary = tmp_path / "summary.json"

    def gate(success: bool) -> None:
        summary.write_text(json.dumps({"success": success, "dataset": dataset_fingerprint([data])}))

    gate(False)
    with pytest.raises(InputError, match="data quality gate did not pass"):
        require_passed_gate(summary, [data])
    gate(True)
    assert require_passed_gate(summary, [data]) == dataset_fingerprint([data])["md5"]
    data.write_bytes(b"examples v2")  # changed after the gate ran
    with pytest.raises(InputError, match="not the file the quality gate passed"):
        require_passed_gate(summary, [data])
    with pytest.raises(FileNotFoundError, match="dvc repro validate"):
        require_passed_gate(tmp_path / "missing.json", [data])


def test_tiny_end_to_end_run(
    tiny_model_dir: Path,
    tokenizer,
    encoder: ExampleEncoder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One example repeated: the loss must fall; the frozen layer stays as it was; outputs
    reload; an MLflow run is recorded with what computed it; the duration was announced."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    frame = pd.DataFrame(
        {
            "example_id": [f"rep{i}" for i in range(4)],
            "context_segments": [[2, 6, 0]] * 4,
            "question": ["What comes after the cue?"] * 4,
            "answer": ["exactly these five words"] * 4,
            "n_tokens": [3 * SEG_LEN] * 4,
        }
    )
    train_examples = encoder.encode_frame(frame)
    val_examples = [encoder.encode("val0", [1, 3], "Which?", "that one")]
    params = parse_params(
        {
            "model": {"source": "random_init"},
            "train": {
                "micro_batch_size": 1,
                "global_batch_size": 2,
                "learning_rate": 3e-3,
                "warmup_ratio": 0.0,
                "epochs": 3,
                "freeze_embeddings": True,
                "freeze_layers": 1,
                "max_seq_len": 512,
            },
        }
    )
    outputs = TrainOutputs(
        tmp_path / "models/in2", tmp_path / "train.json", tmp_path / "loss.csv", tmp_path / "ck"
    )
    lm = load_model(tiny_model_dir)
    embeddings = lm.get_input_embeddings().weight.detach().clone()
    before = [
        {n: p.detach().clone() for n, p in layer.named_parameters()} for layer in lm.model.layers
    ]

    inputs = TrainInputs(tiny_model_dir, encoder, train_examples, val_examples, "md5x")
    with caplog.at_level(logging.INFO, logger="in2.train.loop"):
        result = train(lm, tokenizer, inputs, params, outputs)

    assert result.plan.optimizer_steps == 6
    losses = [h.loss for h in result.history]
    assert losses[-1] < losses[0] - 0.5, losses
    assert result.val_loss is not None and np.isfinite(result.val_loss)
    assert torch.equal(lm.get_input_embeddings().weight, embeddings)  # frozen (and tied lm_head)
    lowest, top = (dict(layer.named_parameters()) for layer in lm.model.layers)
    assert all(torch.equal(p, before[0][n]) for n, p in lowest.items())  # train.freeze_layers: 1
    assert not all(torch.equal(p, before[1][n]) for n, p in top.items())
    assert re.search(
        r"[\d.]+M of [\d.]+M parameters learn \(embeddings frozen, lowest 1 decoder", caplog.text
    )
    assert "expected training time here: ~" in caplog.text

    reloaded = load_model(outputs.model_dir)
    for (name, a), b in zip(lm.state_dict().items(), reloaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    state = json.loads((outputs.model_dir / "trainer_state.json").read_text())
    assert state["batch"]["gradient_accumulation"] == 2
    assert state["optimizer_steps"] == 6 and state["dataset_md5"] == "md5x"
    metrics = json.loads(outputs.metrics.read_text())
    assert metrics["optimizer_steps"] == 6 and metrics["examples"] == 4
    compute = {
        "precision": "fp32",
        "device": "cpu",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }
    assert metrics["compute"] == compute and metrics["expected_seconds"] > 0
    assert outputs.loss_csv.read_text().splitlines()[0] == "step,loss,lr"
    assert len(outputs.loss_csv.read_text().splitlines()) == 7

    import mlflow

    runs = mlflow.search_runs(experiment_names=["in2"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["params.gradient_accumulation"] == "2"
    assert {k: run[f"params.compute.{k}"] for k in compute} == {
        k: str(v) for k, v in compute.items()
    }
    assert run["tags.dataset_md5"] == "md5x"
    assert run["metrics.val_loss"] == pytest.approx(result.val_loss)
    history = mlflow.tracking.MlflowClient().get_metric_history(run["run_id"], "loss")
    assert [m.step for m in history] == list(range(1, 7))
    (data_input,) = mlflow.get_run(run["run_id"]).inputs.dataset_inputs
    assert data_input.dataset.digest == "md5x" and data_input.dataset.name.startswith("data/in2")
    saved = sorted(p for p in outputs.model_dir.rglob("*") if p.is_file())
    assert run["tags.checkpoint_md5"] == dataset_fingerprint(saved)["md5"]
    assert run["tags.checkpoint_path"] == str(outputs.model_dir)
    assert state["mlflow_run_id"] == run["run_id"]  # a probe run of it names this run


def test_freezing_every_layer_is_an_error_naming_the_key(tiny_model_dir: Path) -> None:
    lm = load_model(tiny_model_dir)  # 2 decoder layers
    params = TrainParams(freeze_layers=2)
    with pytest.raises(InputError) as raised:
        freeze(lm, params)
    assert str(raised.value) == (
        "train.freeze_layers: 2 would freeze all 2 decoder layers of LlamaForCausalLM; "
        "set it to at most 1"
    )


def test_precision_param_maps_to_accelerate():
    from in2.train.loop import _mixed_precision

    assert _mixed_precision("fp32") == "no"
    assert _mixed_precision("bf16") == "bf16"
    assert _mixed_precision("auto") in {"no", "bf16"}


def test_length_grouping_cuts_padding_and_deals_micro_batches_in_turn() -> None:
    plan = plan_batches(2, 8, 2, n_examples=8, epochs=1)
    lengths = np.array([10, 500, 20, 480, 30, 460, 40, 440])
    step = np.arange(8)

    def padding(shares: list[list[np.ndarray]]) -> float:
        micro = [m for share in shares for m in share]
        padded = sum(len(m) * lengths[m].max() for m in micro)
        return 1 - lengths.sum() / padded

    grouped = [process_micro_batches(step, plan, r, lengths) for r in range(2)]
    plain = [process_micro_batches(step, plan, r) for r in range(2)]
    assert [m.tolist() for m in grouped[0]] == [[1, 3], [6, 4]]  # longest first, dealt in turn
    assert [m.tolist() for m in grouped[1]] == [[5, 7], [2, 0]]
    assert padding(grouped) < 0.05 < 0.4 < padding(plain)
    for shares in (grouped, plain):  # the step's examples, each once, whatever the grouping
        assert sorted(np.concatenate([m for s in shares for m in s])) == list(range(8))


def context_frame(contexts: list[list[int]], answer: str) -> pd.DataFrame:
    """IN2 examples over these segment-id contexts, all asking the same question."""
    return pd.DataFrame(
        {
            "example_id": [f"ex{i}" for i in range(len(contexts))],
            "context_segments": contexts,
            "question": ["Which words?"] * len(contexts),
            "answer": [answer] * len(contexts),
            "n_tokens": [len(c) * SEG_LEN for c in contexts],
        }
    )


def test_workers_and_grouping_do_not_change_what_is_learned(
    tiny_model_dir: Path, tokenizer, encoder: ExampleEncoder, tmp_path: Path, monkeypatch
) -> None:
    """Two DataLoader workers give the same loss curve as gathering in the main process, and
    mixed lengths show a padding fraction that length grouping lowers."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    contexts = [[2], [2, 6, 0, 1], [6], [1, 3, 5, 0]]
    examples = encoder.encode_frame(context_frame(contexts, "these words"))

    def run(workers: int, grouped: bool, out: str):
        train_params = {"micro_batch_size": 2, "global_batch_size": 4, "epochs": 2}
        train_params |= {"num_workers": workers, "group_by_length": grouped, "max_seq_len": 1024}
        params = parse_params({"model": {"source": "random_init"}, "train": train_params})
        outputs = TrainOutputs(
            tmp_path / out, tmp_path / f"{out}.json", tmp_path / f"{out}.csv", tmp_path / "ck"
        )
        lm = load_model(tiny_model_dir)
        return train(
            lm, tokenizer, TrainInputs(tiny_model_dir, encoder, examples, []), params, outputs
        )

    main, workers = run(0, True, "a"), run(2, True, "b")
    assert [h.loss for h in main.history] == pytest.approx([h.loss for h in workers.history])
    ungrouped = run(0, False, "c")
    grouped_pad = np.mean([h.padding_fraction for h in main.history])
    assert grouped_pad < np.mean([h.padding_fraction for h in ungrouped.history])
    assert all(h.tokens_per_s > 0 for h in main.history)


def test_rope_base_override_rebuilds_the_rotary_embedding(tiny_model_dir: Path) -> None:
    from in2.model import scale_rope_base

    lm = load_model(tiny_model_dir)
    base = lm.config.rope_parameters["rope_theta"]
    ids = torch.arange(40).unsqueeze(0)
    before = lm(ids).logits
    assert scale_rope_base(lm, 10.0) == pytest.approx(10 * base)
    dim = lm.model.rotary_emb.inv_freq.shape[0] * 2
    expected = 1.0 / (10 * base) ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)
    torch.testing.assert_close(lm.model.rotary_emb.inv_freq, expected)
    assert not torch.allclose(lm(ids).logits, before)  # positions are encoded differently now
    lm.config.rope_parameters = {}
    with pytest.raises(InputError, match=r"set train\.rope_theta_factor to 1\.0 for this model"):
        scale_rope_base(lm, 10.0)


class Killed(Exception):
    """Stands in for SIGKILL: raised inside the step loop, so nothing after it runs."""


def test_a_killed_run_resumes_with_the_same_loss_curve(
    tiny_model_dir: Path, tokenizer, encoder: ExampleEncoder, tmp_path: Path, monkeypatch
) -> None:
    """Killed after step 5 (last checkpoint: step 4), resumed: the same curve as one run."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    contexts = [[2], [2, 6, 0], [6, 1], [1, 3, 5], [0], [4, 2]]
    examples = encoder.encode_frame(context_frame(contexts, "these words here"))
    train_params = {"micro_batch_size": 1, "global_batch_size": 2, "epochs": 2}
    train_params |= {"checkpoint_every": 2, "learning_rate": 3e-3, "max_seq_len": 1024}
    params = parse_params({"model": {"source": "random_init"}, "train": train_params})

    def run(out: str):
        o = TrainOutputs(tmp_path / out / "m", tmp_path / out / "t.json", tmp_path / out / "l.csv")
        o = replace(o, checkpoints=tmp_path / out / "checkpoints")
        inputs = TrainInputs(tiny_model_dir, encoder, examples, [], "d")
        return train(load_model(tiny_model_dir), tokenizer, inputs, params, o)

    whole = run("whole")

    step_log = training.StepLog

    def killed_after_step_5(step: int, *args: float) -> training.StepLog:
        if step == 6:
            raise Killed
        return step_log(step, *args)

    with monkeypatch.context() as m:
        m.setattr(training, "StepLog", killed_after_step_5)
        with pytest.raises(Killed):
            run("resumed")
    (saved,) = (tmp_path / "resumed/checkpoints").iterdir()
    assert sorted(p.name for p in saved.glob("step-*")) == ["step-000002", "step-000004"]
    resumed = run("resumed")
    assert [h.step for h in resumed.history] == list(range(1, 7))
    for a, b in zip(whole.history, resumed.history, strict=True):
        assert a.loss == pytest.approx(b.loss, rel=1e-5) and a.lr == pytest.approx(b.lr)
    for (name, x), y in zip(
        load_model(tmp_path / "whole/m").state_dict().items(),
        load_model(tmp_path / "resumed/m").state_dict().values(),
        strict=True,
    ):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)


def test_a_damaged_checkpoint_is_skipped_for_the_one_before(tmp_path: Path, caplog) -> None:
    """Changed, truncated or missing files, or an unreadable manifest: the checkpoint is skipped
    with a warning naming it and the file, and the run resumes from the newest intact one."""
    from in2.lineage.fingerprint import file_md5
    from in2.train.checkpoints import MANIFEST, Checkpoints, verify

    store = Checkpoints(tmp_path)
    for step in (2, 4):
        ckpt = tmp_path / f"step-{step:06d}"
        ckpt.mkdir()
        (ckpt / "model.safetensors").write_bytes(b"weights %d" % step)
        (ckpt / MANIFEST).write_text(
            json.dumps({"model.safetensors": file_md5(ckpt / "model.safetensors")})
        )
    (tmp_path / ".step-000006.tmp").mkdir()  # a save killed half-way: never a candidate
    newest, older = tmp_path / "step-000004", tmp_path / "step-000002"
    assert store.latest() == newest
    verify(newest)

    (newest / "model.safetensors").write_bytes(b"weights")  # truncated
    with pytest.raises(InputError, match=r"model\.safetensors does not match its recorded md5"):
        verify(newest)
    with caplog.at_level(logging.WARNING, logger="in2.train.checkpoints"):
        assert store.latest() == older
    assert f"checkpoint {newest}: model.safetensors does not match its recorded md5" in caplog.text
    assert "skipped, resuming from the checkpoint before it" in caplog.text
    assert (newest / "model.safetensors").exists()  # left in place for inspection

    (older / "model.safetensors").unlink()
    with pytest.raises(InputError, match=r"model\.safetensors is missing"):
        verify(older)
    (newest / MANIFEST).write_text("{not json")
    with pytest.raises(InputError, match=r"step-000004: its manifest\.json is unreadable"):
        verify(newest)
    assert store.latest() is None  # nothing intact: the run starts over


def test_a_changed_recipe_or_data_version_gets_its_own_checkpoint_folder(tmp_path: Path) -> None:
    from in2.train.checkpoints import Checkpoints

    recipe = {"train": {"learning_rate": 1e-4, "seed": 0}, "model": {"source": "gguf"}, "data": "a"}
    same = Checkpoints.for_run(tmp_path, json.loads(json.dumps(recipe)))
    assert same == Checkpoints.for_run(tmp_path, recipe)  # a rerun finds its checkpoints
    others = [
        {**recipe, "data": "b"},  # another data version
        {**recipe, "train": {"learning_rate": 2e-4, "seed": 0}},  # another recipe
    ]
    roots = {Checkpoints.for_run(tmp_path, o).root for o in others} | {same.root}
    assert len(roots) == 3 and all(r.parent == tmp_path for r in roots)


def test_the_run_key_changes_with_code_base_model_world_size_and_precision(
    tmp_path: Path,
) -> None:
    """Each of the train stage's code, the base model, the world size and the resolved
    precision makes another run: a rerun after any of them changed starts its own folder."""
    from types import SimpleNamespace

    from in2.lineage.fingerprint import file_md5, path_md5
    from in2.train.checkpoints import PACKAGE, STAGE_SCRIPT, Checkpoints, code_md5, run_identity

    code = tmp_path / "loop.py"
    code.write_text("loss = cross_entropy\n")
    base = tmp_path / "base"
    base.mkdir()
    (base / "model.safetensors").write_bytes(b"weights v1")
    params = parse_params({"model": {"source": "random_init"}, "train": {}})
    inputs = TrainInputs(base, None, [], [], "data-md5")  # the examples are not in the key
    deps = [str(code), "data/in2", "models/base"]  # only the .py deps are hashed

    def identity(world_size: int = 1, mixed_precision: str = "no") -> dict:
        accelerator = SimpleNamespace(num_processes=world_size, mixed_precision=mixed_precision)
        return run_identity(params, inputs, deps, accelerator)

    def key(**setup) -> Path:
        return Checkpoints.for_run(tmp_path / "checkpoints", identity(**setup)).root

    first = identity()
    assert first["code_md5"] == code_md5([str(code)])
    assert first["base_model_md5"] == path_md5(base)  # as dvc.lock records the folder
    assert (first["world_size"], first["precision"]) == (1, "fp32")
    assert identity(mixed_precision="bf16")["precision"] == "bf16"
    assert key() == key()  # a rerun of the same set-up finds its checkpoints
    roots = {key(), key(world_size=2), key(mixed_precision="bf16")}
    code.write_text("loss = cross_entropy / 2\n")  # the training code changed
    roots.add(key())
    (base / "model.safetensors").write_bytes(b"weights v2")  # another base model
    roots.add(key())
    assert len(roots) == 5

    # Outside a DVC repo (no deps) the train package's own sources stand in for the code deps.
    sources = [*sorted(PACKAGE.glob("*.py")), STAGE_SCRIPT]
    assert "loop.py" in {p.name for p in sources} and STAGE_SCRIPT.is_file()
    listing = "".join(file_md5(p) for p in sorted(sources))
    assert code_md5([]) == hashlib.md5(listing.encode()).hexdigest()


def _resumable_run(tiny_model_dir: Path, tokenizer, encoder: ExampleEncoder, root: Path):
    """`run(learning_rate)`: 6 steps with a checkpoint every 2, outputs under `root`."""
    contexts = [[2], [2, 6, 0], [6, 1], [1, 3, 5], [0], [4, 2]]
    examples = encoder.encode_frame(context_frame(contexts, "these words here"))
    inputs = TrainInputs(tiny_model_dir, encoder, examples, [], "d")

    def run(learning_rate: float = 3e-3):
        train_params = {"micro_batch_size": 1, "global_batch_size": 2, "epochs": 2}
        train_params |= {"checkpoint_every": 2, "learning_rate": learning_rate}
        params = parse_params({"model": {"source": "random_init"}, "train": train_params})
        outputs = TrainOutputs(root / "m", root / "t.json", root / "l.csv", root / "checkpoints")
        return train(load_model(tiny_model_dir), tokenizer, inputs, params, outputs)

    return run


def test_a_finished_run_is_trained_again_not_resumed(
    tiny_model_dir: Path, tokenizer, encoder: ExampleEncoder, tmp_path: Path, monkeypatch, caplog
) -> None:
    """A rerun of a finished run (`dvc repro -f train`: same run key, its last checkpoint is the
    last step) does not resume it, which would train no step and publish the old weights: it
    trains from step 0 and says why; its checkpoints replace the finished run's, so a rerun
    killed mid-way resumes from its own checkpoint."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = _resumable_run(tiny_model_dir, tokenizer, encoder, tmp_path)
    whole = run()
    (folder,) = (tmp_path / "checkpoints").iterdir()
    assert sorted(p.name for p in folder.glob("step-*")) == ["step-000004", "step-000006"]

    step_log = training.StepLog

    def killed_after_step_3(step: int, *args: float) -> training.StepLog:
        if step == 4:
            raise Killed
        return step_log(step, *args)

    with monkeypatch.context() as m, caplog.at_level(logging.INFO, logger="in2.train.loop"):
        m.setattr(training, "StepLog", killed_after_step_3)
        with pytest.raises(Killed):
            run()
    finished = folder / "step-000006"
    message = f"checkpoint {finished} is of a finished run (step 6 of 6): training from scratch"
    assert message in caplog.text
    assert "resuming from" not in caplog.text
    # The new run's step-2 checkpoint replaced the finished run's (steps 4 and 6).
    assert sorted(p.name for p in folder.glob("step-*")) == ["step-000002"]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="in2.train.loop"):
        resumed = run()
    assert f"resuming from {folder / 'step-000002'} (step 2 of 6)" in caplog.text
    assert [h.step for h in resumed.history] == list(range(1, 7))
    for a, b in zip(whole.history, resumed.history, strict=True):
        assert a.loss == pytest.approx(b.loss, rel=1e-5) and a.lr == pytest.approx(b.lr)


def test_checkpoints_of_other_runs_are_not_used_and_the_log_says_why(
    tiny_model_dir: Path, tokenizer, encoder: ExampleEncoder, tmp_path: Path, monkeypatch, caplog
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = _resumable_run(tiny_model_dir, tokenizer, encoder, tmp_path)
    run()
    with caplog.at_level(logging.INFO, logger="in2.train.loop"):
        changed = run(learning_rate=1e-3)  # another recipe: another run key
    assert [h.step for h in changed.history] == list(range(1, 7))
    assert "resuming from" not in caplog.text
    assert (
        "2 checkpoint(s) of 1 other run(s) (different code, data, params, base model, world "
        "size or precision) were not used"
    ) in caplog.text
    assert len(list((tmp_path / "checkpoints").iterdir())) == 2
