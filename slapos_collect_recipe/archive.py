"""How a past day is written: ``<day>/dump_<table>.csv`` and its ``.tar.gz``.

Imported by ``rotate`` only when a day is due (the per-minute collect stays
light). The archive is built from the same bytes as the CSVs, slice by slice
(gzip members compressed by a worker thread); a big table is dumped in two
parts by two processes. ``python -m slapos_collect_recipe.archive
--dump-part ...`` is that helper process.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .datafiles import SPOOL, dump_name, part_names
from .store import Store
from .tables import TABLES, columns

log = logging.getLogger("slapos_collect")

try:  # ISA-L's deflate: about 4x cheaper than zlib's at level 1, for about the same size
    from isal import isal_zlib as deflate
except ImportError:  # no isal wheel for this machine: zlib
    deflate = zlib

# gzip level 1 (valid for both engines): measured in benchmarks/bench_rotate.py,
# with zlib about 8x faster than level 9 (the original's, tarfile's default),
# for an archive ~45 % larger.
GZIP_LEVEL = 1
# Rows formatted, written and compressed at a time; a table with at least
# SPLIT_ROWS rowids is dumped in two parts by two processes.
CHUNK_ROWS = 10000
SPLIT_ROWS = 200000
HELPER_SHARE = 45  # % of a split table's rowids dumped here; the helper does the rest
# Told a table's rows written so far: (table, rows, the table's total, draw now).
RowsShown = Callable[[str, int, int, bool], None]


class ArchiveWriter:
    """A ``.tar.gz`` written as a series of gzip members (one stream, as
    gzip, tar and Python read it), so that the dump threads compress their
    own slices in parallel and the archive is built while the CSVs are written.

    A tar header needs its file's size first: a file's compressed slices wait
    in a spool file until the file is complete, then follow its header."""

    def __init__(self, path: Path, spool: Path, level: int = GZIP_LEVEL) -> None:
        self.level = level
        self.raw = open(path, "wb")
        self.spool_path = spool
        self.spool = open(spool, "w+b")
        self.offset = 0  # uncompressed tar bytes so far
        self.file_size = 0
        self.mtime = int(time.time())

    def compress(self, data: bytes) -> bytes:
        return gzip_member(data, self.level)

    def _emit(self, data: bytes) -> None:
        if data:
            self.raw.write(self.compress(data))
            self.offset += len(data)

    def _header(self, name: str, kind: bytes, size: int, mode: int) -> bytes:
        info = tarfile.TarInfo(name)
        info.type, info.size, info.mode, info.mtime = kind, size, mode, self.mtime
        info.uid, info.gid = os.getuid(), os.getgid()
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")

    def add_dir(self, name: str) -> None:
        self._emit(self._header(name, tarfile.DIRTYPE, 0, 0o755))

    def start_file(self) -> None:
        self.spool.seek(0)
        self.spool.truncate()
        self.file_size = 0

    def file_data(self, size: int, compressed: bytes) -> None:
        """Append ``size`` bytes to the current file, given as a gzip member."""
        self.spool.write(compressed)
        self.file_size += size

    def file_members(self, size: int, members) -> None:
        """Append ``size`` bytes to the current file, given as a file of gzip members."""
        shutil.copyfileobj(members, self.spool, 1 << 20)
        self.file_size += size

    def end_file(self, name: str) -> None:
        self._emit(self._header(name, tarfile.REGTYPE, self.file_size, 0o644))
        self.spool.flush()
        self.spool.seek(0)
        shutil.copyfileobj(self.spool, self.raw, 1 << 20)
        self.offset += self.file_size
        self._emit(b"\0" * (-self.file_size % tarfile.BLOCKSIZE))

    def close(self) -> None:
        """End of archive (two zero blocks, padded to a record), fsynced."""
        end = tarfile.BLOCKSIZE * 2
        self._emit(b"\0" * (end + (-(self.offset + end) % tarfile.RECORDSIZE)))
        self.raw.flush()
        os.fsync(self.raw.fileno())
        self.raw.close()
        self.discard()

    def discard(self) -> None:
        if not self.raw.closed:
            self.raw.close()
        self.spool.close()
        self.spool_path.unlink(missing_ok=True)


def gzip_member(data: bytes, level: int = GZIP_LEVEL, engine=None) -> bytes:
    """``data`` as one gzip member, by ``engine`` (a zlib-like module; default
    ISA-L where it is installed, else zlib)."""
    engine = engine or deflate
    compressor = engine.compressobj(level, engine.DEFLATED, 31)  # 31: gzip framing
    return compressor.compress(data) + compressor.flush()


def _write_rows(chunks, handle, sink, progress: RowsShown | None = None, table: str = "",
                total: int = 0) -> int:
    """Write CSV slices (``Store.csv_chunks``) to ``handle`` as they are and
    to ``sink(size, member)`` as gzip members (compressed by a worker thread
    while the next slice is read). Returns the number of rows."""
    queue: deque[tuple[int, Future]] = deque()
    rows = 0
    with ThreadPoolExecutor(1, thread_name_prefix="gzip") as pool:
        for count, data in chunks:
            handle.write(data)
            queue.append((len(data), pool.submit(gzip_member, data, GZIP_LEVEL)))
            while len(queue) > 2:
                size, future = queue.popleft()
                sink(size, future.result())
            rows += count
            if progress is not None:
                progress(table, rows, total, False)
        while queue:
            size, future = queue.popleft()
            sink(size, future.result())
    return rows


def _start_helper(store: Store, data_dir: Path, table: str, day: str, first: int, last: int,
                  ) -> tuple[subprocess.Popen, Path, Path]:
    """A second process dumping rowids ``first..last`` of a big table into
    ``.rotate.part-<pid>.{csv,gz}`` while this one does the first part."""
    csv_name, gz_name = part_names(os.getpid())
    part_csv, part_gz = data_dir / csv_name, data_dir / gz_name
    helper = subprocess.Popen(
        [sys.executable, "-m", "slapos_collect_recipe.archive", "--dump-part", str(store.path), table, day,
         str(first), str(last), str(part_csv), str(part_gz), str(GZIP_LEVEL)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        # The parent's import path (a buildout script sets it in the script, not in the environment).
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)),
    )
    return helper, part_csv, part_gz


def dump_part(db_path: str, table: str, day: str, first: str, last: str, part_csv: str, part_gz: str,
              level: str) -> None:
    """The helper process's job (``python -m slapos_collect_recipe.archive --dump-part ...``)."""
    _die_with_parent()
    global GZIP_LEVEL
    GZIP_LEVEL = int(level)
    with Store(db_path, readonly=True) as reader, open(part_csv, "wb", buffering=1 << 20) as handle, \
            open(part_gz, "wb", buffering=1 << 20) as members:
        _write_rows(reader.csv_chunks(table, day, int(last), int(first), CHUNK_ROWS), handle,
                    lambda _size, member: members.write(member))


def _append_file(source, target, size: int) -> None:
    """Append ``size`` bytes of ``source`` to ``target`` (both flushed files),
    copied by the kernel when it can."""
    done = 0
    try:
        while done < size:
            copied = os.copy_file_range(source.fileno(), target.fileno(), size - done)
            if copied == 0:
                break
            done += copied
    except OSError:  # a file system or kernel without it: copy through here
        pass
    if done < size:
        source.seek(done)
        target.seek(0, os.SEEK_END)
        shutil.copyfileobj(source, target, 1 << 20)


def _die_with_parent() -> None:
    """Ask Linux to kill this helper when its parent dies (a killed rotate)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() == 1:  # the parent died before prctl
        os._exit(1)


def _dump_table(store: Store, data_dir: Path, handle, archive: ArchiveWriter, table: str, day: str,
                limit: int, progress: RowsShown | None) -> int:
    """Stream one table's unreported rows of the day into the CSV and the archive.

    A big table (SPLIT_ROWS rowids or more) on a machine with several cores
    is done in two parts at once: the second by a helper process, whose
    output is appended after the first part's."""
    span = store.unreported_rowid_range(table, day)
    if span is None:
        return 0
    low, high = span.low, min(span.high, limit)
    total = store.count_unreported(table, day) if progress is not None else 0
    helper = None
    end = high
    if (os.cpu_count() or 1) > 1 and high - low + 1 >= SPLIT_ROWS:
        # The helper takes a bit more: this process also writes the archive
        # and copies the helper's part after its own.
        middle = low + (high - low) * HELPER_SHARE // 100
        helper, part_csv, part_gz = _start_helper(store, data_dir, table, day, middle + 1, high)
        end = middle
    try:
        rows = _write_rows(store.csv_chunks(table, day, end, low, CHUNK_ROWS), handle, archive.file_data,
                           progress, table, total)
        if helper is not None and helper.wait() == 0:
            size = part_csv.stat().st_size
            handle.flush()
            with open(part_csv, "rb") as part:
                _append_file(part, handle, size)
            with open(part_gz, "rb") as members:
                archive.file_members(size, members)
        elif helper is not None:
            log.warning("rotate: the helper dumping %s of %s failed (%s); doing its part here",
                        table, day, helper.returncode)
            rows += _write_rows(store.csv_chunks(table, day, high, end + 1, CHUNK_ROWS), handle,
                               archive.file_data)
    finally:
        if helper is not None:
            if helper.poll() is None:
                helper.kill()
                helper.wait()
            part_csv.unlink(missing_ok=True)
            part_gz.unlink(missing_ok=True)
    if progress is not None:
        progress(table, total, total, True)
    return rows


def dump_day(store: Store, data_dir: Path, day: str, limits: dict[str, int], archive_tmp: Path,
             progress: RowsShown | None = None, table_done: Callable[[str], None] | None = None) -> Path:
    """Write ``<day>/dump_<table>.csv`` for every table (header, then the
    rows) and, from the same bytes, the archive ``archive_tmp`` (fsynced):
    members ``<day>/`` and ``<day>/dump_<table>.csv``. ``table_done(table)``
    is called once each table is in the archive.

    Memory stays bounded: at most three chunks of CHUNK_ROWS rows are held
    (per process)."""
    folder = data_dir / day
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(mode=0o755)
    archive = ArchiveWriter(archive_tmp, data_dir / SPOOL)
    try:
        archive.add_dir(day)
        for table in TABLES:
            archive.start_file()
            with open(folder / dump_name(table), "wb", buffering=1 << 20) as handle:
                header = (",".join(columns(table)) + "\r\n").encode()
                handle.write(header)
                archive.file_data(len(header), archive.compress(header))
                if table in limits:
                    _dump_table(store, data_dir, handle, archive, table, day, limits[table], progress)
            archive.end_file(f"{day}/{dump_name(table)}")
            if table_done is not None:
                table_done(table)
        archive.close()
    finally:
        archive.discard()
    return folder


if __name__ == "__main__":
    if len(sys.argv) == 10 and sys.argv[1] == "--dump-part":
        dump_part(*sys.argv[2:])
    else:
        sys.exit("usage: python -m slapos_collect_recipe.archive --dump-part DB TABLE DAY FIRST LAST CSV GZ LEVEL")
