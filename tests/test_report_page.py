"""The report page on hand-made inputs: its tables hold the run's and the paper's numbers, it is
self-contained, and headless Chromium renders it to a non-blank screenshot."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from in2.lineage.fingerprint import path_md5
from in2.outputs import write_json
from in2.report.page import PAPER_LABEL, PageContent, render_page, write_page
from in2.report.runs import find_run_ids

REPO = Path(__file__).resolve().parents[1]
TASKS = ["document", "code"]


def curve(avg: float, gap: float) -> dict:
    entry = {"avg": avg, "gap": gap, "bins": [avg + gap / 2, avg - gap / 2]}
    return {**entry, "bins_std": [0.0, 0.0], "bin_size": 5, "n_queries": 8}


@pytest.fixture()
def scores() -> dict:
    def model(doc: tuple[float, float], code: tuple[float, float], all_: tuple) -> dict:
        return {
            "document": {**curve(*doc), "by_length": {"1024": curve(*doc)}},
            "code": {**curve(*code), "by_length": {"1024": curve(*code)}},
            "all": {"avg": all_[0], "gap": all_[1]},
        }

    return {
        "base": model((0.303, 0.227), (0.11, 0.25), (0.2065, 0.238)),
        "in2": model((0.153, 0.55), (0.06, 0.2), (0.1065, 0.375)),
    }


SYNTHESIZE = {
    "counts": {
        "train": {"fine_grained": 60, "general": 11, "integration": 16, "short": 9},
        "val": {"fine_grained": 10, "general": 2, "integration": 3, "short": 1},
    },
    "length_hist": {"train": {"256-512": 26, "512-768": 25}, "val": {"256-512": 5, "512-768": 4}},
    "position_hist": {"train": {"0.0": 6, "0.5": 17}, "val": {"0.0": 0, "0.5": 5}},
    "tokens": {"train": 47124, "val": 8108},
}
GATE = {"success": False, "n_expectations": 55, "n_failed": 1, "failed": ["kind.mix.train"]}
RUN_IDS = {"train": "a" * 32, "probe-base": "b" * 32, "probe-in2": None}


def png(tmp_path: Path, name: str) -> Path:
    fig = Figure(figsize=(3, 2))
    fig.subplots().plot([0, 1, 0.5])
    fig.savefig(tmp_path / name, format="png")
    return tmp_path / name


class Tables(HTMLParser):
    """Rows of cell texts per table id, and every src / href of the page."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.links: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.links += [v for k, v in attrs if k in ("src", "href") and v]
        if tag == "table":
            self._table = a.get("id") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse(page: str) -> Tables:
    tables = Tables()
    tables.feed(page)
    return tables


def body(tables: Tables, table_id: str) -> dict[str, list[str]]:
    """Model -> its cells, from a score table (two header rows)."""
    return {row[0]: row[1:] for row in tables.tables[table_id][2:]}


def render(scores: dict, tmp_path: Path) -> Path:
    figures = [png(tmp_path, "probe_curves.png"), png(tmp_path, "heatmap_base.png")]
    out = tmp_path / "reports" / "index.html"
    write_page(
        PageContent(scores, TASKS, SYNTHESIZE, GATE, RUN_IDS, "sqlite:///x.db"), figures, out
    )
    return out


def test_page_tables_hold_the_run_and_the_paper_numbers(scores: dict, tmp_path: Path) -> None:
    page = render(scores, tmp_path).read_text()
    tables = parse(page)
    assert tables.tables["run-scores"][0] == ["model", "Document", "Code", "All"]
    assert body(tables, "run-scores") == {
        "base": ["30.3", "22.7", "11.0", "25.0", "20.6", "23.8"],
        "in2": ["15.3", "55.0", "6.0", "20.0", "10.7", "37.5"],
    }
    paper = body(tables, "paper-scores")
    assert paper["Mistral-7B-Instruct-v0.2"] == ["74.2", "32.1", "20.3", "59.5", "47.3", "56.2"]
    assert paper["FILM-7B"] == ["85.4", "6.1", "83.3", "18.7", "85.9", "13.9"]
    assert PAPER_LABEL in page and "1,024-token contexts" in page
    assert tables.tables["mix"][1:] == [
        ["fine_grained", "60", "10"],
        ["general", "11", "2"],
        ["integration", "16", "3"],
        ["short", "9", "1"],
        ["total", "96", "16"],
    ]
    assert tables.tables["runs"][1:] == [
        ["train", "a" * 32],
        ["probe-base", "b" * 32],
        ["probe-in2", "not found"],
    ]
    assert "FAIL" in page and "54 of 55 expectations met" in page and "kind.mix.train" in page


def test_page_is_self_contained(scores: dict, tmp_path: Path) -> None:
    tables = parse(render(scores, tmp_path).read_text())
    images = [link for link in tables.links if link.startswith("data:image/png;base64,")]
    assert len(images) == 3  # the two figures given and the data card's histograms
    assert set(tables.links) - set(images) == {"data_quality/docs/index.html"}  # relative


ROW = {
    "base": 0.1,
    "trained": 0.4,
    "diff": 0.3,
    "ci_low": 0.2,
    "ci_high": 0.45,
    "excludes_zero": True,
    "base_gap": 0.3,
    "trained_gap": 0.1,
    "gap_diff": -0.2,
    "gap_ci_low": -0.35,
    "gap_ci_high": 0.05,
    "gap_excludes_zero": False,
    "n_queries": 120,
    "confidence": 0.95,
    "n_resamples": 10,
}
"""One task's row of reports/comparison.json."""


def test_page_shows_the_paired_comparison(scores: dict) -> None:
    row = ROW
    comparison = {"strict": {"document": row}}
    page = render_page(
        PageContent(scores, TASKS, SYNTHESIZE, GATE, RUN_IDS, "sqlite:///x.db", comparison), {}
    )
    assert 'id="comparison-strict"' in page
    assert (
        "<td>document</td><td>10.0</td><td>40.0</td><td>+30.0</td><td>[+20.0, +45.0]</td>"
        "<td>yes</td><td>30.0</td><td>10.0</td><td>-20.0</td><td>[-35.0, +5.0]</td><td>no</td>"
        in page
    )
    plain = render_page(PageContent(scores, TASKS, SYNTHESIZE, GATE, RUN_IDS, "sqlite:///x.db"), {})
    assert "No paired comparison" in plain


def test_the_table1_comparison_shows_the_scores_binned_as_the_paper(scores: dict) -> None:
    table1 = {
        "base": {"document": {"avg": 0.31, "gap": 0.2}, "code": None, "all": None},
        "in2": {"document": {"avg": 0.16, "gap": 0.5}, "code": {"avg": 0.07, "gap": 0.1}},
    }
    content = PageContent(scores, TASKS, SYNTHESIZE, GATE, RUN_IDS, "sqlite:///x.db", None, table1)
    page = render_page(content, {})
    assert body(parse(page), "run-scores") == {
        "base": ["31.0", "20.0", "–", "–", "–", "–"],
        "in2": ["16.0", "50.0", "7.0", "10.0", "–", "–"],
    }
    assert "binned as the paper's plot.py bins" in page
    assert "the mean of their Gaps, as in the paper" in page


def test_the_page_says_which_gaps_and_gap_changes_stand_out_from_noise(scores: dict) -> None:
    def uncertainty(low: float, high: float, floor: float) -> dict:
        return {
            "gap_ci": [low, high],
            "gap_noise_floor": floor,
            "gap_noise_95": floor + 0.05,
            "gap_above_noise": low > floor,
        }

    scores["base"]["document"]["uncertainty"] = uncertainty(0.10, 0.35, 0.2)
    scores["in2"]["document"]["uncertainty"] = uncertainty(0.40, 0.70, 0.2)
    change = {**ROW, "gap_diff": 0.323, "gap_ci_low": 0.1, "gap_ci_high": 0.52}
    change["gap_excludes_zero"] = True
    page = render_page(
        PageContent(scores, TASKS, SYNTHESIZE, GATE, RUN_IDS, "x", {"paper": {"document": change}}),
        {},
    )
    assert parse(page).tables["gap-noise"][1:] == [
        ["base", "document", "22.7", "[10.0, 35.0]", "20.0", "25.0", "no"],
        ["in2", "document", "55.0", "[40.0, 70.0]", "20.0", "25.0", "yes"],
    ]
    assert (
        "document: base Gap 22.7 (95% CI 10.0–35.0) is within the noise of a position-flat "
        "model (floor 20.0); in2 Gap 55.0 (95% CI 40.0–70.0) is above the noise of a "
        "position-flat model (floor 20.0). The change, +32.3 (95% CI +10.0 to +52.0), is "
        "distinguishable from noise."
    ) in page


def test_page_marks_a_column_the_run_did_not_probe(scores: dict) -> None:
    del scores["in2"]["code"]
    page = render_page(PageContent(scores, TASKS, SYNTHESIZE, GATE, RUN_IDS, "sqlite:///x.db"), {})
    assert body(parse(page), "run-scores")["in2"][2:4] == ["–", "–"]


def test_find_run_ids_names_the_runs_that_wrote_the_scores_shown(tmp_path: Path) -> None:
    """Of several finished probe runs (as from experiments queued in parallel), the one whose
    output tag is the md5 of the scores file on disk, even when it is not the newest; the train
    run is the one that probe run names."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    results = tmp_path / "results/probe"
    assert find_run_ids(uri, results) == {"train": None, "probe-base": None, "probe-in2": None}
    (results / "in2").mkdir(parents=True)
    scores = results / "in2/scores.json"
    scores.write_text('{"document": {"avg": 0.5}}')
    client = MlflowClient(uri)
    experiment = client.create_experiment("in2")
    tag = f"output.{scores.as_posix()}"
    runs = {}
    for start, name, status, md5 in (
        (1, "ours", "FINISHED", path_md5(scores)),
        (2, "other experiment", "FINISHED", "0" * 32),
        (3, "failed", "FAILED", path_md5(scores)),
    ):
        tags = {tag: md5, "train_run_id": f"train-of-{name}"}
        run = client.create_run(experiment, start_time=start, run_name="probe-in2", tags=tags)
        client.set_terminated(run.info.run_id, status=status, end_time=start + 1)
        runs[name] = run.info.run_id
    assert find_run_ids(uri, results) == {
        "train": "train-of-ours",
        "probe-base": None,
        "probe-in2": runs["ours"],
    }


def test_report_stage_names_the_stage_that_builds_a_missing_data_card_input(
    scores: dict, tmp_path: Path
) -> None:
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    for model, entry in scores.items():
        write_json(tmp_path / "results/probe" / model / "scores.json", entry)
    out = subprocess.run(
        [sys.executable, str(REPO / "stages/report.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "metrics/synthesize.json does not exist; run `dvc repro synthesize` first" in out.stderr
    assert not (tmp_path / "reports").exists()  # nothing written before the inputs are checked


def chromium() -> str:
    """The Chromium binary, or skip naming what to install."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.skip(
        "Chromium is not installed: `apt-get install -y chromium` (Debian package; `make test` "
        "installs it when run as root)"
    )


def test_chromium_renders_a_non_blank_page(scores: dict, tmp_path: Path) -> None:
    browser = chromium()
    page = render(scores, tmp_path)
    shot = tmp_path / "shot.png"
    command = [browser, "--headless", "--disable-gpu", "--hide-scrollbars"]
    if os.geteuid() == 0:
        command.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    command += [f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (1600, 1200, 3)
    assert pixels.std() > 20  # not one flat colour
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # text, tables, figures
    assert body(parse(page.read_text()), "run-scores")["in2"][:2] == ["15.3", "55.0"]
