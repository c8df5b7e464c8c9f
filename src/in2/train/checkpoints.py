"""Resumable training checkpoints: a killed `train` continues where it stopped, never pays twice.

Every `train.checkpoint_every` optimizer steps and at the end, `checkpoints/<run key>/step-N/`
receives the accelerate state (model weights as safetensors, optimizer, scheduler and the RNG
states of every process), the tokenizer, the step log so far and a manifest with the md5 of every
file. The run key (`run_identity`) hashes what makes two runs the same run: train and model params,
the training data's DVC md5, the md5 of the train stage's code, the base model's md5, the world
size and the resolved precision. A changed recipe, code or set-up therefore never resumes from a
foreign checkpoint and never overwrites one. A checkpoint is written to a temporary folder and
renamed into place. On resume one whose files do not match their recorded md5s is skipped with a
warning (and kept for inspection), and the run resumes from the newest intact checkpoint before it.
A checkpoint of a finished run (its step is the last one) is never resumed: that would train no
step and publish the old weights again; the run trains from step 0 and replaces it.

The folder is a DVC output with `persist: true` (dvc.yaml): DVC keeps it between runs instead of
deleting it before `train` starts, which is what makes resuming possible under `dvc repro`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase

from in2.lineage.fingerprint import file_md5, path_md5
from in2.params import InputError, Params
from in2.train.inputs import TrainInputs

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STATE = "in2_state.json"
KEEP = 2
"""Checkpoints kept per run: the newest, and the one before in case the newest is damaged."""
PACKAGE = Path(__file__).resolve().parent
"""in2/train: its sources stand in for the stage's code deps outside a DVC repository."""
STAGE_SCRIPT = PACKAGE.parents[2] / "stages" / "train.py"
"""stages/train.py of a source checkout (absent where in2 is installed as a package)."""


def run_identity(
    params: Params, inputs: TrainInputs, deps: Sequence[str], accelerator: Accelerator
) -> dict[str, Any]:
    """What makes two runs the same run, so that one may resume the other's checkpoints.

    - `train`, `model`: the recipe; all train params but `num_workers` and `checkpoint_every`,
      which change neither the steps nor the weights;
    - `data`: the training data's DVC md5 (the version the quality gate passed);
    - `code_md5`: the train stage's code (`code_md5`): changed code computes other steps, and
      its checkpoints hold the old code's weights;
    - `base_model_md5`: the weights the run started from (DVC's md5 of the folder);
    - `world_size`: the processes the global batch is split over; every process's RNG state is
      saved and restored per rank;
    - `precision`: after `auto` is resolved (fp32 or bf16), which depends on the hardware: the
      same params compute other losses on a machine with native bf16.
    """
    return {
        "train": params.train.model_dump(exclude={"num_workers", "checkpoint_every"}),
        "model": params.model.model_dump(),
        "data": inputs.dataset_md5,
        "code_md5": code_md5(deps),
        "base_model_md5": path_md5(inputs.base_model),
        "world_size": accelerator.num_processes,
        "precision": resolved_precision(accelerator),
    }


def resolved_precision(accelerator: Accelerator) -> str:
    """`fp32` or the autocast dtype accelerate runs with (`bf16`)."""
    return "fp32" if accelerator.mixed_precision == "no" else str(accelerator.mixed_precision)


def code_md5(deps: Sequence[str]) -> str:
    """One md5 over the md5s of the `.py` files among the train stage's deps, in path order.

    `deps` are the stage's deps as DVC resolves them (`in2.lineage.tracking.stage_inputs`).
    Outside a DVC repository they are empty; the train package's own sources (in2/train/*.py)
    and stages/train.py, where present, stand in for them, so a run by hand still gets a new
    run key when the training code changes.
    """
    files = sorted(Path(d) for d in deps if d.endswith(".py"))
    if not files:
        files = sorted(PACKAGE.glob("*.py"))
        files += [STAGE_SCRIPT] if STAGE_SCRIPT.is_file() else []
    return hashlib.md5("".join(file_md5(f) for f in files).encode()).hexdigest()


@dataclass(frozen=True)
class Checkpoints:
    """The checkpoints of one run (one run key)."""

    root: Path

    @classmethod
    def for_run(cls, base: Path, identity: dict[str, Any]) -> Checkpoints:
        key = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
        return cls(base / key[:12])

    def others(self) -> list[Path]:
        """The complete checkpoints of the other run keys beside this one."""
        return sorted(
            p
            for p in self.root.parent.glob("*/step-*")
            if p.parent != self.root and (p / MANIFEST).is_file()
        )

    def latest(self) -> Path | None:
        """The newest complete checkpoint whose files match their md5s.

        Temporary folders of a killed save are ignored. A damaged checkpoint (a file changed,
        truncated or missing since it was written) is skipped with a warning and left in place
        for inspection: the run resumes from the one before, or starts over if none is intact.
        """
        done = sorted(p for p in self.root.glob("step-*") if (p / MANIFEST).is_file())
        for path in reversed(done):
            try:
                verify(path)
            except InputError as err:
                log.warning("%s; skipped, resuming from the checkpoint before it", err)
                continue
            return path
        return None

    def save(
        self,
        accelerator: Accelerator,
        tokenizer: PreTrainedTokenizerBase,
        step: int,
        history: list[dict[str, Any]],
    ) -> Path:
        """Write step `step` on every process (accelerate gathers), then publish it atomically."""
        final = self.root / f"step-{step:06d}"
        tmp = self.root / f".step-{step:06d}.tmp"
        if accelerator.is_main_process and tmp.exists():
            shutil.rmtree(tmp)  # left by a save that was killed
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            tokenizer.save_pretrained(tmp)
            (tmp / STATE).write_text(json.dumps({"step": step, "history": history}))
            files = sorted(p for p in tmp.rglob("*") if p.is_file())
            manifest = {p.relative_to(tmp).as_posix(): file_md5(p) for p in files}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            done = sorted(self.root.glob("step-*"))
            # Steps after this one were left by an earlier attempt that this run replaces: a
            # finished run (never resumed) or a damaged checkpoint it resumed from before.
            later = [p for p in done if p.name > final.name]
            before = [p for p in done if p.name <= final.name]
            for old in later + before[:-KEEP]:
                shutil.rmtree(old)
            log.info("checkpoint %s", final)
        accelerator.wait_for_everyone()
        return final

    def step(self, path: Path) -> int:
        """The optimizer step a checkpoint `latest` returned was taken after."""
        return int(_state(path)["step"])

    def load(self, accelerator: Accelerator, path: Path) -> tuple[int, list[dict[str, Any]]]:
        """Restore the state of a checkpoint `latest` returned; returns (step, history)."""
        accelerator.load_state(str(path))
        state = _state(path)
        return int(state["step"]), list(state["history"])


def _state(path: Path) -> dict[str, Any]:
    return json.loads((path / STATE).read_text())


def verify(path: Path) -> None:
    """Refuse a checkpoint whose files do not match the md5s recorded when it was written."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"checkpoint {path}: its {MANIFEST} is unreadable ({err})") from None
    for name, md5 in manifest.items():
        file = path / name
        if not file.is_file():
            raise InputError(f"checkpoint {path}: {name} is missing")
        if file_md5(file) != md5:
            raise InputError(
                f"checkpoint {path}: {name} does not match its recorded md5 (changed, truncated "
                "or damaged since it was written)"
            )
