"""Atomic outputs: a stage writes into a temporary sibling and renames it into place.

DVC caches whatever sits at an output path when a stage ends; writing in place would let a crash
leave a half-written file for it to cache (or for the next stage to read). `os.replace` of a
sibling on the same file system is atomic, so readers see the old output or the new one, never
a mix.

`kill -9` runs no cleanup, so a killed writer leaves its temporary sibling behind, and that
sibling may sit inside a folder DVC tracks (data/qa/.qa.parquet.x1y2.tmp). The next write of the
same path removes it first, so a stage that completes never leaves one for DVC to cache.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove what killed writers of `path` left behind (`.<name>.*.tmp`, `.<name>.old`)."""
    stale = [*path.parent.glob(f".{path.name}.*.tmp"), path.with_name(f".{path.name}.old")]
    removed = []
    for leftover in stale:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        elif leftover.exists():
            leftover.unlink(missing_ok=True)
        else:
            continue
        removed.append(leftover)
    return removed


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces `path` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(path: str | Path, sweep: bool = True) -> Iterator[Path]:
    """Yield a temporary file path that replaces `path` when the block succeeds.

    `sweep=False` skips removing stale temporaries: for many small files in big folders (the
    response cache) where listing the folder per write would cost more than a leftover.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if sweep:
        remove_stale_temporaries(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically, with sorted keys so equal content gives equal hashes."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write one JSON object per line, atomically."""
    with atomic_file(path) as tmp, tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a jsonl file; a bad line is an error naming the file and line."""
    rows = []
    with Path(path).open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not valid JSON ({err.msg})") from None
    return rows
