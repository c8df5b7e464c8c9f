"""The sharded segment stage: shards merged are byte for byte what one run writes, through the
stage script and through the DVC `foreach` of docs/scale-out.md on separate clones; a refused
shard is named, with the command that rebuilds it."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from contextlib import chdir
from itertools import pairwise
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import git_commit, repo_env, run_ok

from in2.data.corpus import SCHEMA
from in2.data.segments import INDEX_FILE, TOKENS_FILE
from in2.data.shards import SHARD_FILE, shard_dir
from in2.data.units import UNITS_FILE
from in2.lineage.code_deps import differences
from in2.lineage.fingerprint import file_md5
from in2.params import InputError, load_params
from in2.stage import parser

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "scale-out.md"
SECTION = "## The data stages past one machine: sharding `segment`"
N_DOCS = 601
ROW_GROUP_ROWS = 128
"""Rows per row group of the test corpus: every shard boundary falls inside a row group."""
SEGMENT = {"length": 16, "min_tokens": 4, "tail": "drop", "units": ["record", "entry"]}
OUTPUTS = (TOKENS_FILE, INDEX_FILE, UNITS_FILE)


def corpus(n: int = N_DOCS, extra: str = "") -> pd.DataFrame:
    """Documents in shuffled id order (as the corpus stage writes an uncapped source): titled and
    untitled, with and without descriptions, some too short to give a segment."""
    order = np.random.default_rng(1).permutation(n)
    return pd.DataFrame(
        {
            "doc_id": [f"local-{i:016x}" for i in order],
            "title": [f"Title {i}" if i % 3 else "" for i in order],
            "text": [
                "Tiny." if i % 11 == 0 else f"Title {i} is a thing{extra}. " + "word " * (i % 97)
                for i in order
            ],
            "description": [f"thing {i}" if i % 5 else "" for i in order],
            "source": "local:docs.jsonl",
        }
    )


def workspace(folder: Path, tokenizer_dir: Path, segment: dict[str, Any] = SEGMENT) -> Path:
    """A folder to run the stage in: the corpus table, the tokenizer files, params.yaml."""
    (folder / "data/corpus").mkdir(parents=True)
    (folder / "models/base").mkdir(parents=True)
    for f in tokenizer_dir.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy2(f, folder / "models/base" / f.name)
    write_corpus(folder, corpus())
    (folder / "params.yaml").write_text(yaml.safe_dump({"seed": 3, "segment": segment}))
    return folder


def write_corpus(folder: Path, docs: pd.DataFrame) -> None:
    table = pa.Table.from_pandas(docs, schema=SCHEMA, preserve_index=False)
    pq.write_table(table, folder / "data/corpus/train.parquet", row_group_size=ROW_GROUP_ROWS)


def stage_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("segment_stage", REPO / "stages" / "segment.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STAGE = stage_module()


def segment(folder: Path, *argv: str) -> None:
    """`python stages/segment.py ARGV` in `folder`, in this process (no interpreter start-up)."""
    p = parser(None)
    STAGE.configure(p)
    with chdir(folder):
        STAGE.main(load_params("params.yaml"), p.parse_args(list(argv)))


def outputs(folder: Path) -> dict[str, Any]:
    """What the stage publishes: the bytes of data/segments/ and the metrics."""
    files = {name: (folder / "data/segments" / name).read_bytes() for name in OUTPUTS}
    return {**files, "metrics": json.loads((folder / "metrics/segment.json").read_text())}


@pytest.fixture(scope="module")
def unsharded(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run's outputs on the test corpus."""
    folder = workspace(tmp_path_factory.mktemp("unsharded"), tiny_model_dir)
    segment(folder)
    return outputs(folder)


@pytest.mark.parametrize("of, tail", [(2, "drop"), (3, "merge")])
def test_merged_shards_are_the_unsharded_output_byte_for_byte(tiny_model_dir, tmp_path, of, tail):
    params = {**SEGMENT, "tail": tail, "entry_layouts": ["heading", "bullet"]}
    one_run = workspace(tmp_path / "one", tiny_model_dir, params)
    segment(one_run)
    folder = workspace(tmp_path / "sharded", tiny_model_dir, params)
    for k in range(of):
        segment(folder, "--shard", str(k), "--of", str(of))
    segment(folder, "--merge", str(of))
    merged, expected = outputs(folder), outputs(one_run)
    for name in [*OUTPUTS, "metrics"]:
        assert merged[name] == expected[name], name
    metrics = expected["metrics"]
    assert metrics["units"]["record"] > 0 and metrics["units"]["entry"] > 0
    assert 0 < metrics["documents_with_segments"] < metrics["documents"] == N_DOCS
    rows = [json.loads((folder / shard_dir(k) / SHARD_FILE).read_text())["rows"] for k in range(of)]
    assert rows[0][0] == 0 and rows[-1][1] == N_DOCS
    assert all(a[1] == b[0] for a, b in pairwise(rows))
    assert all(r % ROW_GROUP_ROWS for r, _ in rows[1:])  # boundaries inside row groups


def shards_of(folder: Path, of: int) -> None:
    for k in range(of):
        segment(folder, "--shard", str(k), "--of", str(of))


def refusal(folder: Path, *argv: str) -> str:
    with pytest.raises(InputError) as err:
        segment(folder, *argv)
    return str(err.value)


def test_a_missing_shard_is_named_with_the_command_that_builds_it(tiny_model_dir, tmp_path):
    folder = workspace(tmp_path, tiny_model_dir)
    segment(folder, "--shard", "0", "--of", "2")
    assert refusal(folder, "--merge", "2") == (
        "shard 1 of 2: data/segments-shards/1 is missing; "
        "build it with `python stages/segment.py --shard 1 --of 2`"
    )
    assert not (folder / "data/segments").exists()


def test_a_shard_of_another_count_is_refused(tiny_model_dir, tmp_path):
    folder = workspace(tmp_path, tiny_model_dir)
    shards_of(folder, 3)
    assert refusal(folder, "--merge", "2") == (
        "shard 0 of 2: data/segments-shards/0 holds shard 0 of 3; "
        "rebuild it with `python stages/segment.py --shard 0 --of 2`"
    )


def test_a_shard_of_another_corpus_is_refused(tiny_model_dir, tmp_path):
    folder = workspace(tmp_path, tiny_model_dir)
    shards_of(folder, 2)
    old = json.loads((folder / shard_dir(0) / SHARD_FILE).read_text())["inputs"]["files"]
    write_corpus(folder, corpus(extra=" indeed"))
    new = file_md5(folder / "data/corpus/train.parquet")
    assert refusal(folder, "--merge", "2") == (
        "shard 0 of 2: data/segments-shards/0 was cut from another data/corpus/train.parquet "
        f"(md5 {old['data/corpus/train.parquet']}, now {new}); "
        "rebuild it with `python stages/segment.py --shard 0 --of 2`"
    )


def test_a_shard_cut_with_other_params_is_refused(tiny_model_dir, tmp_path):
    folder = workspace(tmp_path, tiny_model_dir)
    shards_of(folder, 2)
    (folder / "params.yaml").write_text(yaml.safe_dump({"segment": {**SEGMENT, "tail": "merge"}}))
    assert refusal(folder, "--merge", "2") == (
        "shard 0 of 2: data/segments-shards/0 was cut with segment params "
        "{'length': 16, 'min_tokens': 4, 'tail': 'drop'}, params.yaml says "
        "{'length': 16, 'min_tokens': 4, 'tail': 'merge'}; "
        "rebuild it with `python stages/segment.py --shard 0 --of 2`"
    )


def test_shard_arguments_are_checked(tiny_model_dir, tmp_path):
    folder = workspace(tmp_path, tiny_model_dir)
    assert refusal(folder, "--shard", "2", "--of", "2") == (
        "--shard 2 --of 2: the shard must be one of 0..1 and --of at least 1"
    )
    assert refusal(folder, "--shard", "0") == (
        "--shard K and --of N go together: shard K of N (K = 0..N-1)"
    )
    assert not (folder / "data/segments-shards").exists()


# --- the dvc.yaml of docs/scale-out.md, on three clones ---------------------------------------


def doc_dvc_yaml() -> str:
    """The first yaml block of the sharding section of docs/scale-out.md."""
    section = DOC.read_text().split(SECTION, 1)[1]
    match = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert match, f"{DOC}: no yaml block after {SECTION!r}"
    return match.group(1)


def test_the_documented_dvc_foreach_shards_on_separate_clones(unsharded, tiny_model_dir, tmp_path):
    """Two clones run one shard each and push it with the run-cache to a shared remote; on a
    third, `dvc repro --pull` restores both shards from it without running them, and merges."""
    origin = workspace(tmp_path / "origin", tiny_model_dir)
    shutil.copytree(
        REPO / "src" / "in2", origin / "src" / "in2", ignore=shutil.ignore_patterns("__pycache__")
    )
    (origin / "stages").mkdir()
    shutil.copy2(REPO / "stages" / "segment.py", origin / "stages" / "segment.py")
    (origin / "dvc.yaml").write_text(doc_dvc_yaml())
    assert differences(origin) == {}  # the documented code deps are what the stage runs
    env = repo_env(origin)
    run_ok(["git", "init", "-q"], origin, env)
    run_ok(["dvc", "init", "-q"], origin, env)
    run_ok(["dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote")], origin, env)
    git_commit(origin, env, "sharded segment")
    for k in (0, 1):
        node = tmp_path / f"node{k}"
        run_ok(["git", "clone", "-q", str(origin), str(node)], tmp_path, env)
        run_ok(["dvc", "repro", "-s", f"segment_shard@{k}"], node, repo_env(node))
        run_ok(["dvc", "push", "--run-cache"], node, repo_env(node))
    merger = tmp_path / "merger"
    run_ok(["git", "clone", "-q", str(origin), str(merger)], tmp_path, env)
    out = run_ok(["dvc", "repro", "--pull"], merger, repo_env(merger)).stdout
    for k in (0, 1):
        assert f"Stage 'segment_shard@{k}' is cached - skipping run" in out, out
    assert "--shard" not in out, out  # neither shard ran here
    merged = outputs(merger)
    for name in [*OUTPUTS, "metrics"]:
        assert merged[name] == unsharded[name], name
    status = ["dvc", "status"]
    assert run_ok(status, merger, env).stdout.strip() == "Data and pipelines are up to date."
    params = yaml.safe_load((merger / "params.yaml").read_text())
    (merger / "params.yaml").write_text(yaml.safe_dump({**params, "seed": 4}))
    changed = run_ok(status, merger, env).stdout
    assert changed.startswith("segment:") and "segment_shard" not in changed, changed
