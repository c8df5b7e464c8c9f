"""params.yaml is validated before any work; errors name the dotted key and what was expected."""

from pathlib import Path

import pytest
import yaml

from in2.cli import apply_profile
from in2.params import InputError, ParamsError, deep_merge, load_params, parse_params

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_and_profiles_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.segment.length == 128
    # the default is the CPU recipe of docs/results.md; the paper profile keeps the paper's mix
    assert params.synthesize.mix == {
        "fine_grained": 0.75,
        "integration": 0.1,
        "short": 0.05,
        "general": 0.1,
    }
    assert params.segment.units == ["record", "entry"]
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    profiles = {}
    for profile in (REPO / "configs/profiles").glob("*.yaml"):
        merged = deep_merge(base, yaml.safe_load(profile.read_text()))
        profiles[profile.stem] = parse_params(merged, str(profile))
    paper = profiles["paper"]
    assert paper.synthesize.mix == {
        "fine_grained": 0.63,
        "integration": 0.17,
        "short": 0.09,
        "general": 0.11,
    }
    assert paper.segment.units == [] and paper.qa.tasks["continuation"] == 1.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"synthesize": {"mix": {"fine_grained": 0.5, "integration": 0.4}}},
            "synthesize.mix: fractions must sum to 1, got 0.9",
        ),
        (
            {"synthesize": {"mix": {"fine_grained": 0.9, "long": 0.1}}},
            "synthesize.mix: unknown kind(s) ['long']",
        ),
        ({"segment": {"length": 0}}, "segment.length: Input should be greater than 0 (got 0)"),
        (
            {"synthesize": {"context_tokens": {"min": 2048, "max": 1024}}},
            "synthesize.context_tokens: min (2048) must be <= max (1024)",
        ),
        ({"trian": {"epochs": 1}}, "trian: unknown key"),
        (
            {"train": {"learning_rate": "fast"}},
            "train.learning_rate: Input should be a valid number",
        ),
        (
            {"train": {"micro_batch_size": 3}},
            "train: global_batch_size (4) must be a multiple of micro_batch_size (3)",
        ),
        ({"validate": {"alpha": 1.5}}, "validate.alpha: Input should be less than 1"),
        (
            {"synthesize": {"context_tokens": {"min": 256, "max": 1024, "bins": 4}}},
            "bin width (max - min) / bins = 192 is not a multiple of segment.length (128)",
        ),
        ({"corpus": {"source": "local"}}, "corpus: path is required when source is 'local'"),
        ({"corpus": {"source": "hf"}}, "corpus: dataset is required when source is 'hf'"),
        ({"segment": {"tail": "keep"}}, "segment.tail: Input should be 'drop' or 'merge'"),
        (
            {"qa": {"generator": "gpt"}},
            "qa.generator: Input should be 'template' or 'openai'",
        ),
        (
            {"model": {"source": "pretrained"}},
            "model: name_or_path is required when source is 'pretrained'",
        ),
        (
            {"probe": {"context_tokens": [1024, 1024]}},
            "probe.context_tokens: lengths must be distinct (got [1024, 1024])",
        ),
        (
            {"probe": {"context_tokens": [1024, 0]}},
            "probe.context_tokens.1: Input should be greater than 0",
        ),
        (
            {"probe": {"context_tokens": [8192, 32768], "items_per_context": {"code": 800}}},
            "probe: probe.items_per_context fixes the items of every context, so "
            "probe.context_tokens must hold one length (got [8192, 32768])",
        ),
        ({"probe": {"binning": "half"}}, "probe.binning: Input should be 'paper' or 'all'"),
        (
            {"probe": {"items_per_context": {"poems": 10}}},
            "probe.items_per_context.poems.[key]: Input should be",
        ),
    ],
)
def test_bad_params_name_the_key(override, message):
    with pytest.raises(ParamsError) as err:
        parse_params(override, "params.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("params.yaml: invalid params")


def test_probe_lengths_accept_one_number_or_a_list():
    assert parse_params({"probe": {"context_tokens": 2048}}).probe.context_tokens == [2048]
    lengths = parse_params({"probe": {"context_tokens": [8192, 32768]}}).probe.context_tokens
    assert lengths == [8192, 32768]


def test_missing_params_file_says_what_to_do(tmp_path):
    with pytest.raises(ParamsError, match="not found; run from the repository root"):
        load_params(tmp_path / "params.yaml")


def test_profile_merges_and_validates(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    changed = apply_profile("smoke", params)
    assert "model.source" in changed
    assert load_params(params).model.source == "random_init"
    with pytest.raises(InputError, match="no profile 'nope' in configs/profiles/; known profiles"):
        apply_profile("nope", params)
