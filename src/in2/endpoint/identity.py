"""Which model answers: part of the probe's cache key, so a re-trained model is asked again.

The model's name alone does not change when `vllm serve models/in2` serves a re-trained
checkpoint. The identity is the served model's card (GET /v1/models: the entry whose id is
`probe.openai.model`; vLLM names the served folder in `root`) and, when that folder (or
`probe.openai.model` itself) is a local checkpoint, its content: DVC's md5 of it from
`dvc.lock` when it is a DVC output (models/in2), else the sizes and modification times of its
files. A server that lists no models (or none by that name) is named by the configured model,
with one warning; so is an unreachable one, and then every cached reply is still found when the
checkpoint is local.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import openai
import yaml

from in2.lineage.tracking import repo_root
from in2.params import OpenAIEndpointParams

log = logging.getLogger(__name__)

LOCK = "dvc.lock"
CARD_TIMEOUT_S = 10.0
"""GET /v1/models is one short call; an endpoint that does not answer it is named as configured."""


def served_root(client: openai.OpenAI, params: OpenAIEndpointParams) -> str | None:
    """The served folder of `params.model` by its model card (vLLM's `root`), or None."""
    try:
        cards = client.with_options(timeout=CARD_TIMEOUT_S).models.list().data
    except openai.APIError as err:
        log.warning("%s: cannot list the served models (%s)", params.section, type(err).__name__)
        return None
    card = next((c for c in cards if c.id == params.model), None)
    if card is None:
        log.warning(
            "%s: the endpoint does not list %r (it lists %s)",
            params.section,
            params.model,
            ", ".join(sorted(c.id for c in cards)[:5]) or "none",
        )
        return None
    root = (card.model_extra or {}).get("root")
    return root if isinstance(root, str) else None


def dvc_md5(folder: Path, root: Path) -> str | None:
    """DVC's md5 of `folder` when `dvc.lock` at `root` records it as a stage output."""
    lock = root / LOCK
    try:
        relative = folder.resolve().relative_to(root.resolve()).as_posix()
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages") or {}
    except (ValueError, OSError, yaml.YAMLError):
        return None
    for stage in stages.values():
        for out in stage.get("outs") or []:
            if out.get("path") == relative and out.get("md5"):
                return str(out["md5"])
    return None


def files_digest(folder: Path) -> str:
    """A digest of the relative path, size and mtime of each file: changes when it is rewritten."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def model_identity(client: openai.OpenAI | None, params: OpenAIEndpointParams) -> dict[str, str]:
    """What names the answering model beyond its name (empty for a hosted model by name)."""
    root = served_root(client, params) if client is not None else None
    identity = {"root": root} if root and root != params.model else {}
    folder = Path(root or params.model)
    if not folder.is_absolute():
        folder = repo_root() / folder
    if folder.is_dir():
        md5 = dvc_md5(folder, repo_root())
        identity["checkpoint"] = f"dvc:{md5}" if md5 else f"files:{files_digest(folder)}"
    return identity
