"""The comparison report's files: the paper's Table 1 for every probed model, and the curves.

Reads the `scores.json` of each model (written by stages/probe.py) and writes what the paper
shows: a Markdown table of Avg / Gap per task plus the "All" column, as percentages with one
decimal, and the figures of in2.report.plots. Beside them: one CSV per task with every model's
score per position bin (DVC plots draw the models on one chart, and `dvc plots diff` one data
version against another).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from in2.outputs import atomic_file, write_json
from in2.report.plots import Scores, plot_curves, plot_heatmap


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


def comparison_table(comparison: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table of `reports/comparison.json` for one metric variant: per task the base and
    trained Avg, their difference and its paired bootstrap interval (× 100)."""
    lines = [
        "| task | base Avg | in2 Avg | in2 − base | 95% CI | excludes 0 | queries |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task, c in comparison.items():
        lines.append(
            f"| {task} | {100 * c['base']:.1f} | {100 * c['trained']:.1f} | "
            f"{100 * c['diff']:+.1f} | [{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}] | "
            f"{'yes' if c['excludes_zero'] else 'no'} | {c['n_queries']} |"
        )
    return "\n".join(lines) + "\n"


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
                f"{100 * c['confidence']:.0f}% interval of the Avg difference "
                f"({c['n_resamples']:,} resamples of the queries within each set and bin, "
                "rescaled for the small cells; in2.report.bootstrap):\n\n"
                + comparison_table(comparison[variant])
            )
    with atomic_file(out / "probe_curves.png") as tmp:
        plot_curves(scores, tasks).savefig(tmp, format="png", dpi=120)
    with atomic_file(out / "scores.md") as tmp:
        tmp.write_text(
            "# VaL probing scores (× 100)\n\nThe paper's metrics:\n\n"
            + scores_table(scores, tasks)
            + "\nStrict variants (not the paper's: document recall on the words outside the "
            "asked piece, database label alone; code unchanged):\n\n"
            + scores_table(scores, tasks, strict=True)
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
