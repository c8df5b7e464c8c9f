"""A stage fails on bad input with one readable line and exit code 2, before doing any work."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _stage(name: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / f"{name}.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
    )


def test_bad_params_stop_the_stage_with_the_dotted_key(tmp_path):
    (tmp_path / "params.yaml").write_text("segment:\n  length: -5\n")
    out = _stage("corpus", tmp_path)
    assert out.returncode == 2
    assert "error: params.yaml: invalid params" in out.stderr
    assert "segment.length: Input should be greater than 0 (got -5)" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "data").exists()


def test_missing_input_names_the_stage_that_builds_it(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    out = _stage("qa", tmp_path)
    assert out.returncode == 2
    assert "data/segments/tokens.npy is missing; run `dvc repro segment` to build it" in out.stderr


def test_probe_of_a_model_not_built_yet(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    out = _stage("probe", tmp_path, "--model", "in2")
    assert out.returncode == 2
    assert "models/in2 does not exist; run `dvc repro train` first" in out.stderr


def test_missing_model_folder_says_how_to_build_it(tmp_path):
    from in2.model import load_model

    with pytest.raises(
        FileNotFoundError, match=r"model folder .*nope does not exist; run `dvc repro`"
    ):
        load_model(tmp_path / "nope")
