"""The on-disk response cache: one JSON file per paid reply, trusted only once it checks out.

`<root>/<key[:2]>/<key>.json` = {"request", "response"}. An entry is written only for a usable
reply (`usable`), fsynced before the rename and its folder after, so a crash or power loss
leaves the entry whole or absent. A batch's replies (up to 50,000) are written as one group
(`put_many`): every file written, one `os.sync()`, then every rename and one fsync per folder,
since an fsync per entry (~6 ms here) would add ~5 minutes to every batch. Reading, an entry
that is empty, cut, not UTF-8, not JSON or not a usable reply (say, from an older version that
cached `{"error": ...}` bodies) is treated as missing: it is removed, with one warning line
naming it, and the request is asked again.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from in2.outputs import atomic_file

log = logging.getLogger(__name__)


def message_of(response: Any) -> dict[str, Any] | None:
    """`choices[0].message` of a chat completion, or None when it has none."""
    try:
        message = response["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        return None
    return message if isinstance(message, dict) else None


def refusal_of(response: dict[str, Any]) -> str | None:
    """The model's refusal (structured outputs' `message.refusal`), or None."""
    refusal = (message_of(response) or {}).get("refusal")
    return refusal if isinstance(refusal, str) and refusal else None


def usable(response: Any) -> bool:
    """A reply worth paying for once: a `content` string (maybe empty) or a refusal."""
    message = message_of(response)
    if message is None:
        return False
    return isinstance(message.get("content"), str) or refusal_of(response) is not None


class ResponseCache:
    """The replies received so far, by request key."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached reply, or None (absent, or unusable: then removed)."""
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            response = json.loads(data.decode())["response"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            response = None
        if usable(response):
            return response
        log.warning("removing unusable cache entry %s (%d bytes); asking again", path, len(data))
        path.unlink(missing_ok=True)
        return None

    def put(self, key: str, request: dict[str, Any], response: dict[str, Any]) -> None:
        """Store a usable reply durably (fsync of the file, then of its folder)."""
        path = self._path(key)
        with atomic_file(path, sweep=False) as tmp, tmp.open("w") as f:
            f.write(json.dumps({"request": request, "response": response}))
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(path.parent)

    def put_many(self, entries: Iterable[tuple[str, dict[str, Any], dict[str, Any]]]) -> int:
        """Store many usable replies (key, request, response) durably with one sync; returns
        how many. A crash before the renames leaves only hidden temporaries, never a cut entry."""
        written: list[tuple[Path, Path]] = []
        try:
            for key, request, response in entries:
                path = self._path(key)
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps({"request": request, "response": response}))
                written.append((Path(name), path))
            os.sync()  # every file's data on disk before any rename makes it an entry
            for tmp, path in written:
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
        finally:
            for tmp, _ in written:
                tmp.unlink(missing_ok=True)
        for folder in {path.parent for _, path in written}:
            _fsync_dir(folder)
        return len(written)

    def count(self) -> int:
        return sum(1 for _ in self.root.glob("??/*.json"))


def _fsync_dir(folder: Path) -> None:
    """Make the renames in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
