"""``collector.db``'s WAL side files (``-wal``, ``-shm``) kept in place when a writer closes.

Part of the store stage (``store.Store.close`` uses it); no SQL here, only
SQLite's lock bytes: readers that may not write in the data dir need the files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# SQLite's lock bytes (os_unix.c): a reader holds a read lock in the SHARED range.
_SHARED_FIRST = 0x40000000 + 2
# One descriptor per database file, kept open for the process's life: closing
# any descriptor of a file drops every POSIX lock this process holds on it,
# SQLite connections' included.
_GUARDS: dict[str, tuple[int, int]] = {}


@contextmanager
def keep_wal_files(path: Path) -> Iterator[None]:
    """Hold a read lock in SQLite's SHARED range while a connection closes.

    The last connection to close a WAL database takes an exclusive lock, and
    when it gets it, checkpoints and deletes ``-wal`` and ``-shm``; a reader
    that may not write in the directory (a partition's user) then fails on
    its first query ("attempt to write a readonly database"). SQLite's
    persistent-WAL switch is not reachable from Python's sqlite3; an open file
    description lock (F_OFD_SETLK) conflicts with SQLite's POSIX locks even in
    this process, so the close finds the database shared and leaves both
    files in place (the WAL was checkpointed and emptied just before)."""
    import fcntl
    import struct

    key = str(path.absolute())
    fd = None
    try:
        ino = os.stat(key).st_ino
        fd, guarded_ino = _GUARDS.get(key, (None, None))
        if fd is None or guarded_ino != ino:
            if fd is not None:
                os.close(fd)  # a replaced file (kept aside): no connection uses it
            fd = os.open(key, os.O_RDONLY | os.O_CLOEXEC)
            _GUARDS[key] = (fd, ino)
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_RDLCK, os.SEEK_SET, _SHARED_FIRST, 1, 0))
    except (OSError, AttributeError):  # no OFD locks (not Linux): SQLite removes the files
        fd = None
    try:
        yield
    finally:
        if fd is not None:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK,
                        struct.pack("hhqqi4x", fcntl.F_UNLCK, os.SEEK_SET, _SHARED_FIRST, 1, 0))
