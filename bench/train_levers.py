"""What each way of doing less arithmetic buys per training step of SmolLM2-135M, side by side.

    python bench/train_levers.py [--tokens 768] [--repeats 3] [--precision fp32|bf16]
                                 [--variants full,freeze20,lora,...]

A step is what the train stage does per example: forward + backward of `AnswerOnlyLoss` on one
example of `--tokens` tokens (the last 32 labelled) and an AdamW update of what learns. Variants:
  - full: every decoder layer learns (the token embeddings stay frozen, as by default);
  - freezeK: the lowest K of the 30 layers are frozen by `in2.train.trainable.freeze`, the train
    stage's own code (`train.freeze_layers: K`): the backward pass stops at layer K;
  - lora: LoRA adapters (peft, r = 16, alpha = 32) on every linear layer of the decoder, the
    base weights frozen: their weight gradients are skipped, their input gradients are not;
  - loraK: LoRA on the layers above K only, the lowest K frozen;
  - cache: every layer learns, but the prompt (context and question) is computed without
    gradients as a key/value cache and only the answer positions backpropagate
    (`train.backprop_prompt: false`).
Arithmetic per token in forward-pass units F (a matmul's backward is two of its size): full 3F,
freezeK F + 2F(30 − K)/30, lora ~2F, loraK F + F(30 − K)/30, cache ~F over the prompt and 3F
over the answer.

Each measurement runs in a fresh process (load, one untimed 128-token step, one timed step); the
variants alternate (A B C, C B A, ...), `--repeats` of each, so that none gets the quieter moments
of a shared machine. The table gives the median step time, tokens/s and the ratio to `full`
measured in the same run. It also prints torch's CPU capability, the thread count and a 2048²
fp32 matmul rate, so figures from different machines can be scaled to each other. Run it natively
and under the AVX2 emulation (docs/benchmarks.md has both):
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python bench/train_levers.py --precision fp32
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

BASE_DIR = Path("models/base")
ANSWER_TOKENS = 32
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def matmul_gflops() -> float:
    """fp32 2048 × 2048 matmul rate on this process's threads (median of 5)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    times = []
    for _ in range(5):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * 2048**3 / statistics.median(times) / 1e9


def build(variant: str):
    """The model of `variant`, its loss module and its optimizer; and what learns."""
    from in2.model import load_model
    from in2.params import TrainParams
    from in2.train.loop import AnswerOnlyLoss
    from in2.train.trainable import decoder_layers, freeze

    lm = load_model(BASE_DIR)
    lm.train()
    kind = variant.rstrip("0123456789")
    frozen = int(variant[len(kind) :] or 0)
    described = freeze(lm, TrainParams(freeze_layers=frozen))
    if kind == "lora":
        from peft import LoraConfig, get_peft_model

        layers = range(frozen, len(decoder_layers(lm)))
        config = LoraConfig(
            r=16, lora_alpha=32, target_modules=LORA_TARGETS, layers_to_transform=list(layers)
        )
        get_peft_model(lm, config)  # injects the adapters into `lm` in place
        n = sum(p.numel() for p in lm.parameters() if p.requires_grad)
        described = (
            f"LoRA r=16 on layers {frozen}..{len(layers) + frozen - 1}: {n / 1e6:.1f}M learn"
        )
    elif kind not in ("full", "freeze", "cache"):
        raise SystemExit(f"unknown variant {variant!r}: full, freezeK, lora, loraK or cache")
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-4)
    if kind == "cache":
        described += f"; the prompt without gradients, the last {ANSWER_TOKENS} tokens with"
    return AnswerOnlyLoss(lm, backprop_prompt=kind != "cache"), optimizer, described


def measure(args: argparse.Namespace) -> dict:
    """Child process: one warm-up step and one timed step of one variant."""
    torch.manual_seed(0)
    loss_fn, optimizer, described = build(args.variant)
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16" else nullcontext()
    )

    def step(n: int) -> float:
        ids = torch.randint(0, 49_152, (1, n))
        labels = torch.full_like(ids, -100)
        labels[0, -ANSWER_TOKENS:] = ids[0, -ANSWER_TOKENS:]
        started = time.perf_counter()
        with autocast:
            loss = loss_fn(ids, torch.ones_like(ids), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    step(128)
    return {"variant": args.variant, "seconds": step(args.tokens), "learns": described}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--variants", default="full,freeze10,freeze20,lora,lora20,cache")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args)))
        return
    variants = args.variants.split(",")
    print(
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} "
        f"threads, fp32 matmul {matmul_gflops():.0f} GFLOP/s; {args.tokens} tokens, "
        f"{args.precision}, {args.repeats} repeats"
    )
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for repeat in range(args.repeats):
        for variant in variants if repeat % 2 == 0 else variants[::-1]:
            child = [sys.executable, __file__, "--variant", variant, "--tokens", str(args.tokens)]
            child += ["--precision", args.precision]
            out = subprocess.run(child, capture_output=True, text=True, check=True).stdout
            runs[variant].append(json.loads(out.strip().splitlines()[-1]))
    base = statistics.median(r["seconds"] for r in runs[variants[0]])
    print("| variant | what learns | s/step (median) | tokens/s | × " + variants[0] + " |")
    print("| --- | --- | --- | --- | --- |")
    for variant, measured in runs.items():
        seconds = statistics.median(r["seconds"] for r in measured)
        print(
            f"| {variant} | {measured[0]['learns']} | {seconds:.2f} | "
            f"{args.tokens / seconds:.0f} | {base / seconds:.2f} |"
        )


if __name__ == "__main__":
    main()
