"""Stage report: compare the probed models in reports/ (curves, the paper's Table 1, JSON).

Reads results/probe/base/scores.json and results/probe/in2/scores.json (see in2.report).
"""

from pathlib import Path

from in2.report import load_scores, write_report
from in2.stage import log, run_stage

MODELS = ("base", "in2")
OUT = Path("reports")


def main(params, args) -> None:
    scores = load_scores({m: Path("results/probe") / m / "scores.json" for m in MODELS})
    write_report(scores, params.probe.tasks, OUT)
    log.info("wrote %s", ", ".join(str(OUT / n) for n in ("probe_curves.png", "scores.md")))


if __name__ == "__main__":
    run_stage(main, __doc__)
