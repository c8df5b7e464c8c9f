"""VaL probing on a CPU: the prefix-shared runner against per-query `generate`, same predictions.

    python bench/probe_runner.py [--lengths 2048 4096] [--queries 8] [--repeats 3]
                                 [--task document] [--growth 1 4 16 64]

SmolLM2-135M-Instruct from `models/base/` (run `dvc repro base_model corpus` first), fp32, the
probe task's real data: one context of each length built by
`in2.probing.tasks.build_probes` from the held-out documents, its first `--queries` queries
(positions spread over the context).
  - shared: `in2.probing.local.generate_shared`, what the probe stage runs: the context is
    prefilled once and its key/value states serve every query (suffixes batched,
    `probe.batch_size` per batch);
  - naive: `model.generate` on `prefix + context + suffix` for each query separately (greedy).
Both decode greedily up to the task's `probe.max_new_tokens` and must give identical token ids
(the run stops otherwise). The two variants alternate `--repeats` times; wall times are medians.

Then the cost of one more query: the shared runner on the 4K context with 1, 4, 16 and 64
queries (`--growth`; queries are reused cyclically once the context's run out), once each: the
prefill is paid once, each added query costs only its suffix and answer tokens.
Target (issue 6, point 6): shared >= 5x faster than naive at 4K.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HELDOUT = Path("data/corpus/heldout.parquet")


def naive(model, prompts: list[list[int]], max_new: int, stop_ids: set[int], pad_id: int):
    """Greedy `generate` per query on the whole prompt; answer ids without the stop token."""
    answers = []
    for ids in prompts:
        prompt = torch.tensor([ids])
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=sorted(stop_ids),
            pad_token_id=pad_id,
        )[0, prompt.shape[1] :].tolist()
        answers.append([t for t in out if t not in stop_ids])
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--queries", type=int, default=8, help="queries per context timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--task", default="document")
    parser.add_argument("--growth", type=int, nargs="+", default=[1, 4, 16, 64])
    args = parser.parse_args()

    from transformers.utils import logging as hf_logging

    from in2 import layout
    from in2.model import load_model, load_tokenizer
    from in2.params import ProbeParams
    from in2.probing.build import build_probes
    from in2.probing.local import Decoding, generate_shared
    from in2.probing.tasks import ProbeSources, answer_budget
    from in2.prompting import PromptEncoder

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    model = load_model(layout.BASE_MODEL).eval()
    tokenizer = load_tokenizer(layout.BASE_MODEL)
    params = ProbeParams()
    encoder = PromptEncoder.create(tokenizer, params.prompt_format)
    max_new = answer_budget(params, args.task)
    stop_ids, pad_id = encoder.stop_ids(), tokenizer.pad_token_id
    decoding = Decoding(max_new, frozenset(stop_ids), pad_id, batch_size=16)
    sources = ProbeSources(pd.read_parquet(HELDOUT, columns=["title", "text", "description"]))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.1f}; task {args.task}, max_new_tokens {max_new}"
    )

    contexts = {}
    print("\n| tokens | queries | shared s (median) | naive s (median) | speed-up | same ids |")
    print("| --- | --- | --- | --- | --- | --- |")
    for length in args.lengths:
        (probe_set,) = build_probes(sources, encoder, [args.task], [length], 1, 0)[args.task]
        shared = encoder.prefix() + encoder.context(probe_set.context["text"])
        queries = probe_set.queries
        picked = [queries[round(i)] for i in np.linspace(0, len(queries) - 1, args.queries)]
        suffixes = [encoder.suffix(q["question"]) for q in picked]
        contexts[length] = (shared, [encoder.suffix(q["question"]) for q in queries])
        times: dict[str, list[float]] = {"shared": [], "naive": []}
        outputs = {}
        for _ in range(args.repeats):
            for variant in ("shared", "naive"):
                start = time.perf_counter()
                if variant == "shared":
                    got = generate_shared(model, shared, suffixes, decoding)
                else:
                    got = naive(model, [shared + s for s in suffixes], max_new, stop_ids, pad_id)
                times[variant].append(time.perf_counter() - start)
                outputs[variant] = got
        same = outputs["shared"] == outputs["naive"]
        if not same:
            raise SystemExit(f"{length} tokens: the runners' predictions differ")
        t_shared, t_naive = (statistics.median(times[v]) for v in ("shared", "naive"))
        print(
            f"| {len(shared):,} | {len(picked)} | {t_shared:.1f} | {t_naive:.1f} | "
            f"{t_naive / t_shared:.1f}x | {same} |"
        )

    length = max(args.lengths)
    shared, all_suffixes = contexts[length]
    print(f"\nShared runner, {len(shared):,}-token context, more queries per context:\n")
    print("| queries | seconds | seconds per query | added cost per query since previous row |")
    print("| --- | --- | --- | --- |")
    previous = None
    for n in args.growth:
        suffixes = [all_suffixes[i % len(all_suffixes)] for i in range(n)]
        start = time.perf_counter()
        generate_shared(model, shared, suffixes, decoding)
        seconds = time.perf_counter() - start
        added = "" if previous is None else f"{(seconds - previous[1]) / (n - previous[0]):.2f}"
        print(f"| {n} | {seconds:.1f} | {seconds / n:.2f} | {added} |")
        previous = (n, seconds)


if __name__ == "__main__":
    main()
