"""Scale-out: the accelerate launch configs, and the train stage on two processes.

- `test_config_loads_with_accelerate` / `test_fsdp_config_reaches_the_workers` (fast, ~3 s, no
  process started): every file in configs/accelerate/ loads with accelerate's own loader, and the
  FSDP ones turn into the worker environment and `FullyShardedDataParallelPlugin` we intend.
- `test_two_process_training_run` — THE TWO-PROCESS TEST (slow, ~30 s on 2 CPU cores): the
  real `accelerate launch --config_file configs/accelerate/multi_cpu_2proc.yaml stages/train.py`
  on the smoke profile's train section, in a temporary folder holding a tiny data/in2,
  data/segments, models/base and a passed quality gate. Two CPU processes (gloo). It checks the
  global batch arithmetic (global batch = micro batch × accumulation × world size 2), that
  exactly one MLflow run results, and that only the main process wrote models/in2.
- `test_two_processes_train_like_one` (+~18 s): the same stage under plain `python` gives the
  same per-step losses, gradient norms and validation loss as the two-process run.
- `test_fsdp_settings_the_loop_cannot_use_are_refused` (fast): the FSDP settings the loop needs.
- `test_a_stage_killed_mid_run_resumes_with_the_same_loss_curve` (~30 s): SIGKILL after the
  first checkpoint, then the same command again: the uninterrupted run's curve.

The FSDP path itself needs a GPU: tests/test_gpu.py.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from conftest import write_random_segments

from in2.lineage.fingerprint import dataset_fingerprint
from in2.params import deep_merge, parse_params

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs/accelerate"

# file -> (distributed_type, num_processes, num_machines, fsdp_offload_params or None)
EXPECTED = {
    "single_gpu.yaml": (DistributedType.NO, 1, 1, None),
    "multi_cpu_2proc.yaml": (DistributedType.MULTI_GPU, 2, 1, None),
    "fsdp_8gpu.yaml": (DistributedType.FSDP, 8, 1, False),
    "fsdp_multinode_offload.yaml": (DistributedType.FSDP, 128, 16, True),
}


def test_every_config_is_checked() -> None:
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerate(name: str) -> None:
    dist, n_proc, n_machines, offload = EXPECTED[name]
    config = load_config_from_file(str(CONFIGS / name))  # raises on unknown keys
    assert config.distributed_type == dist
    assert (config.num_processes, config.num_machines) == (n_proc, n_machines)
    assert config.mixed_precision in {"no", "bf16"}
    if name == "multi_cpu_2proc.yaml":
        assert config.use_cpu is True
    if offload is None:
        assert config.fsdp_config == {}
        return
    fsdp = config.fsdp_config
    assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert fsdp["fsdp_offload_params"] is offload
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] in {
        "MistralDecoderLayer",
        "LlamaDecoderLayer",
    }
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert config.mixed_precision == "bf16"


@pytest.mark.parametrize("name", ["fsdp_8gpu.yaml", "fsdp_multinode_offload.yaml"])
def test_fsdp_config_reaches_the_workers(name: str) -> None:
    """What `accelerate launch` would hand each worker, and the FSDP plugin built from it."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from torch.distributed.fsdp import ShardingStrategy, StateDictType

    argv = ["--config_file", str(CONFIGS / name), "--main_process_ip", "10.0.0.1"]
    args = launch_command_parser().parse_args([*argv, "--machine_rank", "3", "stages/train.py"])
    args, _, _ = _validate_launch_command(args)
    assert args.use_fsdp
    env = prepare_multi_gpu_env(args)
    assert args.nproc_per_node == "8"  # 8 GPUs per node in both set-ups
    if name == "fsdp_multinode_offload.yaml":
        assert (args.nnodes, args.node_rank) == ("16", 3)
        assert args.rdzv_endpoint == "10.0.0.1:29500"
    assert env["ACCELERATE_USE_FSDP"] == "true"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    # sync_module_states asks for the current accelerator device; pretend there is one.
    with (
        mock.patch.dict(os.environ, env, clear=True),
        mock.patch("accelerate.utils.dataclasses.is_cuda_available", return_value=True),
        mock.patch("torch.cuda.current_device", return_value=0),
    ):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 1
    assert plugin.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert plugin.cpu_offload.offload_params is (name == "fsdp_multinode_offload.yaml")
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT
    assert plugin.use_orig_params  # frozen embeddings beside trainable weights
    assert plugin.sync_module_states and plugin.cpu_ram_efficient_loading


# ---------------------------------------------------------------------------------------------
# The two-process test

SEG_LEN = 16
N_SEGMENTS = 12
N_TRAIN = 8
N_VAL = 3  # odd: the two ranks evaluate unequal shares (2 and 1)
WORLD = 2


def _smoke_params() -> dict:
    """params.yaml with configs/profiles/smoke.yaml merged in, as `in2 profile smoke` does."""
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    smoke = yaml.safe_load((REPO / "configs/profiles/smoke.yaml").read_text())
    merged = deep_merge(base, smoke)
    parse_params(merged, "params.yaml + smoke")
    return merged


def _write_inputs(root: Path, tiny_model_dir: Path, train_params: dict | None = None) -> None:
    """The train stage's inputs: models/base, data/segments, data/in2 and a passed gate;
    `train_params` override the smoke profile's train section."""
    shutil.copytree(tiny_model_dir, root / "models/base")

    rng = np.random.default_rng(0)
    write_random_segments(root / "data/segments", N_SEGMENTS, SEG_LEN, rng)

    def examples(prefix: str, n: int) -> pd.DataFrame:
        contexts = [
            rng.choice(N_SEGMENTS, size=3 + i % 3, replace=False).tolist() for i in range(n)
        ]
        return pd.DataFrame(
            {
                "example_id": [f"{prefix}{i}" for i in range(n)],
                "context_segments": contexts,
                "question": [f"What follows cue {i}?" for i in range(n)],
                "answer": [f"the words of answer {i}" for i in range(n)],
                "n_tokens": [SEG_LEN * len(c) for c in contexts],
            }
        )

    (root / "data/in2").mkdir(parents=True)
    examples("train", N_TRAIN).to_parquet(root / "data/in2/train.parquet", index=False)
    examples("val", N_VAL).to_parquet(root / "data/in2/val.parquet", index=False)

    # The gate records the files by the relative paths the stage checks them under.
    data = [Path("data/in2/train.parquet"), Path("data/in2/val.parquet")]
    cwd = Path.cwd()
    os.chdir(root)
    try:
        summary = {"success": True, "dataset": dataset_fingerprint(data)}
    finally:
        os.chdir(cwd)
    (root / "reports/data_quality").mkdir(parents=True)
    (root / "reports/data_quality/summary.json").write_text(json.dumps(summary))
    params = _smoke_params()
    params["train"].update(train_params or {})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _train(
    name: str,
    launcher: list[str],
    tiny_model_dir: Path,
    factory: pytest.TempPathFactory,
    train_params: dict | None = None,
    gpu: bool = False,
) -> tuple[Path, subprocess.CompletedProcess]:
    """Run the train stage with `launcher` in a fresh folder; its own MLflow store. CPU
    processes even where a GPU exists, unless `gpu`."""
    root = factory.mktemp(name)
    _write_inputs(root, tiny_model_dir, train_params)
    return root, _run_stage(root, launcher, gpu)


def _run_stage(root: Path, launcher: list[str], gpu: bool = False) -> subprocess.CompletedProcess:
    """The train stage in `root` (inputs written by `_write_inputs`) under `launcher`."""
    cmd, env = _stage_command(root, launcher, gpu)
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def _stage_command(root: Path, launcher: list[str], gpu: bool) -> tuple[list[str], dict]:
    """The command line and environment of the train stage in `root`."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if not gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    for var in ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME"):
        env.pop(var, None)
    return [*launcher, str(REPO / "stages/train.py"), "--params", "params.yaml"], env


@pytest.fixture(scope="module")
def two_process_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    accelerate = str(Path(sys.executable).parent / "accelerate")
    config = str(CONFIGS / "multi_cpu_2proc.yaml")
    launcher = [accelerate, "launch", "--config_file", config]
    return _train("two_proc", launcher, tiny_model_dir, tmp_path_factory)


@pytest.fixture(scope="module")
def one_process_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return _train("one_proc", [sys.executable], tiny_model_dir, tmp_path_factory)


def test_two_process_training_run(two_process_run) -> None:
    """THE TWO-PROCESS TEST: 2 CPU ranks train once, log once, write models/in2 once."""
    root, out = two_process_run
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]

    train = _smoke_params()["train"]
    micro, global_ = train["micro_batch_size"], train["global_batch_size"]
    accumulation = global_ // (micro * WORLD)
    assert micro * accumulation * WORLD == global_
    steps = math.ceil(N_TRAIN * train["epochs"] / global_)

    # Both ranks derive the same plan (each logs it) ...
    plan_line = (
        f"global batch {global_} = micro batch {micro} × gradient accumulation {accumulation} "
        f"× world size {WORLD}"
    )
    assert log.count(plan_line) == WORLD, log[-6000:]
    # ... but only the main process writes the checkpoint and metrics.
    assert log.count("wrote models/in2") == 1

    db = sqlite3.connect(root / "mlflow.db")
    runs = db.execute("select run_uuid, name, status from runs").fetchall()
    assert [(name, status) for _, name, status in runs] == [("train", "FINISHED")]
    run_id = runs[0][0]
    params = dict(db.execute("select key, value from params where run_uuid = ?", (run_id,)))
    assert params["world_size"] == str(WORLD)
    assert params["gradient_accumulation"] == str(accumulation)
    assert params["train.micro_batch_size"] == str(micro)
    assert params["train.global_batch_size"] == str(global_)
    factors = ("train.micro_batch_size", "gradient_accumulation", "world_size")
    assert math.prod(int(params[k]) for k in factors) == global_
    metrics = dict(
        db.execute("select key, value from latest_metrics where run_uuid = ?", (run_id,)).fetchall()
    )
    assert metrics["global_batch_size"] == global_
    assert metrics["gradient_accumulation"] == accumulation
    assert np.isfinite(metrics["val_loss"])
    loss_steps = [
        s
        for (s,) in db.execute(
            "select step from metrics where run_uuid = ? and key = 'loss' order by step", (run_id,)
        )
    ]
    assert loss_steps == list(range(1, steps + 1))  # one series: rank 1 logged nothing

    models = root / "models"
    assert sorted(p.name for p in models.iterdir()) == ["base", "in2"]  # no leftover temp dirs
    assert (models / "in2/model.safetensors").is_file()
    state = json.loads((models / "in2/trainer_state.json").read_text())
    assert state["batch"]["world_size"] == WORLD
    assert state["batch"]["gradient_accumulation"] == accumulation
    assert state["batch"]["global_batch_size"] == global_
    assert state["optimizer_steps"] == steps
    assert state["examples_seen"] == steps * global_
    summary = json.loads((root / "reports/data_quality/summary.json").read_text())
    assert state["dataset_md5"] == summary["dataset"]["md5"]
    train_metrics = json.loads((root / "metrics/train.json").read_text())
    assert train_metrics["optimizer_steps"] == steps and train_metrics["examples"] == N_TRAIN
    assert len((root / "metrics/train_loss.csv").read_text().splitlines()) == steps + 1


def test_two_processes_train_like_one(two_process_run, one_process_run) -> None:
    """Same params and data on 1 process (accumulation 4) and on 2 (accumulation 2 each): the
    same global batches, so the same losses and gradient norms step by step and the same
    validation loss."""
    states = []
    for root, out in (two_process_run, one_process_run):
        assert out.returncode == 0, (out.stdout + out.stderr)[-6000:]
        states.append(json.loads((root / "models/in2/trainer_state.json").read_text()))
    two, one = states
    assert (two["batch"]["world_size"], one["batch"]["world_size"]) == (WORLD, 1)
    assert two["batch"]["global_batch_size"] == one["batch"]["global_batch_size"]
    assert one["batch"]["gradient_accumulation"] == WORLD * two["batch"]["gradient_accumulation"]
    losses = [[h["loss"] for h in s["log_history"]] for s in states]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    # Adam hides a wrong gradient scale from the losses; the pre-clipping norm does not.
    norms = [[h["grad_norm"] for h in s["log_history"]] for s in states]
    assert norms[0] == pytest.approx(norms[1], rel=1e-3)
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-4)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"use_orig_params": False}, "set `fsdp_use_orig_params: true` in the accelerate config"),
        ({"fsdp_version": 2}, "FSDP version 2 is not supported by the train stage yet"),
    ],
)
def test_fsdp_settings_the_loop_cannot_use_are_refused(settings: dict, message: str) -> None:
    """A real FSDP plugin; the accelerator around it is a stand-in, because accelerate builds
    no FSDP state without a GPU."""
    from types import SimpleNamespace

    from accelerate.utils import FullyShardedDataParallelPlugin

    from in2.params import InputError
    from in2.train.loop import _check_fsdp

    plugin = FullyShardedDataParallelPlugin(sync_module_states=False, **settings)
    accelerator = SimpleNamespace(
        distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=plugin)
    )
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        _check_fsdp(accelerator)
    plugin.use_orig_params, plugin.fsdp_version = True, 1
    _check_fsdp(accelerator)  # the configs' settings pass


def test_a_stage_killed_mid_run_resumes_with_the_same_loss_curve(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`kill -9` of `python stages/train.py` right after its first checkpoint (step 2 of 20);
    the same command again resumes there and ends with the uninterrupted run's curve."""
    # 8 examples / global batch 4 -> 20 steps; fp32: bf16 autocast on a CPU is not bitwise
    # deterministic between two runs (a grad norm differed by 1.6e-4 in 1 run of 6)
    settings = {"epochs": 10, "checkpoint_every": 2, "precision": "fp32"}
    whole_root, whole = _train(
        "whole", [sys.executable], tiny_model_dir, tmp_path_factory, settings
    )
    assert whole.returncode == 0, (whole.stdout + whole.stderr)[-6000:]

    root = tmp_path_factory.mktemp("killed")
    _write_inputs(root, tiny_model_dir, settings)
    cmd, env = _stage_command(root, [sys.executable], gpu=False)
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    while not list(root.glob("checkpoints/*/step-000002/manifest.json")):
        assert proc.poll() is None, proc.stderr.read().decode()[-6000:]
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.005)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    proc.stderr.close()
    assert not (root / "models/in2").exists()  # nothing published by the killed run

    resumed = _run_stage(root, [sys.executable])
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-6000:]
    assert "resuming from" in log and "of 20)" in log, log[-6000:]
    step = int(log.split("resuming from")[1].split("(step ")[1].split(" ")[0])
    assert 2 <= step < 20  # killed mid-way: at least one later checkpoint may have landed
    curves = [
        [(h["step"], h["loss"], h["grad_norm"]) for h in _state(r)["log_history"]]
        for r in (whole_root, root)
    ]
    assert [s for s, _, _ in curves[1]] == list(range(1, 21))
    for got, want in zip(curves[1], curves[0], strict=True):
        assert got == pytest.approx(want, rel=1e-5)
    assert _state(root)["val_loss"] == pytest.approx(_state(whole_root)["val_loss"], rel=1e-5)


def _state(root: Path) -> dict:
    return json.loads((root / "models/in2/trainer_state.json").read_text())
