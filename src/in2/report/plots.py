"""The report's figures: per-position curves (paper Figure 1) and depth × length heatmaps.

Only the report stage draws (it also attaches each model's figures to that model's MLflow probe
run), so changing a colour re-runs `report` and never the probes' model inference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from in2.registry import PROBE_TASKS

COLORS = {"base": "#7F7F7F", "in2": "#E97132"}  # the paper's Mistral grey and FILM orange

Scores = Mapping[str, Mapping[str, Any]]
"""model name -> that model's scores.json."""


def panel_title(task: str) -> str:
    spec = PROBE_TASKS[task]
    return f"{spec.title} ({spec.retrieval})"


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
        ax.set_title(panel_title(task))
        if curves:
            ax.legend(loc="best")
    return fig


def depth_grid(by_length: Mapping[str, Mapping[str, Any]], n_depths: int) -> tuple[list[int], Any]:
    """(lengths, [length, depth] scores) from a task's per-length curves: a bin's depth is the
    middle of the positions it covers relative to the context's item count, so contexts of
    different lengths (and item counts) line up; NaN where no bin falls into a depth cell."""
    lengths = sorted(int(t) for t in by_length)
    grid = np.full((len(lengths), n_depths), np.nan)
    for row, length in enumerate(lengths):
        bins = by_length[str(length)]["bins"]
        cells: list[list[float]] = [[] for _ in range(n_depths)]
        for i, value in enumerate(bins):
            if value is not None:
                cells[min(int((i + 0.5) / len(bins) * n_depths), n_depths - 1)].append(value)
        grid[row] = [np.mean(c) if c else np.nan for c in cells]
    return lengths, grid


def plot_heatmap(entry: Mapping[str, Any], tasks: Sequence[str], max_depths: int = 10) -> Figure:
    """One model: a panel per task, score by depth (x) and context length (y); at most
    `max_depths` depth cells, fewer where the shortest context has fewer bins (no empty cells)."""
    fig = Figure(figsize=(5 * len(tasks), 4), layout="constrained")
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    image = None
    for ax, task in zip(axes, tasks, strict=True):
        by_length = entry[task]["by_length"]
        n_depths = min(max_depths, *(len(c["bins"]) for c in by_length.values()))
        lengths, grid = depth_grid(by_length, n_depths)
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="lower")
        ax.set_xticks(range(n_depths))
        ax.set_xticklabels([f"{100 * (d + 0.5) / n_depths:.0f}%" for d in range(n_depths)])
        ax.set_yticks(range(len(lengths)))
        ax.set_yticklabels([f"{t:,}" for t in lengths])
        ax.set_xlabel("depth of the item in the context")
        ax.set_ylabel("context tokens")
        ax.set_title(panel_title(task))
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="score")
    return fig
