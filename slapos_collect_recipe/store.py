"""The SQLite store: the only module that speaks SQL.

The tables and their columns are declared in ``tables`` (``user``,
``computer``, ``system`` and ``disk`` are a contract: the original design
note's columns, in that order); every table ends with ``date, time,
reported``. Identifiers come only from ``TABLES``; every value is a bound
parameter. A query's result is a named row (``tables``' NamedTuples, or
``sqlite3.Row`` where callers look columns up by name), never a bare tuple.
It stays one module of about 500 lines on purpose: every SQL statement on
``collector.db`` is here (the declaration of the tables is ``tables``, the
guard of the WAL's side files ``walfiles``).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

# store.DB_NAME: the name the other modules (and the tests) import from here
from .datafiles import DB_NAME as DB_NAME
from .datafiles import WAL_SUFFIXES, corrupt_name
from .errors import CollectError
from .tables import (
    COUNTERS,
    STAMP,
    TABLES,
    BenchmarkRun,
    PartitionDay,
    PartitionTotals,
    ProcessRow,
    RowidRange,
    Stamp,
    SystemDay,
    Temperature,
    UsageDay,
    UsageDaySums,
)
from .walfiles import keep_wal_files

if TYPE_CHECKING:  # typing is slow to import, and the collector starts every minute
    from typing import Any

log = logging.getLogger("slapos_collect")

# How long a background writer (the folder walk, a benchmark run) waits for
# the write lock: a rotation holds it while a day is dumped (see rotate_day).
BACKGROUND_TIMEOUT = 600.0
# Bump when _schema() changes: a store of an older version gets the new tables and indexes.
SCHEMA_VERSION = 3


def describe_error(exc: sqlite3.Error, path: str | os.PathLike) -> str:
    """One clear line for a failed write; a full disk often shows up in SQLite
    as a bare "disk I/O error" (the WAL index cannot grow), so say it."""
    import shutil  # only on this error path: keeps the per-minute start-up light

    message = str(exc)
    try:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    except OSError:
        free = None
    if "full" in message or (free is not None and free < 1024 * 1024):
        return f"{path}: no space left on the device ({message}); this run is not stored, earlier data is intact"
    return f"{path}: {message}"


def _table(table: str) -> str:
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}")
    return table


def _csv_field(name: str) -> str:
    """SQL for one value as a CSV field, quoted when ``csv.writer`` would quote it
    (a comma, a double quote, CR or LF in it); NULL is an empty field."""
    column = f'"{name}"'
    return (f"CASE WHEN {column} IS NULL THEN '' WHEN instr({column}, ',') OR instr({column}, '\"') "
            f"OR instr({column}, char(10)) OR instr({column}, char(13)) "
            f"THEN '\"' || replace({column}, '\"', '\"\"') || '\"' ELSE {column} END")


def _schema() -> list[str]:
    statements = []
    for table, cols in TABLES.items():
        body = ", ".join(f"{name} {kind}" for name, kind in cols + STAMP)
        statements.append(f'CREATE TABLE IF NOT EXISTS "{table}" ({body})')
        # One small index serves day dumps, marks, garbage collection and
        # "latest run" look-ups; the partial one finds unreported days without
        # scanning the reported ones.
        statements.append(f'CREATE INDEX IF NOT EXISTS "{table}_date_time" ON "{table}" (date, time)')
        statements.append(
            f'CREATE INDEX IF NOT EXISTS "{table}_unreported" ON "{table}" (date) WHERE reported = 0'
        )
    statements.append("CREATE TABLE IF NOT EXISTS collect_state (key text PRIMARY KEY, value text NOT NULL)")
    body = ", ".join(f"{name} real NOT NULL DEFAULT 0" for name in COUNTERS)
    statements.append(f"CREATE TABLE IF NOT EXISTS partition_counters (partition text PRIMARY KEY, {body})")
    return statements


def share_read_only(path: str | os.PathLike) -> None:
    """Node mode: ``collector.db`` and its WAL side files readable by every
    user (0644), whatever the umask that created them; the owner is left as
    it is (root: only the collector writes)."""
    for suffix in ("", *WAL_SUFFIXES):
        try:
            os.chmod(f"{path}{suffix}", 0o644)
        except FileNotFoundError:
            pass


class Store:
    """A connection to ``collector.db`` with the schema in place."""

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            uri = self.path.absolute().as_uri() + "?mode=ro"  # escapes ?, # and % in the path
            self.db = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
        else:
            self.db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        self.db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        if not readonly:
            self._prepare()

    def _prepare(self) -> None:
        fresh = self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        if fresh:
            # Must precede the first table: lets garbage collection give space
            # back with incremental_vacuum instead of a full VACUUM.
            self.db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        if self.db.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
            raise CollectError(f"{self.path}: cannot switch to WAL mode")
        self.db.execute("PRAGMA synchronous = NORMAL")
        if self.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return  # the usual case, every minute: no write lock taken just to open
        with self.transaction():
            for statement in _schema():
                self.db.execute(statement)
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @classmethod
    def open_or_recover(cls, path: str | os.PathLike) -> tuple[Store, Path | None]:
        """Open the store; a file that is not a database is kept aside under a new
        name and a fresh one started. Returns the store and the kept-aside path."""
        path = Path(path)
        try:
            return cls(path), None
        except sqlite3.DatabaseError as exc:
            if "not a database" not in str(exc) and "malformed" not in str(exc):
                raise
        aside = path.with_name(corrupt_name(path.name, time.strftime('%Y%m%dT%H%M%S', time.gmtime())))
        os.replace(path, aside)
        for suffix in WAL_SUFFIXES:
            side = path.with_name(path.name + suffix)
            if side.exists():
                os.replace(side, aside.with_name(aside.name + suffix))
        return cls(path), aside

    def close(self) -> None:
        """Close; a writer leaves the WAL's side files in place (see ``walfiles.keep_wal_files``)."""
        if self.readonly:
            self.db.close()
            return
        try:
            wal = self.db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        except sqlite3.Error:
            wal = False
        if not wal:
            self.db.close()
            return
        try:
            # An empty WAL at rest: a reader that cannot write the -shm reads
            # the whole WAL on each transaction. Never waits long for a reader.
            self.db.execute("PRAGMA busy_timeout = 100")
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error:
            pass
        with keep_wal_files(self.path):
            self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (no lock upgrade deadlock)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")

    # -- writing ---------------------------------------------------------

    def insert(self, table: str, rows: Iterable[tuple], date: str, time_: str) -> int:
        """Insert rows (the table's own columns) stamped with date and time.

        Call inside ``transaction()``."""
        cols = TABLES[_table(table)]
        names = ", ".join(name for name, _ in cols)
        marks = ", ".join("?" for _ in cols)
        cursor = self.db.executemany(
            f'INSERT INTO "{table}" ({names}, date, time) VALUES ({marks}, ?, ?)',
            (tuple(row) + (date, time_) for row in rows),
        )
        return cursor.rowcount

    def insert_usage(self, rows: Iterable[tuple], date: str, time_: str) -> int:
        """Insert ``partition_usage`` rows and add them to the running counters.

        A NULL figure (not measured) adds nothing. Call inside ``transaction()``."""
        rows = list(rows)
        count = self.insert("partition_usage", rows, date, time_)
        names = [name for name, _ in TABLES["partition_usage"]]
        at = [names.index(counter) for counter in COUNTERS]
        sets = ", ".join(f"{c} = {c} + excluded.{c}" for c in COUNTERS)
        self.db.executemany(
            f"INSERT INTO partition_counters (partition, {', '.join(COUNTERS)}) "
            f"VALUES (?{', ?' * len(COUNTERS)}) ON CONFLICT(partition) DO UPDATE SET {sets}",
            ((row[0], *(max(row[i] or 0, 0) for i in at)) for row in rows),
        )
        return count

    def has_table(self, table: str) -> bool:
        """Whether the store has ``table``: a store of an older version opened read-only
        (the server, before the collector upgraded it) lacks the newer ones."""
        return self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone() is not None

    def partition_counters(self) -> dict[str, sqlite3.Row]:
        """``partition -> Row`` of the running sums (``COUNTERS``) since the store began
        (none in a store of an older version)."""
        if not self.has_table("partition_counters"):
            return {}
        cursor = self.db.cursor()
        cursor.row_factory = sqlite3.Row
        return {row["partition"]: row for row in cursor.execute(
            "SELECT * FROM partition_counters ORDER BY partition")}

    def get_state(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM collect_state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_state(self, key: str, value: Any) -> None:
        self.db.execute(
            "INSERT INTO collect_state (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    # -- reading ---------------------------------------------------------

    def process_cpu_times(self, date: str, time_: str) -> dict[str, float]:
        """``process -> cpu_time`` of the run stamped date/time."""
        return dict(
            self.db.execute('SELECT process, cpu_time FROM "user" WHERE date = ? AND time = ?', (date, time_))
        )

    def latest_stamp(self, table: str = "system") -> Stamp | None:
        row = self.db.execute(
            f'SELECT date, time FROM "{_table(table)}" ORDER BY date DESC, time DESC LIMIT 1'
        ).fetchone()
        return Stamp(*row) if row else None

    def rows_at(self, table: str, date: str, time_: str) -> list[sqlite3.Row]:
        """The rows of one run, as ``sqlite3.Row`` (access by column name)."""
        cursor = self.db.cursor()
        cursor.row_factory = sqlite3.Row
        return cursor.execute(
            f'SELECT * FROM "{_table(table)}" WHERE date = ? AND time = ?', (date, time_)
        ).fetchall()

    def latest_rows(self, table: str) -> list[sqlite3.Row]:
        stamp = self.latest_stamp(table)
        return self.rows_at(table, *stamp) if stamp else []

    # -- benchmarks (bench.py) --------------------------------------------

    def benchmark_latest_runs(self) -> dict[str, BenchmarkRun]:
        """``name -> (value, unit, date, time)`` of each benchmark figure's latest row."""
        return {
            name: BenchmarkRun(value, unit, date, time_) for name, value, unit, date, time_, _ in self.db.execute(
                'SELECT name, value, unit, date, time, max(date || \' \' || time) FROM "benchmark" GROUP BY name'
            )
        }

    def benchmark_recent(self, name: str, count: int) -> list[float]:
        """The values of a benchmark figure's latest ``count`` rows, newest first."""
        return [value for (value,) in self.db.execute(
            'SELECT value FROM "benchmark" WHERE name = ? ORDER BY date DESC, time DESC LIMIT ?', (name, count)
        )]

    # -- end of benchmarks --------------------------------------------------

    def unreported_days(self, before: str) -> list[str]:
        """Days before ``before`` (YYYY-MM-DD) with unreported rows in any table."""
        days: set[str] = set()
        for table in TABLES:
            # One index seek per day found (DISTINCT would read every entry of the partial index).
            day = ""
            while (day := self.db.execute(
                    f'SELECT min(date) FROM "{table}" WHERE reported = 0 AND date > ? AND date < ?',
                    (day, before)).fetchone()[0]) is not None:
                days.add(day)
        return sorted(days)

    def mark_reported(self, day: str, up_to_rowid: dict[str, int]) -> int:
        """Mark a day's dumped rows reported: in each table named in ``up_to_rowid``,
        those up to its rowid, so a row written meanwhile is never marked without
        being archived. Call inside ``transaction()``."""
        changed = 0
        for table, limit in up_to_rowid.items():
            changed += self.db.execute(
                f'UPDATE "{_table(table)}" SET reported = 1 WHERE date = ? AND reported = 0 AND rowid <= ?',
                (day, limit),
            ).rowcount
        return changed

    def delete_reported_before(self, day: str) -> int:
        """Delete reported rows dated before ``day``; unreported rows are never touched.

        Gives the freed pages back with an incremental vacuum."""
        deleted = 0
        with self.transaction():
            for table in TABLES:
                deleted += self.db.execute(
                    f'DELETE FROM "{table}" WHERE reported = 1 AND date < ?', (day,)
                ).rowcount
        if deleted:
            # execute() stops after one step (one page freed); executescript
            # runs the pragma to the end.
            self.db.executescript("PRAGMA incremental_vacuum;")
        return deleted

    # -- serving (slapmonitor: metrics, dashboard, consistent copies) -------

    def partition_totals(self, date: str, time_: str) -> list[PartitionTotals]:
        """Per partition (by label), the sums over the processes of the run stamped date/time."""
        return [PartitionTotals(*row) for row in self.db.execute(
            'SELECT partition, count(*), total(cpu_num_threads), total(cpu_percent), total(cpu_time), '
            'total(memory_percent), total(memory_rss), total(io_rw_counter), total(io_cycles_counter) '
            'FROM "user" WHERE date = ? AND time = ? GROUP BY partition ORDER BY partition',
            (date, time_),
        )]

    def latest_temperatures(self) -> list[Temperature]:
        """The sensors of the latest run that stored temperatures."""
        stamp = self.latest_stamp("temperature") if self.has_table("temperature") else None
        if stamp is None:
            return []
        return [Temperature(*row) for row in self.db.execute(
            'SELECT sensor_id, temperature, alarm FROM "temperature" WHERE date = ? AND time = ? ORDER BY sensor_id',
            stamp)]

    def latest_folder_sizes(self) -> dict[str, float]:
        """``partition -> disk_used`` (KiB) of each partition's latest folder row
        (folders are measured rarely, so each has its own latest stamp)."""
        return {
            part: used for part, used, _ in self.db.execute(
                'SELECT partition, disk_used, max(date || \' \' || time) FROM "folder" GROUP BY partition'
            )
        }

    def backup_to(self, path: str | os.PathLike) -> None:
        """A consistent copy of the whole database into ``path`` (SQLite's backup
        API, one step under one read transaction), left in rollback-journal mode
        so that it is a single self-contained file."""
        target = sqlite3.connect(path, isolation_level=None)
        try:
            self.db.backup(target)
            target.execute("PRAGMA journal_mode = DELETE")
        finally:
            target.close()

    # partition_usage readers (metrics, dashboard, journal, monitor JSON)

    def day_usage_sums(self, day: str) -> UsageDay:
        """The day's runs in ``partition_usage`` and each partition's sums (see ``UsageDay``)."""
        (runs,) = self.db.execute(
            "SELECT count(DISTINCT time) FROM partition_usage WHERE date = ?", (day,)).fetchone()
        return UsageDay(runs, {row[0]: UsageDaySums(*row) for row in self.db.execute(
            "SELECT partition, total(cpu_percent), total(coalesce(memory_used, memory_rss)), "
            "count(coalesce(memory_used, memory_rss)) "
            "FROM partition_usage WHERE date = ? GROUP BY partition ORDER BY partition", (day,))})

    # -- publishing (realtime CSVs, daily dumps, consumption reports) -------

    def previous_stamp(self, table: str, date: str, time_: str) -> Stamp | None:
        """The stamp of the run just before date/time in ``table``."""
        row = self.db.execute(
            f'SELECT date, time FROM "{_table(table)}" WHERE date < ? OR (date = ? AND time < ?) '
            "ORDER BY date DESC, time DESC LIMIT 1",
            (date, date, time_),
        ).fetchone()
        return Stamp(*row) if row else None

    def unreported_limits(self, day: str) -> dict[str, int]:
        """``table -> highest rowid`` of the day's unreported rows (tables with none left out)."""
        limits = {}
        for table in TABLES:
            (top,) = self.db.execute(
                f'SELECT max(rowid) FROM "{table}" WHERE date = ? AND reported = 0', (day,)
            ).fetchone()
            if top is not None:
                limits[table] = top
        return limits

    def count_unreported(self, table: str, day: str) -> int:
        return self.db.execute(
            f'SELECT count(*) FROM "{_table(table)}" WHERE date = ? AND reported = 0', (day,)
        ).fetchone()[0]

    def csv_chunks(self, table: str, day: str, up_to_rowid: int, from_rowid: int = 0,
                   rows: int = 10000) -> Iterator[tuple[int, bytes]]:
        """The day's unreported rows with ``from_rowid <= rowid <= up_to_rowid``,
        in insertion order, as CSV lines (``\\r\\n`` after each), ``rows`` at a
        time: yields ``(number of rows, bytes)``; memory does not grow with the day.

        SQLite formats the lines (about 2.5 times cheaper than Python's
        ``csv``, which needs a Python object per value). The fast expression
        joins the values as they are; a slice where a value held a comma, a quote or a
        line break (the count of those bytes tells, exactly) is formatted again
        with quoting, as ``csv.writer`` would (QUOTE_MINIMAL). Numbers are
        written as SQLite writes them as text."""
        names = [name for name, _ in TABLES[_table(table)] + STAMP]
        # printf's %s writes NULL as nothing; one call is cheaper than ||.
        plain = "printf('{}', {})".format(",".join("%s" for _ in names), ", ".join(f'"{n}"' for n in names))
        quoted = " || ',' || ".join(_csv_field(name) for name in names)
        where = f'FROM "{table}" WHERE date = ? AND reported = 0 AND rowid > ? AND rowid <= ?'
        fast = f"SELECT rowid, CAST({plain} AS BLOB) {where} ORDER BY rowid LIMIT ?"
        slow = f"SELECT CAST({quoted} AS BLOB) {where} ORDER BY rowid"
        separators = len(names) - 1
        last = from_rowid - 1
        while batch := self.db.execute(fast, (day, last, up_to_rowid, rows)).fetchall():
            first, last = last, batch[-1][0]
            data = b"\r\n".join([line for _, line in batch])
            count = len(batch)
            if (data.count(b",") != count * separators or data.count(b"\n") != count - 1
                    or data.count(b"\r") != count - 1 or b'"' in data):
                data = b"\r\n".join([line for (line,) in self.db.execute(slow, (day, first, last))])
            yield count, data + b"\r\n"

    def unreported_rowid_range(self, table: str, day: str) -> RowidRange | None:
        """Lowest and highest rowid of the day's unreported rows."""
        # Two queries: min() alone and max() alone are index seeks, both at once a scan.
        where = f'FROM "{_table(table)}" WHERE date = ? AND reported = 0'
        (low,) = self.db.execute(f"SELECT min(rowid) {where}", (day,)).fetchone()
        (high,) = self.db.execute(f"SELECT max(rowid) {where}", (day,)).fetchone()
        return None if low is None else RowidRange(low, high)

    def day_system_averages(self, day: str) -> SystemDay:
        """A day's ``system`` rows: how many, and their average ``cpu_percent`` and ``memory_used``."""
        return SystemDay(*self.db.execute(
            'SELECT count(*), avg(cpu_percent), avg(memory_used) FROM "system" WHERE date = ?', (day,)
        ).fetchone())

    def day_partition_sums(self, day: str) -> dict[str, PartitionDay]:
        """``partition -> (sum of cpu_percent, sum of memory_rss)`` over a day's ``user`` rows."""
        return {
            part: PartitionDay(cpu, rss) for part, cpu, rss in self.db.execute(
                'SELECT partition, total(cpu_percent), total(memory_rss) '
                'FROM "user" WHERE date = ? GROUP BY partition ORDER BY partition',
                (day,),
            )
        }

    def day_user_runs(self, day: str) -> int:
        """How many distinct runs stamped a day's ``user`` rows."""
        return self.db.execute('SELECT count(DISTINCT time) FROM "user" WHERE date = ?', (day,)).fetchone()[0]

    def day_folder_averages(self, day: str) -> dict[str, float]:
        """``partition -> average disk_used`` (KiB) over a day's folder rows."""
        return dict(self.db.execute(
            'SELECT partition, avg(disk_used) FROM "folder" WHERE date = ? GROUP BY partition ORDER BY partition',
            (day,),
        ))

    def run_processes(self, partition: str, date: str, time_: str) -> list[ProcessRow]:
        """One partition's processes in one run, busiest first."""
        return [ProcessRow(*row) for row in self.db.execute(
            f'SELECT {", ".join(ProcessRow._fields)} FROM "user" WHERE date = ? AND time = ? AND partition = ? '
            "ORDER BY cpu_percent DESC, pid",
            (date, time_, partition),
        )]

    def has_reported_before(self, day: str) -> bool:
        """Whether garbage collection has anything to delete before ``day``."""
        for table in TABLES:
            if self.db.execute(
                f'SELECT 1 FROM "{table}" WHERE date < ? AND reported = 1 LIMIT 1', (day,)
            ).fetchone():
                return True
        return False

    def checkpoint(self) -> None:
        """Fold the WAL back into the database and truncate it (after a big rotation)."""
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
