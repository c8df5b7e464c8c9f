"""The train stage on a GPU: bf16 and PyTorch FSDP (skipped where there is no CUDA device).

CI and laptops have no GPU, and accelerate refuses FSDP without one, so these run only where a
GPU is (`pytest -m gpu`; docs/scale-out.md says how they were last run). Each launches the real
stage, as `tests/test_distributed.py` does on CPUs, on the smoke profile's train section:

- `single_gpu_run`: `accelerate launch --config_file configs/accelerate/single_gpu.yaml`.
- `fsdp_run`: `configs/accelerate/fsdp_8gpu.yaml` with `--num_processes 1` (one GPU here) and the
  tiny Llama's layer class to wrap; resumable checkpoints every 2 steps.

One GPU cannot show the multi-rank collectives (the 2-process CPU test covers equal evaluation
counts and single writes); it does run everything FSDP changes in the loop: wrapping, the
optimizer on the original parameters, mixed precision, clipping through the FSDP module,
gathering the full state dict for models/in2, and accelerate's FSDP save/load of checkpoints.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import CONFIGS, _run_stage, _state, _train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="no CUDA device: the bf16/FSDP train checks need a GPU (`pytest -m gpu` on one)",
    ),
]

ACCELERATE = str(Path(sys.executable).parent / "accelerate")
FSDP_ONE_GPU = [
    ACCELERATE,
    "launch",
    "--config_file",
    str(CONFIGS / "fsdp_8gpu.yaml"),
    "--num_processes",
    "1",
    "--fsdp_transformer_layer_cls_to_wrap",
    "LlamaDecoderLayer",  # the tiny test model is a Llama
]


@pytest.fixture(scope="module")
def single_gpu_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    launcher = [ACCELERATE, "launch", "--config_file", str(CONFIGS / "single_gpu.yaml")]
    return _train("single_gpu", launcher, tiny_model_dir, tmp_path_factory, gpu=True)


@pytest.fixture(scope="module")
def fsdp_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return _train(
        "fsdp",
        FSDP_ONE_GPU,
        tiny_model_dir,
        tmp_path_factory,
        train_params={"checkpoint_every": 2},
        gpu=True,
    )


def _ok(out) -> None:
    assert out.returncode == 0, (out.stdout + out.stderr)[-8000:]


def test_fsdp_trains_like_single_gpu(single_gpu_run, fsdp_run, tiny_model_dir: Path) -> None:
    """Same data and params: bf16 losses agree step by step, and the full weights FSDP saved are
    the trained ones (much closer to the single-GPU result than to the base model)."""
    (single_root, single_out), (fsdp_root, fsdp_out) = single_gpu_run, fsdp_run
    _ok(single_out)
    _ok(fsdp_out)
    log = fsdp_out.stdout + fsdp_out.stderr
    assert "accelerate: FSDP on cuda" in log, log[-4000:]
    assert "accelerate: NO on cuda" in single_out.stdout + single_out.stderr
    single, fsdp = _state(single_root), _state(fsdp_root)
    assert fsdp["optimizer_steps"] == single["optimizer_steps"] > 1
    losses = [[h["loss"] for h in s["log_history"]] for s in (single, fsdp)]
    assert losses[1] == pytest.approx(losses[0], rel=2e-2)  # bf16 autocast vs FSDP's bf16 policy
    assert fsdp["val_loss"] == pytest.approx(single["val_loss"], rel=2e-2)

    base = load_file(tiny_model_dir / "model.safetensors")
    trained = load_file(single_root / "models/in2/model.safetensors")
    sharded = load_file(fsdp_root / "models/in2/model.safetensors")
    assert sorted(sharded) == sorted(trained) == sorted(base)
    moved = sum((trained[k] - base[k]).abs().sum().item() for k in base)
    apart = sum((sharded[k] - trained[k]).abs().sum().item() for k in base)
    assert moved > 0
    assert apart < 0.1 * moved, (apart, moved)
    assert all(t.dtype == torch.float32 for t in sharded.values())  # fp32 master weights saved


def test_fsdp_checkpoint_resumes(fsdp_run) -> None:
    """accelerate's FSDP checkpoint (model, optimizer, scheduler, RNG) restores: with the
    newest checkpoint removed (as if the run had been killed before writing it), a second run in
    the same folder resumes at the one before and ends with the same curve and validation loss.
    (A finished run's last checkpoint is never resumed: that would publish old weights.)"""
    root, first = fsdp_run
    _ok(first)
    before = _state(root)
    steps = before["optimizer_steps"]
    (run,) = (root / "checkpoints").iterdir()
    shutil.rmtree(run / f"step-{steps:06d}")
    kept = int(sorted(run.glob("step-*"))[-1].name.removeprefix("step-"))
    again = _run_stage(root, FSDP_ONE_GPU, gpu=True)
    _ok(again)
    assert f"(step {kept} of {steps})" in again.stdout + again.stderr
    after = _state(root)
    assert [h["step"] for h in after["log_history"]] == [h["step"] for h in before["log_history"]]
    assert [h["loss"] for h in after["log_history"]] == pytest.approx(
        [h["loss"] for h in before["log_history"]], rel=1e-3
    )
    assert after["val_loss"] == pytest.approx(before["val_loss"], rel=1e-3)
