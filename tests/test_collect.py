"""The collector with real processes, a real database and the real console script."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import run_cli
from other_user import other_user_runtime, shared_dir

from slapos_collect_recipe import lock, store

BUSY = "import sys\nwhile True:\n    pass\n"
SLEEP = "import time\ntime.sleep(600)\n"
MARKER = "zz_secret_command_marker_qq"


@contextmanager
def spawned(script: str, cwd: Path, *extra: str):
    proc = subprocess.Popen([sys.executable, "-c", script, MARKER, *extra], cwd=cwd)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def rows(db: Path, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode != 0, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def parts(tmp_path: Path) -> dict[str, Path]:
    result = {}
    for name in ("part-a", "part-b"):
        path = tmp_path / name
        path.mkdir()
        result[name] = path
    return result


def test_schema_is_the_contract(data_dir: Path) -> None:
    run_cli("collect", "--data-dir", str(data_dir), check=True)
    db = data_dir / "collector.db"
    seed = {
        "user": ["partition", "pid", "process", "cpu_percent", "cpu_time", "cpu_num_threads",
                 "memory_percent", "memory_rss", "io_rw_counter", "io_cycles_counter"],
        "computer": ["cpu_num_core", "cpu_frequency", "cpu_type", "memory_size", "memory_type", "partition_list"],
        "system": ["loadavg", "cpu_percent", "memory_used", "memory_free", "net_in_bytes", "net_in_errors",
                   "net_in_dropped", "net_out_bytes", "net_out_errors", "net_out_dropped"],
        "disk": ["partition", "used", "free", "mountpoint"],
        "folder": ["partition", "disk_used"],
    }
    for table, cols in seed.items():
        info = rows(db, f'PRAGMA table_info("{table}")')
        assert [r["name"] for r in info] == cols + ["date", "time", "reported"]
        assert info[-1]["dflt_value"] == "0"
    assert rows(db, "PRAGMA journal_mode")[0][0] == "wal"
    # One UTC stamp per run, on every row of the run.
    stamps = {tuple(r) for t in ("user", "system", "computer", "disk")
              for r in rows(db, f'SELECT DISTINCT date, time FROM "{t}"')}
    assert len(stamps) == 1
    (day, hms), = stamps
    assert time.strptime(f"{day} {hms}", "%Y-%m-%d %H:%M:%S")


def test_busy_sleeper_partitions_by_directory(parts: dict[str, Path], data_dir: Path) -> None:
    args = ["collect", "--data-dir", str(data_dir),
            "--partition", f"a={parts['part-a']}", "--partition", f"b={parts['part-b']}"]
    with spawned(BUSY, parts["part-a"]) as busy, spawned(SLEEP, parts["part-b"]) as sleeper:
        time.sleep(0.5)
        run_cli(*args, check=True)
        time.sleep(3)
        run_cli(*args, check=True)
        db = data_dir / "collector.db"
        stamps = [tuple(r) for r in rows(db, "SELECT DISTINCT date, time FROM system ORDER BY date, time")]
        assert len(stamps) == 2
        by_pid = {}
        for r in rows(db, "SELECT * FROM user WHERE date = ? AND time = ?", stamps[1]):
            by_pid[int(r["pid"])] = r
        first = {int(r["pid"]): r for r in rows(db, "SELECT * FROM user WHERE date = ? AND time = ?", stamps[0])}
        assert by_pid[busy.pid]["partition"] == "a"
        assert by_pid[sleeper.pid]["partition"] == "b"
        create = psutil_create_time(busy.pid)
        assert by_pid[busy.pid]["process"] == f"{busy.pid}-{create:.2f}"
        assert first[busy.pid]["process"] == by_pid[busy.pid]["process"]
        # CPU % over the interval between the two runs, from the stored CPU times.
        with store.Store(db) as s:
            epoch2 = s.get_state("last_run")["epoch"]
        used = by_pid[busy.pid]["cpu_time"] - first[busy.pid]["cpu_time"]
        assert used > 0
        assert by_pid[busy.pid]["cpu_percent"] > 30  # a full core, less what the shared machine takes
        assert by_pid[busy.pid]["cpu_percent"] <= 100 * (os.cpu_count() or 1)
        assert by_pid[sleeper.pid]["cpu_percent"] < 5
        assert by_pid[sleeper.pid]["cpu_num_threads"] == 1
        assert by_pid[sleeper.pid]["memory_rss"] > 1_000_000
        assert 0 < by_pid[sleeper.pid]["memory_percent"] < 100
        assert by_pid[busy.pid]["io_rw_counter"] is not None
        # Only the partitions' processes, none of the collector itself.
        assert {r["partition"] for r in rows(db, "SELECT partition FROM user")} == {"a", "b"}
        assert epoch2 > 0


def psutil_create_time(pid: int) -> float:
    import psutil

    return psutil.Process(pid).create_time()


def test_no_command_name_is_stored(parts: dict[str, Path], data_dir: Path) -> None:
    with spawned(SLEEP, parts["part-a"]):
        time.sleep(0.3)
        run_cli("collect", "--data-dir", str(data_dir), "--partition", f"a={parts['part-a']}", check=True)
    # Checkpoint so everything is in the main file, then look at every byte.
    con = sqlite3.connect(data_dir / "collector.db")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    for path in data_dir.iterdir():
        if path.is_file():
            data = path.read_bytes().lower()
            assert MARKER.encode() not in data
            assert b"python" not in data, path  # the command name of the sampled process


def test_process_exiting_mid_run_is_skipped(parts: dict[str, Path], data_dir: Path) -> None:
    # A shell that keeps starting short-lived processes inside the partition.
    churn = subprocess.Popen(["sh", "-c", "while true; do sleep 0.01 & sleep 0.01; done"], cwd=parts["part-a"])
    try:
        for _ in range(5):
            proc = run_cli("collect", "--data-dir", str(data_dir), "--partition", f"a={parts['part-a']}")
            assert proc.returncode == 0, proc.stderr
            assert proc.stderr == ""
    finally:
        churn.kill()
        churn.wait()


def test_vanished_and_reused_identities() -> None:
    from slapos_collect_recipe.sample import sample_processes

    proc = subprocess.Popen([sys.executable, "-c", SLEEP])
    try:
        time.sleep(0.2)
        import psutil

        ident = f"{proc.pid}-{psutil.Process(proc.pid).create_time():.2f}"
        dead = subprocess.Popen(["true"])
        dead.wait()
        now = time.time()
        # The previous run saw this identity with more CPU time than it has now
        # (a counter that went down): never negative, never absurd.
        samples, vanished, denied = sample_processes(
            [(proc.pid, "p"), (dead.pid, "p")], now, {ident: 10_000.0}, now - 60, 10**9, 200.0)
        assert vanished == 1
        assert [s.pid for s in samples] == [proc.pid]

        def since_start(sample) -> float:
            return round(sample.cpu_time * 100.0 / (now - sample.create_time), 2)

        # Measured since the process started, not from the bogus previous figure.
        assert samples[0].cpu_percent == since_start(samples[0]) < 100
        # Same pid, another creation time (pid reused): treated as first seen, so
        # not (cpu_time - 0) over the 60 s since the previous run either.
        samples, _, _ = sample_processes([(proc.pid, "p")], now, {f"{proc.pid}-1.00": 0.0}, now - 60, 10**9, 200.0)
        assert samples[0].cpu_percent == since_start(samples[0])
        # The same identity seen 60 s ago with 0.3 s less CPU: 0.5 %.
        samples, _, _ = sample_processes([(proc.pid, "p")], now, {ident: samples[0].cpu_time - 0.3}, now - 60,
                                         10**9, 200.0)
        assert samples[0].cpu_percent == pytest.approx(0.5, abs=0.02)
    finally:
        proc.kill()
        proc.wait()


def test_system_cpu_percent_never_negative() -> None:
    from slapos_collect_recipe.sample import system_cpu_percent

    now = {"user": 100.0, "system": 50.0, "idle": 850.0, "iowait": 0.0}
    prev = {"boot_time": 1.0, "cpu_times": {"user": 50.0, "system": 25.0, "idle": 425.0, "iowait": 0.0}}
    assert system_cpu_percent(now, prev, 1.0) == pytest.approx(15.0)
    # Counters went down (reboot with the same boot time reading) or other boot: since boot.
    went_down = {"boot_time": 1.0, "cpu_times": {"user": 500.0, "system": 500.0, "idle": 9000.0, "iowait": 0.0}}
    assert system_cpu_percent(now, went_down, 1.0) == pytest.approx(15.0)
    assert system_cpu_percent(now, prev, 2.0) == pytest.approx(15.0)
    assert system_cpu_percent(now, None, 1.0) == pytest.approx(15.0)


def test_overlapping_run_exits_at_once(data_dir: Path, tmp_path: Path) -> None:
    log_file = tmp_path / "collect.log"
    run_cli("collect", "--data-dir", str(data_dir), check=True)
    with lock.exclusive(data_dir / lock.COLLECT_LOCK):
        proc = run_cli("collect", "--data-dir", str(data_dir), "--log-file", str(log_file), timeout=20)
    assert proc.returncode == 0
    assert proc.stdout == "" and proc.stderr == ""
    assert "previous run still working" in log_file.read_text()
    assert len(log_file.read_text().splitlines()) == 1
    assert len(rows(data_dir / "collector.db", "SELECT * FROM system")) == 1


def test_quiet_on_success_and_logs_to_file(data_dir: Path, tmp_path: Path) -> None:
    log_file = tmp_path / "collect.log"
    proc = run_cli("collect", "--data-dir", str(data_dir), "--log-file", str(log_file), check=True)
    assert proc.stdout == "" and proc.stderr == ""
    assert "collected" in log_file.read_text()


def test_config_file(parts: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "cfg-data"
    cfg = tmp_path / "collect.cfg"
    cfg.write_text(
        "[slapos-collect]\n"
        f"data-dir = {data}\n"
        f"partitions =\n  a = {parts['part-a']}\n  b = {parts['part-b']}\n"
        "keep-days = 5   ; inline comments as in the README\n"
    )
    with spawned(SLEEP, parts["part-b"]) as sleeper:
        time.sleep(0.3)
        run_cli("collect", "-c", str(cfg), check=True)
    found = rows(data / "collector.db", "SELECT partition FROM user WHERE pid = ?", (sleeper.pid,))
    assert [r["partition"] for r in found] == ["b"]


def test_slapos_cfg_standalone_partitions(tmp_path: Path) -> None:
    from argparse import Namespace

    from slapos_collect_recipe import config

    root = tmp_path / "inst"
    root.mkdir()
    (root / "var").mkdir()
    cfg = tmp_path / "slapos.cfg"
    cfg.write_text(
        f"[slapos]\ninstance_root = {root}\ncomputer_id = COMP-1\ncollect_cache = 7\n"
        "[slapformat]\npartition_amount = 2\npartition_base_name = slappart\n"
        "[collect]\ndisk_snapshot_time_cycle = 3600\n"
    )
    args = Namespace(config=None, data_dir=None, log_file=None, user=[], partition=[], slapos_cfg=str(cfg))
    settings = config.collect_settings(args)
    assert [(p.label, p.uid, p.path) for p in settings.partitions] == [
        ("slappart0", None, str(root / "slappart0")), ("slappart1", None, str(root / "slappart1"))]
    assert settings.data_dir == root / "var" / "data-log"
    assert settings.keep_days == 7
    assert settings.folder_cycle == 3600
    assert settings.computer_id == "COMP-1"


def test_slapos_cfg_users(tmp_path: Path) -> None:
    import pwd
    from argparse import Namespace

    from slapos_collect_recipe import config

    me = pwd.getpwuid(os.getuid()).pw_name
    root = tmp_path / "inst"
    (root / "var").mkdir(parents=True)
    cfg = tmp_path / "slapos.cfg"
    # user_base_name + N must exist: "root0" does not, so it is skipped, not fatal.
    cfg.write_text(f"[slapos]\ninstance_root = {root}\n[slapformat]\npartition_amount = 1\n"
                   f"user_base_name = {me}\npartition_base_name = slappart\n")
    args = Namespace(config=None, data_dir=None, log_file=None, user=[], partition=[], slapos_cfg=str(cfg))
    settings = config.collect_settings(args)
    assert settings.partitions == []


def test_folder_size_in_background(parts: dict[str, Path], data_dir: Path) -> None:
    big = parts["part-a"] / "blob"
    big.write_bytes(os.urandom(2 * 1024 * 1024))
    (parts["part-a"] / "sub").mkdir()
    os.link(big, parts["part-a"] / "sub" / "hardlink")  # counted once
    args = ["collect", "--data-dir", str(data_dir), "--partition", f"a={parts['part-a']}"]
    run_cli(*args, check=True)
    deadline = time.monotonic() + 60
    found = []
    while time.monotonic() < deadline and not found:
        found = rows(data_dir / "collector.db", "SELECT * FROM folder")
        time.sleep(0.2)
    assert len(found) == 1
    assert found[0]["partition"] == "a"
    assert 2048 <= found[0]["disk_used"] < 2048 + 200
    # Not due again within the cycle: a second run starts no walk.
    run_cli(*args, check=True)
    time.sleep(1.5)
    assert len(rows(data_dir / "collector.db", "SELECT * FROM folder")) == 1


def test_running_walk_does_not_block_collect(parts: dict[str, Path], data_dir: Path) -> None:
    from slapos_collect_recipe import folder

    log_file = data_dir.parent / "collect.log"
    args = ["collect", "--data-dir", str(data_dir), "--partition", f"a={parts['part-a']}", "--log-file", str(log_file)]
    with lock.exclusive(data_dir / folder.FOLDER_LOCK):  # a walk "is running"
        run_cli(*args, check=True)
        time.sleep(1.5)
        # collect saw the walk and started none (a walk started now would log that it found one running).
        assert "folder walk is already running" not in log_file.read_text()
        assert "collected" in log_file.read_text()
    assert rows(data_dir / "collector.db", "SELECT * FROM folder") == []
    # The walk over, the next run starts one, which logs nothing but stores the size.
    run_cli(*args, check=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not rows(data_dir / "collector.db", "SELECT * FROM folder"):
        time.sleep(0.2)
    assert len(rows(data_dir / "collector.db", "SELECT * FROM folder")) == 1


# -- bad input: one line on stderr, non-zero exit, nothing lost ----------------

def test_malformed_config(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.cfg"
    cfg.write_text("this is not = an ini\n[unclosed\n")
    one_line_error(run_cli("collect", "-c", str(cfg)), "malformed config file")


def test_missing_config(tmp_path: Path) -> None:
    one_line_error(run_cli("collect", "-c", str(tmp_path / "nope.cfg")), "does not exist")


def test_unreadable_config(tmp_path: Path) -> None:
    cfg = tmp_path / "dir.cfg"
    cfg.mkdir()  # unreadable as a file, even for root
    one_line_error(run_cli("collect", "-c", str(cfg)), "cannot read config file")


def test_bad_values_in_config(tmp_path: Path, data_dir: Path) -> None:
    cfg = tmp_path / "c.cfg"
    cfg.write_text(f"[slapos-collect]\ndata-dir = {data_dir}\nkeep-days = soon\n")
    one_line_error(run_cli("collect", "-c", str(cfg)), "keep-days")
    one_line_error(run_cli("collect", "--data-dir", str(data_dir), "--partition", "nolabel"), "LABEL=PATH")


def test_unknown_user(data_dir: Path) -> None:
    one_line_error(run_cli("collect", "--data-dir", str(data_dir), "--user", "no-such-user-xyz"),
                   "unknown user", "no-such-user-xyz")


def test_data_dir_parent_missing(tmp_path: Path) -> None:
    one_line_error(run_cli("collect", "--data-dir", str(tmp_path / "a" / "b")), "does not exist")
    assert not (tmp_path / "a").exists()


def test_data_dir_created(tmp_path: Path) -> None:
    run_cli("collect", "--data-dir", str(tmp_path / "new"), check=True)
    assert (tmp_path / "new" / "collector.db").exists()


def test_not_a_database_is_kept_aside(data_dir: Path) -> None:
    db = data_dir / "collector.db"
    junk = b"this was never a database " * 100
    db.write_bytes(junk)
    proc = run_cli("collect", "--data-dir", str(data_dir))
    one_line_error(proc, "not a database", "kept as")
    kept = [p for p in data_dir.iterdir() if p.name.startswith("collector.db.corrupt-")]
    assert len(kept) == 1 and kept[0].read_bytes() == junk
    assert len(rows(db, "SELECT * FROM system")) == 1  # a fresh one, with this run in it
    run_cli("collect", "--data-dir", str(data_dir), check=True)


needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"),
                                reason="mounting a small tmpfs needs root")


@contextmanager
def tmpfs(path: Path, size: str, *options: str):
    path.mkdir(exist_ok=True)
    opts = ",".join((f"size={size}", *options))
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@needs_root
def test_read_only_data_dir(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "1m", "ro") as ro:
        one_line_error(run_cli("collect", "--data-dir", str(ro)), "not writable")


@needs_root
def test_disk_full_keeps_previous_data(tmp_path: Path, parts: dict[str, Path]) -> None:
    with tmpfs(tmp_path / "small", "3m") as small:
        data = small / "data"
        args = ["collect", "--data-dir", str(data), "--partition", f"a={parts['part-a']}"]
        run_cli(*args, check=True)
        # Fill the filesystem to the last byte.
        with open(small / "filler", "wb", buffering=0) as filler:  # unbuffered: close() has nothing left to flush
            try:
                while True:
                    filler.write(b"\0" * 65536)
            except OSError:
                pass
        with spawned(SLEEP, parts["part-a"]):
            failures = 0
            for _ in range(3):
                proc = run_cli(*args)
                if proc.returncode != 0:
                    failures += 1
                    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
                    assert "Traceback" not in proc.stderr
                    assert "full" in proc.stderr or "space" in proc.stderr
        assert failures >= 1
        (small / "filler").unlink()
        con = sqlite3.connect(data / "collector.db")
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT count(*) FROM system").fetchone()[0] >= 1
        con.close()
        run_cli(*args, check=True)


def test_help_lists_subcommands() -> None:
    proc = run_cli("--help", check=True)
    for name in ("collect", "rotate", "serve", "bench", "availability"):
        assert name in proc.stdout


def test_collect_does_not_import_the_server_stack(data_dir: Path) -> None:
    code = (
        "import sys\n"
        "from slapos_collect_recipe import cli\n"
        f"rc = cli.main(['collect', '--data-dir', {str(data_dir)!r}])\n"
        "heavy = [m for m in ('aiohttp', 'prometheus_client', 'cryptography', 'croniter') if m in sys.modules]\n"
        "print(rc, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0 []"


def test_sigterm_during_run_leaves_database_consistent(data_dir: Path, parts: dict[str, Path]) -> None:
    # Kill runs at random points; the database stays readable and each stored run is whole.
    for delay in (0.05, 0.1, 0.2):
        proc = subprocess.Popen([str(Path(sys.executable).parent / "slapos-collect"), "collect",
                                 "--data-dir", str(data_dir), "--partition", f"a={parts['part-a']}"])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    run_cli("collect", "--data-dir", str(data_dir), "--partition", f"a={parts['part-a']}", check=True)
    con = sqlite3.connect(data_dir / "collector.db")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # Every stored run is whole: as many computer rows as system rows under each stamp
    # (two quick runs may share a stamp, which has a one-second resolution).
    for date, hms, runs in con.execute("SELECT date, time, count(*) FROM system GROUP BY date, time").fetchall():
        assert con.execute("SELECT count(*) FROM computer WHERE date = ? AND time = ?", (date, hms)).fetchone()[0] == runs
    con.close()


def test_linux_reader_matches_psutil() -> None:
    import psutil

    from slapos_collect_recipe import sample

    if not sample._HAVE_PROC:
        pytest.skip("no Linux /proc here")
    proc = subprocess.Popen([sys.executable, "-c", "import threading, time\n"
                             "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
                             "x = bytearray(20 * 1024 * 1024)\ntime.sleep(60)\n"])
    try:
        time.sleep(0.5)
        fast = sample._read_linux(proc.pid, psutil.boot_time())
        slow = sample._read_psutil(proc.pid, psutil.boot_time())
        assert fast[0] == slow[0]  # the identity is the same as psutil's
        assert fast[1] == pytest.approx(slow[1], abs=0.05)
        assert fast[2] == slow[2] == 2
        assert fast[3] == pytest.approx(slow[3], rel=0.05) and fast[3] > 20 * 1024 * 1024
        assert fast[4] is not None and fast[4] == pytest.approx(slow[4], rel=0.2, abs=65536)
        assert fast[5] is not None and fast[5] >= 0
    finally:
        proc.kill()
        proc.wait()
    with pytest.raises((FileNotFoundError, ProcessLookupError)):
        sample._read_linux(proc.pid, psutil.boot_time())


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to drop to an unprivileged user")
def test_unprivileged_run_samples_as_far_as_allowed() -> None:
    """Not root: another user's IO counters are unreadable; those processes are still
    sampled (CPU, memory, threads), their IO left empty, and the count logged.

    Runs from a copy any user can read (the checkout may be in a 0700 directory)."""
    runtime = other_user_runtime()
    work = shared_dir("collect-nobody-")
    try:
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             *runtime.command("collect", "--data-dir", str(work / "data"), "--user", "root",
                              "--log-file", str(work / "log"))],
            capture_output=True, text=True, timeout=60, env=runtime.env(), cwd=work)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""
        found = rows(work / "data" / "collector.db", "SELECT * FROM user WHERE partition = 'root'")
        assert found, "root's processes are sampled"
        assert all(r["cpu_time"] is not None and r["memory_rss"] is not None for r in found)
        assert any(r["io_rw_counter"] is None for r in found)
        assert "not fully readable" in (work / "log").read_text()
    finally:
        shutil.rmtree(work, ignore_errors=True)


# The publishers of a run, spied on (each still does its real work) in a real ``collect``.
PUBLISH_SPY = (
    "import json, sys\n"
    "from slapos_collect_recipe import cli, realtime, report, rotate\n"
    "calls = []\n"
    "def spy(module, name, label):\n"
    "    real = getattr(module, name)\n"
    "    def wrapper(*args, **kwargs):\n"
    "        calls.append(label)\n"
    "        return real(*args, **kwargs)\n"
    "    setattr(module, name, wrapper)\n"
    "spy(realtime, 'publish', 'csv')\n"
    "spy(report, 'publish_monitor', 'monitor')\n"
    "spy(rotate, 'rotate', 'past days')\n"
    "spy(rotate, 'rotate_day', 'day')\n"
    "rc = cli.main(sys.argv[1:])\n"
    "print(json.dumps({'rc': rc, 'calls': calls, 'archive': 'slapos_collect_recipe.archive' in sys.modules}))\n"
)


def published(data_dir: Path, part: Path) -> dict:
    argv = ["collect", "--data-dir", str(data_dir), "--partition", f"web={part}", "--process-accounting", "no",
            "--network-accounting", "no"]
    proc = subprocess.run([sys.executable, "-c", PUBLISH_SPY, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_a_run_publishes_todays_csvs_then_the_monitor_json_then_past_days(data_dir: Path, tmp_path: Path) -> None:
    """The per-minute path in the order collect shows it: today's CSVs, each partition's
    monitor JSON (once: not from the rotation), then past days; no day due: no dump, and
    the archive machinery is not even imported."""
    part = tmp_path / "web"
    (part / ".slapgrid" / "monitor").mkdir(parents=True)
    outcome = published(data_dir, part)
    assert outcome == {"rc": 0, "calls": ["csv", "monitor", "past days"], "archive": False}
    assert (data_dir / "system_cpu_percent.csv").is_file() and (data_dir / "partition_cpu_percent_web.csv").is_file()
    assert json.loads((part / ".slapgrid/monitor/monitor_resource.status.json").read_text())["date"]
    assert not list(data_dir.glob("*.tar.gz")) and not (data_dir / "consumption-report").exists()
    assert not [p for p in data_dir.iterdir() if p.is_dir()]

    # A past day with unreported rows: the same order, and the day is archived last.
    day = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 2 * 86400))
    with store.Store(data_dir / store.DB_NAME) as db, db.transaction():
        db.insert("system", [(0.5, 25.0, 2**30, 2**31, 0, 0, 0, 0, 0, 0)], day, "12:00:00")
    monitor_status = part / ".slapgrid/monitor/monitor_resource.status.json"
    monitor_status.unlink()
    outcome = published(data_dir, part)
    assert outcome == {"rc": 0, "calls": ["csv", "monitor", "past days", "day"], "archive": True}
    assert (data_dir / f"{day}.tar.gz").is_file() and (data_dir / "consumption-report" / f"{day}.xml").is_file()
    assert monitor_status.is_file()


def test_a_failing_publisher_never_stops_the_next_ones(data_dir: Path, tmp_path: Path) -> None:
    """A partition whose monitor folder cannot be written (its status file is a folder here): the run is
    stored, the past day is still archived and journaled after it, and the run fails with one line."""
    part = tmp_path / "web"
    (part / ".slapgrid" / "monitor" / "monitor_resource.status.json").mkdir(parents=True)
    day = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 2 * 86400))
    with store.Store(data_dir / store.DB_NAME) as db, db.transaction():
        db.insert("system", [(0.5, 25.0, 2**30, 2**31, 0, 0, 0, 0, 0, 0)], day, "12:00:00")
    proc = run_cli("collect", "--data-dir", str(data_dir), "--partition", f"web={part}", "--process-accounting", "no",
                   "--network-accounting", "no")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "stored this run, but publishing failed" in lines[0], proc.stderr
    assert "monitor_resource.status.json" in lines[0] and "Traceback" not in proc.stderr
    assert (data_dir / f"{day}.tar.gz").is_file() and (data_dir / "consumption-report" / f"{day}.xml").is_file()
    assert (data_dir / "system_cpu_percent.csv").is_file()
