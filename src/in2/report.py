"""The comparison report: per-position curves and the paper's Table 1, for every probed model.

Reads the `scores.json` of each model (written by stages/probe.py) and renders what the paper
shows: one panel per task with a curve per model (error bars = std over sets), and a Markdown table
of Avg / Gap per task plus the "All" column, as percentages with one decimal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from in2.outputs import atomic_file, write_json
from in2.probes import TASKS

COLORS = {"base": "#7F7F7F", "in2": "#E97132"}  # the paper's Mistral grey and FILM orange

Scores = Mapping[str, Mapping[str, Any]]
"""model name -> that model's scores.json."""


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


def scores_table(scores: Scores, tasks: Sequence[str]) -> str:
    """Markdown table in the layout of the paper's Table 1 (scores × 100)."""
    columns = [*tasks, "all"]
    lines = [
        "| model | " + " | ".join(f"{c.capitalize()} Avg/Gap" for c in columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for model, entry in scores.items():
        lines.append(f"| {model} | " + " | ".join(_pair(entry.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(scores: Scores, tasks: Sequence[str]) -> Figure:
    """One panel per task: score per position bin, a curve with std error bars per model."""
    fig = Figure(figsize=(6 * len(tasks), 4.5), layout="constrained")
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks, strict=True):
        curves = {model: entry[task] for model, entry in scores.items() if task in entry}
        n_bins = max((len(c["bins"]) for c in curves.values()), default=0)
        size = next(iter(curves.values()))["bin_size"] if curves else 1
        for model, curve in curves.items():
            ax.errorbar(
                range(len(curve["bins"])),
                [math.nan if b is None else b for b in curve["bins"]],
                yerr=[0.0 if s is None else s for s in curve["bins_std"]],
                label=f"{model} (Avg {100 * curve['avg']:.1f})",
                color=COLORS.get(model),
                marker="o",
                capsize=4,
            )
        ax.set_xticks(range(n_bins))
        ax.set_xticklabels([f"{i * size}–{(i + 1) * size - 1}" for i in range(n_bins)], rotation=45)
        ax.set_xlabel("position of the item in the context")
        ax.set_ylabel("score")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(f"{TASKS[task].title} ({TASKS[task].retrieval})")
        if curves:
            ax.legend(loc="best")
    return fig


def write_report(scores: Scores, tasks: Sequence[str], out_dir: str | Path) -> None:
    """`probe_curves.png`, `scores.md` and `scores.json` in `out_dir`, each written atomically."""
    out = Path(out_dir)
    with atomic_file(out / "probe_curves.png") as tmp:
        plot_curves(scores, tasks).savefig(tmp, format="png", dpi=120)
    with atomic_file(out / "scores.md") as tmp:
        tmp.write_text("# VaL probing scores (× 100)\n\n" + scores_table(scores, tasks))
    write_json(out / "scores.json", scores)
