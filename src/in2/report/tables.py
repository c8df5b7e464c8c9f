"""The comparison report's files: the paper's Table 1 for every probed model, and the curves.

Reads the `scores.json` of each model (written by stages/probe.py) and writes what the paper
shows: a Markdown table of Avg / Gap per task plus the "All" column (the mean of the tasks' Avgs
and the mean of their Gaps, as the paper's), as percentages with one decimal, and the figures of
in2.report.plots; each Gap with its interval and noise floor (in2.probing.uncertainty), and in
words whether it, and its change after training, can be told from noise. Beside them: one CSV per
task with every model's score per position bin (DVC plots draw the models on one chart, and
`dvc plots diff` one data version against another). `table1_scores` re-bins the predictions the
way the paper's script does, for the comparison with the paper's Table 1.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from in2.outputs import atomic_file, read_jsonl, write_json
from in2.probing.metrics import Bins, overall, position_curve
from in2.probing.results import scored_rows
from in2.report.plots import Scores, plot_curves, plot_heatmap

Predictions = Mapping[tuple[str, str], list[dict[str, Any]]]
"""(model, task) -> the rows of results/probe/<model>/<task>.predictions.jsonl."""


def load_scores(paths: Mapping[str, Path]) -> dict[str, dict[str, Any]]:
    """Read each model's scores.json; a missing one names the model to probe first."""
    scores = {}
    for model, path in paths.items():
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist; probe model '{model}' first (`dvc repro probe@{model}`)"
            )
        scores[model] = json.loads(path.read_text())
    return scores


def read_predictions(
    results: Path, models: Sequence[str], tasks: Sequence[str]
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(model, task) -> the rows of `results/<model>/<task>.predictions.jsonl`."""
    return {
        (model, task): read_jsonl(results / model / f"{task}.predictions.jsonl")
        for model in models
        for task in tasks
    }


def _pair(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return "–"
    return f"{100 * entry['avg']:.1f} / {100 * entry['gap']:.1f}"


def scores_table(scores: Scores, tasks: Sequence[str], strict: bool = False) -> str:
    """Markdown table in the layout of the paper's Table 1 (scores × 100); `strict`: the same
    for the strict variants of the metrics (`TaskSpec.strict_metric`)."""
    columns = [*tasks, "all"]
    lines = [
        "| model | " + " | ".join(f"{c.capitalize()} Avg/Gap" for c in columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for model, entry in scores.items():
        if strict:
            cells = [_pair(entry.get(t, {}).get("strict")) for t in tasks]
            cells.append(_pair(entry.get("all_strict")))
        else:
            cells = [_pair(entry.get(c)) for c in columns]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table1_scores(
    predictions: Predictions, models: Sequence[str], tasks: Sequence[str], bin_size: int
) -> dict[str, dict[str, dict[str, float] | None]]:
    """model -> column (each task, then "all") -> Avg and Gap of the paper's metric, binned as
    the paper's plot.py bins (each bin's last position left out, whole bins only), whatever
    `probe.binning` is: the numbers that stand beside Table 1. A task with fewer positions
    than one whole bin has None."""
    out: dict[str, dict[str, dict[str, float] | None]] = {}
    for model in models:
        curves = {}
        for task in tasks:
            scored = scored_rows(predictions[model, task])
            try:
                curves[task] = position_curve(scored, Bins(bin_size, "paper"))
            except ValueError:  # no whole bin: probes shorter than bin_size positions
                continue
        entry: dict[str, dict[str, float] | None] = {
            task: ({"avg": c.avg, "gap": c.gap} if (c := curves.get(task)) else None)
            for task in tasks
        }
        entry["all"] = overall(curves) if len(curves) == len(tasks) else None
        out[model] = entry
    return out


def _pct(x: float, signed: bool = False) -> str:
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def comparison_table(comparison: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table of `reports/comparison.json` for one metric variant: per task the base and
    trained Avg, their difference and its paired bootstrap interval, and the same for the Gap
    (× 100)."""
    lines = [
        "| task | base Avg | in2 Avg | in2 − base | 95% CI | excludes 0 | base Gap | in2 Gap "
        "| in2 − base | 95% CI | excludes 0 | queries |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task, c in comparison.items():
        lines.append(
            f"| {task} | {_pct(c['base'])} | {_pct(c['trained'])} | {_pct(c['diff'], True)} | "
            f"[{_pct(c['ci_low'], True)}, {_pct(c['ci_high'], True)}] | "
            f"{'yes' if c['excludes_zero'] else 'no'} | {_pct(c['base_gap'])} | "
            f"{_pct(c['trained_gap'])} | {_pct(c['gap_diff'], True)} | "
            f"[{_pct(c['gap_ci_low'], True)}, {_pct(c['gap_ci_high'], True)}] | "
            f"{'yes' if c['gap_excludes_zero'] else 'no'} | {c['n_queries']} |"
        )
    return "\n".join(lines) + "\n"


GAP_COLUMNS = ("model", "task", "Gap", "95% CI", "noise floor", "floor's 95th pct", "above noise")


def gap_rows(scores: Scores, tasks: Sequence[str]) -> list[list[str]]:
    """The cells of the Gap table (× 100): per model and task, the Gap, its 95% interval, the
    noise floor and its 95th percentile, and whether the Gap is above noise."""
    rows = []
    for model, entry in scores.items():
        for task in tasks:
            if "uncertainty" not in entry.get(task, {}):
                continue
            u = entry[task]["uncertainty"]
            rows.append(
                [
                    model,
                    task,
                    _pct(entry[task]["gap"]),
                    f"[{_pct(u['gap_ci'][0])}, {_pct(u['gap_ci'][1])}]",
                    _pct(u["gap_noise_floor"]),
                    _pct(u["gap_noise_95"]),
                    "yes" if u["gap_above_noise"] else "no",
                ]
            )
    return rows


def gap_table(scores: Scores, tasks: Sequence[str]) -> str:
    """Markdown table: each model's Gap per task with its 95% interval and noise floor (× 100)."""
    lines = [f"| {' | '.join(GAP_COLUMNS)} |", "|" + " --- |" * len(GAP_COLUMNS)]
    lines += [f"| {' | '.join(row)} |" for row in gap_rows(scores, tasks)]
    return "\n".join(lines) + "\n"


def gap_verdicts(
    scores: Scores, comparison: Mapping[str, Mapping[str, Any]] | None, tasks: Sequence[str]
) -> list[str]:
    """One sentence per task: is each model's Gap above its noise floor, and can the change of
    the Gap after training (the paired interval, the paper's metric) be told from noise?"""
    sentences = []
    for task in tasks:
        parts = []
        for model, entry in scores.items():
            if "uncertainty" not in entry.get(task, {}):
                continue
            u, gap = entry[task]["uncertainty"], entry[task]["gap"]
            where = "above" if u["gap_above_noise"] else "within"
            low, high = u["gap_ci"]
            parts.append(
                f"{model} Gap {_pct(gap)} (95% CI {_pct(low)}–{_pct(high)}) is {where} the "
                f"noise of a position-flat model (floor {_pct(u['gap_noise_floor'])})"
            )
        if not parts:
            continue
        sentence = f"{task}: " + "; ".join(parts) + "."
        c = (comparison or {}).get("paper", {}).get(task)
        if c is not None:
            told = (
                "is distinguishable from noise"
                if c["gap_excludes_zero"]
                else "cannot be told from noise (its interval holds 0)"
            )
            sentence += (
                f" The change, {_pct(c['gap_diff'], True)} (95% CI "
                f"{_pct(c['gap_ci_low'], True)} to {_pct(c['gap_ci_high'], True)}), {told}."
            )
        sentences.append(sentence)
    return sentences


def position_rows(scores: Scores, task: str) -> list[dict[str, Any]]:
    """Rows of `positions/<task>.csv`: per position bin, each model's score and std over sets
    (and its strict score where the task has one); an empty cell is a bin without queries."""
    curves = {model: entry[task] for model, entry in scores.items() if task in entry}
    if not curves:
        return []
    size = next(iter(curves.values()))["bin_size"]
    n_bins = max(len(c["bins"]) for c in curves.values())

    def cell(values: list[float | None], i: int) -> float | str:
        value = values[i] if i < len(values) else None
        return "" if value is None else round(value, 6)

    rows = []
    for i in range(n_bins):
        row: dict[str, Any] = {"bin": i, "position": i * size}
        for model, curve in curves.items():
            row[model] = cell(curve["bins"], i)
            row[f"{model}_std"] = cell(curve["bins_std"], i)
            if "strict" in curve:
                row[f"{model}_strict"] = cell(curve["strict"]["bins"], i)
        rows.append(row)
    return rows


def write_report(
    scores: Scores,
    tasks: Sequence[str],
    out_dir: str | Path,
    comparison: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """`probe_curves.png`, `scores.md`, `scores.json`, `positions/<task>.csv` and
    `heatmap_<model>.png` (one row per probed length) in `out_dir`, each written atomically;
    with `comparison` (metric variant -> task -> in2.report.bootstrap.PairedDifference as a
    dict), `comparison.json` and its tables in `scores.md`."""
    out = Path(out_dir)
    compared = ""
    for variant, label in (("strict", "strict variants"), ("paper", "the paper's metrics")):
        if comparison and variant in comparison:
            c = next(iter(comparison[variant].values()))
            compared += (
                f"\nIN2-trained minus base, {label}: paired bootstrap "
                f"{100 * c['confidence']:.0f}% intervals of the Avg and Gap differences "
                f"({c['n_resamples']:,} resamples of the queries within each set and bin, "
                "rescaled for the small cells; in2.report.bootstrap):\n\n"
                + comparison_table(comparison[variant])
            )
    verdicts = "".join(f"- {line}\n" for line in gap_verdicts(scores, comparison, tasks))
    with atomic_file(out / "probe_curves.png") as tmp:
        plot_curves(scores, tasks).savefig(tmp, format="png", dpi=120)
    with atomic_file(out / "scores.md") as tmp:
        tmp.write_text(
            "# VaL probing scores (× 100)\n\nThe paper's metrics (All: the mean of the "
            "tasks' Avgs and the mean of their Gaps, as in the paper):\n\n"
            + scores_table(scores, tasks)
            + "\nStrict variants (not the paper's: document recall on the words outside the "
            "asked piece, database label alone; code unchanged):\n\n"
            + scores_table(scores, tasks, strict=True)
            + "\nGap and noise, the paper's metrics: the Gap's 95% interval and the Gap a "
            "position-flat model shows with these bin sizes (in2.probing.uncertainty):\n\n"
            + gap_table(scores, tasks)
            + ("\n" + verdicts if verdicts else "")
            + compared
        )
    write_json(out / "scores.json", scores)
    if comparison is not None:
        write_json(out / "comparison.json", comparison)
    for task in tasks:
        rows = position_rows(scores, task)
        with atomic_file(out / "positions" / f"{task}.csv") as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["bin", "position"])
            writer.writeheader()
            writer.writerows(rows)
    for model, entry in scores.items():
        with atomic_file(out / f"heatmap_{model}.png") as tmp:
            plot_heatmap(entry, tasks).savefig(tmp, format="png", dpi=120)
