"""Tokens/s of the segment stage on the offline Wikipedia corpus, against one-document encoding.

    python bench/segment_throughput.py [--repeats 3]

Each variant runs in its own process (the tokenizer's thread pool is sized at start-up), on the
same documents with the same tokenizer (SmolLM2, from the installed GGUF package):
  - `segment_documents`: batches of 512 documents, fast tokenizer on all cores;
  - the same with RAYON_NUM_THREADS=1 (one core);
  - baseline: one tokenizer call per document, then the same cut.
Prints the median tokens/s of each and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import pandas as pd

VARIANTS = {
    "segment_documents (batched, all cores)": ("batched", {}),
    "segment_documents (batched, 1 thread)": ("batched", {"RAYON_NUM_THREADS": "1"}),
    "baseline: one document per call": ("per_document", {}),
}


def measure(mode: str, repeats: int) -> list[float]:
    from transformers import AutoTokenizer

    from in2.data.corpus import build_corpus
    from in2.data.segments import cut, segment_documents
    from in2.model import gguf_path
    from in2.params import CorpusParams, ModelParams, SegmentParams

    mp = ModelParams()
    tokenizer = AutoTokenizer.from_pretrained(gguf_path(mp).parent, gguf_file=mp.gguf_file)
    docs, _, _ = build_corpus(CorpusParams(), seed=0)
    params = SegmentParams()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        if mode == "batched":
            tokens, _, _ = segment_documents(docs, tokenizer, params)
            n = len(tokens)
        else:
            n = 0
            for text in docs["text"]:
                ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"])
                n += sum(length for _, length in cut(len(ids), params))
        rates.append(n / (time.perf_counter() - t0))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mode", choices=["batched", "per_document"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:  # a child process: print the rates as JSON
        print(json.dumps(measure(args.mode, args.repeats)))
        return
    medians = {}
    for name, (mode, env) in VARIANTS.items():
        out = subprocess.run(
            [sys.executable, __file__, "--mode", mode, "--repeats", str(args.repeats)],
            env={**os.environ, "TQDM_DISABLE": "1", **env},
            capture_output=True,
            text=True,
            check=True,
        )
        medians[name] = statistics.median(json.loads(out.stdout.strip().splitlines()[-1]))
    baseline = medians["baseline: one document per call"]
    table = pd.DataFrame(
        {
            "tokens/s (median)": [f"{v / 1e3:,.0f}K" for v in medians.values()],
            "vs baseline": [f"{v / baseline:.2f}x" for v in medians.values()],
        },
        index=list(medians),
    )
    print(f"cores: {os.cpu_count()}, repeats: {args.repeats}")
    print(table.to_markdown())


if __name__ == "__main__":
    main()
