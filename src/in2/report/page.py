"""The report page: one self-contained `reports/index.html` that shows what a pipeline run did.

It holds the probe figures (embedded as base64 PNG), the Avg/Gap table of every probed model next
to the paper's Table 1 (its 32K-token probes of 7B models, so comparable in shape, not in value;
binned as the paper's script bins), each Gap with its interval and noise floor and, in words,
whether it and its change can be told from noise, the data card (kind mix, context lengths, gold
positions, the quality gate's verdict with a link to the Great Expectations Data Docs) and the
MLflow run ids of the train and probe runs. No external URL: the page opens offline, and the CSS
is inline.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from in2.lineage.tracking import EXPERIMENT
from in2.outputs import atomic_file
from in2.report.plots import COLORS, Scores
from in2.report.tables import GAP_COLUMNS, gap_rows, gap_verdicts

PAPER_TABLE1: dict[str, dict[str, tuple[float, float]]] = {
    "Mistral-7B-Instruct-v0.2": {
        "document": (74.2, 32.1),
        "code": (20.3, 59.5),
        "database": (47.5, 77.0),
        "all": (47.3, 56.2),
    },
    "FILM-7B": {
        "document": (85.4, 6.1),
        "code": (83.3, 18.7),
        "database": (89.0, 16.8),
        "all": (85.9, 13.9),
    },
}
"""The paper's Table 1 (Avg / Gap × 100 on VaLProbing-32K): the base model and the IN2-trained
one. Transcribed from arXiv 2404.16811 (v2) by the project's design notes and an independent
paper summary, which agree; not re-read from the PDF by this code."""

PAPER_LABEL = "paper: 32K tokens, 7B models"
GX_DOCS = "data_quality/docs/index.html"
"""The Great Expectations Data Docs, relative to reports/ (written by stages/validate.py)."""


@dataclass(frozen=True)
class PageContent:
    """What the page shows, besides the probe figures."""

    scores: Scores
    """model -> its scores.json."""
    tasks: Sequence[str]
    synthesize: Mapping[str, Any]
    """metrics/synthesize.json: the data card's mix and histograms."""
    gate: Mapping[str, Any]
    """reports/data_quality/summary.json: the quality gate's verdict."""
    run_ids: Mapping[str, str | None]
    """MLflow run name -> id (in2.report.runs.find_run_ids)."""
    tracking_uri: str
    comparison: Mapping[str, Mapping[str, Any]] | None = field(default=None)
    """reports/comparison.json: the paired bootstrap of in2 − base."""
    table1: Mapping[str, Mapping[str, Mapping[str, float] | None]] | None = field(default=None)
    """model -> column -> Avg and Gap binned as the paper (in2.report.tables.table1_scores);
    None: the scores as the probe stage binned them."""


CSS = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { border-bottom: 3px solid #E97132; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; white-space: nowrap; }
thead { background: #f0f0f0; }
.side { display: flex; gap: 2em; align-items: flex-start; }
.side > div { flex: 1 1 0; }
.pass { color: #fff; background: #2e7d32; padding: 0.2em 0.6em; }
.fail { color: #fff; background: #c62828; padding: 0.2em 0.6em; }
img { max-width: 100%; }
.note { color: #555; font-size: 0.9em; }
"""


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _table(
    table_id: str, rows: Mapping[str, Mapping[str, tuple[float, float] | None]], tasks: list[str]
) -> str:
    head = "".join(f"<th colspan=2>{html.escape(t.capitalize())}</th>" for t in tasks)
    sub = "<th>Avg</th><th>Gap</th>" * len(tasks)
    body = []
    for model, entry in rows.items():
        cells = []
        for task in tasks:
            avg, gap = entry.get(task) or (None, None)
            cells.append(f"<td>{_cell(avg)}</td><td>{_cell(gap)}</td>")
        body.append(f"<tr><td>{html.escape(model)}</td>{''.join(cells)}</tr>")
    return (
        f'<table id="{table_id}"><thead><tr><th rowspan=2>model</th>{head}</tr>'
        f"<tr>{sub}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def run_rows(
    scores: Mapping[str, Mapping[str, Any]], tasks: Sequence[str]
) -> dict[str, dict[str, tuple[float, float]]]:
    """model -> column (each task, then "all") -> (Avg, Gap) × 100, as the paper reports them."""
    return {
        model: {
            column: (100 * entry[column]["avg"], 100 * entry[column]["gap"])
            for column in (*tasks, "all")
            if entry.get(column)
        }
        for model, entry in scores.items()
    }


def probed_lengths(scores: Scores, tasks: Sequence[str]) -> list[int]:
    """The context lengths (tokens) the run probed, over every model and task."""
    return sorted(
        {
            int(length)
            for entry in scores.values()
            for task in tasks
            for length in entry.get(task, {}).get("by_length", {})
        }
    )


def plot_data_card(synthesize: Mapping[str, Any]) -> Figure:
    """Two panels: long contexts per length bin and gold segments per relative-position decile,
    train and val side by side (from metrics/synthesize.json)."""
    fig = Figure(figsize=(11, 3.5), layout="constrained")
    axes = fig.subplots(1, 2)
    panels = (
        ("length_hist", "context tokens (fine_grained + integration)", "examples"),
        ("position_hist", "relative position of the gold segment (decile)", "gold segments"),
    )
    colors = {"train": COLORS["in2"], "val": COLORS["base"]}
    for ax, (key, xlabel, ylabel) in zip(axes, panels, strict=True):
        splits = synthesize[key]
        labels = list(next(iter(splits.values())))
        width = 0.8 / len(splits)
        for k, (split, hist) in enumerate(splits.items()):
            xs = [i + (k - (len(splits) - 1) / 2) * width for i in range(len(labels))]
            ax.bar(xs, [hist[b] for b in labels], width, label=split, color=colors.get(split))
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=45 if len(labels) > 5 else 0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend()
    return fig


def _png(data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _figure_png(fig: Figure) -> bytes:
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _mix_table(counts: Mapping[str, Mapping[str, int]]) -> str:
    kinds = sorted({k for split in counts.values() for k in split})
    head = "".join(f"<th>{html.escape(s)}</th>" for s in counts)
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td>"
        + "".join(f"<td>{counts[s].get(k, 0)}</td>" for s in counts)
        + "</tr>"
        for k in kinds
    )
    total = "".join(f"<td>{sum(counts[s].values())}</td>" for s in counts)
    return (
        f'<table id="mix"><thead><tr><th>kind</th>{head}</tr></thead>'
        f"<tbody>{rows}<tr><td>total</td>{total}</tr></tbody></table>"
    )


def _gate(summary: Mapping[str, Any]) -> str:
    verdict = "PASS" if summary["success"] else "FAIL"
    failed = "".join(f"<li>{html.escape(name)}</li>" for name in summary.get("failed", []))
    return (
        f'<p>Quality gate: <span id="gate" class="{verdict.lower()}">{verdict}</span> — '
        f"{summary['n_expectations'] - summary['n_failed']} of {summary['n_expectations']} "
        f'expectations met. <a href="{GX_DOCS}">Great Expectations Data Docs</a></p>'
        + (f"<p>Failed:</p><ul>{failed}</ul>" if failed else "")
    )


def _comparison(comparison: Mapping[str, Mapping[str, Any]] | None) -> str:
    """The paired bootstrap table (strict variants first), or a note that there is none."""
    if not comparison:
        return '<p class="note">No paired comparison (reports/comparison.json).</p>'
    parts = []
    for variant, label in (("strict", "strict variants"), ("paper", "the paper's metrics")):
        rows = comparison.get(variant)
        if not rows:
            continue
        body = "".join(
            f"<tr><td>{html.escape(task)}</td><td>{100 * c['base']:.1f}</td>"
            f"<td>{100 * c['trained']:.1f}</td><td>{100 * c['diff']:+.1f}</td>"
            f"<td>[{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}]</td>"
            f"<td>{'yes' if c['excludes_zero'] else 'no'}</td>"
            f"<td>{100 * c['base_gap']:.1f}</td><td>{100 * c['trained_gap']:.1f}</td>"
            f"<td>{100 * c['gap_diff']:+.1f}</td>"
            f"<td>[{100 * c['gap_ci_low']:+.1f}, {100 * c['gap_ci_high']:+.1f}]</td>"
            f"<td>{'yes' if c['gap_excludes_zero'] else 'no'}</td><td>{c['n_queries']}</td></tr>"
            for task, c in rows.items()
        )
        parts.append(
            f"<h3>{label}</h3>"
            f'<table id="comparison-{variant}"><thead><tr><th>task</th><th>base Avg</th>'
            "<th>in2 Avg</th><th>in2 − base</th><th>95% CI</th><th>excludes 0</th>"
            "<th>base Gap</th><th>in2 Gap</th><th>in2 − base</th><th>95% CI</th>"
            f"<th>excludes 0</th><th>queries</th></tr></thead><tbody>{body}</tbody></table>"
        )
    return "".join(parts) + (
        '<p class="note">Paired over the same queries: the 2.5th–97.5th percentile of the '
        "difference over bootstrap resamples of the queries within each (set, position bin), "
        "rescaled for the small cells; the Gap difference's, centred on the measured one "
        "(in2.report.bootstrap). × 100.</p>"
    )


def _binned(content: PageContent) -> str:
    if content.table1 is None:
        return "This run's numbers are binned as the probe stage bins them (probe.binning)."
    return (
        "This run's numbers here are binned as the paper's plot.py bins (the last position of "
        "each bin left out, whole bins only), so they stand beside Table 1."
    )


def _gaps(content: PageContent) -> str:
    """Each model's Gap against its noise floor, and the Gap change, in a table and in words."""
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for row in gap_rows(content.scores, content.tasks)
    )
    if not rows:
        return '<p class="note">No Gap intervals in the scores (probe again).</p>'
    words = "".join(
        f"<li>{html.escape(line)}</li>"
        for line in gap_verdicts(content.scores, content.comparison, content.tasks)
    )
    return (
        '<table id="gap-noise"><thead><tr>'
        + "".join(f"<th>{html.escape(c)}</th>" for c in GAP_COLUMNS)
        + f'</tr></thead><tbody>{rows}</tbody></table><ul id="gap-words">{words}</ul>'
        '<p class="note">The paper\'s metrics, binned as the probe stage bins. Noise floor: the '
        "mean Gap of a position-flat model with these scores and bin sizes (each set's scores "
        "shuffled over its positions); a Gap is above noise when its 95% interval lies above "
        "the floor (in2.probing.uncertainty). × 100.</p>"
    )


def _runs(run_ids: Mapping[str, str | None], tracking_uri: str) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td><code>{html.escape(run_id or 'not found')}</code>"
        "</td></tr>"
        for name, run_id in run_ids.items()
    )
    return (
        f'<table id="runs"><thead><tr><th>run</th><th>MLflow run id</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
        f'<p class="note">Experiment <code>{EXPERIMENT}</code> in '
        f"<code>{html.escape(tracking_uri)}</code>: the probe runs that wrote the scores shown "
        "(their <code>output.*</code> md5 tag), and the train run that made the probed model.</p>"
    )


def render_page(content: PageContent, figures: Mapping[str, bytes]) -> str:
    """The page as one HTML string; `figures`: caption -> PNG bytes (the probe figures)."""
    scores, tasks, synthesize = content.scores, content.tasks, content.synthesize
    columns = [*tasks, "all"]
    lengths = ", ".join(f"{t:,}" for t in probed_lengths(scores, tasks)) or "unknown"
    tokens = synthesize.get("tokens", {})
    images = "".join(
        f"<figure>{_png(data, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"
        for caption, data in figures.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>in2 report</title>
<style>{CSS}</style></head><body>
<h1>IN2 training and VaL probing: report</h1>
<h2>VaL probing: Avg / Gap (× 100)</h2>
<div class="side">
<div><h3>this run: {html.escape(lengths)}-token contexts</h3>
{_table("run-scores", run_rows(content.table1 or scores, tasks), columns)}</div>
<div><h3>{PAPER_LABEL} (Table 1)</h3>
{_table("paper-scores", PAPER_TABLE1, columns)}
<p class="note">arXiv 2404.16811, Table 1 (transcribed from secondary notes of the paper that
agree with each other; not re-checked against the PDF). A different scale (32K-token contexts,
7B models), so compare the shape (Gap shrinking after IN2 training), not the values. Base:
Mistral-7B-Instruct-v0.2; IN2-trained: FILM-7B.</p></div>
</div>
<p class="note">Avg: mean score over position bins; Gap: best bin − worst bin; All: the mean
of the three tasks' Avgs and the mean of their Gaps, as in the paper. {_binned(content)}
(docs/probing.md).</p>
<h2>Gap and noise</h2>
{_gaps(content)}
<h2>IN2-trained minus base: Avg and Gap differences (× 100)</h2>
{_comparison(content.comparison)}
<h2>Probe figures</h2>
{images}
<h2>Data card (data/in2)</h2>
{_gate(content.gate)}
<h3>Kind mix</h3>
{_mix_table(synthesize["counts"])}
<p class="note">Context tokens: {", ".join(f"{s} {n:,}" for s, n in tokens.items())}.</p>
<h3>Context lengths and gold positions</h3>
{_png(_figure_png(plot_data_card(synthesize)), "data card histograms")}
<h2>MLflow runs</h2>
{_runs(content.run_ids, content.tracking_uri)}
</body></html>
"""


def write_page(content: PageContent, figure_paths: Sequence[Path], out: str | Path) -> None:
    """Render the page with the PNGs at `figure_paths` embedded and write it atomically to `out`."""
    figures = {path.name: path.read_bytes() for path in figure_paths}
    page = render_page(content, figures)
    with atomic_file(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
