"""IN2 training: an accelerate loop with the loss on the answer tokens only.

The long context and the question are the instruction; only the answer is learned. The output
layer therefore runs only on the positions that predict answer tokens (`AnswerOnlyLoss`): the
fp32 [T, vocab] logits of a 32K-token context are ~4 GB for Mistral's 32K vocabulary (more with
their gradient), and all but a few dozen rows of them would be thrown away.

The same loop runs under plain `python` on one CPU and under `accelerate launch` / `torchrun`
on many processes (see in2.train.batching for the global batch arithmetic).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_cosine_schedule_with_warmup

from in2.layout import CHECKPOINTS, IN2_DATA, IN2_TRAIN, TRAIN_LOSS, TRAIN_METRICS, TRAINED_MODEL
from in2.lineage.fingerprint import file_md5, path_md5
from in2.lineage.tracking import mlflow_run
from in2.model import save_model, scale_rope_base
from in2.outputs import atomic_dir, atomic_file, write_json
from in2.params import InputError, Params
from in2.train.batching import (
    IGNORE_INDEX,
    Batch,
    BatchPlan,
    EncodedExample,
    ExampleEncoder,
    MicroBatches,
    collate,
    plan_batches,
    process_micro_batches,
    step_schedule,
)
from in2.train.checkpoints import Checkpoints, run_identity
from in2.train.inputs import TrainInputs
from in2.train.trainable import freeze

log = logging.getLogger(__name__)


def require_passed_gate(summary_path: str | Path, data_files: Sequence[str | Path]) -> str:
    """Refuse to train unless the quality gate passed on exactly these data files.

    Returns the dataset md5 the gate recorded (the version tag of the training data).
    """
    path = Path(summary_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run `dvc repro validate` to build it")
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err.msg}); run `dvc repro validate`") from None
    if summary.get("success") is not True:
        raise InputError(
            f"the data quality gate did not pass ({path}: success={summary.get('success')!r}); "
            "read its Data Docs under reports/data_quality/, fix the data and `dvc repro validate`"
        )
    checked = summary.get("dataset", {}).get("files", {})
    for file in data_files:
        if checked.get(str(file)) != file_md5(Path(file)):
            raise InputError(
                f"{file} is not the file the quality gate passed ({path}); "
                "run `dvc repro validate` (or `dvc repro train`, which runs it first)"
            )
    return summary["dataset"]["md5"]


class AnswerOnlyLoss(nn.Module):
    """A causal LM whose forward returns the summed cross-entropy of the answer tokens only.

    The decoder body gives hidden states; the output layer runs on the positions whose next
    token is labelled. Wrapping the model (rather than calling its body from the loop) keeps
    the forward pass going through DDP/FSDP wrappers, which must see it to sync gradients.

    With `backprop_prompt=False` the prompt (context and question, up to the position that
    predicts the first answer token) is computed without gradients, as a key/value cache, and
    only the answer positions are computed with them: a step costs ~F over the prompt and 3F
    over the answer instead of 3F over everything, and only what the answer positions compute
    learns (their queries, their MLPs); the context's keys and values stay the base model's.
    """

    def __init__(self, lm: PreTrainedModel, backprop_prompt: bool = True) -> None:
        super().__init__()
        self.lm = lm
        self.backprop_prompt = backprop_prompt

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        targets = labels[:, 1:]  # position t predicts token t + 1
        keep = targets != IGNORE_INDEX
        start = 0 if self.backprop_prompt else int(keep.int().argmax(-1).min())
        cache = None
        if start:  # the prompt as a cache of constants, then the answer positions with grad
            with torch.no_grad():
                cache = self.lm.base_model(
                    input_ids=input_ids[:, :start],
                    attention_mask=attention_mask[:, :start],
                    use_cache=True,
                ).cache
        body = self.lm.base_model(
            input_ids=input_ids[:, start:],
            attention_mask=attention_mask,
            cache=cache,
            use_cache=cache is not None,
        )
        hidden = body.last_hidden_state[:, : targets.shape[1] - start][keep[:, start:]]
        logits = self.lm.get_output_embeddings()(hidden).float()  # [answer tokens, vocab]
        return F.cross_entropy(logits, targets[:, start:][keep[:, start:]], reduction="sum")


@dataclass(frozen=True)
class StepLog:
    step: int
    loss: float
    """Mean cross-entropy over the answer tokens of the step's global batch."""
    lr: float
    """Learning rate this step was taken with."""
    grad_norm: float
    """Gradient norm before clipping."""
    tokens_per_s: float
    """Real (non-padding) tokens of the step, all processes, per second of the step."""
    padding_fraction: float
    """Share of the computed tokens that were padding."""


@dataclass(frozen=True)
class TrainOutputs:
    """Where the stage writes (DVC outs and metrics)."""

    model_dir: Path = TRAINED_MODEL
    metrics: Path = TRAIN_METRICS
    loss_csv: Path = TRAIN_LOSS
    checkpoints: Path = CHECKPOINTS
    """Resumable checkpoints (a DVC output with `persist: true`; see in2.train.checkpoints)."""


@dataclass(frozen=True)
class TrainResult:
    plan: BatchPlan
    history: list[StepLog]
    val_loss: float | None
    train_tokens: int
    wall_seconds: float
    expected_seconds: float
    """What `_expected_seconds` predicted before the first step (the wall time includes it)."""

    @property
    def final_loss(self) -> float:
        return self.history[-1].loss

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / self.wall_seconds if self.wall_seconds else 0.0


def _optimizer(lm: PreTrainedModel, params: Params) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (in2.train.trainable froze the rest); weight decay on
    matrices only (not norms/biases)."""
    trainable = [p for p in lm.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": params.train.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=params.train.learning_rate)


def _on_cpu() -> bool:
    """No accelerator: accelerate must be told (cpu=True) to run a `torchrun` CPU job on gloo."""
    return not torch.accelerator.is_available()


def init_distributed() -> PartialState:
    """Join the process group (if launched as one) before the model is loaded.

    Under FSDP with `fsdp_cpu_ram_efficient_loading`, transformers loads the real weights on
    rank 0 only, and only when the process group is already up; the other ranks build the model
    on the meta device and receive the weights when `prepare` syncs the module states. Without
    this, every rank holds a full fp32 copy of the model in host memory (~28 GB for 7B).
    """
    return PartialState(cpu=_on_cpu())


def _check_fsdp(accelerator: Accelerator) -> None:
    """The loop's FSDP assumptions, checked before anything is sharded."""
    if accelerator.distributed_type != DistributedType.FSDP:
        return
    plugin = accelerator.state.fsdp_plugin
    if plugin.fsdp_version == 1 and not plugin.use_orig_params:
        # The AdamW groups are built on the original parameters (weight decay by shape) and the
        # embeddings may be frozen next to trainable weights: both need FSDP's original params.
        raise InputError(
            "FSDP: set `fsdp_use_orig_params: true` in the accelerate config "
            "(configs/accelerate/fsdp_8gpu.yaml does); the optimizer is built on the "
            "original parameters and frozen embeddings sit beside trainable weights"
        )
    if plugin.fsdp_version != 1:
        raise InputError(
            f"FSDP version {plugin.fsdp_version} is not supported by the train stage yet; "
            "set `fsdp_version: 1` in the accelerate config (see docs/scale-out.md)"
        )


def _mixed_precision(precision: str) -> str:
    """accelerate's mixed_precision for `train.precision`.

    `auto` picks bf16 autocast where the hardware computes it natively: a GPU with bf16, or a CPU
    with AVX512-BF16/AMX (about 2x faster than fp32 there); fp32 elsewhere.
    """
    if precision != "auto":
        return "bf16" if precision == "bf16" else "no"
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no"


def compute_settings(accelerator: Accelerator) -> dict[str, str | int]:
    """What the numbers were computed with: logged to MLflow and metrics/train.json, so that two
    runs of one recipe on different machines say why their losses differ in the last digits."""
    return {
        "precision": "bf16" if accelerator.mixed_precision == "bf16" else "fp32",
        "device": str(accelerator.device),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }


@torch.no_grad()
def evaluate(
    loss_fn: nn.Module,
    encoder: ExampleEncoder,
    examples: list[EncodedExample],
    micro_batch_size: int,
    pad_id: int,
    accelerator: Accelerator,
) -> float | None:
    """Mean cross-entropy per answer token over `examples` (each process takes every n-th one).

    `loss_fn` is the prepared (wrapped) `AnswerOnlyLoss`: under FSDP only the wrapper gathers the
    sharded weights. Its forwards are collectives (FSDP all-gathers, DDP buffer broadcasts), so
    every process runs the same number of micro-batches; a process whose share has run out
    repeats the first example and counts it with weight 0.
    """
    if not examples:
        return None
    was_training = loss_fn.training
    loss_fn.eval()
    mine = examples[accelerator.process_index :: accelerator.num_processes]
    largest_share = math.ceil(len(examples) / accelerator.num_processes)
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    for i in range(0, largest_share, micro_batch_size):
        chunk = mine[i : i + micro_batch_size]
        weight = 1.0 if chunk else 0.0
        batch = collate([encoder.ids(e) for e in chunk or examples[:1]], pad_id)
        with accelerator.autocast():
            loss = loss_fn(
                batch.input_ids.to(accelerator.device),
                batch.attention_mask.to(accelerator.device),
                batch.labels.to(accelerator.device),
            )
        n_answer = (batch.labels != IGNORE_INDEX).sum()
        total += weight * torch.stack([loss.double(), n_answer.double().to(total.device)])
    loss_fn.train(was_training)
    loss_sum, n = accelerator.reduce(total, "sum").tolist()
    return loss_sum / n


@dataclass(frozen=True)
class TrainingRun:
    """A prepared run: what every named step of `train` works on."""

    accelerator: Accelerator
    lm: PreTrainedModel
    """The bare model: its config is saved with the weights and names the RoPE base."""
    tokenizer: PreTrainedTokenizerBase
    loss_fn: nn.Module
    """`AnswerOnlyLoss(lm)` as accelerate prepared it (DDP/FSDP-wrapped)."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    plan: BatchPlan
    params: Params
    inputs: TrainInputs
    tied: frozenset[str]
    """Names of the tensors that repeat another (tied weights), left out of models/in2."""

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id


def train(
    lm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    inputs: TrainInputs,
    params: Params,
    outputs: TrainOutputs = TrainOutputs(),
    deps: Sequence[str] = (),
) -> TrainResult:
    """Train `lm` in place, evaluate, record an MLflow run (tagged with the md5 of each of
    `deps`, the stage's DVC deps, whose code files are also part of the checkpoint run key)
    and write the checkpoint and metrics."""
    run = _prepare(lm, tokenizer, inputs, params)
    store, history = _resume_or_start(run, outputs.checkpoints, deps)
    main = run.accelerator.is_main_process
    run_params = {"train": params.train.model_dump(), "model": params.model.model_dump()}
    tags = {"dataset_md5": inputs.dataset_md5} if inputs.dataset_md5 else {}
    tracking = mlflow_run("train", params=run_params, tags=tags, inputs=deps)
    with tracking if main else nullcontext() as mlflow:
        if mlflow:
            _log_run_params(mlflow, run)
        start = time.perf_counter()
        history, n_tokens, expected = _run_steps(run, history, mlflow, store)
        wall = time.perf_counter() - start
        result = _validate(run, history, n_tokens, (wall, expected), mlflow)
        _publish(run, result, outputs, mlflow)
    return result


def _prepare(
    lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, inputs: TrainInputs, params: Params
) -> TrainingRun:
    """Seed, accelerator, batch plan, model settings, optimizer and schedule, then `prepare`."""
    tp = params.train
    set_seed(tp.seed)
    accelerator = Accelerator(cpu=_on_cpu(), mixed_precision=_mixed_precision(tp.precision))
    _check_fsdp(accelerator)
    compute = compute_settings(accelerator)
    log.info(
        "accelerate: %s on %s, %d process(es), %s, CPU capability %s, %d threads",
        accelerator.distributed_type.value,
        accelerator.device,
        accelerator.num_processes,
        compute["precision"],
        compute["cpu_capability"],
        compute["threads"],
    )
    if compute["precision"] == "bf16" and _on_cpu() and _mixed_precision("auto") != "bf16":
        log.warning(
            "train.precision: bf16 on a CPU without native bf16 (%s): expect it many times "
            "slower than fp32; set train.precision: fp32",
            compute["cpu_capability"],
        )
    plan = plan_batches(
        tp.micro_batch_size,
        tp.global_batch_size,
        accelerator.num_processes,
        len(inputs.train_examples),
        tp.epochs,
    )
    log.info("%s", plan.describe())
    if tp.rope_theta_factor != 1.0:
        theta = scale_rope_base(lm, tp.rope_theta_factor)
        log.info("RoPE base × %g -> %g", tp.rope_theta_factor, theta)
    if tp.gradient_checkpointing:
        lm.activation_checkpointing_enable()
    lm.train()
    log.info("%s", freeze(lm, tp))
    # Names under which a tensor appears a second time (tied weights: SmolLM2's lm_head is its
    # embedding). FSDP's gathered state dict holds them as separate copies; saving both would
    # break the tie in models/in2, so they are dropped there as save_pretrained does untouched.
    tied = frozenset({n for n, _ in lm.named_parameters(remove_duplicate=False)}) - {
        n for n, _ in lm.named_parameters()
    }
    # Built before `prepare`, on the original parameters (FSDP1 with use_orig_params keeps these
    # very tensors, as views into its shards): weight decay is grouped by their unsharded shapes.
    optimizer = _optimizer(lm, params)
    # Not passed to accelerator.prepare: an AcceleratedScheduler steps once per process per
    # optimizer step, while this schedule already counts optimizer steps of the global batch.
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, math.ceil(tp.warmup_ratio * plan.optimizer_steps), plan.optimizer_steps
    )
    loss_fn = AnswerOnlyLoss(lm, backprop_prompt=tp.backprop_prompt)
    loss_fn, optimizer = accelerator.prepare(loss_fn, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    return TrainingRun(
        accelerator, lm, tokenizer, loss_fn, optimizer, scheduler, plan, params, inputs, tied
    )


def _resume_or_start(
    run: TrainingRun, checkpoints: Path, deps: Sequence[str]
) -> tuple[Checkpoints | None, list[StepLog]]:
    """This run's checkpoint store (None without `train.checkpoint_every`) and the step log of
    the checkpoint it resumes from (empty: training starts at step 0). Every checkpoint that is
    not used is logged with the reason."""
    checkpoints.mkdir(parents=True, exist_ok=True)  # a DVC output, even when unused
    if not run.params.train.checkpoint_every:
        return None, []
    identity = run_identity(run.params, run.inputs, deps, run.accelerator)
    store = Checkpoints.for_run(checkpoints, identity)
    total = run.plan.optimizer_steps
    resume_from = store.latest()  # damaged ones are skipped there, with a warning each
    if resume_from is None:
        if others := store.others():
            log.info(
                "no checkpoint of this run in %s; %d checkpoint(s) of %d other run(s) (different "
                "code, data, params, base model, world size or precision) were not used",
                store.root,
                len(others),
                len({p.parent for p in others}),
            )
        return store, []
    if (step := store.step(resume_from)) >= total:
        # Resuming would train no step and publish the finished run's weights as this run's.
        log.warning(
            "checkpoint %s is of a finished run (step %d of %d): training from scratch",
            resume_from,
            step,
            total,
        )
        return store, []
    step, logged = store.load(run.accelerator, resume_from)
    log.info("resuming from %s (step %d of %d)", resume_from, step, total)
    return store, [StepLog(**entry) for entry in logged]


def _log_run_params(mlflow: Any, run: TrainingRun) -> None:
    """The training data and the derived batch settings (the params are logged by mlflow_run)."""
    log_training_data(mlflow, run.inputs.train_examples, run.inputs.dataset_md5)
    mlflow.log_params(
        {
            "gradient_accumulation": run.plan.gradient_accumulation,
            "world_size": run.plan.world_size,
            "rope_theta": run.lm.config.to_dict().get("rope_parameters", {}).get("rope_theta"),
        }
        | {f"compute.{k}": v for k, v in compute_settings(run.accelerator).items()}
    )


def _run_steps(
    run: TrainingRun, history: list[StepLog], mlflow: Any, store: Checkpoints | None
) -> tuple[list[StepLog], int, float]:
    """The optimizer steps after those in `history` (a resumed run has some); returns the full
    step log, the real tokens processed by this call (all processes) and the seconds they were
    expected to take (`_expected_seconds`). With a `store`
    (`train.checkpoint_every` > 0), a checkpoint is saved every that many steps and after the
    last one."""
    tp = run.params.train
    schedule = step_schedule(run.plan, tp.seed)  # [optimizer steps, global batch] example indices
    first = len(history)  # the schedule is a function of the seed: step k is the same step
    micro_batches, batches = _micro_batches(run, schedule[first:])
    answer_len = np.array([len(e.answer) for e in run.inputs.train_examples])
    history = list(history)
    tokens = torch.zeros((), dtype=torch.long, device=run.accelerator.device)
    main = run.accelerator.is_main_process
    expected = _expected_seconds(run, micro_batches)
    bar = tqdm(schedule[first:], desc="train", unit="step", disable=not main)
    for step, indices in enumerate(bar, start=first + 1):
        micro = micro_batches[step - 1 - first]
        entry, real = _optimizer_step(run, step, answer_len[indices], micro, batches)
        tokens += real
        history.append(entry)
        bar.set_postfix(loss=f"{entry.loss:.4f}", lr=f"{entry.lr:.2e}")
        if mlflow:
            mlflow.log_metrics(
                {
                    "loss": entry.loss,
                    "lr": entry.lr,
                    "grad_norm": entry.grad_norm,
                    "tokens_per_s": entry.tokens_per_s,
                    "padding_fraction": entry.padding_fraction,
                },
                step=step,
            )
        if store is not None and (step % tp.checkpoint_every == 0 or step == len(schedule)):
            store.save(run.accelerator, run.tokenizer, step, [asdict(h) for h in history])
    return history, int(run.accelerator.reduce(tokens, "sum").item()), expected


def _expected_seconds(run: TrainingRun, micro_batches: list[list[np.ndarray]]) -> float:
    """Time one forward + backward of this process's median-length micro-batch (gradients
    discarded, so training is unchanged) and log how long the run will take at that rate.

    Step time is close to linear in the computed tokens at these lengths (attention is a small
    share of the FLOPs below ~4K tokens), so the estimate is seconds per token × the padded
    tokens of every micro-batch ahead. An untimed forward pass of the same micro-batch first
    absorbs one-time set-up (oneDNN kernels for these shapes, the allocator), which would
    otherwise inflate the rate (by ~20% in bf16).
    """
    examples, encoder = run.inputs.train_examples, run.inputs.encoder
    flat = [m for step in micro_batches for m in step]
    if not flat:
        return 0.0
    n_tokens = np.array([e.n_tokens for e in examples])
    padded = np.array([len(m) * n_tokens[m].max() for m in flat])
    median = int(np.argsort(padded)[len(padded) // 2])
    batch = collate([encoder.ids(examples[i]) for i in flat[median]], run.pad_id)
    device = run.accelerator.device
    ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
    labels = batch.labels.to(device)
    with torch.no_grad(), run.accelerator.autocast():  # untimed: builds the kernels
        run.loss_fn(ids, mask, labels)
    started = time.perf_counter()
    with run.accelerator.no_sync(run.loss_fn), run.accelerator.autocast():
        run.accelerator.backward(run.loss_fn(ids, mask, labels))
    timed = time.perf_counter() - started
    run.optimizer.zero_grad(set_to_none=True)
    per_token = timed / padded[median]
    seconds = float(per_token * padded.sum())
    log.info(
        "expected training time here: ~%.1f min (%d micro-batches, %d tokens at %.0f tokens/s, "
        "from one timed micro-batch of %d tokens); the bar's ETA refines it",
        seconds / 60,
        len(flat),
        padded.sum(),
        1 / per_token,
        padded[median],
    )
    return seconds


def _micro_batches(
    run: TrainingRun, steps: np.ndarray
) -> tuple[list[list[np.ndarray]], Iterator[Batch]]:
    """This process's micro-batches of each of `steps` (example indices per step) and an
    iterator over them as padded batches, gathered ahead by `train.num_workers` workers.

    Of a step's global batch (micro_batch_size × gradient_accumulation × world_size examples)
    this process takes `gradient_accumulation` micro-batches of `micro_batch_size` examples.
    """
    tp = run.params.train
    examples = run.inputs.train_examples
    lengths = np.array([e.n_tokens for e in examples]) if tp.group_by_length else None
    rank = run.accelerator.process_index
    per_step = [process_micro_batches(s, run.plan, rank, lengths) for s in steps]
    dataset = MicroBatches(
        run.inputs.encoder, examples, [m for step in per_step for m in step], run.pad_id
    )
    return per_step, iter(DataLoader(dataset, batch_size=None, num_workers=tp.num_workers))


def _optimizer_step(
    run: TrainingRun,
    step: int,
    answer_len: np.ndarray,
    micro: list[np.ndarray],
    batches: Iterator[Batch],
) -> tuple[StepLog, torch.Tensor]:
    """One optimizer step: forward and backward of this process's `micro` batches (taken from
    `batches`), clipping, the update; returns the step's log and this process's real tokens.
    `answer_len`: the answer tokens of every example of the step's global batch."""
    accelerator, loss_fn = run.accelerator, run.loss_fn
    started = time.perf_counter()
    # Normalise by the answer tokens of the whole global batch (every rank knows them), so the
    # gradient is the per-token mean however the answers fall into micro-batches and ranks;
    # × world size because DDP averages gradients over processes.
    n_answer = float(answer_len.sum())
    scale = run.plan.world_size / n_answer
    loss_sum = torch.zeros((), device=accelerator.device)
    # real and padded tokens of this step on this process, summed over processes below
    counts = torch.zeros(2, dtype=torch.long, device=accelerator.device)
    for i in range(len(micro)):  # gradient_accumulation micro-batches on this process
        batch = next(batches)
        # Gradients are all-reduced on the last micro-batch of a step only.
        with nullcontext() if i == len(micro) - 1 else accelerator.no_sync(loss_fn):
            loss = loss_fn(
                batch.input_ids.to(accelerator.device),
                batch.attention_mask.to(accelerator.device),
                batch.labels.to(accelerator.device),
            )
            accelerator.backward(loss * scale)
        loss_sum += loss.detach()
        counts += torch.tensor([batch.n_tokens, batch.n_padded], device=counts.device)
    grad_norm = accelerator.clip_grad_norm_(loss_fn.parameters(), run.params.train.max_grad_norm)
    lr = run.scheduler.get_last_lr()[0]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    # The sum of every process's answer-token losses over the global batch's answer tokens.
    loss_mean = accelerator.reduce(loss_sum, "sum").item() / n_answer
    real, padded = accelerator.reduce(counts, "sum").tolist()
    entry = StepLog(
        step,
        loss_mean,
        float(lr),
        float(grad_norm),
        real / (time.perf_counter() - started),
        1 - real / padded,
    )
    return entry, counts[0]


def _validate(
    run: TrainingRun,
    history: list[StepLog],
    n_tokens: int,
    seconds: tuple[float, float],
    mlflow: Any,
) -> TrainResult:
    """Validation loss after the last step, the run's summary, logged and sent to MLflow."""
    val_loss = evaluate(
        run.loss_fn,
        run.inputs.encoder,
        run.inputs.val_examples,
        run.params.train.micro_batch_size,
        run.pad_id,
        run.accelerator,
    )
    result = TrainResult(run.plan, history, val_loss, n_tokens, *seconds)
    log.info(
        "trained %d steps in %.0f s (expected %.0f s; %.0f tokens/s): final loss %.4f, val loss %s",
        len(history),
        result.wall_seconds,
        result.expected_seconds,
        result.tokens_per_second,
        result.final_loss,
        "n/a" if val_loss is None else f"{val_loss:.4f}",
    )
    if mlflow:
        mlflow.log_metrics(_summary_metrics(result))
    return result


def _publish(run: TrainingRun, result: TrainResult, outputs: TrainOutputs, mlflow: Any) -> None:
    """Gather the weights, write models/in2 and the metrics (main process), tag the MLflow run
    with the checkpoint's md5."""
    # A collective under FSDP (the shards are gathered to the main process): every rank calls.
    state = run.accelerator.get_state_dict(run.loss_fn)
    if run.accelerator.is_main_process:
        weights = {
            name: tensor
            for key, tensor in state.items()
            if (name := key.removeprefix("lm.")) not in run.tied
        }
        write_outputs(run, weights, result, outputs, mlflow.active_run().info.run_id)
    run.accelerator.wait_for_everyone()
    if mlflow:
        checkpoint_md5 = path_md5(outputs.model_dir)
        mlflow.set_tags(
            {"checkpoint_path": str(outputs.model_dir), "checkpoint_md5": checkpoint_md5}
        )


def log_training_data(mlflow: Any, examples: list[EncodedExample], dataset_md5: str | None) -> None:
    """The training set as an MLflow dataset input whose digest is its DVC md5 (MLflow's own
    digest would hash a sample only): one row per example, its id and token count."""
    frame = pd.DataFrame(
        {"example_id": [e.example_id for e in examples], "n_tokens": [e.n_tokens for e in examples]}
    )
    with warnings.catch_warnings():
        # MLflow warns that a local path matches two equivalent source classes and that integer
        # columns cannot hold missing values; neither matters for a record of the input.
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(
            frame, source=str(IN2_DATA), name=str(IN2_TRAIN), digest=dataset_md5
        )
        mlflow.log_input(dataset, context="training")


def _summary_metrics(result: TrainResult) -> dict[str, float]:
    metrics = {
        "train_loss": result.final_loss,
        "tokens_per_second": result.tokens_per_second,
        "padding_fraction": float(np.mean([h.padding_fraction for h in result.history])),
        "wall_seconds": result.wall_seconds,
        "expected_seconds": result.expected_seconds,
        "global_batch_size": result.plan.global_batch_size,
        "gradient_accumulation": result.plan.gradient_accumulation,
    }
    if result.val_loss is not None:
        metrics["val_loss"] = result.val_loss
    return metrics


def trainer_state(
    result: TrainResult, params: Params, dataset_md5: str | None, mlflow_run_id: str | None
) -> dict[str, Any]:
    """What the checkpoint was trained with and how it went, and the MLflow run that made it (a
    probe run names that run: docs/lineage.md); no timings."""
    return {
        "mlflow_run_id": mlflow_run_id,
        "optimizer_steps": len(result.history),
        "examples_seen": result.plan.optimizer_steps * result.plan.global_batch_size,
        "final_train_loss": result.final_loss,
        "val_loss": result.val_loss,
        "batch": asdict(result.plan),
        "seed": params.train.seed,
        "train": params.train.model_dump(),
        "dataset_md5": dataset_md5,
        "log_history": [asdict(h) for h in result.history],
    }


def write_outputs(
    run: TrainingRun,
    weights: dict[str, torch.Tensor],
    result: TrainResult,
    outputs: TrainOutputs,
    mlflow_run_id: str | None,
) -> None:
    """Checkpoint folder (the model's config with `weights`), metrics JSON and the loss curve CSV,
    each written atomically."""
    with atomic_dir(outputs.model_dir) as out:
        save_model(run.lm, run.tokenizer, out, state_dict=weights)
        state = trainer_state(result, run.params, run.inputs.dataset_md5, mlflow_run_id)
        write_json(out / "trainer_state.json", state)
    metrics = {
        "final_train_loss": result.final_loss,
        "val_loss": result.val_loss,
        "optimizer_steps": len(result.history),
        "examples": result.plan.n_examples,
        "tokens_per_second": round(result.tokens_per_second, 1),
        "wall_seconds": round(result.wall_seconds, 1),
        "expected_seconds": round(result.expected_seconds, 1),
        "compute": compute_settings(run.accelerator),
    }
    write_json(outputs.metrics, metrics)
    with atomic_file(outputs.loss_csv) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss", "lr"])
        writer.writerows([h.step, f"{h.loss:.6f}", f"{h.lr:.6g}"] for h in result.history)
    log.info("wrote %s, %s, %s", outputs.model_dir, outputs.metrics, outputs.loss_csv)
