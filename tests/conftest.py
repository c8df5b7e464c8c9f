"""Shared fixtures: a tiny random-init Llama model with the real SmolLM2 tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny model folder (safetensors + tokenizer), built once per test session."""
    from in2.model import build_base_model, save_model
    from in2.params import ModelParams

    out = tmp_path_factory.mktemp("tiny_model")
    model, tokenizer = build_base_model(ModelParams(source="random_init"), seed=0)
    save_model(model, tokenizer, out)
    return out
