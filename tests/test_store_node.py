"""Node mode: collector.db readable by a user with read access only, at any moment.

The SlapOS monitor stack reads ``instance_root/var/data-log/collector.db`` as
each partition's user, with a plain ``sqlite3.connect(path)``. These tests do
exactly that as a real unprivileged user (``nobody``), with the real collector
run as root: between runs, while a run is paused in the middle of a rotation,
after it is killed there, and after the rotation is finished.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import SCRIPTS, run_cli
from other_user import other_user_runtime, shared_dir

from slapos_collect_recipe.rotate import PAUSE_ENV

needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                reason="needs root to read as an unprivileged user")

# What every reader of the original does: a plain connect, then queries; and a
# write, which must fail cleanly (never a crash, never a change).
READER = textwrap.dedent("""
    import json, sqlite3, sys
    out = {}
    try:
        db = sqlite3.connect(sys.argv[1])
        out["system"] = db.execute("SELECT count(*) FROM system").fetchone()[0]
        out["unreported"] = db.execute("SELECT count(*) FROM system WHERE reported = 0").fetchone()[0]
        out["heating"] = db.execute("SELECT count(*) FROM heating").fetchone()[0]
        try:
            db.execute("INSERT INTO heating (model_id) VALUES ('x')")
            db.commit()
            out["write"] = "written"
        except sqlite3.Error as exc:
            out["write"] = str(exc)
    except sqlite3.Error as exc:
        out["error"] = str(exc)
    print(json.dumps(out))
""")


def read_as_nobody(db: Path) -> dict:
    python = other_user_runtime().python
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-S", "-c",
                           READER, str(db)], capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def node():
    """A node's instance_root in a world-accessible place, with its slapos.cfg
    (no partition users: the readers' side is what is tested here)."""
    base = shared_dir("node-")
    base.chmod(0o755)
    root = base / "srv"
    root.mkdir()
    root.chmod(0o755)  # whatever the umask
    cfg = base / "slapos.cfg"
    cfg.write_text(f"[slapos]\ninstance_root = {root}\ncomputer_id = COMP-9\n"
                   "[slapformat]\npartition_amount = 0\n")
    try:
        yield root, cfg
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _collect(cfg: Path, **env: str) -> subprocess.CompletedProcess:
    # umask 027, as cron may run it: the modes must not depend on it.
    return run_cli("collect", "--slapos-cfg", str(cfg), env=env, check=True,
                   preexec_fn=lambda: os.umask(0o027))


@needs_root
def test_a_reader_without_write_access_reads_between_runs(node) -> None:
    root, cfg = node
    _collect(cfg)
    data = root / "var" / "data-log"
    db = data / "collector.db"
    assert mode(data) == 0o755 and mode(db) == 0o644
    # The WAL's side files stay after the run, empty and readable.
    for side in ("collector.db-wal", "collector.db-shm"):
        assert mode(data / side) == 0o644, side
    assert (data / "collector.db-wal").stat().st_size == 0
    assert all((data / name).stat().st_uid == 0 for name in ("collector.db", "collector.db-wal"))
    seen = read_as_nobody(db)
    assert seen["system"] == 1 and seen["heating"] == 0
    assert seen["write"] == "attempt to write a readonly database"
    # Someone's chmod is undone by the next run, as the original does.
    data.chmod(0o700)
    db.chmod(0o600)
    _collect(cfg)
    assert mode(data) == 0o755 and mode(db) == 0o644
    assert read_as_nobody(db)["system"] == 2


@needs_root
def test_a_reader_reads_during_a_rotation_after_a_kill_and_after(node) -> None:
    root, cfg = node
    _collect(cfg)
    db = root / "var" / "data-log" / "collector.db"
    with sqlite3.connect(db) as conn:  # yesterday's rows, due for rotation
        for table in ("system", "computer", "disk", "disk_io", "user"):
            conn.execute(f'UPDATE "{table}" SET date = date(date, \'-1 day\')')
    conn.close()
    proc = subprocess.Popen([str(SCRIPTS / "slapos-collect"), "collect", "--slapos-cfg", str(cfg)],
                            env=dict(os.environ, **{PAUSE_ENV: "linked"}), stderr=subprocess.PIPE, text=True)
    try:
        assert "paused at linked" in proc.stderr.readline()
        # The archive is durable, the marks are not committed: the reader sees
        # the new run's row and none of the uncommitted marks.
        during = read_as_nobody(db)
        assert "error" not in during, during
        assert during["system"] == 2 and during["unreported"] == 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    after_kill = read_as_nobody(db)
    assert "error" not in after_kill and after_kill["unreported"] == 2

    _collect(cfg)  # completes the interrupted rotation
    after = read_as_nobody(db)
    assert after["system"] == 3 and after["unreported"] == 2  # yesterday's row is reported now
    assert after["write"] == "attempt to write a readonly database"


@needs_root
def test_a_foreign_root_connection_closing_last_hides_it_until_the_next_run(node) -> None:
    """What a foreign root process does (a plain read-write connection closing
    last deletes the WAL's side files, as SQLite always does): the partitions'
    readers cannot open the database until the next run, which puts them back."""
    root, cfg = node
    _collect(cfg)
    db = root / "var" / "data-log" / "collector.db"
    conn = sqlite3.connect(db)
    conn.execute("SELECT count(*) FROM system").fetchone()
    conn.close()
    assert not (db.parent / "collector.db-wal").exists()
    assert read_as_nobody(db) == {"error": "attempt to write a readonly database"}  # it cannot make them
    _collect(cfg)
    assert read_as_nobody(db)["system"] == 2


def test_partition_mode_keeps_its_private_data_dir(tmp_path: Path) -> None:
    run_cli("collect", "--data-dir", str(tmp_path / "data"), check=True)
    assert mode(tmp_path / "data") == 0o750
