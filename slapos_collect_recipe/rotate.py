"""Past days: dump, archive, mark reported, collect garbage, report.

For every day before today (UTC) with unreported rows in any table:

1. ``<data-dir>/<day>/dump_<table>.csv`` for every table, header first,
   streamed from the store (memory does not grow with the day);
2. and, from the same bytes, into a temp archive ``.<archive>.tmp``
   (members ``<day>/`` and ``<day>/dump_<table>.csv``), fsynced;
3. the archive's name and the highest rowid dumped per table are recorded in
   the store (``collect_state``, key ``rotate.pending``);
4. the temp file is hard-linked to its final name (never over an existing
   file), the directory fsynced: the archive is durable;
5. the day's consumption report is written (unless it exists);
6. the rows dumped, and only those, are marked reported in one transaction,
   and the record of step 3 cleared; the folder is removed.

Killed at any instant (kill -9), the next run finishes the job: a pending
record whose archive exists is completed (its rows marked, no second archive);
otherwise it is dropped and the day redone; temp files and half-built day
folders are removed. So no row is ever marked reported unless an archive on
disk holds it, and no day is archived twice.

The first archive of a day is ``<day>.tar.gz``; rows that arrive late for an
archived day go into ``<day>.late-1.tar.gz``, then ``.late-2``... An archive
is never overwritten.

Garbage collection deletes reported rows older than keep-days; the store
gives the pages back with an incremental vacuum (no full VACUUM).
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from . import config, lock, report
from .atomic import fsync_dir
from .errors import CollectError
from .store import DB_NAME, TABLES, Store, columns

log = logging.getLogger("slapos_collect")

PENDING_KEY = "rotate.pending"
# gzip level 1: measured in benchmarks/bench_rotate.py, about 8x faster than
# level 9 (the original's, tarfile's default) for an archive ~45 % larger.
GZIP_LEVEL = 1
DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
LOCK_WAIT = 120.0
# Dumps: rows formatted, written and compressed at a time; a table with at
# least SPLIT_ROWS rowids is dumped in two halves by two processes.
CHUNK_ROWS = 10000
SPLIT_ROWS = 200000
PART_PREFIX = ".rotate.part-"
# Tests only: make rotate stop at a named point (so that it can be killed there).
PAUSE_ENV = "SLAPOS_COLLECT_TEST_PAUSE"
SPOOL = ".rotate.spool"


@dataclass
class RotateResult:
    days: list[str] = field(default_factory=list)
    archives: list[Path] = field(default_factory=list)
    rows_reported: int = 0
    rows_deleted: int = 0
    reports: list[Path] = field(default_factory=list)
    monitor_folders: list[Path] = field(default_factory=list)
    recovered: str | None = None


def _pause(point: str) -> None:
    if os.environ.get(PAUSE_ENV) == point:
        print(f"paused at {point}", file=sys.stderr, flush=True)
        time.sleep(3600)


class Progress:
    """One line on stderr, redrawn in place (only used on a terminal)."""

    def __init__(self, days: int, stream=None) -> None:
        self.days = days
        self.stream = stream or sys.stderr
        self.index = 0
        self.day = ""
        self.last = 0.0

    def start_day(self, day: str) -> None:
        self.index += 1
        self.day = day
        self.draw("", 0, 0, force=True)

    def draw(self, table: str, done: int, total: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 0.2:
            return
        self.last = now
        fraction = ((self.index - 1) + (done / total if total else 0)) / max(self.days, 1)
        width = 30
        filled = int(fraction * width)
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r[{bar}] {fraction * 100:5.1f}% day {self.index}/{self.days} "
                          f"{self.day} {table} {done:,} rows\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


# -- one day -------------------------------------------------------------------

def archive_name(data_dir: Path, day: str) -> str:
    """``<day>.tar.gz``, or ``<day>.late-N.tar.gz`` when that one exists."""
    name = f"{day}.tar.gz"
    n = 0
    while (data_dir / name).exists():
        n += 1
        name = f"{day}.late-{n}.tar.gz"
    return name


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


def gzip_member(data: bytes, level: int = GZIP_LEVEL) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: gzip framing
    return compressor.compress(data) + compressor.flush()


def _write_rows(cursor, handle, sink, progress: Progress | None = None, table: str = "",
                total: int = 0) -> int:
    """Format rows with ``csv.writer`` (the cheapest in CPU), CHUNK_ROWS at a
    time; each chunk goes to ``handle`` as is and to ``sink(size, member)``
    as a gzip member (compressed by a worker thread while the next chunk is
    formatted). Returns the number of rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    queue: deque[tuple[int, Future]] = deque()
    rows = 0
    with ThreadPoolExecutor(1, thread_name_prefix="gzip") as pool:
        while batch := cursor.fetchmany(CHUNK_ROWS):
            writer.writerows(batch)
            data = buffer.getvalue().encode("utf-8")
            buffer.seek(0)
            buffer.truncate()
            handle.write(data)
            queue.append((len(data), pool.submit(gzip_member, data, GZIP_LEVEL)))
            while len(queue) > 2:
                size, future = queue.popleft()
                sink(size, future.result())
            rows += len(batch)
            if progress is not None:
                progress.draw(table, rows, total)
        while queue:
            size, future = queue.popleft()
            sink(size, future.result())
    return rows


def _start_helper(store: Store, data_dir: Path, table: str, day: str, first: int, last: int,
                  ) -> tuple[subprocess.Popen, Path, Path]:
    """A second process dumping rowids ``first..last`` of a big table into
    ``.rotate.part-<pid>.{csv,gz}`` while this one does the first half."""
    part_csv = data_dir / f"{PART_PREFIX}{os.getpid()}.csv"
    part_gz = data_dir / f"{PART_PREFIX}{os.getpid()}.gz"
    helper = subprocess.Popen(
        [sys.executable, "-m", "slapos_collect_recipe.rotate", "--dump-part", str(store.path), table, day,
         str(first), str(last), str(part_csv), str(part_gz), str(GZIP_LEVEL)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        # The parent's import path (a buildout script sets it in the script, not in the environment).
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)),
    )
    return helper, part_csv, part_gz


def dump_part(db_path: str, table: str, day: str, first: str, last: str, part_csv: str, part_gz: str,
              level: str) -> None:
    """The helper process's job (``python -m slapos_collect_recipe.rotate --dump-part ...``)."""
    _die_with_parent()
    global GZIP_LEVEL
    GZIP_LEVEL = int(level)
    with Store(db_path, readonly=True) as reader, open(part_csv, "wb", buffering=1 << 20) as handle, \
            open(part_gz, "wb", buffering=1 << 20) as members:
        _write_rows(reader.dump_rows(table, day, int(last), int(first)), handle,
                    lambda _size, member: members.write(member))


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
                limit: int, progress: Progress | None) -> int:
    """Stream one table's unreported rows of the day into the CSV and the archive.

    A big table (SPLIT_ROWS rowids or more) on a machine with several cores
    is done in two halves at once: the second by a helper process, whose
    output is appended after the first half's."""
    span = store.unreported_rowid_range(table, day)
    if span is None:
        return 0
    low, high = span[0], min(span[1], limit)
    total = store.count_unreported(table, day) if progress is not None else 0
    helper = None
    end = high
    if (os.cpu_count() or 1) > 1 and high - low + 1 >= SPLIT_ROWS:
        middle = (low + high) // 2
        helper, part_csv, part_gz = _start_helper(store, data_dir, table, day, middle + 1, high)
        end = middle
    try:
        rows = _write_rows(store.dump_rows(table, day, end, low), handle, archive.file_data, progress, table,
                           total)
        if helper is not None and helper.wait() == 0:
            size = part_csv.stat().st_size
            with open(part_csv, "rb") as part:
                shutil.copyfileobj(part, handle, 1 << 20)
            with open(part_gz, "rb") as members:
                archive.file_members(size, members)
        elif helper is not None:
            log.warning("rotate: the helper dumping %s of %s failed (%s); doing its half here",
                        table, day, helper.returncode)
            rows += _write_rows(store.dump_rows(table, day, high, end + 1), handle, archive.file_data)
    finally:
        if helper is not None:
            if helper.poll() is None:
                helper.kill()
                helper.wait()
            part_csv.unlink(missing_ok=True)
            part_gz.unlink(missing_ok=True)
    if progress is not None:
        progress.draw(table, total, total, force=True)
    return rows


def dump_day(store: Store, data_dir: Path, day: str, limits: dict[str, int], archive_tmp: Path,
             progress: Progress | None = None) -> Path:
    """Write ``<day>/dump_<table>.csv`` for every table (header, then the
    rows) and, from the same bytes, the archive ``archive_tmp`` (fsynced):
    members ``<day>/`` and ``<day>/dump_<table>.csv``.

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
            with open(folder / f"dump_{table}.csv", "wb", buffering=1 << 20) as handle:
                header = (",".join(columns(table)) + "\r\n").encode()
                handle.write(header)
                archive.file_data(len(header), archive.compress(header))
                if table in limits:
                    _dump_table(store, data_dir, handle, archive, table, day, limits[table], progress)
            archive.end_file(f"{day}/dump_{table}.csv")
            _pause(f"dumped-{table}")
        archive.close()
    finally:
        archive.discard()
    return folder


def _link_new(tmp: Path, final: Path) -> None:
    """Give ``tmp`` the name ``final``, never replacing an existing file."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise
    except OSError:
        # A file system without hard links: we hold the lock, so check, then rename.
        if final.exists():
            raise FileExistsError(17, "File exists", str(final)) from None
        os.rename(tmp, final)


def _finish(store: Store, day: str, limits: dict[str, int]) -> int:
    marked = store.mark_reported(day, limits)
    with store.transaction():
        store.set_state(PENDING_KEY, None)
    return marked


def rotate_day(store: Store, settings: config.CollectSettings, day: str, result: RotateResult,
               progress: Progress | None = None) -> None:
    data_dir = settings.data_dir
    limits = store.unreported_limits(day)
    if not limits:
        return
    name = archive_name(data_dir, day)
    tmp = data_dir / f".{name}.tmp"
    # The day's journal is computed on the side, while the day is dumped.
    with ThreadPoolExecutor(1, thread_name_prefix="report") as side:
        journal = None
        if report.report_path(data_dir, day) is not None:
            journal = side.submit(report.journal_from, store.path, day, settings.computer_id)
        dump_day(store, data_dir, day, limits, tmp, progress)
        journal_bytes = journal.result() if journal is not None else None
    _pause("packed")
    with store.transaction():
        store.set_state(PENDING_KEY, {"day": day, "archive": name, "limits": limits})
    _pause("pending")
    try:
        _link_new(tmp, data_dir / name)
    except OSError as exc:
        with store.transaction():
            store.set_state(PENDING_KEY, None)
        raise CollectError(f"cannot create {data_dir / name}: {exc.strerror or exc}") from None
    tmp.unlink(missing_ok=True)
    fsync_dir(data_dir)
    _pause("linked")
    written = report.write_consumption_report(store, data_dir, day, settings.computer_id, journal_bytes)
    if written:
        result.reports.append(written)
    result.rows_reported += _finish(store, day, limits)
    _pause("marked")
    shutil.rmtree(data_dir / day)
    result.days.append(day)
    result.archives.append(data_dir / name)
    log.info("archived %s into %s", day, name)


# -- the whole job -----------------------------------------------------------------

def recover(store: Store, data_dir: Path, computer_id: str = "") -> str | None:
    """Finish or drop what a killed run left; remove its temp files and folders."""
    outcome = None
    pending = store.get_state(PENDING_KEY)
    if pending:
        archive = data_dir / pending["archive"]
        if archive.is_file():
            fsync_dir(data_dir)
            report.write_consumption_report(store, data_dir, pending["day"], computer_id)
            _finish(store, pending["day"], {t: int(v) for t, v in pending["limits"].items()})
            outcome = f"completed {pending['archive']}"
        else:
            with store.transaction():
                store.set_state(PENDING_KEY, None)
            outcome = f"redoing {pending['day']}"
        log.warning("rotate: a previous run was interrupted: %s", outcome)
    with os.scandir(data_dir) as entries:
        for entry in entries:
            if (entry.name.startswith(".") and entry.name.endswith(".tar.gz.tmp") or entry.name == SPOOL
                    or entry.name.startswith(PART_PREFIX)):
                os.unlink(entry.path)
            elif DAY_RE.match(entry.name) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
    report.clean_report_leftovers(data_dir)
    return outcome


def today_utc() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def gc_cutoff(today: str, keep_days: int) -> str:
    return (date.fromisoformat(today) - timedelta(days=keep_days)).isoformat()


def rotate(store: Store, settings: config.CollectSettings, progress: bool = False) -> RotateResult:
    """Archive every past day with unreported rows, collect garbage, write the
    reports. Cheap when there is nothing to do. Call with the collect lock held."""
    data_dir = Path(settings.data_dir)
    result = RotateResult()
    result.recovered = recover(store, data_dir, settings.computer_id)
    today = today_utc()
    days = [d for d in store.unreported_days(today) if DAY_RE.match(d)]
    bar = Progress(len(days)) if progress and days else None
    try:
        for day in days:
            if bar:
                bar.start_day(day)
            rotate_day(store, settings, day, result, bar)
    finally:
        if bar:
            bar.close()
    _pause("gc")
    cutoff = gc_cutoff(today, settings.keep_days)
    if store.has_reported_before(cutoff):
        result.rows_deleted = store.delete_reported_before(cutoff)
    if result.days or result.rows_deleted:
        store.checkpoint()
    result.monitor_folders = report.publish_monitor(store, settings.partitions)
    return result


# -- the ``rotate`` subcommand ------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_common_arguments(parser)
    config.add_partition_arguments(parser)
    parser.add_argument("--keep-days", type=int, metavar="N",
                        help=f"keep reported rows N days (default {config.DEFAULT_KEEP_DAYS}, "
                             "or collect_cache from slapos.cfg)")


def run(args: argparse.Namespace) -> int:
    settings = config.collect_settings(args)
    config.setup_logging(settings.log_file)
    try:
        with lock.exclusive(settings.data_dir / lock.COLLECT_LOCK, wait=LOCK_WAIT):
            with Store(settings.data_dir / DB_NAME) as store:
                result = rotate(store, settings, progress=sys.stderr.isatty())
    except lock.Busy:
        raise CollectError(f"another collect or rotate still runs in {settings.data_dir} "
                           f"after {LOCK_WAIT:.0f} s; try again later", exit_code=1) from None
    log.info("rotate: %d day(s) archived, %d row(s) reported, %d deleted",
             len(result.days), result.rows_reported, result.rows_deleted)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 10 and sys.argv[1] == "--dump-part":
        dump_part(*sys.argv[2:])
    else:
        sys.exit("usage: python -m slapos_collect_recipe.rotate --dump-part DB TABLE DAY FIRST LAST CSV GZ LEVEL")
