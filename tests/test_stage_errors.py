"""A stage fails on bad input with one readable line and exit code 2, before doing any work."""

import os
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


@pytest.mark.parametrize(
    ("name_or_path", "message"),
    [
        ("/nope/model", "error: model.name_or_path: /nope/model is not a folder; point it at"),
        (
            "no-such-org/no-such-model",
            "error: model.name_or_path: cannot load 'no-such-org/no-such-model' (",
        ),
    ],
)
def test_a_missing_base_model_path_or_hub_id_is_one_line(tmp_path, name_or_path, message):
    (tmp_path / "params.yaml").write_text(
        f"model:\n  source: pretrained\n  name_or_path: {name_or_path}\n"
    )
    out = subprocess.run(
        [sys.executable, str(REPO / "stages/base_model.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    if name_or_path.startswith("no-such"):
        assert "`hf download no-such-org/no-such-model`" in out.stderr
    assert not (tmp_path / "models").exists()
