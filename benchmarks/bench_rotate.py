"""Dump and archive one day of 1,000 processes sampled every minute (1.44 M
``user`` rows), side by side with the original slapos.core dumper on a copy of
the same database; gzip levels; and the cost of today's CSVs per run at 23:59
against 00:01.

Every measured job runs in its own child process (this parent never loads the
data), so ``os.wait4`` gives each one's own wall time and peak RSS. The
original runs from a venv made here from /usr/bin/python3.11 with
slapos.core==1.25.0 (cached under $SLAPOS_COLLECT_BENCH_CACHE, default
/var/tmp/slapos-collect-bench; never committed).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import zlib
from datetime import date, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import results  # noqa: E402

CACHE = Path(os.environ.get("SLAPOS_COLLECT_BENCH_CACHE", "/var/tmp/slapos-collect-bench"))
ORIGINAL_VENV = CACHE / "orig-venv"
ORIGINAL_PINS = ["slapos.core==1.25.0", "setuptools<81", "slapos.libnetworkcache"]
PROCESSES = 1000
RUNS = 1440
ROUNDS = int(os.environ.get("BENCH_ROTATE_ROUNDS", "3"))

ORIGINAL_DUMP = """
import json, sys, time
from slapos.collect.db import Database
from slapos.collect.reporter import RawCSVDumper, compressLogFolder
folder = sys.argv[1]
t0 = time.perf_counter()
RawCSVDumper(Database(folder)).dump(folder)
t1 = time.perf_counter()
compressLogFolder(folder)
t2 = time.perf_counter()
print(json.dumps({"csv": t1 - t0, "gzip": t2 - t1}))
"""

ORIGINAL_REALTIME = """
import json, sys, time
from slapos.collect.db import Database
from slapos.collect.reporter import SystemCSVReporterDumper
folder = sys.argv[1]
t0 = time.perf_counter()
SystemCSVReporterDumper(Database(folder)).dump(folder)
print(json.dumps({"publish": time.perf_counter() - t0}))
"""


def original_python() -> Path:
    python = ORIGINAL_VENV / "bin" / "python"
    stamp = ORIGINAL_VENV / ".installed"
    if not stamp.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["/usr/bin/python3.11", "-m", "venv", str(ORIGINAL_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *ORIGINAL_PINS], check=True)
        stamp.touch()
    return python


def run_child(argv: list[str], cwd: Path | None = None) -> tuple[float, float, float, dict]:
    """Run one child; returns (wall s, CPU s, peak RSS MB, its JSON output).

    CPU and peak RSS come from ``os.wait4``: the child and the children it
    waited for (our helper process)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=cwd)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.stdout.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[:3]} failed")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0, json.loads(out or b"{}")


def me(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


# -- children ----------------------------------------------------------------------

def build(path: str, day: str) -> None:
    """One day: 1,000 processes in 10 partitions, system, 2 disks, every minute."""
    from slapos_collect_recipe.store import Store

    store = Store(path)
    with store.transaction():
        for run in range(RUNS):
            stamp = f"{run // 60:02d}:{run % 60:02d}:00"
            store.insert("user", [
                (f"slapuser{p % 10}", 10000 + p, f"{10000 + p}-1700000000.{p % 100:02d}", (p * 7 + run) % 100 / 3.0,
                 123.45 + run * 0.6 + p, 1 + p % 8, 0.01 * (p % 50), 1048576.0 * (1 + p % 64),
                 4096.0 * run * (1 + p % 5), 10.0 * run + p)
                for p in range(PROCESSES)], day, stamp)
            store.insert("system", [(0.5 + run % 7 / 10, 12.5 + run % 40, 6.2e9 + run * 1e5, 1.8e10 - run * 1e5,
                                     1.5e6 * run, 0, run // 100, 9.1e5 * run, 0, 0)], day, stamp)
            store.insert("disk", [("/dev/sda1", str(1.2e11 + run * 1e6), str(3.8e11 - run * 1e6), "/"),
                                  ("/dev/sdb1", str(2.0e11), str(8.0e11), "/srv")], day, stamp)
            if run % 60 == 0:
                store.insert("computer", [(2, 2.4e9, "x86_64", 2.4e10, "", "/dev/sda1=5e11")], day, stamp)
        store.insert("folder", [(f"slapuser{p}", 1024.0 * 1024 * (p + 1)) for p in range(10)], day, "00:00:00")
    store.checkpoint()
    store.close()


def ours(folder: str) -> None:
    """Our rotation (dump, archive, report, mark), phases timed."""
    from slapos_collect_recipe import archive, config, rotate
    from slapos_collect_recipe.store import DB_NAME, Store

    times = {"dump": 0.0, "day": 0.0, "checkpoint": 0.0}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                times[name] += time.perf_counter() - start
        return wrapper

    archive.dump_day = timed("dump", archive.dump_day)
    rotate.rotate_day = timed("day", rotate.rotate_day)
    Store.checkpoint = timed("checkpoint", Store.checkpoint)
    data_dir = Path(folder)
    settings = config.CollectSettings(data_dir=data_dir, partitions=[], keep_days=100000, computer_id="BENCH")
    with Store(data_dir / DB_NAME) as store:
        result = rotate.rotate(store, settings)
    assert len(result.archives) == 1, result
    print(json.dumps(times))


def levels(folder: str, day: str) -> None:
    """The day's CSVs compressed at several gzip levels, one core: time and size."""
    from slapos_collect_recipe import archive
    from slapos_collect_recipe.store import DB_NAME, Store

    data_dir = Path(folder)
    with Store(data_dir / DB_NAME) as store:
        tmp = data_dir / ".levels.tmp"
        archive.dump_day(store, data_dir, day, store.unreported_limits(day), tmp)
        tmp.unlink()
    files = sorted((data_dir / day).iterdir())
    out = {"csv_bytes": sum(p.stat().st_size for p in files)}
    engines = [("zlib", zlib, level) for level in (1, 6, 9)]
    if archive.deflate is not zlib:
        engines.append(("ISA-L", archive.deflate, archive.GZIP_LEVEL))
    for name, engine, level in engines:
        start = time.perf_counter()
        size = 0
        for path in files:
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 21):
                    size += len(archive.gzip_member(chunk, level, engine))
        out[f"{name} {level}"] = (time.perf_counter() - start, size)
    print(json.dumps(out))


def realtime_costs(folder: str) -> None:
    """Publish each run of a whole day and the next day's first runs; time each publish."""
    from slapos_collect_recipe import realtime
    from slapos_collect_recipe.store import DB_NAME, Store

    data_dir = Path(folder)
    day, next_day = "2026-01-01", "2026-01-02"
    samples: dict[str, float] = {}
    with Store(data_dir / DB_NAME) as store:
        for d, count in ((day, RUNS), (next_day, 11)):
            for run in range(count):
                stamp = f"{run // 60:02d}:{run % 60:02d}:00"
                with store.transaction():
                    store.insert("system", [(0.5, 12.5, 6e9, 1e10, 1e6 * run, 0, 0, 1e6 * run, 0, 0)], d, stamp)
                    store.insert("disk", [("/dev/sda1", "1e11", "2e11", "/"), ("/dev/sdb1", "1e11", "2e11", "/srv")],
                                 d, stamp)
                start = time.perf_counter()
                realtime.publish(store, data_dir)
                samples[f"{d} {stamp}"] = time.perf_counter() - start
    def median(keys):
        values = sorted(samples[k] for k in keys)
        return values[len(values) // 2]
    print(json.dumps({
        "23:50-23:59": median([f"{day} 23:{m:02d}:00" for m in range(50, 60)]),
        "00:00": samples[f"{next_day} 00:00:00"],
        "00:01-00:10": median([f"{next_day} 00:{m:02d}:00" for m in range(1, 11)]),
    }))


def original_realtime_db(folder: Path, runs: int) -> None:
    """Today's system and disk rows (the original publishes today's, by the clock)."""
    from slapos_collect_recipe.store import DB_NAME, Store

    today = time.strftime("%Y-%m-%d", time.gmtime())
    folder.mkdir(parents=True, exist_ok=True)
    with Store(folder / DB_NAME) as store, store.transaction():
        for run in range(runs):
            stamp = f"{run // 60:02d}:{run % 60:02d}:00"
            store.insert("system", [(0.5, 12.5, 6e9, 1e10, 1e6 * run, 0, 0, 1e6 * run, 0, 0)], today, stamp)
            store.insert("disk", [("/dev/sda1", "1e11", "2e11", "/"), ("/dev/sdb1", "1e11", "2e11", "/srv")],
                         today, stamp)


# -- the parent ------------------------------------------------------------------------

def main() -> int:
    python = original_python()
    work = CACHE / "rotate"
    day = (date.fromisoformat(time.strftime("%Y-%m-%d", time.gmtime())) - timedelta(days=1)).isoformat()
    source = CACHE / f"day-{PROCESSES}x{RUNS}.db"
    source_day = CACHE / f"day-{PROCESSES}x{RUNS}.day"
    if not source.exists() or not source_day.exists():
        print(f"building {PROCESSES * RUNS:,} user rows...", flush=True)
        for stale in (source, source_day):
            stale.unlink(missing_ok=True)
        subprocess.run(me("--build", str(source) + ".new", day), check=True)
        os.replace(str(source) + ".new", source)
        source_day.write_text(day)
    day = source_day.read_text().strip()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    def fresh(name: str) -> Path:
        folder = work / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        shutil.copyfile(source, folder / "collector.db")
        return folder

    # Rounds alternate which one goes first: the machine is shared, so the
    # ratio of each round (same conditions) matters more than absolute figures.
    runs: dict[str, list] = {"original": [], "ours": []}
    for round_ in range(ROUNDS):
        order = ("original", "ours") if round_ % 2 == 0 else ("ours", "original")
        for who in order:
            folder = fresh(who)
            print(f"round {round_ + 1}: {who}...", flush=True)
            if who == "original":
                # It dumps every table by date: drop ours that have no date (the run state,
                # the partition counters) from its copy.
                db = sqlite3.connect(folder / "collector.db")
                for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                    if "date" not in [column[1] for column in db.execute(f'PRAGMA table_info("{table}")')]:
                        db.execute(f'DROP TABLE "{table}"')
                db.commit()
                db.close()
                measured = run_child([str(python), "-c", ORIGINAL_DUMP, str(folder)], cwd=work)
            else:
                measured = run_child(me("--ours", str(folder)))
            runs[who].append((*measured, (folder / f"{day}.tar.gz").stat().st_size))
            shutil.rmtree(folder)
    print("gzip levels...", flush=True)
    lv = run_child(me("--levels", str(fresh("levels")), day))[3]
    print("today's CSVs...", flush=True)
    rt_dir = work / "realtime"
    rt_dir.mkdir()
    rt = run_child(me("--realtime", str(rt_dir)))[3]
    orig_rt = {}
    for label, count in (("00:01", 2), ("23:59", 1440)):
        folder = work / f"original-realtime-{count}"
        subprocess.run(me("--original-realtime-db", str(folder), str(count)), check=True)
        walls = [run_child([str(python), "-c", ORIGINAL_REALTIME, str(folder)])[3]["publish"] for _ in range(3)]
        orig_rt[label] = sorted(walls)[1]
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"runs": runs, "levels": lv, "realtime": rt, "original_realtime": orig_rt}), flush=True)

    def median(values):
        values = sorted(values)
        return values[len(values) // 2]

    o, m = runs["original"], runs["ours"]
    ratios = [a[0] / b[0] for a, b in zip(o, m, strict=True)]
    cpu_ratios = [a[1] / b[1] for a, b in zip(o, m, strict=True)]
    rows = [
        ["original (slapos.core 1.25.0, gzip 9)", f"{median(r[0] for r in o):.1f} s", f"{median(r[1] for r in o):.1f} s",
         f"{median(r[3]['csv'] for r in o):.1f} s (CSV, then marks)", f"{median(r[3]['gzip'] for r in o):.1f} s",
         f"{max(r[2] for r in o):.0f} MB", f"{o[0][4] / 1e6:.1f} MB"],
        [f"slapos-collect rotate (gzip: {_our_level()})", f"{median(r[0] for r in m):.1f} s",
         f"{median(r[1] for r in m):.1f} s", f"{median(r[3]['dump'] for r in m):.1f} s (CSV and archive; marks "
         "and journal in threads meanwhile)", f"{median(r[3]['day'] - r[3]['dump'] for r in m):.1f} s (the rest "
         "of the day: link, journal, commit)", f"{max(r[2] for r in m):.0f} MB", f"{m[0][4] / 1e6:.1f} MB"],
    ]
    ms = 1000.0
    wall_ratio, peak = median(ratios), max(r[2] for r in m)
    md = [
        "## Rotate: dump and archive one day, today's CSVs\n",
        f"One day of {PROCESSES:,} processes every minute ({PROCESSES * RUNS:,} `user` rows, "
        f"{lv['csv_bytes'] / 1e6:.0f} MB of CSV): dump, archive and mark, each in its own process on a fresh copy "
        f"of the same database, {ROUNDS} interleaved rounds (medians; CPU = user + system of the process and "
        "its helper; peak RSS = the largest single process).\n",
        results.table(["", "wall", "CPU", "CSV", "archive / rest", "peak RSS", "archive size"], rows),
        f"\nWall-time ratio per round (original / ours): {', '.join(f'{r:.1f}x' for r in ratios)}; "
        f"CPU ratio: {', '.join(f'{r:.1f}x' for r in cpu_ratios)}.\n",
        f"- >= 3x faster than the original (median wall ratio): {wall_ratio:.1f}x -> "
        f"{'met' if wall_ratio >= 3 else 'NOT met'}",
        f"- peak RSS < 64 MB: {peak:.0f} MB -> {'met' if peak < 64 else 'NOT met'}",
        "- Where the time goes: the original formats the rows with Python's `csv` module, marks them, then "
        "packs the folder at gzip level 9. Ours has SQLite format the lines (one `printf` per row, about 2.5x "
        "cheaper in CPU than `csv`), compresses each slice at level 1 (ISA-L's deflate, about 4x cheaper "
        "than zlib's) in a thread as it is written, splits a big table between two processes, and marks the "
        "rows in a transaction of its own while the day is "
        "dumped (committed once the archive is durable). The split and the overlaps only pay when a second "
        "core is free; the CPU ratio is the one-core figure.\n",
        "\nThe day's CSVs compressed at several gzip levels (one core; ours uses ISA-L's deflate where its "
        "wheel exists, zlib elsewhere):\n",
        results.table(["engine and level", "time", "compressed"], [
            [key, f"{value[0]:.1f} s", f"{value[1] / 1e6:.1f} MB"] for key, value in lv.items() if key != "csv_bytes"]),
        "\nToday's CSVs, cost of one run's publish (median of 10 runs) late in the day against just after "
        "the day change (flat is the goal):\n",
        results.table(["", "23:50-23:59", "00:00 (day change)", "00:01-00:10"], [
            ["slapos-collect (append one line per file)", f"{rt['23:50-23:59'] * ms:.2f} ms",
             f"{rt['00:00'] * ms:.2f} ms", f"{rt['00:01-00:10'] * ms:.2f} ms"],
            ["original (SystemCSVReporterDumper: rebuilds the day)", f"{orig_rt['23:59'] * ms:.0f} ms", "",
             f"{orig_rt['00:01'] * ms:.0f} ms"],
        ]),
    ]
    markdown = "\n".join(md)
    print(markdown)
    results.write_section("rotate", markdown)
    return 0


def _our_level() -> str:
    from slapos_collect_recipe import archive

    return f"{'zlib' if archive.deflate is zlib else 'ISA-L'} level {archive.GZIP_LEVEL}"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("--"):
        mode, args = sys.argv[1], sys.argv[2:]
        if mode == "--build":
            build(*args)
        elif mode == "--ours":
            ours(*args)
        elif mode == "--levels":
            levels(*args)
        elif mode == "--realtime":
            realtime_costs(*args)
        elif mode == "--original-realtime-db":
            original_realtime_db(Path(args[0]), int(args[1]))
        else:
            raise SystemExit(f"unknown mode {mode}")
        sys.exit(0)
    sys.exit(main())
