"""rotate: real database, real archives, the real command, real kill -9."""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import pty
import signal
import sqlite3
import subprocess
import sys
import tarfile
import threading
import time
from datetime import date, timedelta
from pathlib import Path

import pytest
from conftest import SCRIPTS, run_cli

from slapos_collect_recipe import archive as archive_module
from slapos_collect_recipe import config, lock, rotate
from slapos_collect_recipe.errors import CollectError
from slapos_collect_recipe.store import DB_NAME, Store
from slapos_collect_recipe.tables import TABLES, columns


def days_ago(n: int) -> str:
    return (date.fromisoformat(rotate.today_utc()) - timedelta(days=n)).isoformat()


def fill_day(store: Store, day: str, runs: int = 3, processes: int = 4, partitions: int = 2) -> int:
    """Rows in every table for ``day``; returns the number of rows inserted."""
    count = 0
    with store.transaction():
        for r in range(runs):
            stamp = f"{r // 60:02d}:{r % 60:02d}:00"
            for part in range(partitions):
                count += store.insert("user", [
                    (f"slapuser{part}", 1000 + p, f"{1000 + p}-1700000000.00", 1.5 * p, 10.0 + r, 2, 0.5,
                     (p + 1) * 1048576, 100 * r, 10 * r)
                    for p in range(processes)], day, stamp)
            count += store.insert("system", [(0.5, 25.0, 2**30, 2**31, 1e6 * r, 0, 0, 2e6 * r, 0, 0)], day, stamp)
            count += store.insert("disk", [("/dev/sda1", str(2**33), str(2**34), "/")], day, stamp)
            count += store.insert("disk_io", [("sda", 1e6 * r, 2e6 * r, 10 * r, 20 * r, 5 * r)], day, stamp)
            if r == 0:
                count += store.insert("computer", [(2, 2.4e9, "x86_64", 2**34, "", "/dev/sda1=100")], day, stamp)
                count += store.insert("folder", [(f"slapuser{p}", 4096.0 * (p + 1)) for p in range(partitions)],
                                      day, stamp)
                count += store.insert("benchmark", [("cpu", 1.0, "s")], day, stamp)
    return count


def archive_rows(data_dir: Path) -> dict[str, list[list[str]]]:
    """table -> every data row in every archive of data_dir (headers checked)."""
    found: dict[str, list[list[str]]] = {t: [] for t in TABLES}
    for path in sorted(data_dir.glob("*.tar.gz")):
        for table, rows in archive_rows_of(path).items():
            found[table].extend(rows)
    return found


def archive_rows_of(path: Path) -> dict[str, list[list[str]]]:
    """table -> the data rows of one archive (headers checked)."""
    found = {}
    with tarfile.open(path) as tar:
        for table in TABLES:
            member = tar.extractfile(f"{path.name.split('.')[0]}/dump_{table}.csv")
            rows = list(csv.reader(io.TextIOWrapper(member, encoding="utf-8", newline="")))
            assert rows[0] == columns(table)
            found[table] = rows[1:]
    return found


def db_rows(data_dir: Path, where: str = "1") -> dict[str, int]:
    db = sqlite3.connect(data_dir / DB_NAME)
    try:
        return {t: db.execute(f'SELECT count(*) FROM "{t}" WHERE {where}').fetchone()[0] for t in TABLES}
    finally:
        db.close()


def settings_for(data_dir: Path, keep_days: int = 3, partitions=()) -> config.CollectSettings:
    return config.CollectSettings(data_dir=data_dir, partitions=list(partitions), keep_days=keep_days,
                                  computer_id="COMP-42")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot_dir(data_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(data_dir)): digest(p) for p in sorted(data_dir.rglob("*"))
            if p.is_file() and not p.name.startswith(("collector.db", "."))}


def test_rotate_archives_every_past_day_and_marks_it(data_dir: Path) -> None:
    with Store(data_dir / DB_NAME) as store:
        inserted = {d: fill_day(store, d) for d in (days_ago(2), days_ago(1))}
        fill_day(store, rotate.today_utc())
    proc = run_cli("rotate", "--data-dir", str(data_dir), check=True)
    assert proc.stdout == "" and proc.stderr == ""

    for day, count in inserted.items():
        archive = data_dir / f"{day}.tar.gz"
        with tarfile.open(archive) as tar:
            names = tar.getnames()
            assert names == [day] + [f"{day}/dump_{t}.csv" for t in TABLES]
            assert tar.getmember(day).isdir()
            total = 0
            for table in TABLES:
                rows = list(csv.reader(io.TextIOWrapper(tar.extractfile(f"{day}/dump_{table}.csv"), newline="")))
                assert rows[0] == columns(table)
                assert all(row[columns(table).index("date")] == day for row in rows[1:])
                total += len(rows) - 1
        assert total == count
        assert (data_dir / "consumption-report" / f"{day}.xml").is_file()
        assert not (data_dir / day).exists()
    # Past days reported, today untouched; nothing half-written left behind.
    assert sum(db_rows(data_dir, f"date < '{rotate.today_utc()}' AND reported = 0").values()) == 0
    assert sum(db_rows(data_dir, f"date = '{rotate.today_utc()}' AND reported = 1").values()) == 0
    assert sum(db_rows(data_dir, f"date = '{rotate.today_utc()}'").values()) > 0
    assert not list(data_dir.glob(".*.tmp"))
    assert not (data_dir / f"{rotate.today_utc()}.tar.gz").exists()


def test_archives_read_with_gzip_and_gnu_tar(data_dir: Path, tmp_path: Path) -> None:
    """The archive is a series of gzip members (slices compressed as they are
    dumped): the standard tools read it like any .tar.gz."""
    day = days_ago(1)
    with Store(data_dir / DB_NAME) as store:
        # Enough user rows to be dumped in two halves by two processes, each in several slices.
        count = fill_day(store, day, runs=110, processes=1000)
    assert count > archive_module.SPLIT_ROWS > 2 * archive_module.CHUNK_ROWS
    run_cli("rotate", "--data-dir", str(data_dir), check=True)
    archive = data_dir / f"{day}.tar.gz"
    subprocess.run(["gzip", "-t", str(archive)], check=True)
    out = tmp_path / "out"
    out.mkdir()
    listing = subprocess.run(["tar", "-tzvf", str(archive)], check=True, capture_output=True, text=True).stdout
    assert listing.splitlines()[0].startswith("d") and listing.splitlines()[0].endswith(f" {day}/")
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(out)], check=True)
    assert sorted(p.name for p in (out / day).iterdir()) == sorted(f"dump_{t}.csv" for t in TABLES)
    with tarfile.open(archive) as tar:
        for table in TABLES:
            assert (out / day / f"dump_{table}.csv").read_bytes() == tar.extractfile(
                f"{day}/dump_{table}.csv").read()
    with open(out / day / "dump_user.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == columns("user")
    assert sorted(tuple(r[:-1]) for r in rows[1:]) == sorted(_all_rows(data_dir, "user"))


AWKWARD = ["a,b", 'say "hi"', "line\nbreak", "cr\ronly", "crlf\r\nend", "ünï ☃", "", None, " lead", "plain"]


def _same_value(cell: str, value) -> bool:
    if value is None:
        return cell == ""
    if isinstance(value, float):
        return cell != "" and math.isclose(float(cell), value, rel_tol=1e-14)
    if isinstance(value, int):
        return cell == str(value)
    return cell == value


def test_dump_quotes_like_the_csv_module_and_reads_back(data_dir: Path) -> None:
    """SQLite formats the lines; a slice holding a comma, a quote or a line
    break is formatted again with quoting: csv.reader gives back every value,
    however the rows fall into slices."""
    day = days_ago(1)
    floats = [0.1 + 0.2, 1e20, -0.0, 1 / 3, 2.0**53, 123456.789e-30, None, 7.0, 1e-7, 99.5]
    with Store(data_dir / DB_NAME) as store, store.transaction():
        store.insert("user", [(f"p{i}", 1000.0 + i, f"{1000 + i}-17.0", 1.0, 2.0, 1, 0.5, 4096.0, 0.0, 0.0)
                              for i in range(40)], day, "00:00:00")
        store.insert("user", [(name, 1.0, name, value, 2.0, 1, 0.5, 4096.0, value, 0.0)
                              for name, value in zip(AWKWARD, floats, strict=True)], day, "00:01:00")
        store.insert("user", [(f"q{i}", 2000.0 + i, "x", 1.0, 2.0, 1, 0.5, 4096.0, 0.0, 0.0) for i in range(40)],
                     day, "00:02:00")
        store.insert("disk", [(name, name, "free", "/") for name in AWKWARD], day, "00:00:00")
    with Store(data_dir / DB_NAME) as store:
        top = store.unreported_limits(day)
        by_slice = {size: b"".join(data for _, data in store.csv_chunks("user", day, top["user"], 0, size))
                    for size in (1, 3, 7, 1000)}
        disk = b"".join(data for _, data in store.csv_chunks("disk", day, top["disk"], 0, 4))
    assert len(set(by_slice.values())) == 1, "the slicing changed the output"
    db = sqlite3.connect(data_dir / DB_NAME)
    expected = db.execute('SELECT * FROM "user" ORDER BY rowid').fetchall()
    disk_rows = db.execute('SELECT * FROM "disk" ORDER BY rowid').fetchall()
    db.close()
    got = list(csv.reader(io.StringIO(by_slice[3].decode("utf-8"), newline="")))
    assert len(got) == len(expected) == 90
    for cells, row in zip(got, expected, strict=True):
        assert len(cells) == len(row)
        assert all(_same_value(c, v) for c, v in zip(cells, row, strict=True)), (cells, row)
    # A table of text only: byte for byte what csv.writer writes.
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(disk_rows)
    assert disk == buffer.getvalue().encode("utf-8")
    # And through the real command, into the archive.
    run_cli("rotate", "--data-dir", str(data_dir), check=True)
    assert archive_rows(data_dir)["user"] == got


@pytest.mark.parametrize("engine", ["isal", "zlib"])
def test_archive_is_the_same_with_either_deflate(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 engine: str) -> None:
    """ISA-L's deflate where its wheel is installed, zlib elsewhere: gzip and
    tar read either archive, member for member the same bytes."""
    import zlib

    if engine == "isal":
        isal_zlib = pytest.importorskip("isal.isal_zlib")
        monkeypatch.setattr(archive_module, "deflate", isal_zlib)
    else:
        monkeypatch.setattr(archive_module, "deflate", zlib)
    day = days_ago(1)
    with Store(data_dir / DB_NAME) as store:
        fill_day(store, day, runs=30, processes=400)
        expected = {t: b"".join(data for _, data in store.csv_chunks(t, day, 1 << 62)) for t in TABLES}
        rotate.rotate(store, settings_for(data_dir))
    archive = data_dir / f"{day}.tar.gz"
    subprocess.run(["gzip", "-t", str(archive)], check=True)
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(tmp_path)], check=True)
    for table in TABLES:
        header = (",".join(columns(table)) + "\r\n").encode()
        assert (tmp_path / day / f"dump_{table}.csv").read_bytes() == header + expected[table]


def test_helper_part_is_appended_whole_when_the_kernel_copy_stops(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The helper's part is appended by copy_file_range; a kernel or file
    system that stops it midway (EXDEV, ENOSYS...) gets the rest copied by hand."""
    import errno

    source, target = tmp_path / "part", tmp_path / "whole"
    source.write_bytes(bytes(range(256)) * 4096)
    target.write_bytes(b"first part\r\n")
    real = os.copy_file_range
    copied = []

    def stops_midway(src, dst, count, *args):
        if sum(copied) > 100_000:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        copied.append(real(src, dst, min(count, 65536), *args))
        return copied[-1]

    monkeypatch.setattr(os, "copy_file_range", stops_midway)
    with open(source, "rb") as part, open(target, "r+b") as whole:  # as the dump's handle: not O_APPEND
        whole.seek(0, os.SEEK_END)
        whole.flush()
        archive_module._append_file(part, whole, source.stat().st_size)
    assert 100_000 < sum(copied) < source.stat().st_size  # the kernel did a part, this process the rest
    assert target.read_bytes() == b"first part\r\n" + source.read_bytes()


def test_rotate_twice_changes_nothing(data_dir: Path) -> None:
    with Store(data_dir / DB_NAME) as store:
        fill_day(store, days_ago(1))
    run_cli("rotate", "--data-dir", str(data_dir), check=True)
    before_files = snapshot_dir(data_dir)
    before_rows = db_rows(data_dir, "reported = 1")
    run_cli("rotate", "--data-dir", str(data_dir), check=True)
    assert snapshot_dir(data_dir) == before_files
    assert db_rows(data_dir, "reported = 1") == before_rows
    assert sorted(p.name for p in data_dir.glob("*.tar.gz")) == [f"{days_ago(1)}.tar.gz"]


def test_late_rows_go_to_a_new_archive_never_over_the_old_one(data_dir: Path) -> None:
    day = days_ago(1)
    with Store(data_dir / DB_NAME) as store:
        first = fill_day(store, day)
        rotate.rotate(store, settings_for(data_dir))
        original = digest(data_dir / f"{day}.tar.gz")
        late = fill_day(store, day, runs=1, processes=2)
        result = rotate.rotate(store, settings_for(data_dir))
        assert [p.name for p in result.archives] == [f"{day}.late-1.tar.gz"]
        later = fill_day(store, day, runs=1, processes=1)
        rotate.rotate(store, settings_for(data_dir))
    assert digest(data_dir / f"{day}.tar.gz") == original
    counts = {}
    for name in (f"{day}.tar.gz", f"{day}.late-1.tar.gz", f"{day}.late-2.tar.gz"):
        with tarfile.open(data_dir / name) as tar:
            assert tar.getnames()[0] == day
            counts[name] = sum(
                sum(1 for _ in tar.extractfile(m)) - 1 for m in tar.getmembers() if m.isfile())
    assert list(counts.values()) == [first, late, later]
    assert sum(db_rows(data_dir, "reported = 0").values()) == 0


def test_garbage_collection_keeps_days_and_gives_space_back(data_dir: Path) -> None:
    with Store(data_dir / DB_NAME) as store:
        for n in range(1, 7):
            fill_day(store, days_ago(n), runs=30, processes=20)
    size_before = (data_dir / DB_NAME).stat().st_size
    run_cli("rotate", "--data-dir", str(data_dir), "--keep-days", "3", check=True)
    db = sqlite3.connect(data_dir / DB_NAME)
    kept = sorted(d for (d,) in db.execute('SELECT DISTINCT date FROM "user"'))
    assert kept == [days_ago(3), days_ago(2), days_ago(1)]
    assert db.execute("PRAGMA freelist_count").fetchone()[0] == 0
    db.close()
    assert (data_dir / DB_NAME).stat().st_size < size_before
    # The deleted days are safe in their archives.
    assert len(list(data_dir.glob("*.tar.gz"))) == 6


def test_garbage_collection_never_deletes_unreported_rows(data_dir: Path) -> None:
    old = days_ago(10)
    with Store(data_dir / DB_NAME) as store:
        count = fill_day(store, old)
    # Stop the rotation before it marks the day, as a crash would.
    proc = subprocess.Popen([str(SCRIPTS / "slapos-collect"), "rotate", "--data-dir", str(data_dir),
                             "--keep-days", "1"], stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **{rotate.PAUSE_ENV: "linked"}))
    try:
        assert proc.stderr.readline().strip() == "paused at linked"
    finally:
        proc.kill()
        proc.wait()
    assert sum(db_rows(data_dir, "reported = 0").values()) == count
    with Store(data_dir / DB_NAME) as store:
        store.delete_reported_before(rotate.today_utc())
    assert sum(db_rows(data_dir).values()) == count


KILL_POINTS = ["dumped-user", "dumped-benchmark", "packed", "pending", "linked", "marked", "gc"]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_9_at_any_point_loses_nothing(data_dir: Path, point: str) -> None:
    days = [days_ago(2), days_ago(1)]
    with Store(data_dir / DB_NAME) as store:
        for day in days:
            fill_day(store, day)
    expected = {t: sorted(r for r in _all_rows(data_dir, t)) for t in TABLES}
    proc = subprocess.Popen([str(SCRIPTS / "slapos-collect"), "rotate", "--data-dir", str(data_dir)],
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **{rotate.PAUSE_ENV: point}))
    try:
        assert proc.stderr.readline().strip() == f"paused at {point}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # Right after the crash: every row marked reported is in an archive on disk.
    archived = archive_rows(data_dir)
    for table in TABLES:
        reported = _all_rows(data_dir, table, "reported = 1")
        assert set(reported) <= {tuple(r[:-1]) for r in archived[table]}

    run_cli("rotate", "--data-dir", str(data_dir), check=True)
    archived = archive_rows(data_dir)
    for table in TABLES:
        # Each row in exactly one archive, none lost, none twice.
        assert sorted(tuple(r[:-1]) for r in archived[table]) == expected[table]
    assert sum(db_rows(data_dir, "reported = 0").values()) == 0
    assert sorted(p.name for p in data_dir.glob("*.tar.gz")) == [f"{d}.tar.gz" for d in days]
    assert not [p for p in data_dir.iterdir() if p.name.endswith(".tmp") or p.is_dir() and p.name in days]
    assert sorted(p.name for p in (data_dir / "consumption-report").iterdir()) == [f"{d}.xml" for d in days]
    with Store(data_dir / DB_NAME) as store:
        assert store.get_state(rotate.PENDING_KEY) is None


def _all_rows(data_dir: Path, table: str, where: str = "1") -> list[tuple]:
    """Rows as the dump writes them (SQLite's text of each value, NULL as an
    empty field), all columns but ``reported``."""
    texts = ", ".join(f"ifnull(CAST(\"{name}\" AS TEXT), '')" for name in columns(table)[:-1])
    db = sqlite3.connect(data_dir / DB_NAME)
    try:
        return list(db.execute(f'SELECT {texts} FROM "{table}" WHERE {where}'))
    finally:
        db.close()


def test_kill_9_while_the_archive_is_being_written(data_dir: Path) -> None:
    day = days_ago(1)
    with Store(data_dir / DB_NAME) as store:
        count = fill_day(store, day, runs=200, processes=300, partitions=2)
    proc = subprocess.Popen([str(SCRIPTS / "slapos-collect"), "rotate", "--data-dir", str(data_dir)],
                            stderr=subprocess.DEVNULL)
    tmp = data_dir / f".{day}.tar.gz.tmp"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if tmp.exists() and tmp.stat().st_size > 0:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "rotate finished before the archive could be caught half-written"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (data_dir / f"{day}.tar.gz").exists()
    assert sum(db_rows(data_dir, "reported = 1").values()) == 0
    run_cli("rotate", "--data-dir", str(data_dir), check=True)
    assert sum(len(rows) for rows in archive_rows(data_dir).values()) == count
    assert not list(data_dir.glob(".*.tmp"))


def _helpers_of(data_dir: Path) -> list[int]:
    """Pids of the dump helper processes working on data_dir."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--dump-part" in cmdline and str(data_dir / DB_NAME).encode() in cmdline:
                found.append(int(entry.name))
    return found


def test_kill_9_while_the_helper_process_dumps(data_dir: Path) -> None:
    day = days_ago(1)
    with Store(data_dir / DB_NAME) as store:
        count = fill_day(store, day, runs=400, processes=1000)
    proc = subprocess.Popen([str(SCRIPTS / "slapos-collect"), "rotate", "--data-dir", str(data_dir)],
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            parts = list(data_dir.glob(rotate.PART_PREFIX + "*.csv"))
            if parts and parts[0].stat().st_size > 0:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "rotate finished before its helper could be caught working"
        assert _helpers_of(data_dir)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    # The helper dies with its parent.
    deadline = time.monotonic() + 10
    while _helpers_of(data_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _helpers_of(data_dir) == []
    assert sum(db_rows(data_dir, "reported = 1").values()) == 0
    run_cli("rotate", "--data-dir", str(data_dir), check=True)
    assert sum(len(rows) for rows in archive_rows(data_dir).values()) == count
    assert not [p for p in data_dir.iterdir() if p.name.startswith(".") and p.name != ".collect.lock"]


def test_a_helper_that_cannot_run_is_done_in_process(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    day = days_ago(1)
    with Store(data_dir / DB_NAME) as store:
        count = fill_day(store, day, runs=110, processes=1000)
        monkeypatch.setattr(archive_module.sys, "executable", "/bin/false")  # the helper exits 1 at once
        result = rotate.rotate(store, settings_for(data_dir))
    assert result.archives == [data_dir / f"{day}.tar.gz"]
    assert sum(len(rows) for rows in archive_rows(data_dir).values()) == count
    assert sorted(tuple(r[:-1]) for r in archive_rows(data_dir)["user"]) == sorted(_all_rows(data_dir, "user"))


def test_backlog_of_thirty_days_in_bounded_memory(data_dir: Path) -> None:
    with Store(data_dir / DB_NAME) as store:
        total = sum(fill_day(store, days_ago(n), runs=60, processes=100, partitions=1) for n in range(1, 31))
    # Stop it once every day is archived and read its peak RSS (VmHWM: the
    # rusage of a child forked from this big process would include ours).
    proc = subprocess.Popen([str(SCRIPTS / "slapos-collect"), "rotate", "--data-dir", str(data_dir),
                             "--keep-days", "40"], stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **{rotate.PAUSE_ENV: "gc"}))
    try:
        assert proc.stderr.readline().strip() == "paused at gc"
        status = Path(f"/proc/{proc.pid}/status").read_text()
    finally:
        proc.kill()
        proc.wait()
    peak_kib = int(status.split("VmHWM:")[1].split()[0])
    assert len(list(data_dir.glob("*.tar.gz"))) == 30
    assert sum(len(rows) for rows in archive_rows(data_dir).values()) == total
    assert sum(db_rows(data_dir, "reported = 0").values()) == 0
    # Far below what holding 30 days (~200,000 rows) in memory would take.
    assert peak_kib < 64 * 1024, peak_kib


def test_progress_bar_only_on_a_terminal(data_dir: Path) -> None:
    with Store(data_dir / DB_NAME) as store:
        for n in (3, 2, 1):
            fill_day(store, days_ago(n))
    master, slave = pty.openpty()
    proc = subprocess.Popen([str(SCRIPTS / "slapos-collect"), "rotate", "--data-dir", str(data_dir)],
                            stderr=slave, stdout=subprocess.DEVNULL)
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert proc.wait() == 0
    text = output.decode()
    assert "day 3/3" in text and "\r[" in text and "100.0%" in text

    with Store(data_dir / DB_NAME) as store:
        fill_day(store, days_ago(4))
    proc = run_cli("rotate", "--data-dir", str(data_dir), check=True)
    assert proc.stderr == ""


def test_rotate_waits_for_a_running_collect(data_dir: Path) -> None:
    with Store(data_dir / DB_NAME) as store:
        fill_day(store, days_ago(1))
    released = threading.Event()

    def hold() -> None:
        with lock.exclusive(data_dir / lock.COLLECT_LOCK):
            started.set()
            time.sleep(1.5)
            released.set()

    started = threading.Event()
    holder = threading.Thread(target=hold)
    holder.start()
    started.wait()
    proc = run_cli("rotate", "--data-dir", str(data_dir), check=True)
    assert released.is_set()  # rotate finished only after the holder let the lock go
    holder.join()
    assert (data_dir / f"{days_ago(1)}.tar.gz").exists()
    assert proc.stderr == ""


def test_bad_keep_days_is_one_line(data_dir: Path) -> None:
    proc = run_cli("rotate", "--data-dir", str(data_dir), "--keep-days", "0")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "keep-days" in proc.stderr


def test_nothing_to_do_writes_nothing(data_dir: Path) -> None:
    with Store(data_dir / DB_NAME) as store:
        fill_day(store, rotate.today_utc())
        result = rotate.rotate(store, settings_for(data_dir))
    assert result.days == [] and result.rows_deleted == 0
    assert not list(data_dir.glob("*.tar.gz"))
    assert not (data_dir / "consumption-report").exists()


def test_an_archive_name_taken_meanwhile_is_never_overwritten(data_dir: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The archive's name is taken by another writer while the day is dumped
    (a race this test forces): the marks made meanwhile are rolled back, the
    other file is left as it is, and the next run archives the day next to it."""
    day = days_ago(1)
    with Store(data_dir / DB_NAME) as store:
        count = fill_day(store, day)
    real_dump = archive_module.dump_day

    def dump_then_race(*args, **kwargs):
        folder = real_dump(*args, **kwargs)
        (data_dir / f"{day}.tar.gz").write_bytes(b"someone else's")
        return folder

    monkeypatch.setattr(archive_module, "dump_day", dump_then_race)
    with Store(data_dir / DB_NAME) as store:
        with pytest.raises(CollectError, match=f"cannot create .*{day}.tar.gz: File exists"):
            rotate.rotate(store, settings_for(data_dir))
        assert store.get_state(rotate.PENDING_KEY) is None
    assert sum(db_rows(data_dir, "reported = 1").values()) == 0
    monkeypatch.setattr(archive_module, "dump_day", real_dump)
    run_cli("rotate", "--data-dir", str(data_dir), check=True)
    assert (data_dir / f"{day}.tar.gz").read_bytes() == b"someone else's"
    assert sum(len(rows) for rows in archive_rows_of(data_dir / f"{day}.late-1.tar.gz").values()) == count
    assert sum(db_rows(data_dir, "reported = 0").values()) == 0


def test_recover_completes_only_its_own_archive(data_dir: Path) -> None:
    """Killed once the archive is packed but before it got its name; a file of
    someone else's then takes that name. The next run must not take that file
    for its archive (the record names the temp file's inode): the day is
    redone next to it, and no row is marked on the strength of a foreign file."""
    day = days_ago(1)
    with Store(data_dir / DB_NAME) as store:
        count = fill_day(store, day)
    proc = subprocess.Popen([str(SCRIPTS / "slapos-collect"), "rotate", "--data-dir", str(data_dir)],
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, **{rotate.PAUSE_ENV: "packed"}))
    try:
        assert proc.stderr.readline().strip() == "paused at packed"
    finally:
        proc.kill()
        proc.wait()
    (data_dir / f"{day}.tar.gz").write_bytes(b"someone else's")
    proc = run_cli("rotate", "--data-dir", str(data_dir), check=True)
    assert f"was interrupted: redoing {day}" in proc.stderr
    assert (data_dir / f"{day}.tar.gz").read_bytes() == b"someone else's"
    assert sum(len(rows) for rows in archive_rows_of(data_dir / f"{day}.late-1.tar.gz").values()) == count
    assert sum(db_rows(data_dir, "reported = 0").values()) == 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-x", "-q"]))
