"""Resumable training checkpoints: a killed `train` continues where it stopped, never pays twice.

Every `train.checkpoint_every` optimizer steps and at the end, `checkpoints/<run key>/step-N/`
receives the accelerate state (model weights as safetensors, optimizer, scheduler and the RNG
states of every process), the tokenizer, the step log so far and a manifest with the md5 of every
file. The run key hashes what makes two runs the same run (train params, model params, the
training data's DVC md5), so a changed recipe never resumes from a foreign checkpoint and never
overwrites one. A checkpoint is written to a temporary folder and renamed into place. On resume
one whose files do not match their recorded md5s is skipped with a warning (and kept for
inspection), and the run resumes from the newest intact checkpoint before it.

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

from in2.lineage.fingerprint import file_md5
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
            for old in sorted(self.root.glob("step-*"))[:-KEEP]:
                shutil.rmtree(old)
            log.info("checkpoint %s", final)
        accelerator.wait_for_everyone()
        return final

    def load(self, accelerator: Accelerator, path: Path) -> tuple[int, list[dict[str, Any]]]:
        """Restore the state of a checkpoint `latest` returned; returns (step, history)."""
        accelerator.load_state(str(path))
        state = json.loads((path / STATE).read_text())
        return int(state["step"]), list(state["history"])


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
