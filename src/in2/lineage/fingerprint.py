"""Data version tags that match DVC's: an MLflow run or a gate verdict names the data it saw.

DVC records a file by its md5 and a directory by the md5 of its sorted JSON listing of
(relpath, md5) plus ".dir"; computing the same here lets anyone match a tag to `dvc.lock`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def dataset_fingerprint(paths: Iterable[Path]) -> dict[str, Any]:
    """The dataset version tag: DVC's md5 of the folder holding `paths`, and each file's md5.

    DVC hashes a directory output as the md5 of its sorted JSON listing of (relpath, md5) plus
    ".dir"; when the folder holds exactly these files this equals the md5 `dvc.lock` records for
    it, so an MLflow run tagged with it can be matched to a data version. A file's md5 is DVC's.
    """
    paths = [Path(p) for p in paths]
    files = {str(p): file_md5(p) for p in paths}
    folder = Path(os.path.commonpath([p.parent for p in paths]))
    md5 = dir_md5({p.relative_to(folder).as_posix(): files[str(p)] for p in paths})
    return {"md5": md5, "md5_of": f"{folder} as DVC hashes it", "files": files}


def path_md5(path: Path) -> str:
    """DVC's md5 of a file or a whole folder, as `dvc.lock` records it for a dep or an out."""
    path = Path(path)
    return dir_md5(folder_listing(path)) if path.is_dir() else file_md5(path)


def folder_listing(folder: Path) -> dict[str, str]:
    """relpath -> md5 of every file under `folder`: what DVC hashes a directory from."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): file_md5(p) for p in files}


def dir_md5(md5_by_relpath: dict[str, str]) -> str:
    """DVC's md5 of a directory from its listing (`folder_listing`)."""
    listing = [{"md5": md5, "relpath": rel} for rel, md5 in sorted(md5_by_relpath.items())]
    digest = hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest()
    return f"{digest}.dir"


def file_md5(path: Path) -> str:
    """md5 of a file's bytes (DVC's hash of a file)."""
    md5 = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            md5.update(chunk)
    return md5.hexdigest()
