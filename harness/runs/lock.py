"""One writer per run folder: an advisory lock that the operating system releases when its holder
dies (``flock`` on ``DIR/.harness.lock``), so a crashed or killed run never leaves it stuck.

A second ``harness`` command on a folder in use is refused with one line naming the process that
holds it. Where ``fcntl`` does not exist (Windows) the lock is skipped with a warning.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from harness.errors import HarnessError

LOCK_NAME = ".harness.lock"


def check_writable(folder: Path) -> None:
    """Create ``folder`` and prove a file can be written there (a probe name no other run shares)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise HarnessError(f"output folder {folder} is not writable: {exc.strerror or exc}") from None


class FolderLock:
    """Hold the folder's lock for the life of a ``with`` block."""

    def __init__(self, folder: Path, command: str) -> None:
        self.path = folder / LOCK_NAME
        self.command = command
        self._handle: int | None = None

    def __enter__(self) -> FolderLock:
        try:
            import fcntl
        except ImportError:
            print("harness: warning: no file locking on this platform; do not run two commands on one "
                  "--out at once", file=sys.stderr)
            return self
        handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(handle, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(handle)
            raise HarnessError(f"output folder {self.path.parent} is in use by {holder}; wait for it to "
                               f"finish, or choose another --out") from None
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"harness (pid {os.getpid()}: {self.command})\n".encode(), 0)
        self._handle = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            os.ftruncate(self._handle, 0)
            os.close(self._handle)  # closing releases the lock
            self._handle = None
