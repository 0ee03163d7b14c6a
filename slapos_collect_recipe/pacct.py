"""Kernel process accounting (acct(2)): one record per ended process, read since the previous run.

Which file the kernel writes to cannot be asked, so each run (as root) ends
one tiny child of its own and looks for that child's record in the files it
knows: its own (``pacct.<n>`` in the data dir) and the node's usual ones
(``NODE_FILES``, e.g. Debian's ``acct`` package). The node's file, when
accounting goes there, is only read (never truncated, never taken over);
otherwise accounting is switched on into a file of the data dir, which is
rotated once big: a new ``pacct.<n+1>`` is switched on first, then the old
one is read to its end, and it is removed only by a later run, once the run
that read it is committed. Where to resume (file, inode, offset) is kept in
``collect_state`` with the run, so a run killed before committing leaves the
records for the next run: never read twice, never lost.

Linux writes ``struct acct_v3`` (64 bytes, ``man 5 acct``): times as
``comp_t`` (13-bit mantissa, 3-bit base-8 exponent) in AHZ = 100 ticks.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

from .accounting import Ended
from .datafiles import PACCT_PREFIX

log = logging.getLogger("slapos_collect")

RECORD = struct.Struct("=BBHIIIIIIf8H16s")
SIZE = RECORD.size  # 64
AHZ = 100.0
ACCT_VERSION = 3
NODE_FILES = ("/var/log/account/pacct", "/var/account/pacct", "/var/log/pacct")
# Where a collector that switched accounting on names its file, so that another
# collector of the node (another data dir) reads that file instead of taking
# accounting over.
REGISTRY = "/run/slapos-collect.pacct"
ROTATE_BYTES = 4 * 1024 * 1024  # 65,536 records
CHUNK = 1 << 20  # bytes read at a time (a multiple of SIZE)
_OWN_RE = re.compile(rf"^{re.escape(PACCT_PREFIX)}(\d+)$")
# A record whose start lies outside these years is not one (resynchronising after garbage).
_BTIME_MIN, _BTIME_MAX = 946684800, 4102444800  # 2000 .. 2100


def comp_t(value: int) -> int:
    """Decode a ``comp_t``: 13-bit mantissa shifted by 3 bits per unit of the 3-bit exponent."""
    return (value & 0x1FFF) << (3 * (value >> 13))


_VERSIONS = (ACCT_VERSION, ACCT_VERSION | 0x80)  # 0x80: written by a big-endian kernel


_ETIME = struct.Struct("=f")  # ac_etime, at offset 28


def _valid(data: bytes | memoryview, at: int) -> bool:
    """Whether the 64 bytes at ``at`` look like an acct v3 record: its version,
    known flag bits only, a NUL-terminated command name, a plausible start, an
    elapsed time that is a number of at least 0."""
    return (data[at + 1] in _VERSIONS and not data[at] & 0xE0 and data[at + 63] == 0
            and _BTIME_MIN <= int.from_bytes(data[at + 24:at + 28], sys.byteorder) <= _BTIME_MAX
            and 0.0 <= _ETIME.unpack_from(data, at + 28)[0] < math.inf)


def parse(data: bytes, where: str, uids: set[int] | None = None) -> tuple[list[Ended], int, str | None]:
    """Records of ``data`` (read from ``where`` at a record boundary): the
    records (of the users ``uids`` only, when given), the bytes consumed (whole
    records; a record cut at the end is left for later) and a problem line when
    garbage was skipped."""
    records, used, skipped = _parse(data, uids)
    return records, used, _garbage(where, skipped) if skipped else None


def _garbage(where: str, skipped: int) -> str:
    return (f"accounting file {where}: {skipped} bytes that are not acct v3 records skipped "
            "(not an accounting file, or written over?)")


def _parse(data: bytes, uids: set[int] | None) -> tuple[list[Ended], int, int]:
    """``parse``'s records and bytes consumed, and the count of bytes skipped as garbage."""
    records: list[Ended] = []
    skipped = 0
    at, end = 0, len(data) - len(data) % SIZE
    view = memoryview(data)
    while at < end:
        if not _valid(view, at):
            start = at
            at += 1
            while at + SIZE <= len(data) and not _valid(view, at):
                at += 1
            skipped += at - start
            end = at + (len(data) - at) // SIZE * SIZE
            continue
        for fields in RECORD.iter_unpack(view[at:end]):
            if fields[1] not in _VERSIONS or fields[0] & 0xE0 or fields[18][15] or not 0.0 <= fields[9] < math.inf:
                break
            at += SIZE
            if uids is not None and fields[4] not in uids:
                continue
            # ac_uid, ac_pid, ac_btime, ac_etime, ac_utime, ac_stime
            records.append(Ended(uid=fields[4], pid=fields[6], ppid=fields[7], btime=float(fields[8]),
                                 cpu=(comp_t(fields[10]) + comp_t(fields[11])) / AHZ, elapsed=fields[9] / AHZ))
    view.release()
    return records, at, skipped


def _read_from(path: str, offset: int, problems: list[str],
               uids: set[int] | None = None) -> tuple[list[Ended], int]:
    """Records of ``path`` from ``offset`` (of the users ``uids`` only, when
    given); the new offset (just after the last whole record). Read a piece
    (``CHUNK``) at a time: a backlog (a collector that did not run for days) is
    never held whole."""
    records: list[Ended] = []
    skipped = 0
    pending = b""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < offset:
                log.info("accounting file %s is shorter than what was read (truncated by another tool?): "
                         "read from its start", path)
                offset = 0
            handle.seek(offset)
            while chunk := handle.read(CHUNK):
                data = pending + chunk if pending else chunk
                del chunk
                got, used, garbage = _parse(data, uids)
                records.extend(got)
                skipped += garbage
                offset += used
                pending = data[used:]
                del data
    except OSError as exc:
        problems.append(f"cannot read accounting file {path}: {exc.strerror or exc}")
        return records, offset
    if skipped:
        problems.append(_garbage(path, skipped))
    if pending:
        # The kernel appends whole records to a file of whole records (64 divides a page):
        # a cut record means the file was truncated or written by something else.
        problems.append(f"accounting file {path} ends in the middle of a record ({len(pending)} bytes "
                        "left): read up to the last whole record")
    return records, offset


def acct(path: str | None) -> None:
    """Switch accounting on into ``path`` (an existing file), or off with None; OSError on failure."""
    import ctypes  # only when switching: most runs never do

    libc = ctypes.CDLL(None, use_errno=True)  # the C library this interpreter is linked with
    arg = os.fsencode(path) if path is not None else None
    if libc.acct(arg) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), path)


def probe(candidates: list[str]) -> str | None:
    """The file among ``candidates`` the kernel writes accounting records to, or None.

    Ends a child of this process and looks for its record in what each file
    gained meanwhile: the record is written before the parent can reap it."""
    sizes = {}
    for path in candidates:
        try:
            sizes[path] = os.stat(path).st_size
        except OSError:
            continue
    if not sizes:
        return None
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    for path, size in sizes.items():
        try:
            with open(path, "rb") as handle:
                handle.seek(size - size % SIZE)
                data = handle.read()
        except OSError:
            continue
        for at in range(0, len(data) - SIZE + 1, SIZE):
            if RECORD.unpack_from(data, at)[6] == pid:
                return path
    return None


def _own_files(data_dir: Path) -> dict[int, str]:
    found = {}
    try:
        names = os.listdir(data_dir)
    except OSError:
        return {}
    for name in names:
        match = _OWN_RE.match(name)
        if match:
            found[int(match.group(1))] = str(data_dir / name)
    return found


def registered() -> str | None:
    """The accounting file a collector of this node switched on, if any said so."""
    try:
        with open(REGISTRY, encoding="utf-8") as handle:
            return handle.read().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _switch_on(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    acct(path)
    write_registry(path)


def write_registry(path: str) -> None:
    """Name ``path`` as the file a collector of this node switched accounting on into."""
    if os.path.isdir(os.path.dirname(REGISTRY)):
        from .atomic import write_atomic

        try:
            write_atomic(REGISTRY, path + "\n")
        except OSError as exc:
            log.info("cannot write %s: %s", REGISTRY, exc.strerror or exc)


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def read_ended(data_dir: Path, mode: str, previous: dict | None, problems: list[str],
               uids: set[int] | None = None) -> tuple[list[Ended] | None, dict | None]:
    """Accounting records of the processes that ended since the previous run
    (of the users ``uids`` only, when given), or None when accounting does not
    cover the whole interval (not root, off, just switched on, taken over); and
    the state the next run resumes from.

    ``mode`` is ``auto`` (on when root), ``yes`` or ``no``."""
    if mode == "no" or os.geteuid() != 0:
        if mode == "yes":
            problems.append("process-accounting = yes needs root: children's times used instead")
        if mode == "no" and os.geteuid() == 0 and previous and previous.get("own"):
            _switch_off_own(data_dir)
        return None, None
    own = _own_files(data_dir)
    previous = previous or {}
    prev_file = previous.get("file")
    if previous.get("own") and prev_file:
        # Files before the one the committed run ended in are read: remove them.
        prev_n = int(prev_file.rpartition(".")[2])
        for n in [n for n in own if n < prev_n]:
            try:
                os.unlink(own.pop(n))
            except OSError:
                pass
    candidates = [own[n] for n in sorted(own, reverse=True)] + [p for p in NODE_FILES if os.path.exists(p)]
    other = registered()
    if other and other not in candidates:
        candidates.append(other)
    active = probe(candidates)
    if active is not None and active not in own.values():
        return _node_file(active, previous, problems, uids)
    if active is None:
        number = max(own, default=-1) + 1
        path = str(data_dir / f"{PACCT_PREFIX}{number}")
        try:
            _switch_on(path)
        except OSError as exc:
            line = f"cannot switch process accounting on into {path}: {exc.strerror or exc}"
            if mode == "yes":
                problems.append(line)
            else:
                log.info("%s: children's times used instead", line)
            return None, None
        log.info("process accounting switched on into %s", path)
        return None, {"own": True, "file": path, "ino": _inode(path), "offset": 0}
    # Ours is on: rotate it once big, then read from where the previous run stopped.
    numbers = sorted(n for n, p in own.items())
    current = int(active.rpartition(".")[2])
    size = os.stat(active).st_size
    if size > ROTATE_BYTES:
        path = str(data_dir / f"{PACCT_PREFIX}{current + 1}")
        try:
            _switch_on(path)
            numbers.append(current + 1)
            current += 1
        except OSError as exc:
            log.info("cannot rotate process accounting into %s: %s", path, exc.strerror or exc)
    if not (previous.get("own") and prev_file and os.path.exists(prev_file)):
        # No committed position in our files: start here, count from the next run.
        last = str(data_dir / f"{PACCT_PREFIX}{current}")
        return None, {"own": True, "file": last, "ino": _inode(last), "offset": os.stat(last).st_size}
    prev_n = int(prev_file.rpartition(".")[2])
    records: list[Ended] = []
    offset = previous.get("offset", 0)
    for n in [n for n in numbers if prev_n <= n <= current]:
        path = str(data_dir / f"{PACCT_PREFIX}{n}")
        got, end = _read_from(path, offset if n == prev_n else 0, problems, uids)
        records.extend(got)
        last, offset = path, end
    return records, {"own": True, "file": last, "ino": _inode(last), "offset": offset}


def _node_file(path: str, previous: dict, problems: list[str],
               uids: set[int] | None) -> tuple[list[Ended] | None, dict]:
    """Read the node's accounting file (never written nor truncated here),
    following a rotation (the old inode renamed to ``path.0``)."""
    ino = _inode(path)
    if not previous.get("own") and previous.get("file") != path:
        followed = _follow_rotation(previous, path, problems, uids)
        if followed is not None:
            return followed
    if previous.get("own") or previous.get("file") != path:
        # Just found (or taken over from us): count from the next run.
        if previous.get("own"):
            log.info("process accounting now goes to %s (another tool): read there from now on", path)
        return None, {"own": False, "file": path, "ino": ino, "offset": os.stat(path).st_size}
    records: list[Ended] = []
    offset = previous.get("offset", 0)
    if previous.get("ino") != ino:
        rotated = path + ".0"
        if _inode(rotated) == previous.get("ino"):
            records, _ = _read_from(rotated, offset, problems, uids)
        else:
            log.info("accounting file %s was replaced: the records written in between are not read", path)
        offset = 0
    got, offset = _read_from(path, offset, problems, uids)
    records.extend(got)
    return records, {"own": False, "file": path, "ino": ino, "offset": offset}


def _follow_rotation(previous: dict, path: str, problems: list[str],
                     uids: set[int] | None) -> tuple[list[Ended], dict] | None:
    """Another collector's file (``pacct.<n>`` of its data dir, registered) rotated
    to ``pacct.<m>`` beside it since the previous run: the rest of the old one,
    any in between, then the new one from its start (it was switched on after
    the previous run, which found the old one active). None when ``path`` is
    not such a successor."""
    old = previous.get("file") or ""
    was, now = _OWN_RE.match(os.path.basename(old)), _OWN_RE.match(os.path.basename(path))
    if not (was and now and os.path.dirname(old) == os.path.dirname(path)
            and int(now.group(1)) > int(was.group(1))):
        return None
    records: list[Ended] = []
    if _inode(old) == previous.get("ino"):
        records, _ = _read_from(old, previous.get("offset", 0), problems, uids)
    else:
        log.info("accounting file %s was removed before its last records were read here", old)
    for number in range(int(was.group(1)) + 1, int(now.group(1))):
        between = os.path.join(os.path.dirname(path), f"{PACCT_PREFIX}{number}")
        if os.path.exists(between):
            records.extend(_read_from(between, 0, problems, uids)[0])
    got, offset = _read_from(path, 0, problems, uids)
    records.extend(got)
    log.info("process accounting went on from %s to %s (rotated by another collector): followed", old, path)
    return records, {"own": False, "file": path, "ino": _inode(path), "offset": offset}


def _switch_off_own(data_dir: Path) -> None:
    """``process-accounting = no`` after we switched it on: off, and our files removed."""
    own = _own_files(data_dir)
    if own and probe(list(own.values())) is not None:
        try:
            acct(None)
            log.info("process accounting switched off (process-accounting = no)")
        except OSError as exc:
            log.warning("cannot switch process accounting off: %s", exc.strerror or exc)
            return
    if registered() in own.values():
        try:
            os.unlink(REGISTRY)
        except OSError:
            pass
    for path in own.values():
        try:
            os.unlink(path)
        except OSError:
            pass


@contextlib.contextmanager
def restored() -> Iterator[None]:
    """Accounting switched back on leaving, even on failure, to the file it went
    to before (one of ``NODE_FILES`` or the registered one), or off; the
    registry likewise. For tests and benchmarks that run collectors as root."""
    def active() -> str | None:
        return probe([p for p in (*NODE_FILES, registered()) if p and os.path.exists(p)])

    before = active()
    registry = registered()
    try:
        yield
    finally:
        if registered() != registry or active() != before:
            try:
                acct(before)
            except OSError:
                acct(None)
            if registry is None:
                Path(REGISTRY).unlink(missing_ok=True)
            else:
                write_registry(registry)
