"""The data gate at a fraction of paper scale: time, peak RSS, and its ratio to the synthesis it
checks, so the growth with the data can be read off two or more fractions.

    python bench/gate_scale.py [--fraction 0.004] [--probes data/probes]

The inputs are bench/synthesis_scale.py's: a segment index of `fraction` x 10M segments (token
ids of real text: `--tokens`, the default corpus's segments, repeated from random offsets, so
the share of non-ASCII text is Wikipedia's), its QA pairs (LLM-like: no cues) and
`in2.synth.build.synthesize` with `fraction` x 1.75M examples of 4K-32K tokens. The gate is the
real `in2.gate.runner.validate_dataset` with every input (segment text chunk-decoded, leakage
against the probe contexts of `--probes`, Data Docs off), timed after the synthesis in the same
process. One segment gets a probe sentence planted, and the run asserts the gate fails exactly
`leakage.probe_ngrams`, so a fast gate is also a working one.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from synthesis_scale import SEG_LEN, synthetic_corpus, synthetic_qa, write_tokens

from in2.data.leakage import read_probe_texts
from in2.data.segment_text import SegmentTexts
from in2.data.segments import TOKENS_FILE, SegmentStore
from in2.gate.inputs import GateInputs
from in2.gate.runner import validate_dataset
from in2.model import load_tokenizer
from in2.params import Params
from in2.synth.build import synthesize


class PlantedText(SegmentTexts):
    """Segment text with a probe sentence appended to one segment: the leak to be found."""

    def __init__(self, store, tokenizer, seg_id: int, sentence: str) -> None:
        super().__init__(store, tokenizer)
        self.seg_id, self.sentence = seg_id, sentence

    def chunks(self, seg_ids, size=32_768):
        import pyarrow as pa

        for ids, texts in super().chunks(seg_ids, size):
            if self.seg_id in ids:
                values = texts.to_pylist()
                at = int(np.flatnonzero(ids == self.seg_id)[0])
                values[at] += " " + self.sentence
                texts = pa.array(values, type=pa.string())
            yield ids, texts


def real_text_tokens(path: Path, source: np.ndarray, rng: np.random.Generator) -> None:
    """Overwrite the token array with runs of real text's ids, each from a random offset."""
    tokens = np.load(path, mmap_mode="r+")
    run = 1 << 16
    for start in range(0, len(tokens), run):
        n = min(run, len(tokens) - start)
        at = int(rng.integers(0, len(source) - n))
        tokens[start : start + n] = source[at : at + n]
    tokens.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fraction", type=float, default=0.004)
    parser.add_argument("--probes", type=Path, default=Path("data/probes"))
    parser.add_argument("--tokenizer", type=Path, default=Path("models/base"))
    parser.add_argument("--tokens", type=Path, default=Path("data/segments/tokens.npy"))
    args = parser.parse_args()

    examples, n_segments = int(1_750_000 * args.fraction), int(10_000_000 * args.fraction)
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["synthesize"].update(
        n_train=examples,
        n_val=max(16, int(2_000 * args.fraction)),
        mix={"fine_grained": 0.63, "integration": 0.17, "short": 0.09, "general": 0.11},
        context_tokens={"min": 4096, "max": 32768, "bins": 28},
    )
    params = Params.model_validate(raw)
    rng = np.random.default_rng(0)
    index = synthetic_corpus(n_segments, rng)
    want = {k: int(v * examples / 0.8) for k, v in params.synthesize.mix.items() if k != "short"}
    want["fine_grained"] += int(0.09 * examples / 0.8)  # short examples are cut from these
    qa = synthetic_qa(index, want, rng)
    t0 = time.perf_counter()
    train, val, _ = synthesize(qa, index, params.synthesize, SEG_LEN, seed=0)
    synthesis_s = time.perf_counter() - t0

    tokenizer = load_tokenizer(args.tokenizer)
    work = Path(tempfile.mkdtemp(prefix="in2-gate-bench-"))
    write_tokens(work, index, len(tokenizer), rng)
    real_text_tokens(work / TOKENS_FILE, np.load(args.tokens, mmap_mode="r"), rng)
    probes = read_probe_texts(args.probes)
    planted = int(train["context_segments"][0].values[0].as_py())
    texts = PlantedText(SegmentStore.open(work), tokenizer, planted, probes[0][:400])
    pairs = qa[qa["kind"] != "general"].assign(generator="openai", prompt_hash="")
    inputs = GateInputs(
        train=train.to_pandas(),
        val=val.to_pandas(),
        segments=index,
        qa=pairs,
        segment_text=texts,
        probe_texts=probes,
    )
    t0 = time.perf_counter()
    report = validate_dataset(inputs, params, docs_dir=None)
    gate_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    failed = [r.check for r in report.failed]
    assert failed == ["leakage.probe_ngrams"], failed
    ids = len(train["context_segments"].combine_chunks().values)
    import torch

    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {len(index):,} segments")
    print("| fraction | examples | context ids | synthesis | gate | gate / synthesis | peak RSS |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {args.fraction:g} | {len(train) + len(val):,} | {ids:,} | {synthesis_s:.1f} s | "
        f"{gate_s:.1f} s | {gate_s / synthesis_s:.0f}x | {peak:.1f} GiB |"
    )
    print(report.settings["position_power"]["statement"])
    pq.write_table(train, work / "train.parquet")  # kept for a look: the folder is printed
    print(f"inputs in {work}")


if __name__ == "__main__":
    main()
