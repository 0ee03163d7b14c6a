"""A run lock, so that cron never piles up runs.

``flock`` on a file in the data dir: the kernel drops it when the process
dies, so a crashed run (even kill -9) never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .datafiles import COLLECT_LOCK as COLLECT_LOCK  # the lock every command takes (lock.COLLECT_LOCK)


class Busy(Exception):
    """The lock is held by another run."""


@contextmanager
def exclusive(path: str | os.PathLike, wait: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing).

    Raises ``Busy`` when another process holds it for longer than ``wait`` seconds."""
    fd = os.open(Path(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise Busy(str(path)) from None
                time.sleep(0.1)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the pid is informative only
        yield
    finally:
        os.close(fd)
