"""The comparison report on hand-made scores: per-position CSVs and the depth × length grid."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from in2.report.plots import depth_grid
from in2.report.tables import position_rows, write_report


def curve(bins: list[float | None], std: list[float | None] | None = None, **extra) -> dict:
    present = [b for b in bins if b is not None]
    return {
        "bins": bins,
        "bins_std": std or [0.0 if b is not None else None for b in bins],
        "avg": float(np.mean(present)),
        "gap": max(present) - min(present),
        "n_queries": 10,
        "bin_size": 5,
        **extra,
    }


@pytest.fixture()
def scores() -> dict:
    short, long = curve([1.0, 0.5]), curve([1.0, 0.0, 0.25, 0.5])
    base = {
        "document": {**curve([1.0, 0.5, None], [0.1, 0.2, None]), "by_length": {"512": short}},
        "all": {"avg": 0.75, "gap": 0.5},
    }
    in2 = {
        "document": {
            **curve([0.75, 1.0], strict=curve([0.5, 0.25])),
            "by_length": {"1024": long, "512": short},
        },
        "all": {"avg": 0.875, "gap": 0.25},
        "all_strict": {"avg": 0.375, "gap": 0.25},
    }
    return {"base": base, "in2": in2}


def test_position_rows_hold_every_model_per_bin(scores: dict) -> None:
    rows = position_rows(scores, "document")
    assert rows == [
        {"bin": 0, "position": 0, "base": 1.0, "base_std": 0.1, "in2": 0.75, "in2_std": 0.0,
         "in2_strict": 0.5},
        {"bin": 1, "position": 5, "base": 0.5, "base_std": 0.2, "in2": 1.0, "in2_std": 0.0,
         "in2_strict": 0.25},
        # base has a bin of only skipped queries; in2 has no third bin
        {"bin": 2, "position": 10, "base": "", "base_std": "", "in2": "", "in2_std": "",
         "in2_strict": ""},
    ]  # fmt: skip
    assert position_rows(scores, "code") == []


def test_depth_grid_lines_up_lengths_by_relative_position(scores: dict) -> None:
    lengths, grid = depth_grid(scores["in2"]["document"]["by_length"], 4)
    assert lengths == [512, 1024]
    # 512: 2 bins, centres at 25% and 75% -> depth cells 1 and 3; 1024: 4 bins, one per cell
    np.testing.assert_array_equal(grid[0], [np.nan, 1.0, np.nan, 0.5])
    np.testing.assert_array_equal(grid[1], [1.0, 0.0, 0.25, 0.5])
    _, coarse = depth_grid(scores["in2"]["document"]["by_length"], 2)
    np.testing.assert_array_equal(coarse[1], [0.5, 0.375])  # two bins averaged per cell


def test_write_report_writes_the_csv_dvc_plots_read_and_a_heatmap_per_model(
    scores: dict, tmp_path: Path
) -> None:
    write_report(scores, ["document"], tmp_path)
    with (tmp_path / "positions/document.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["position"] for r in table] == ["0", "5", "10"]
    assert [r["in2"] for r in table] == ["0.75", "1.0", ""]
    assert [r["base"] for r in table] == ["1.0", "0.5", ""]
    for model in ("base", "in2"):
        assert (tmp_path / f"heatmap_{model}.png").read_bytes()[:4] == b"\x89PNG"
    paper, strict = (tmp_path / "scores.md").read_text().split("Strict variants")
    assert "| in2 | 87.5 / 25.0 | 87.5 / 25.0 |" in paper  # document avg .875, gap .25
    assert "| base | 75.0 / 50.0 | 75.0 / 50.0 |" in paper
    assert "| in2 | 37.5 / 25.0 | 37.5 / 25.0 |" in strict
    assert "| base | – | – |" in strict  # no strict scores recorded for base here
    assert sorted(p.name for p in tmp_path.rglob("*.tmp")) == []  # nothing half-written left


def test_write_report_adds_the_paired_comparison(scores: dict, tmp_path: Path) -> None:
    from in2.report.bootstrap import paired_bootstrap

    gain = paired_bootstrap({(("s", 0), p): (0.0, 1.0) for p in range(5)}, 5, n_resamples=50)
    none = paired_bootstrap({(("s", 0), 0): (0.0, 0.0), (("s", 0), 1): (0.0, 1.0)}, 5)
    comparison = {"strict": {"document": gain.to_dict(), "code": none.to_dict()}}
    write_report(scores, ["document"], tmp_path, comparison)
    text = (tmp_path / "scores.md").read_text()
    assert "IN2-trained minus base, strict variants" in text
    assert "| document | 0.0 | 100.0 | +100.0 | [+100.0, +100.0] | yes | 0.0 | 0.0 | +0.0 |" in text
    assert "| code | 0.0 | 50.0 | +50.0 | [-20.7, +100.0] | no |" in text  # rescaled cell of 2
    assert json.loads((tmp_path / "comparison.json").read_text()) == comparison
