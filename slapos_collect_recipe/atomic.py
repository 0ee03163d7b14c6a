"""Durable, all-or-nothing file writes: a reader sees the old file or the whole
new one, never half of it, and a crash never leaves a truncated file behind.

Standard library only: the buildout recipe uses it too.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# A temp file is ".<name>.<random>.tmp": a crash may leave one, which cleaners
# recognise by this suffix and the leading dot (never listed or served).
TMP_SUFFIX = ".tmp"


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in ``path`` survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def link_new(tmp: str | os.PathLike, final: str | os.PathLike) -> bool:
    """Give ``tmp`` the name ``final`` too, never replacing an existing file;
    False when ``final`` exists. On a file system without hard links, ``tmp``
    is renamed instead (the caller holds whatever lock makes that safe)."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        return False
    except OSError:
        if os.path.lexists(final):
            return False
        os.rename(tmp, final)
    return True


def write_atomic(path: str | os.PathLike, data: str | bytes, mode: int = 0o644, *, replace: bool = True,
                 tmp_dir: str | os.PathLike | None = None) -> bool:
    """Write ``data`` to ``path``: a temp file in the same dir, fsync, rename, fsync the dir.

    With ``replace=False`` an existing file wins (the temp file is hard-linked,
    never renamed over it) and False is returned: two processes creating the
    same file at once agree on one content. ``tmp_dir`` (same file system)
    keeps the temp file out of a folder whose every file a reader takes."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=tmp_dir or path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            try:
                if not link_new(tmp, path):
                    return False
            finally:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass  # renamed: no hard links there
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)
    return True
