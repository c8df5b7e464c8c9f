"""The probe stage's decode on the default probe sets: the shared part's attention and the batch.

    python bench/probe_decode.py [--task document] [--repeats 3]
                                 [--variants explicit/16,fused/16,fused/32]

SmolLM2-135M-Instruct (`models/base/`), fp32, the task's real probe sets (`data/probes/`, all
four contexts and their queries), decoded as the probe stage does (`in2.probing.local.run_task`,
the task's answer budget). A variant is `ATTENTION/BATCH`:
  - ATTENTION `explicit`: the shared prefix's attention written out (scores, max, exp, sum: the
    [rows × question tokens × heads] × context-token score matrix goes through memory ~6 times),
    as the runner did before; `fused`: torch's CPU flash-attention kernel, which also returns the
    log-sum-exp the merge with the per-row tail needs (`in2.probing.local.attend_with_lse`);
  - BATCH: `probe.batch_size`, queries decoded together on one prefilled context (a context
    holds 24–33 queries: 16 cuts it in two batches, 32 takes it whole).
Variants alternate (A B C, C B A, ...) `--repeats` times in one process; the table gives the
median wall time of the task, queries/s, the ratio to the first variant and how many answers
differ from the first variant's (greedy decoding; the two attention forms round differently in
the last bits, which can flip a near-tie).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

PROBES = Path("data/probes")
BASE_DIR = Path("models/base")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="document")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default="explicit/16,fused/16,fused/32")
    args = parser.parse_args()

    from in2.model import load_model, load_tokenizer
    from in2.params import ProbeParams
    from in2.probing import local
    from in2.probing.build import read_probes
    from in2.probing.metrics import Bins
    from in2.probing.tasks import answer_budget
    from in2.prompting import PromptEncoder

    model, tokenizer = load_model(BASE_DIR), load_tokenizer(BASE_DIR)
    model.eval()
    encoder = PromptEncoder.create(tokenizer, "chat")
    contexts, queries = read_probes(PROBES, args.task)
    budget = answer_budget(ProbeParams(), args.task)
    attention = {"fused": local.attend_with_lse, "explicit": local.explicit_attention_with_lse}
    print(
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} "
        f"threads; {args.task}: {len(contexts)} contexts, {len(queries)} queries, "
        f"max_new_tokens {budget}"
    )
    variants = args.variants.split(",")
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    answers: dict[str, list[str]] = {}
    for repeat in range(args.repeats):
        for variant in variants if repeat % 2 == 0 else variants[::-1]:
            kind, batch = variant.split("/")
            local.attend_with_lse = attention[kind]  # what shared_prefix_attention calls
            decoding = local.Decoding.of(encoder, budget, int(batch))
            started = time.perf_counter()
            run = local.run_task(model, encoder, args.task, contexts, queries, decoding, Bins(5))
            seconds[variant].append(time.perf_counter() - started)
            answers[variant] = [p["prediction"] for p in run.predictions]
    first = statistics.median(seconds[variants[0]])
    print(
        f"| variant | s (median of {args.repeats}) | queries/s | × {variants[0]} "
        "| answers differing |"
    )
    print("| --- | --- | --- | --- | --- |")
    for variant, measured in seconds.items():
        median = statistics.median(measured)
        differ = sum(a != b for a, b in zip(answers[variant], answers[variants[0]], strict=True))
        print(
            f"| {variant} | {median:.1f} | {len(queries) / median:.2f} | {first / median:.2f} | "
            f"{differ} of {len(queries)} |"
        )


if __name__ == "__main__":
    main()
