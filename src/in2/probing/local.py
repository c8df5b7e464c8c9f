"""Local Hugging Face runner for VaL probing: each context is computed once for all its queries.

All queries of a set share one long context, so `prompt prefix + context` is prefilled ONCE, and
its key/value states are shared by every query of the set instead of being copied to each batch
row. Only the question suffixes and the answers get a per-row cache (the "tail"). Attention over
`[shared; tail]` is computed in two parts merged by their softmax normalisers (cascade attention):
the shared part is one matmul per layer for all rows at once, so a decode step reads the long
context once, not once per row. Suffixes differ in length: they are left-padded inside the tail
(pads masked out) and every token gets an explicit position that continues right after the shared
part, exactly as if the row were one unpadded prompt. Greedy decoding therefore gives the same
tokens as per-query `model.generate` (tests/test_probe_runner.py checks it), and finished rows
leave the batch.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import (
    AttentionInterface,
    AttentionMaskInterface,
    DynamicCache,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from in2.params import ProbeParams
from in2.probing.build import read_probes
from in2.probing.metrics import Bins
from in2.probing.results import TaskRun, by_context, task_run
from in2.probing.tasks import answer_budget
from in2.prompting import PromptEncoder

log = logging.getLogger(__name__)

ATTENTION = "in2_shared_prefix"
SharedKV = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Decoding:
    """Greedy decoding settings of a task: fixed for all its contexts, passed down to each batch."""

    max_new_tokens: int
    stop_ids: frozenset[int]
    pad_id: int
    batch_size: int

    @classmethod
    def of(cls, encoder: PromptEncoder, max_new_tokens: int, batch_size: int) -> Decoding:
        """The encoder's stop tokens and its tokenizer's pad id (0 when it has none)."""
        pad_id = encoder.tokenizer.pad_token_id
        return cls(
            max_new_tokens=max_new_tokens,
            stop_ids=frozenset(encoder.stop_ids()),
            pad_id=pad_id if pad_id is not None else 0,
            batch_size=batch_size,
        )


def shared_prefix_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    shared_kv: SharedKV | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """Attention over `[shared prefix (batch 1); per-row tail]`; plain SDPA without a prefix.

    The parameters are those transformers' AttentionInterface passes (`shared_kv`: a model kwarg).
    `key`/`value` and `attention_mask` cover the tail only. Shapes: query (rows, heads, q, d),
    tail key/value (rows, kv_heads, t, d), shared key/value (1, kv_heads, p, d).
    """
    if shared_kv is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    shared_keys, shared_values = shared_kv[module.layer_idx]
    rows, heads, q_len, dim = query.shape
    kv_heads, tail = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    # Query heads k*groups .. k*groups+groups-1 read kv head k (as transformers' repeat_kv).
    grouped = query.reshape(rows, kv_heads, groups, q_len, dim)

    # Shared part: fold every row into the query axis of one attention call per kv head.
    folded = grouped.transpose(0, 1).reshape(1, kv_heads, rows * groups * q_len, dim)
    shared_out, shared_lse = attend_with_lse(folded, shared_keys, shared_values, scale)

    def unfold(t: torch.Tensor) -> torch.Tensor:  # (1, kvh, rows*g*q, x) -> (rows, kvh, g, q, x)
        return t.reshape(kv_heads, rows, groups, q_len, -1).transpose(0, 1)

    shared_out, shared_lse = unfold(shared_out.float()), unfold(shared_lse.float()[..., None])

    # Tail part: per row, masked (left pads, causal order).
    tail_scores = torch.matmul(grouped, key[:, :, None].transpose(-1, -2)).float() * scale
    if attention_mask is None:  # no padding: plain causal order at the end of the tail
        q_pos = torch.arange(tail - q_len, tail, device=query.device)
        attention_mask = torch.arange(tail, device=query.device)[None, :] <= q_pos[:, None]
    else:
        attention_mask = attention_mask[:, :, None]  # (rows, 1, 1, q, t)
    tail_scores = tail_scores.masked_fill(~attention_mask, float("-inf"))

    # One softmax over all keys: the shared part's sum of exp(s) is exp(lse), so with
    # top = max(lse, tail scores) both parts are sums of exp(s - top), and they add.
    top = torch.maximum(shared_lse, tail_scores.amax(-1, keepdim=True))  # finite: shared part
    tail_weights = torch.exp(tail_scores - top)
    shared_weight = torch.exp(shared_lse - top)
    out = (shared_out * shared_weight + torch.matmul(tail_weights, value[:, :, None].float())) / (
        shared_weight + tail_weights.sum(-1, keepdim=True)
    )
    out = out.reshape(rows, heads, q_len, dim).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


def attend_with_lse(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q kᵀ · scale) v and the log-sum-exp of each query's scores (no mask).

    On CPU this is torch's fused flash-attention kernel, which returns both without writing the
    [queries × keys] score matrix: at a decode step of 30 rows against a 1K-token context the
    explicit form streamed those scores through memory for ~75 ms, next to ~125 ms in the
    model's linear layers (docs/benchmarks.md, "Probe decode"). Elsewhere, the explicit form.
    """
    if query.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, False, scale=scale
        )
    return explicit_attention_with_lse(query, key, value, scale)


def explicit_attention_with_lse(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`attend_with_lse` by its definition, the score matrix written out (any device)."""
    scores = torch.matmul(query, key.transpose(-1, -2)).float() * scale
    lse = torch.logsumexp(scores, -1)
    weights = torch.exp(scores - lse[..., None])
    return torch.matmul(weights.to(value.dtype), value), lse


AttentionInterface.register(ATTENTION, shared_prefix_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)


@contextmanager
def _shared_prefix_mode(model: PreTrainedModel) -> Iterator[None]:
    """Switch the model to the shared-prefix attention for the duration of a probe run."""
    if any(DynamicCache(config=model.config).is_sliding):  # transformers' own layer types
        raise ValueError(
            f"{type(model).__name__} uses sliding-window attention, which the shared-prefix "
            "runner does not implement"
        )
    previous = model.config._attn_implementation
    model.set_attn_implementation(ATTENTION)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def _left_padded(
    suffixes: list[list[int]], n_shared: int, pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input ids, positions and attention mask of suffixes left-padded to one width.

    Each suffix's positions continue right after the shared prefix (n_shared, n_shared + 1, ...),
    whatever its padding, so a row is computed as the unpadded prompt `shared + suffix`.
    """
    rows, width = len(suffixes), max(len(s) for s in suffixes)
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long, device=device)
    positions = torch.full((rows, width), n_shared, dtype=torch.long, device=device)
    mask = torch.zeros((rows, width), dtype=torch.long, device=device)
    for r, suffix in enumerate(suffixes):
        n = len(suffix)
        input_ids[r, width - n :] = torch.tensor(suffix, device=device)
        positions[r, width - n :] = torch.arange(n_shared, n_shared + n, device=device)
        mask[r, width - n :] = 1
    return input_ids, positions, mask


def _append_tokens(
    tokens: torch.Tensor, active: list[int], answers: list[list[int]], decoding: Decoding
) -> list[int]:
    """Append each active row's greedy token to its answer (a stop token ends it unappended);
    the batch rows that go on: not stopped and still under the token budget."""
    keep = []
    for j, r in enumerate(active):
        token = int(tokens[j])
        if token in decoding.stop_ids:
            continue
        answers[r].append(token)
        if len(answers[r]) < decoding.max_new_tokens:
            keep.append(j)
    return keep


def _decode_batch(
    model: PreTrainedModel,
    shared_kv: SharedKV,
    n_shared: int,
    suffixes: list[list[int]],
    decoding: Decoding,
) -> list[list[int]]:
    """Greedy answers of one batch of suffixes that all continue the shared prefix."""
    device = model.device
    input_ids, positions, mask = _left_padded(suffixes, n_shared, decoding.pad_id, device)
    next_pos = torch.tensor([n_shared + len(s) for s in suffixes], device=device)
    tail = DynamicCache()
    logits = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions,
        cache=tail,
        use_cache=True,
        logits_to_keep=1,
        shared_kv=shared_kv,
    ).logits[:, -1]

    answers: list[list[int]] = [[] for _ in suffixes]
    active = list(range(len(suffixes)))  # batch row -> suffix index
    while active:
        tokens = logits.argmax(-1)
        keep = _append_tokens(tokens, active, answers, decoding)
        if not keep:
            break
        if len(keep) < len(active):  # finished rows leave the batch and the cache
            index = torch.tensor(keep, device=device)
            tail.batch_select_indices(index)
            tokens, mask, next_pos = tokens[index], mask[index], next_pos[index]
            active = [active[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
        logits = model(
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=next_pos[:, None],
            cache=tail,
            use_cache=True,
            shared_kv=shared_kv,
        ).logits[:, -1]
        next_pos = next_pos + 1
    return answers


def _balanced(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, end) of ceil(n / batch_size) batches whose sizes differ by at most one."""
    n_batches = -(-n // batch_size)
    bounds = [round(i * n / n_batches) for i in range(n_batches + 1)]
    return list(itertools.pairwise(bounds))


@torch.inference_mode()
def generate_shared(
    model: PreTrainedModel,
    shared: list[int],
    suffixes: list[list[int]],
    decoding: Decoding,
    progress: tqdm | None = None,
) -> list[list[int]]:
    """Greedy answer ids (stop token excluded) of `shared + suffix` for every suffix.

    The shared ids, and the head all suffixes have in common (the question template's start),
    are prefilled once; the rest of the suffixes are decoded in batches of at most
    `decoding.batch_size`, balanced so that no batch is a lone straggler.
    """
    if not suffixes:
        return []
    if not shared or any(not s for s in suffixes):
        raise ValueError("the shared prefix and every suffix need at least one token")
    common = 0  # every suffix keeps at least its last token
    while common < min(map(len, suffixes)) - 1 and len({s[common] for s in suffixes}) == 1:
        common += 1
    shared = shared + suffixes[0][:common]
    suffixes = [s[common:] for s in suffixes]
    with _shared_prefix_mode(model):
        out = model(
            input_ids=torch.tensor([shared], device=model.device),
            use_cache=True,
            logits_to_keep=1,
        )
        shared_kv = [(layer.keys, layer.values) for layer in out.cache.layers]
        answers: list[list[int]] = []
        for start, end in _balanced(len(suffixes), decoding.batch_size):
            answers += _decode_batch(model, shared_kv, len(shared), suffixes[start:end], decoding)
            if progress is not None:
                progress.update(end - start)
    return answers


def run_task(
    model: PreTrainedModel,
    encoder: PromptEncoder,
    task: str,
    contexts: list[dict],
    queries: list[dict],
    decoding: Decoding,
    bins: Bins,
) -> TaskRun:
    """Answer and score every query of a task, one prefill per context."""
    started = time.perf_counter()
    tokenizer = encoder.tokenizer
    asked: list[dict] = []
    answers: list[str] = []
    with tqdm(total=len(queries), desc=f"probe {task}", unit="query") as progress:
        for context, mine in by_context(contexts, queries):
            shared = encoder.prefix() + encoder.context(context["text"])
            suffixes = [encoder.suffix(q["question"]) for q in mine]
            ids = generate_shared(model, shared, suffixes, decoding, progress)
            asked += mine
            answers += tokenizer.batch_decode(ids, skip_special_tokens=True)
    return task_run(task, asked, answers, bins, time.perf_counter() - started)


def probe_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    params: ProbeParams,
    probes_dir: str | Path,
) -> dict[str, TaskRun]:
    """Run every task of `params.tasks` on the probe data in `probes_dir`."""
    encoder = PromptEncoder.create(tokenizer, params.prompt_format)
    runs = {}
    for task in params.tasks:
        contexts, queries = read_probes(probes_dir, task)
        runs[task] = run_task(
            model,
            encoder,
            task,
            contexts,
            queries,
            Decoding.of(encoder, answer_budget(params, task), params.batch_size),
            Bins(params.bin_size, params.binning),
        )
    return runs
