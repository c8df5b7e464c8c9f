"""`make run`'s first line: the estimate from the measured stage times, before any set-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from in2.eta import TIMES, cpu_kind, estimate

REPO = Path(__file__).resolve().parents[1]


def test_the_cpu_kind_comes_from_the_flags(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    assert cpu_kind(info) == "avx2"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16\n")
    assert cpu_kind(info) == "avx512"
    assert cpu_kind(tmp_path / "missing") == "avx2"  # the slower reading where unknown


def test_the_estimate_adds_set_up_only_on_a_fresh_machine() -> None:
    times = {
        "avx2": {
            "measured": "2026-12-01",
            "cores": 2,
            "setup_seconds": 240,
            "stages": {"train": 300, "probe@base": 150, "probe@in2": 150},
        }
    }
    fresh = estimate(times, "avx2", 2, set_up=True)
    assert fresh.startswith("make run: about 14 min on this AVX2 CPU (set-up ~4 min (once) + ")
    assert "dvc repro ~10 min" in fresh and "measured on" not in fresh
    again = estimate(times, "avx512", 8, set_up=False)  # no AVX-512 reading: the AVX2 one
    assert again.startswith("make run: about 10 min on this AVX512 CPU (dvc repro ~10 min;")
    assert "measured on 2 cores; measured under AVX2, so likely less here" in again


def test_the_recorded_times_cover_every_stage_of_the_pipeline() -> None:
    """bench/stage_times.sh wrote them; a stage added to dvc.yaml needs a new reading."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    names = set()
    for name, stage in stages.items():
        items = stage.get("foreach")
        names |= {f"{name}@{item}" for item in items} if items else {name}
    readings = json.loads((REPO / TIMES).read_text())
    assert "avx2" in readings and set(readings) <= {"avx512", "avx2"}
    for kind, reading in readings.items():
        assert set(reading["stages"]) == names, kind
        assert reading["cpu_capability"] == kind.upper() and reading["setup_seconds"] > 0


def test_make_run_says_it_first_with_the_standard_library_only() -> None:
    out = subprocess.run(
        [sys.executable, "-S", "-m", "in2.eta"],  # -S: no site-packages, as before set-up
        cwd=REPO,
        env={"PYTHONPATH": str(REPO / "src")},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("make run: about ") and out.count("\n") == 1
    makefile = (REPO / "Makefile").read_text()
    assert "run:\n\t@PYTHONPATH=src $(PYTHON) -m in2.eta\n" in makefile
