"""Power and false-alarm rate of the gate's answer-position test, over many seeds and sizes.

    python bench/gate_power.py [--seeds 200] [--sizes 96 400 800 1600]

For each training-set size (validation = size / 6, the default mix, 256-1024-token contexts in
3 bins, as in params.yaml) and each seed, `in2.synth.build.synthesize` builds a clean dataset over
a synthetic corpus; a biased copy then moves every gold segment so that 60% of them sit in the
first half of their context (a relative position from the first half with probability 0.6,
uniform within each half, then the slot holding it). The verdict is the gate's own
`gold_positions_uniform.all` rule (`in2.gate.expectations.uniformity_tests` on the randomized
PIT of each gold slot, KS and chi-square p >= validate.alpha), and for the first seeds the full
GX gate is run too, to check that it gives the same verdict.

Printed per size: gold positions tested, false-alarm rate on clean data, detection rate of the
60/40 bias, and the ceiling for that bias: the power of the most powerful level-alpha test of
"fraction in the first half = 1/2" against 0.6 (a one-sided binomial test, Neyman-Pearson).
No test on the positions can beat that ceiling.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from scipy import stats

from in2.gate.expectations import uniformity_tests
from in2.gate.inputs import GateInputs
from in2.gate.runner import validate_dataset
from in2.gate.tables import gold_slot_table
from in2.params import Params, parse_params
from in2.registry import LONG_KINDS
from in2.synth.build import synthesize

SEG, SEGS_PER_DOC, N_DOCS = 128, 10, 1500
CHECKED_WITH_GX = 3
"""Seeds per condition whose verdict is also taken from the full GX gate."""


def corpus() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A segment index of full-length segments, and one fine-grained + integration pair each."""
    seg = np.arange(N_DOCS * SEGS_PER_DOC)
    index = pd.DataFrame(
        {
            "seg_id": seg,
            "doc_id": [f"doc{d:05d}" for d in seg // SEGS_PER_DOC],
            "start": seg * SEG,
            "n_tokens": np.full(len(seg), SEG),
            "index_in_doc": seg % SEGS_PER_DOC,
        }
    )
    rows = [("fine_grained", [int(s)], d) for s, d in zip(seg, index["doc_id"], strict=True)]
    rows += [
        ("integration", [int(s), int(s) + 1], d)
        for s, d in zip(seg, index["doc_id"], strict=True)
        if s % SEGS_PER_DOC == 0
    ]
    rows += [("general", [], f"doc{d:05d}") for d in range(N_DOCS)]
    qa = pd.DataFrame(
        {
            "qa_id": [f"qa{i}" for i in range(len(rows))],
            "kind": [r[0] for r in rows],
            "gold_segments": [r[1] for r in rows],
            "source_doc": [r[2] for r in rows],
            "question": [f"question {i}?" for i in range(len(rows))],
            "answer": [f"answer {i}" for i in range(len(rows))],
            "keywords": [[] for _ in rows],
        }
    )
    return index, qa


def biased(frame: pd.DataFrame, rng: np.random.Generator, p_first: float = 0.6) -> pd.DataFrame:
    """Move the gold segments of long examples: a relative position drawn from the first half
    of the context with probability p_first (uniform within each half), then its slot."""
    out = frame.copy()
    contexts, slots = [], []
    for kind, ctx, gold in zip(
        out["kind"], out["context_segments"], out["gold_segments"], strict=True
    ):
        ctx, gold = [int(s) for s in ctx], [int(g) for g in gold]
        if kind not in LONG_KINDS:
            contexts.append(ctx)
            slots.append(list(range(len(gold))) if kind == "short" else [])
            continue
        n = len(ctx)
        chosen: list[int] = []
        while len(chosen) < len(gold):
            u = 0.5 * rng.random() + (0.0 if rng.random() < p_first else 0.5)
            if (slot := min(int(u * n), n - 1)) not in chosen:
                chosen.append(slot)
        fillers = iter(s for s in ctx if s not in gold)
        placed = dict(zip(chosen, gold, strict=True))
        contexts.append([placed[s] if s in placed else next(fillers) for s in range(n)])
        slots.append(chosen)
    out["context_segments"], out["gold_slots"] = contexts, slots
    return out


def flags(train: pd.DataFrame, val: pd.DataFrame, params: Params) -> bool:
    """The gate's `gold_positions_uniform.all` verdict: True when it fails (bias detected)."""
    slots = gold_slot_table(train, val)
    u = slots.loc[slots["kind"].isin(LONG_KINDS), "u"].to_numpy()
    gate = params.gate
    if len(u) < 5 * gate.position_bins:
        return False
    tests = uniformity_tests(u, gate.position_bins)
    return not (tests["ks_p"] >= gate.alpha and tests["chi2_p"] >= gate.alpha)


def gx_flags(train: pd.DataFrame, val: pd.DataFrame, params: Params) -> bool:
    report = validate_dataset(GateInputs(train, val), params, docs_dir=None)
    (check,) = [r for r in report.results if r.check == "gold_positions_uniform.all"]
    return not check.success


def ceiling(n: int, alpha: float, p1: float = 0.6) -> float:
    """Power of the one-sided binomial test at level alpha of p = 1/2 against p1 (n positions)."""
    critical = stats.binom.isf(alpha, n, 0.5)  # reject when the first-half count > critical
    return float(stats.binom.sf(critical, n, p1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 400, 800, 1600])
    args = parser.parse_args()
    index, qa = corpus()
    print("| n_train | gold positions | false alarms | detected | ceiling | GX agrees |")
    print("| --- | --- | --- | --- | --- | --- |")
    for size in args.sizes:
        params = parse_params({"synthesize": {"n_train": size, "n_val": size // 6}})
        false_alarms = detections = agree = checked = 0
        positions = []
        for seed in range(args.seeds):
            train, val, _ = synthesize(qa, index, params.synthesize, SEG, seed)
            train, val = train.to_pandas(), val.to_pandas()
            rng = np.random.default_rng(10_000 + seed)
            bad_train, bad_val = biased(train, rng), biased(val, rng)
            clean_flag, bias_flag = flags(train, val, params), flags(bad_train, bad_val, params)
            false_alarms += clean_flag
            detections += bias_flag
            slots = gold_slot_table(train, val)
            positions.append(int(slots["kind"].isin(LONG_KINDS).sum()))
            if seed < CHECKED_WITH_GX:
                checked += 2
                agree += (gx_flags(train, val, params) == clean_flag) + (
                    gx_flags(bad_train, bad_val, params) == bias_flag
                )
        n = int(np.median(positions))
        print(
            f"| {size} | {n} | {false_alarms / args.seeds:.1%} | {detections / args.seeds:.1%} "
            f"| {ceiling(n, params.gate.alpha):.1%} | {agree}/{checked} |"
        )


if __name__ == "__main__":
    main()
