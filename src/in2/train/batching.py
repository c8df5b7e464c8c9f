"""From IN2 examples to training batches: token ids, answer-only labels and the global batch plan.

An example's context is a list of segment ids; its token ids are gathered from the memory-mapped
segment array when its batch is built, never decoded and re-tokenized. Only the short pieces
(template, question, answer) are tokenized, once, up front: that gives every example's exact
length, so an over-long example fails before training starts instead of being truncated.

The global batch arithmetic lives here too (`plan_batches`): every process derives the same plan
and the same step schedule from the seed, so no sampler state has to be shared between ranks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from in2.data.segments import SegmentStore
from in2.params import InputError
from in2.prompting import PromptEncoder

IGNORE_INDEX = -100
"""Label of a position without loss (PyTorch cross-entropy's default `ignore_index`)."""


@dataclass(frozen=True)
class EncodedExample:
    """One example as ids; the context stays as segment ids until its batch is built."""

    example_id: str
    context_segments: np.ndarray
    """Segment ids in context order; empty for a no-context (general instruction) example."""
    prompt_tail: tuple[int, ...]
    """Ids after the context: `suffix(question)`, or `no_context(question)` without a context."""
    answer: tuple[int, ...]
    """Target ids (answer + end-of-turn marker): the only positions with a loss."""
    n_tokens: int
    """Prompt + answer ids, exactly as they will be fed to the model."""


class ExampleEncoder:
    """Encodes rows of `data/in2/*.parquet` for one tokenizer, prompt format and length limit."""

    def __init__(self, prompts: PromptEncoder, segments: SegmentStore, max_seq_len: int) -> None:
        self.prompts = prompts
        self.segments = segments
        self.max_seq_len = max_seq_len
        self.prefix = np.asarray(prompts.prefix(), dtype=np.int64)

    def encode(
        self,
        example_id: str,
        context_segments: Sequence[int],
        question: str,
        answer: str,
        n_context: int | None = None,
    ) -> EncodedExample:
        """Tokenize the short pieces and check the length; `n_context` cross-checks the data."""
        segs = np.asarray(context_segments, dtype=np.int64)
        n_segments = len(self.segments.lengths)
        if len(segs) and (segs.min() < 0 or segs.max() >= n_segments):
            raise InputError(
                f"example {example_id}: segment id out of range 0..{n_segments - 1}; "
                "data/in2 and data/segments are out of sync: run `dvc repro synthesize`"
            )
        context = int(self.segments.lengths[segs].sum()) if len(segs) else 0
        if n_context is not None and n_context != context:
            raise InputError(
                f"example {example_id}: n_tokens is {n_context} but its segments hold {context} "
                "tokens; data/in2 and data/segments are out of sync: run `dvc repro synthesize`"
            )
        if len(segs):
            head, tail = len(self.prefix), self.prompts.suffix(question)
        else:
            head, tail = 0, self.prompts.no_context(question)
        target = self.prompts.answer(answer)
        total = head + context + len(tail) + len(target)
        if total > self.max_seq_len:
            raise InputError(
                f"example {example_id}: {total} tokens (prefix {head} + context {context} + "
                f"question {len(tail)} + answer {len(target)}) > train.max_seq_len "
                f"({self.max_seq_len}); examples are never truncated: raise train.max_seq_len "
                "or lower synthesize.context_tokens.max"
            )
        return EncodedExample(example_id, segs, tuple(tail), tuple(target), total)

    def encode_frame(self, frame: pd.DataFrame) -> list[EncodedExample]:
        """Encode every row of an IN2 examples table, in row order."""
        return [
            self.encode(r.example_id, r.context_segments, r.question, r.answer, int(r.n_tokens))
            for r in frame.itertuples(index=False)
        ]

    def ids(self, example: EncodedExample) -> tuple[np.ndarray, np.ndarray]:
        """Input ids and labels: the labels are the answer ids and IGNORE_INDEX everywhere else."""
        if len(example.context_segments):
            context = self.segments.context_ids(example.context_segments.tolist())
            prompt = np.concatenate([self.prefix, context.astype(np.int64), example.prompt_tail])
        else:
            prompt = np.asarray(example.prompt_tail, dtype=np.int64)
        answer = np.asarray(example.answer, dtype=np.int64)
        labels = np.concatenate([np.full(len(prompt), IGNORE_INDEX, dtype=np.int64), answer])
        return np.concatenate([prompt, answer]), labels


@dataclass(frozen=True)
class Batch:
    """Right-padded micro-batch; padding has attention 0 and no loss."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @property
    def n_tokens(self) -> int:
        """Real (non-padding) tokens, for throughput."""
        return int(self.attention_mask.sum())

    @property
    def n_padded(self) -> int:
        """Tokens the model computes, padding included."""
        return self.attention_mask.numel()


def collate(rows: Sequence[tuple[np.ndarray, np.ndarray]], pad_id: int) -> Batch:
    """Stack (input ids, labels) pairs into one right-padded batch."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.from_numpy(ids)
        labels[i, : len(lab)] = torch.from_numpy(lab)
        mask[i, : len(ids)] = 1
    return Batch(input_ids, mask, labels)


@dataclass(frozen=True)
class BatchPlan:
    """global_batch_size = micro_batch_size × gradient_accumulation × world_size."""

    micro_batch_size: int
    gradient_accumulation: int
    world_size: int
    global_batch_size: int
    n_examples: int
    epochs: int
    optimizer_steps: int
    """ceil(n_examples × epochs / global_batch_size)."""
    repeated_examples: int
    """Examples repeated from the start of the order to fill the last step to a full batch."""

    def describe(self) -> str:
        return (
            f"global batch {self.global_batch_size} = micro batch {self.micro_batch_size} × "
            f"gradient accumulation {self.gradient_accumulation} × world size {self.world_size}; "
            f"{self.n_examples} examples × {self.epochs} epoch(s) -> {self.optimizer_steps} "
            f"optimizer steps ({self.repeated_examples} examples repeated to fill the last step)"
        )


def plan_batches(
    micro_batch_size: int, global_batch_size: int, world_size: int, n_examples: int, epochs: int
) -> BatchPlan:
    """Derive gradient accumulation and the number of optimizer steps; errors say what to change.

    The last step is never smaller than the others: it is filled with the first examples of the
    order (as torch's DistributedSampler does), so every process runs the same number of
    micro-batches and every step averages over a full global batch.
    """
    per_pass = micro_batch_size * world_size
    if global_batch_size % per_pass:
        raise InputError(
            f"train.global_batch_size ({global_batch_size}) must be a multiple of "
            f"train.micro_batch_size × world size = {micro_batch_size} × {world_size} = {per_pass}"
        )
    if n_examples <= 0:
        raise InputError("no training examples; run `dvc repro synthesize`")
    seen = n_examples * epochs
    steps = math.ceil(seen / global_batch_size)
    return BatchPlan(
        micro_batch_size=micro_batch_size,
        gradient_accumulation=global_batch_size // per_pass,
        world_size=world_size,
        global_batch_size=global_batch_size,
        n_examples=n_examples,
        epochs=epochs,
        optimizer_steps=steps,
        repeated_examples=steps * global_batch_size - seen,
    )


def step_schedule(plan: BatchPlan, seed: int) -> np.ndarray:
    """Example indices of every optimizer step, shape [steps, global batch]: a fresh seeded
    permutation per epoch, padded at the end with the first indices of the order."""
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(plan.n_examples) for _ in range(plan.epochs)])
    order = np.concatenate([order, order[: plan.repeated_examples]])
    return order.reshape(plan.optimizer_steps, plan.global_batch_size)


def process_micro_batches(
    step: np.ndarray, plan: BatchPlan, rank: int, lengths: np.ndarray | None = None
) -> list[np.ndarray]:
    """This process's share of one step, cut into micro-batches.

    The step's examples are cut into micro-batches dealt to the processes in turn. With
    `lengths` (tokens per example) they are sorted by length first, longest first: a micro-batch
    then holds examples of similar length (little padding) and every process a similar load.
    """
    order = step if lengths is None else step[np.argsort(-lengths[step], kind="stable")]
    size = plan.micro_batch_size
    chunks = [order[i : i + size] for i in range(0, plan.global_batch_size, size)]
    return chunks[rank :: plan.world_size]


class MicroBatches(torch.utils.data.Dataset):
    """The micro-batches of one process, in order, as padded `Batch`es (for a DataLoader, so
    workers gather token ids from the memory map ahead of the model)."""

    def __init__(
        self,
        encoder: ExampleEncoder,
        examples: Sequence[EncodedExample],
        micro_batches: Sequence[np.ndarray],
        pad_id: int,
    ) -> None:
        self.encoder, self.examples = encoder, examples
        self.micro_batches, self.pad_id = micro_batches, pad_id

    def __len__(self) -> int:
        return len(self.micro_batches)

    def __getitem__(self, i: int) -> Batch:
        rows = [self.encoder.ids(self.examples[j]) for j in self.micro_batches[i]]
        return collate(rows, self.pad_id)
