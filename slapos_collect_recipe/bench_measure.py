"""The machine's own measurements for ``slapos-collect bench``: Pystone on one
core and on every usable core, a fixed SQLite mix and the fsync latency in the
data dir's filesystem.

``bench_workload`` speaks SQL, but only to a throwaway database of its own in
a temporary folder, never to ``collector.db`` (that one is ``store.py``'s).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from . import pystone
from .datafiles import BENCH_TMP_PREFIX, WAL_SUFFIXES
from .errors import CollectError

FSYNC_SAMPLES = 15


def usable_cores() -> int:
    """The cores this process may run on (its affinity), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _cpu_worker(conn, barrier, loops: int, repeat: int) -> None:
    try:
        for _ in range(repeat):
            barrier.wait(timeout=600)
            conn.send(pystone.pystones(loops)[1])
    except Exception:  # the parent sees the closed pipe
        pass
    finally:
        conn.close()


def measure_cpu(repeat: int, loops: int) -> dict[str, list[float]]:
    """``repeat`` runs of ``loops`` Pystone loops: in this process, then summed over one
    forked process per usable core, started together."""
    pystone.pystones(min(loops, 5000))  # warm-up
    single = [pystone.pystones(loops)[1] for _ in range(repeat)]

    # One forked process per usable core, started together for each run.
    cores = usable_cores()
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(cores)
    workers, pipes = [], []
    try:
        for _ in range(cores):
            ours, theirs = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_cpu_worker, args=(theirs, barrier, loops, repeat), daemon=True)
            proc.start()
            theirs.close()
            workers.append(proc)
            pipes.append(ours)
        summed = []
        for _ in range(repeat):
            try:
                summed.append(sum(pipe.recv() for pipe in pipes))
            except EOFError:
                raise CollectError("a cpu benchmark worker process died; nothing stored", exit_code=1) from None
    finally:
        for proc in workers:
            if proc.is_alive():
                proc.terminate()
        for proc in workers:
            proc.join(timeout=5)
        for pipe in pipes:
            pipe.close()
    return {"cpu_single": single, "cpu_all": summed}


def measure_sqlite(data_dir: Path, repeat: int, rounds: int) -> dict[str, list[float]]:
    """``repeat`` runs of the SQLite mix and of the fsync latency, in a temporary
    folder of ``data_dir`` (the data dir's filesystem)."""
    ops_rates, fsync_ms = [], []
    # Left by a run killed outright (kill -9, power loss): only a bench
    # makes them and the lock keeps a second one out, so any found is stale.
    for stale in data_dir.glob(BENCH_TMP_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=BENCH_TMP_PREFIX) as tmp:
        for run in range(repeat):
            db = Path(tmp) / f"bench-{run}.db"
            try:
                operations, seconds = bench_workload(db, rounds)
            finally:
                for suffix in ("", *WAL_SUFFIXES):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
            ops_rates.append(operations / seconds)
            fsync_ms.append(_fsync_latency(Path(tmp) / "fsync"))
    return {"sqlite_ops": ops_rates, "sqlite_fsync": fsync_ms}


def _fsync_latency(path: Path) -> float:
    """Median ms of ``os.fsync`` after appending 4 KiB to a small file (as a
    database commit appends to its journal: data and size both made durable)."""
    block = os.urandom(4096)
    samples = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    try:
        for _ in range(FSYNC_SAMPLES):
            os.write(fd, block)
            start = time.perf_counter()
            os.fsync(fd)
            samples.append((time.perf_counter() - start) * 1000)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return statistics.median(samples)


def bench_workload(path: str | os.PathLike, rounds: int) -> tuple[int, float]:
    """Run the fixed SQLite benchmark mix on a new database at ``path``.

    Each round: 100 inserts and a commit, 100 indexed selects, 50 indexed
    updates and a commit, with the store's own settings (WAL, synchronous
    NORMAL). Returns ``(operations, seconds)``, schema creation not timed;
    an operation is one statement or one commit. The caller removes the files."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("CREATE TABLE bench (id integer PRIMARY KEY, k integer, v text)")
        db.execute("CREATE INDEX bench_k ON bench (k)")
        payload = "slapos-collect benchmark row " * 3
        operations = 0
        start = time.perf_counter()
        for r in range(rounds):
            db.execute("BEGIN IMMEDIATE")
            for i in range(100):
                db.execute("INSERT INTO bench (k, v) VALUES (?, ?)", ((r * 100 + i) % 997, payload))
            db.execute("COMMIT")
            for i in range(100):
                db.execute("SELECT count(*), total(length(v)) FROM bench WHERE k = ?", ((i * 31 + r) % 997,)).fetchone()
            db.execute("BEGIN IMMEDIATE")
            for i in range(50):
                db.execute("UPDATE bench SET v = ? WHERE k = ?", (payload, (r * 50 + i * 7) % 997))
            db.execute("COMMIT")
            operations += 252
        return operations, time.perf_counter() - start
    finally:
        db.close()
