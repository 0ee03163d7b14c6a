"""One `collect` with 100, 1,000 and 3,000 extra sleeping processes, side by side with
(a) the psutil floor: a bare loop reading the same fields with `oneshot()` for the same processes, and
(b) the original `slapos node collect` (slapos.core 1.25.0, in its own venv).

Reports wall time, CPU time and peak RSS of the whole process (start-up included), and bytes of
SQLite per `user` row. Needs root (the original refuses to run otherwise, and the sleepers run as
users slapuser0..2, created here when missing).
"""

from __future__ import annotations

import os
import pwd
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import original
import results

HERE = Path(__file__).parent
USERS = ["slapuser0", "slapuser1", "slapuser2"]
SIZES = [100, 1000, 3000]
REPEAT = 3

FLOOR = textwrap.dedent("""
    import os, sys, psutil
    pids = [int(p) for p in open(sys.argv[1]).read().split()]
    psutil.cpu_times(); psutil.virtual_memory(); psutil.net_io_counters(); os.getloadavg()
    psutil.disk_partitions(); psutil.disk_usage("/")
    out = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                out.append((p.cpu_times(), p.num_threads(), p.memory_percent(), p.memory_info(),
                            p.io_counters(), p.create_time()))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    assert out
""")



def ensure_users() -> list[str]:
    """The partition users, created when missing; returns those created (removed after the run)."""
    created = []
    for name in USERS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
            created.append(name)
    return created


def measure(argv: list[str], **kwargs) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system) and peak RSS in MB of a whole child process."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if status != 0:
        raise RuntimeError(f"{argv[:3]} failed: {err.strip()[-500:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def bytes_per_user_row(db: Path) -> float:
    """Size of a vacuumed copy of the database over its `user` rows."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "copy.db"
        src = sqlite3.connect(db)
        dst = sqlite3.connect(copy)
        src.backup(dst)
        src.close()
        dst.execute("PRAGMA journal_mode = DELETE")
        dst.execute("VACUUM")
        rows = dst.execute("SELECT count(*) FROM user").fetchone()[0]
        dst.close()
        return copy.stat().st_size / rows if rows else float("nan")


def sampled_processes(db: Path) -> int:
    con = sqlite3.connect(db)
    try:
        return con.execute(
            "SELECT count(*) FROM user WHERE (date, time) = (SELECT date, time FROM system "
            "ORDER BY date DESC, time DESC LIMIT 1)").fetchone()[0]
    finally:
        con.close()


def spawn_sleepers(n: int) -> list[subprocess.Popen]:
    procs = []
    for i in range(n):
        user = USERS[i % len(USERS)]
        procs.append(subprocess.Popen(["sleep", "3600"], user=user, cwd="/"))
    return procs


def median_of(runs: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    return tuple(statistics.median(r[i] for r in runs) for i in range(3))  # type: ignore[return-value]


def main() -> int:
    if os.geteuid() != 0:
        print("bench_collect needs root (the original collector refuses to run otherwise)", file=sys.stderr)
        return 1
    created = ensure_users()
    # Ours runs as root: it switches process accounting on (auto) into its data dir and makes its nftables
    # table (network-accounting auto); put both back after.
    from slapos_collect_recipe import nft, pacct

    try:
        with pacct.restored(), nft.restored():
            return _main()
    finally:
        for name in created:
            subprocess.run(["userdel", name], capture_output=True)


def _main() -> int:
    original_python = original.python()
    bin_dir = original.ours_venv()
    env = dict(os.environ, PATH=os.environ.get("PATH", "") + ":/usr/bin:/usr/sbin")
    rows = []
    notes = []
    for n in SIZES:
        sleepers = spawn_sleepers(n)
        try:
            time.sleep(1.0)
            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                pid_file = tmp / "pids"
                pid_file.write_text(" ".join(str(p.pid) for p in sleepers))
                ours_dir = tmp / "ours"
                ours_argv = [str(bin_dir / "slapos-collect"), "collect", "--data-dir", str(ours_dir)]
                for user in USERS:
                    ours_argv += ["--user", user]
                measure(ours_argv)  # first run creates the database
                ours = median_of([measure(ours_argv) for _ in range(REPEAT)])
                floor = median_of([measure([str(bin_dir / "python"), "-c", FLOOR, str(pid_file)]) for _ in range(REPEAT)])
                root = tmp / "original"
                (root / "var" / "run").mkdir(parents=True)
                orig = measure([str(original_python), "-c", original.COLLECT, str(root), str(len(USERS))], env=env)
                ours_bytes = bytes_per_user_row(ours_dir / "collector.db")
                sampled = sampled_processes(ours_dir / "collector.db")
                if sampled < n:
                    raise RuntimeError(f"ours sampled {sampled} processes, fewer than the {n} sleepers")
                orig_bytes = bytes_per_user_row(root / "var" / "data-log" / "collector.db")
                shutil.rmtree(root, ignore_errors=True)
        finally:
            for proc in sleepers:
                proc.kill()
            for proc in sleepers:
                proc.wait()
        rows.append([
            n,
            f"{ours[0]:.3f} s", f"{ours[1]:.3f} s", f"{ours[2]:.1f} MB", f"{ours_bytes:.0f}",
            f"{floor[0]:.3f} s", f"{floor[1]:.3f} s", f"{floor[2]:.1f} MB",
            f"{orig[0]:.2f} s", f"{orig[1]:.2f} s", f"{orig[2]:.1f} MB", f"{orig_bytes:.0f}",
            f"{ours[1] / floor[1]:.2f}x", f"{orig[0] / ours[0]:.1f}x",
        ])
        notes.append((n, ours, floor, orig, ours_bytes, orig_bytes))
        print(f"{n:>5} processes: ours {ours[0]:.3f}s wall {ours[1]:.3f}s cpu {ours[2]:.1f}MB | "
              f"floor {floor[1]:.3f}s cpu | original {orig[0]:.2f}s wall {orig[1]:.2f}s cpu", flush=True)

    by_n = {n: (o, f, g, ob, gb) for n, o, f, g, ob, gb in notes}
    o1, f1, g1, ob1, gb1 = by_n[1000]
    o3 = by_n[3000][0]
    verdict = [
        f"- CPU time vs the psutil floor at 1,000 processes: {o1[1] / f1[1]:.2f}x "
        f"(target at most 1.3x): {'met' if o1[1] / f1[1] <= 1.3 else 'NOT met'}",
        f"- Wall time vs the original at 1,000 processes: {g1[0] / o1[0]:.1f}x less "
        f"(target at least 20x): {'met' if g1[0] / o1[0] >= 20 else 'NOT met'}",
        f"- Peak RSS at 3,000 processes: {o3[2]:.1f} MB (target under 40 MB): "
        f"{'met' if o3[2] < 40 else 'NOT met'}",
        f"- Bytes per `user` row: {ob1:.0f} against the original's {gb1:.0f} "
        f"(target fewer): {'met' if ob1 < gb1 else 'NOT met'}",
    ]
    text = (
        "## Collect: one run with N extra sleeping processes\n\n"
        "Whole process, start-up included, ours and the floor in a venv holding only this project and psutil "
        "(as the software release installs it); ours and the floor are medians of "
        f"{REPEAT} runs (ours in steady state: the run before created the database), the original one run. "
        "`ours/floor` is CPU time, `orig/ours` is wall time.\n\n"
        + results.table(
            ["N", "ours wall", "ours CPU", "ours RSS", "ours B/row", "floor wall", "floor CPU", "floor RSS",
             "orig wall", "orig CPU", "orig RSS", "orig B/row", "ours/floor CPU", "orig/ours wall"],
            rows,
        )
        + "\n" + "\n".join(verdict) + "\n"
    )
    print(text)
    results.write_section("collect", text)
    return 0


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sys.exit(main())
