"""Resumable training checkpoints: a killed `train` continues where it stopped, never pays twice.

Every `train.checkpoint_every` optimizer steps and at the end, `checkpoints/<run key>/step-N/`
receives the accelerate state (model weights as safetensors, optimizer, scheduler and the RNG
states of every process), the tokenizer, the step log so far and a manifest with the md5 of every
file. The run key hashes what makes two runs the same run (train params, model params, the
training data's DVC md5), so a changed recipe never resumes from a foreign checkpoint and never
overwrites one. A checkpoint is written to a temporary folder and renamed into place, and is
refused on resume when a file does not match its recorded md5.

The folder is a DVC output with `persist: true` (dvc.yaml): DVC keeps it between runs instead of
deleting it before `train` starts, which is what makes resuming possible under `dvc repro`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase

from in2.fingerprint import file_md5
from in2.params import InputError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STATE = "in2_state.json"
KEEP = 2
"""Checkpoints kept per run: the newest, and the one before in case the newest is damaged."""


@dataclass(frozen=True)
class Checkpoints:
    """The checkpoints of one run (one run key)."""

    root: Path

    @classmethod
    def for_run(cls, base: Path, identity: dict[str, Any]) -> Checkpoints:
        key = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
        return cls(base / key[:12])

    def latest(self) -> Path | None:
        """The newest complete checkpoint (temporary folders of a killed save are ignored)."""
        done = sorted(p for p in self.root.glob("step-*") if (p / MANIFEST).is_file())
        return done[-1] if done else None

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
            for old in sorted(self.root.glob("step-*"))[:-KEEP]:
                shutil.rmtree(old)
            log.info("checkpoint %s", final)
        accelerator.wait_for_everyone()
        return final

    def load(self, accelerator: Accelerator, path: Path) -> tuple[int, list[dict[str, Any]]]:
        """Verify every file against the manifest, restore the state; returns (step, history)."""
        verify(path)
        accelerator.load_state(str(path))
        state = json.loads((path / STATE).read_text())
        return int(state["step"]), list(state["history"])


def verify(path: Path) -> None:
    """Refuse a checkpoint whose files do not match the md5s recorded when it was written."""
    manifest = json.loads((path / MANIFEST).read_text())
    for name, md5 in manifest.items():
        file = path / name
        if not file.is_file():
            raise InputError(
                f"checkpoint {path}: {name} is missing; delete {path} to resume from the "
                "checkpoint before it (or the whole folder to start over)"
            )
        if file_md5(file) != md5:
            raise InputError(
                f"checkpoint {path}: {name} does not match its recorded md5 (changed or damaged "
                f"since it was written); delete {path} to resume from the checkpoint before it"
            )
