"""Claims on pending requests in a shared cache: two runs never send the same request at once.

Queued DVC experiments (`dvc queue start -j 2`) and parallel runs share the response cache, and
each would otherwise pay for every request the other has not cached yet. Before a run sends a
request it claims its cache key: a file `<root>/<key[:2]>/<key>`, created with `O_EXCL`, that
holds the owner's id. An owner is one process; its owner file `<root>/owners/<id>` (host, pid) is
touched by a heartbeat thread every `HEARTBEAT_S`. An owner is dead when that file is gone (the
process left, or released its claims), older than `STALE_S` (another host, a hung process), or
names a pid that no longer runs on this host (`kill -9`). A dead owner's claims are taken over,
under the lock file `<root>/lock`, so no run waits for a crashed one.

Cost per request: a claim is one file create, a release one read and one unlink (a few µs each,
tests/test_qa_batch.py measures them); an owner's liveness is checked at most once a second.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from in2.outputs import atomic_file

HEARTBEAT_S = 10.0
STALE_S = 120.0
"""An owner file older than this is a dead owner's (12 missed heartbeats)."""
LIVENESS_TTL_S = 1.0
"""How long a verdict that an owner is alive is trusted before its file is looked at again."""
HOST = socket.gethostname()


def _running(pid: int) -> bool:
    """Whether `pid` is a live process on this host (a zombie, killed but not reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


class Claims:
    """This process's claims under `root`; use as a context manager (it runs the heartbeat).

    On exit the owner file is removed: claims not released by then count as a dead owner's at
    once, so a run that stops on an error never blocks the next one.
    """

    def __init__(self, root: Path, stale_s: float = STALE_S, heartbeat_s: float = HEARTBEAT_S):
        self.root = root
        self.id = f"{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.stale_s = stale_s
        self.heartbeat_s = heartbeat_s
        self.taken_over = 0
        """Claims of dead owners this process took over."""
        self._owner = root / "owners" / self.id
        self._verdicts: dict[str, tuple[bool, float]] = {}
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="claims", daemon=True)
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self._lock_depth = 0

    def __enter__(self) -> Claims:
        self._write_owner()
        self._beat.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._beat.join()
        self._owner.unlink(missing_ok=True)

    def _write_owner(self) -> None:
        with atomic_file(self._owner, sweep=False) as tmp:
            tmp.write_text(json.dumps({"host": HOST, "pid": os.getpid()}))

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self._owner)
            except FileNotFoundError:  # someone cleaned the folder: say again that we live
                self._write_owner()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def claim(self, key: str) -> bool:
        """Claim `key`: True if it is now ours (new, already ours, or taken from a dead owner),
        False while another live owner holds it."""
        path = self._path(key)
        while True:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileNotFoundError:
                path.parent.mkdir(parents=True, exist_ok=True)
                continue
            except FileExistsError:
                owner = _read(path)
                if owner is None:  # released in the meantime: try again
                    continue
                return owner == self.id or self._take_over(path, owner)
            try:
                os.write(fd, self.id.encode())
            finally:
                os.close(fd)
            return True

    def take(self, key: str) -> None:
        """Make `key` ours whoever holds it: for the requests of a dead owner's batch that this
        process adopts, so that no other run takes them over and sends them again."""
        with atomic_file(self._path(key), sweep=False) as tmp:
            tmp.write_text(self.id)

    def release(self, key: str) -> None:
        """Give `key` up (its response is cached, or it failed): another run may claim it."""
        path = self._path(key)
        if _read(path) == self.id:
            path.unlink(missing_ok=True)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the lock of all owners under `root` (re-entrant within this process): takeovers
        happen under it, and callers that must claim and record together take it around both."""
        with self._lock:
            if self._lock_depth == 0:
                self.root.mkdir(parents=True, exist_ok=True)
                self._lock_fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0 and self._lock_fd is not None:
                    os.close(self._lock_fd)  # closing releases the flock
                    self._lock_fd = None

    def _take_over(self, path: Path, owner: str) -> bool:
        if not self._dead(owner, path):
            return False
        with self.locked():
            if _read(path) != owner:  # released or taken by another run meanwhile
                return self.claim(path.name)
            with atomic_file(path, sweep=False) as tmp:
                tmp.write_text(self.id)
        self.taken_over += 1
        return True

    def _dead(self, owner: str, claim: Path) -> bool:
        if not owner:  # its creator is between create and write, or died there
            try:
                return time.time() - claim.stat().st_mtime > self.stale_s
            except FileNotFoundError:
                return False
        now = time.monotonic()
        verdict = self._verdicts.get(owner)
        if verdict is not None and (verdict[0] or now - verdict[1] < LIVENESS_TTL_S):
            return verdict[0]
        dead = self._owner_dead(owner)
        self._verdicts[owner] = (dead, now)
        return dead

    def _owner_dead(self, owner: str) -> bool:
        path = self.root / "owners" / owner
        try:
            age = time.time() - path.stat().st_mtime
            info = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return True
        if age > self.stale_s:
            return True
        return info.get("host") == HOST and not _running(int(info.get("pid", 0)))


def _read(path: Path) -> str | None:
    """The owner id in a claim file, None if there is none."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
