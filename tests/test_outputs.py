"""Atomic outputs under `kill -9`: the old output survives, and no leftover reaches DVC."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from in2.outputs import atomic_dir, atomic_file

KILLED_WRITER = """
import os, signal, sys
from in2.outputs import atomic_dir, atomic_file

kind, path = sys.argv[1], sys.argv[2]
if kind == "file":
    with atomic_file(path) as tmp:
        tmp.write_bytes(b"the first half of the new ")
        os.kill(os.getpid(), signal.SIGKILL)
with atomic_dir(path) as tmp:
    (tmp / "part-0").write_text("the first part of the new")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _read(path: Path) -> dict[str, str]:
    if path.is_file():
        return {".": path.read_text()}
    return {p.name: p.read_text() for p in sorted(path.iterdir())}


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_a_writer_killed_mid_write_keeps_the_old_output_and_the_next_write_cleans_up(
    tmp_path: Path, kind: str
) -> None:
    """SIGKILL inside the block: the output still holds the old content, the temporary sibling
    left inside the (DVC-tracked) folder is removed by the next write of that path."""
    folder = tmp_path / "data/qa"
    out = folder / ("qa.parquet" if kind == "file" else "shards")
    write = atomic_file if kind == "file" else atomic_dir
    with write(out) as tmp:
        if kind == "file":
            tmp.write_text("old")
        else:
            (tmp / "part-0").write_text("old")
    before = _read(out)

    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, kind, str(out)])
    assert killed.returncode == -signal.SIGKILL
    assert _read(out) == before
    leftovers = [p.name for p in folder.iterdir() if p != out]
    assert len(leftovers) == 1 and leftovers[0].startswith(f".{out.name}.")

    with write(out) as tmp:
        if kind == "file":
            tmp.write_text("new")
        else:
            (tmp / "part-0").write_text("new")
    assert sorted(p.name for p in folder.iterdir()) == [out.name]
    assert _read(out) == ({".": "new"} if kind == "file" else {"part-0": "new"})


def test_a_failed_block_leaves_the_output_untouched(tmp_path: Path) -> None:
    out = tmp_path / "metrics/qa.json"
    with atomic_file(out) as tmp:
        tmp.write_text("old")
    with pytest.raises(RuntimeError, match="stage failed"), atomic_file(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("stage failed")
    assert out.read_text() == "old" and [p.name for p in out.parent.iterdir()] == ["qa.json"]
