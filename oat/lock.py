"""One process at a time per run directory.

Two sweeps started on one output directory (a job array without ``--shard``) would otherwise
train every point twice and interleave their metrics. A run's lock is an advisory ``flock`` on
``RUN_DIR/.lock``, which also records the holder's pid and host for messages. The kernel drops
the lock when its holder exits, however it exits (SIGKILL included), so a lock left by a dead
process is never mistaken for a live one: the file may stay, the lock does not. Linux NFS clients
map ``flock`` onto network byte-range locks, so the lock also holds between the hosts of a cluster
sharing the directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_FILE = ".lock"


class RunLock:
    """The lock of one run directory: :meth:`try_acquire`, :meth:`acquire` (waits),
    :meth:`release`; as a context manager it waits for the lock and releases it on exit."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if no other process holds it; True when this process now holds it."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode())
        self._fd = fd
        return True

    def acquire(self, poll_seconds: float = 0.5) -> None:
        """Wait until the lock is free, then take it."""
        while not self.try_acquire():
            time.sleep(poll_seconds)

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # the file stays (removing it would race a waiter); its holder goes
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def holder(self) -> str:
        """Who holds the lock, as ``pid N on HOST`` (or ``another process`` when unrecorded)."""
        try:
            record = json.loads(self.path.read_text())
            return f"pid {record['pid']} on {record['host']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
