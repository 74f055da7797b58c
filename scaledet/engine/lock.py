"""One training run per output folder: ``OUT/run.lock`` holds the owner's pid while it runs.

Two runs writing into the same folder would interleave ``log.jsonl`` and overwrite each other's
checkpoints, so a second run fails at once with a message naming the owner. The lock file is a
small JSON object ``{"pid": ..., "host": ..., "started": ...}``, created with ``O_EXCL``. A lock
left by a process that no longer exists (killed, crashed machine) is taken over; one written by
this very process (an earlier run in the same Python session that did not finish) is reused.
The lock is removed by :meth:`RunLock.release` and, failing that, when the interpreter exits.
Liveness can only be checked on this host: a lock from another host sharing the folder counts as
held, and the message says which file to delete if that run is gone.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import time
from pathlib import Path

from scaledet.errors import UserError

LOCK_NAME = "run.lock"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (POSIX; elsewhere assumed alive)."""
    if pid <= 0:
        return False
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class RunLock:
    """The lock of one output folder; :meth:`acquire` before writing, :meth:`release` at the end.

    Args:
        out: the run's output folder (created if missing).
    """

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        """Take the lock, or raise :class:`~scaledet.errors.UserError` if a live run holds it."""
        self.out.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # create; else inspect the holder and, if it is gone, remove and retry
            if self._create():
                self.held = True
                atexit.register(self.release)  # a run that dies on an exception leaves no lock behind
                return
            owner = self._read_owner()
            if owner is None:  # maybe being written this instant by a run starting beside us
                time.sleep(0.2)
                owner = self._read_owner()
            if owner is not None and self._is_live_other(owner):
                raise UserError(
                    f"{self.out} is in use by another training run (pid {owner.get('pid')} on "
                    f"{owner.get('host')}, started {owner.get('started')})\n"
                    f"wait for it to finish or choose another --out; if that run is gone, delete {self.path}"
                )
            self.path.unlink(missing_ok=True)  # stale (dead process, unreadable file) or our own
        raise UserError(f"{self.path}: could not take the run lock; delete it if no run is using {self.out}")

    def release(self) -> None:
        """Remove the lock file if this process holds it."""
        if not self.held:
            return
        self.held = False
        atexit.unregister(self.release)
        owner = self._read_owner()
        if owner is not None and owner.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(owner, handle)
        return True

    def _read_owner(self) -> dict | None:
        """The lock's content, or ``None`` if it is gone or unreadable (a half-written lock)."""
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None

    @staticmethod
    def _is_live_other(owner: dict) -> bool:
        if owner.get("host") != socket.gethostname():
            return True  # cannot check a process on another machine
        return owner["pid"] != os.getpid() and pid_alive(owner["pid"])

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
