"""Past days: dump, archive, mark reported, collect garbage, report.

``collect`` runs this after every run, once today's CSVs and the monitor JSON
are written (it costs a few index look-ups when no day is due);
``slapos-collect rotate`` runs it alone.

For every day before today (UTC) with unreported rows in any table:

1. the archive's name and the highest rowid to dump per table are recorded
   in the store (``collect_state``, key ``rotate.pending``);
2. ``<data-dir>/<day>/dump_<table>.csv`` for every table, header first,
   streamed from the store (memory does not grow with the day);
3. and, from the same bytes, into a temp archive ``.<archive>.tmp``
   (members ``<day>/`` and ``<day>/dump_<table>.csv``), fsynced; meanwhile a
   thread marks those rows reported in a transaction of its own, not committed;
4. the temp file is hard-linked to its final name (never over an existing
   file), the directory fsynced: the archive is durable;
5. the day's consumption report is written (unless it exists);
6. the marks are committed, with the end of the record of step 1, in that
   one transaction; the folder is removed.

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
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from . import config, datafiles, lock, report
from .atomic import fsync_dir, link_new
from .datafiles import ARCHIVE_TMP_SUFFIX, DB_NAME, PART_PREFIX, SPOOL
from .errors import CollectError
from .progress import Progress
from .store import Store

if TYPE_CHECKING:  # the dump machinery is imported only when a day is due
    from .archive import RowsShown

log = logging.getLogger("slapos_collect")

PENDING_KEY = "rotate.pending"
DAY_RE = re.compile(datafiles.DAY_PATTERN)
LOCK_WAIT = 120.0
# Tests only: make rotate stop at a named point (so that it can be killed there).
PAUSE_ENV = "SLAPOS_COLLECT_TEST_PAUSE"


@dataclass
class RotateResult:
    days: list[str] = field(default_factory=list)
    archives: list[Path] = field(default_factory=list)
    rows_reported: int = 0
    rows_deleted: int = 0
    reports: list[Path] = field(default_factory=list)
    recovered: str | None = None


def _pause(point: str) -> None:
    if os.environ.get(PAUSE_ENV) == point:
        print(f"paused at {point}", file=sys.stderr, flush=True)
        time.sleep(3600)


def _day_progress(bar: Progress, index: int, days: int, day: str) -> RowsShown:
    """What the dump calls with each table's rows so far: one day of ``bar``."""
    def show(table: str, done: int, total: int, force: bool = False) -> None:
        bar.draw(f"day {index}/{days} {day} {table} {done:,} rows", done / total if total else 0, force)
    return show


# -- one day -------------------------------------------------------------------

def archive_name(data_dir: Path, day: str) -> str:
    """``<day>.tar.gz``, or ``<day>.late-N.tar.gz`` when that one exists."""
    name = datafiles.archive_name(day)
    n = 0
    while (data_dir / name).exists():
        n += 1
        name = datafiles.archive_name(day, n)
    return name


def _finish(store: Store, day: str, limits: dict[str, int], decision=None) -> int:
    """Mark the day's dumped rows reported and end the pending record, in one
    transaction. With ``decision`` (a queue), wait between the two for its
    word: True commits, False rolls back (``_RolledBack``)."""
    with store.transaction():
        marked = store.mark_reported(day, limits)
        if decision is not None and not decision.get():
            raise _RolledBack
        store.set_state(PENDING_KEY, None)
    return marked


def _mark_until_told(path: Path, day: str, limits: dict[str, int], decision) -> int:
    """``_finish`` on this thread's own connection, while the day is dumped:
    readers on other connections (the dump) never see the uncommitted marks (WAL)."""
    with Store(path) as marker:
        return _finish(marker, day, limits, decision)


class _RolledBack(Exception):
    pass


def rotate_day(store: Store, settings: config.CollectSettings, day: str, result: RotateResult,
               progress: RowsShown | None = None) -> None:
    """Dump and archive one day; mark its rows reported once the archive is durable.

    The pending record is committed first (the archive's final name appears
    only once it is complete, and that is what ``recover`` looks for). The
    marks are made meanwhile, by a thread, in a transaction committed only
    after the archive is linked and its directory fsynced: marking costs no
    time of its own, and a kill before that commit leaves no row marked.
    ``progress``: called with each table's rows so far (``archive.dump_day``)."""
    data_dir = settings.data_dir
    limits = store.unreported_limits(day)
    if not limits:
        return
    name = archive_name(data_dir, day)
    tmp = data_dir / datafiles.archive_tmp_name(name)
    # The dump machinery is imported only when a day is due: the per-minute
    # collect calls rotate() and must start fast.
    from concurrent.futures import ThreadPoolExecutor
    from queue import SimpleQueue

    from .archive import dump_day

    # The temp file is made first, so that the record names its inode: recover()
    # completes the day only if the archive under that name is this very file.
    tmp.unlink(missing_ok=True)
    with open(tmp, "xb"):
        pass
    # Whether this run writes the day's journal (not when a late archive follows one):
    # recover() then hands it over if the hand-over was not made.
    journal_due = report.report_path(data_dir, day) is not None
    with store.transaction():
        store.set_state(PENDING_KEY, {"day": day, "archive": name, "limits": limits,
                                      "inode": os.stat(tmp).st_ino, "journal": journal_due})
    _pause("pending")
    decision: SimpleQueue[bool] = SimpleQueue()
    told = linked = False
    # The day's journal is computed on the side too, while the day is dumped.
    with ThreadPoolExecutor(2, thread_name_prefix="rotate") as side:
        marks = side.submit(_mark_until_told, store.path, day, limits, decision)
        try:
            journal = None
            if journal_due:
                journal = side.submit(report.journal_from, store.path, day, settings.computer_id)
            dump_day(store, data_dir, day, limits, tmp, progress,
                     table_done=lambda table: _pause(f"dumped-{table}"))
            journal_bytes = journal.result() if journal is not None else None
            _pause("packed")
            try:
                linked = link_new(tmp, data_dir / name)
                if not linked:
                    raise FileExistsError(17, "File exists", str(data_dir / name))
            except OSError as exc:
                raise CollectError(f"cannot create {data_dir / name}: {exc.strerror or exc}") from None
            tmp.unlink(missing_ok=True)
            fsync_dir(data_dir)
            _pause("linked")
            written = report.write_consumption_report(store, data_dir, day, settings.computer_id, journal_bytes)
            if written:
                result.reports.append(written)
                report.hand_to_node_report(written, settings.xml_report_dir)
            decision.put(True)
            told = True
            result.rows_reported += marks.result()
        except BaseException:
            if not told:
                decision.put(False)
                failure = marks.exception()
                if failure is not None and not isinstance(failure, _RolledBack):
                    log.warning("rotate: marking %s failed too: %s", day, failure)
            if not linked:  # no archive: the day is simply redone (else recover() completes it)
                with store.transaction():
                    store.set_state(PENDING_KEY, None)
            raise
    _pause("marked")
    shutil.rmtree(data_dir / day)
    result.days.append(day)
    result.archives.append(data_dir / name)
    log.info("archived %s into %s", day, name)


# -- the whole job -----------------------------------------------------------------

def recover(store: Store, data_dir: Path, computer_id: str = "", xml_report_dir: Path | None = None) -> str | None:
    """Finish or drop what a killed run left; remove its temp files and folders."""
    outcome = None
    pending = store.get_state(PENDING_KEY)
    if pending:
        archive = data_dir / pending["archive"]
        if archive.is_file() and pending.get("inode", archive.stat().st_ino) == archive.stat().st_ino:
            fsync_dir(data_dir)
            written = report.write_consumption_report(store, data_dir, pending["day"], computer_id)
            journal = written or (report.journal_path(data_dir, pending["day"]) if pending.get("journal") else None)
            if journal is not None and journal.is_file():  # written by that run, its hand-over maybe not
                report.hand_to_node_report(journal, xml_report_dir)
            _finish(store, pending["day"], {t: int(v) for t, v in pending["limits"].items()})
            outcome = f"completed {pending['archive']}"
        else:
            with store.transaction():
                store.set_state(PENDING_KEY, None)
            outcome = f"redoing {pending['day']}"
        log.warning("rotate: a previous run was interrupted: %s", outcome)
    with os.scandir(data_dir) as entries:
        for entry in entries:
            if (entry.name.startswith(".") and entry.name.endswith(ARCHIVE_TMP_SUFFIX) or entry.name == SPOOL
                    or entry.name.startswith(PART_PREFIX)):
                os.unlink(entry.path)
            elif DAY_RE.match(entry.name) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
    report.clean_report_leftovers(data_dir, xml_report_dir)
    return outcome


def today_utc() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def gc_cutoff(today: str, keep_days: int) -> str:
    return (date.fromisoformat(today) - timedelta(days=keep_days)).isoformat()


def rotate(store: Store, settings: config.CollectSettings, progress: bool = False) -> RotateResult:
    """Archive every past day with unreported rows, collect garbage, write the
    consumption reports. Cheap when there is nothing to do. Call with the
    collect lock held. ``progress``: draw a bar on stderr (a terminal)."""
    data_dir = Path(settings.data_dir)
    result = RotateResult()
    result.recovered = recover(store, data_dir, settings.computer_id, settings.xml_report_dir)
    today = today_utc()
    days = [d for d in store.unreported_days(today) if DAY_RE.match(d)]
    bar = Progress(len(days)) if progress and days else None
    try:
        for index, day in enumerate(days, 1):
            shown = None
            if bar:
                shown = _day_progress(bar, index, len(days), day)
                shown("", 0, 0, force=True)
            rotate_day(store, settings, day, result, shown)
            if bar:
                bar.advance()
    finally:
        if bar:
            bar.close()
    _pause("gc")
    cutoff = gc_cutoff(today, settings.keep_days)
    if store.has_reported_before(cutoff):
        result.rows_deleted = store.delete_reported_before(cutoff)
    if result.days or result.rows_deleted:
        store.checkpoint()
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
                # As after every collect: the partitions' monitor JSON, from the latest run.
                report.publish_monitor(store, settings.partitions)
    except lock.Busy:
        raise CollectError(f"another collect or rotate still runs in {settings.data_dir} "
                           f"after {LOCK_WAIT:.0f} s; try again later", exit_code=1) from None
    log.info("rotate: %d day(s) archived, %d row(s) reported, %d deleted",
             len(result.days), result.rows_reported, result.rows_deleted)
    return 0
