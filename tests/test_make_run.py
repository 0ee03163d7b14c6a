"""`make run`'s script (ci/run-local): collects, serves, prints the dashboard URL, stops cleanly."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from conftest import ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_run_local(tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, SLAPOS_COLLECT_VAR=str(tmp_path / "var"), SLAPMONITOR_PORT=str(port))
    proc = subprocess.Popen(["bash", str(ROOT / "ci" / "run-local")], stdout=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(line.startswith("collecting") for line in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        url = next(line.split()[1] for line in lines if line.startswith("dashboard:"))
        assert url.startswith(f"https://127.0.0.1:{port}/") and url.endswith("/")
        unverified = ssl.create_default_context()
        unverified.check_hostname = False
        unverified.verify_mode = ssl.CERT_NONE
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/", context=unverified, timeout=10) as answer:
            assert answer.read() == b"OK"
        db = tmp_path / "var" / "data-log" / "collector.db"
        rows = 0
        while time.monotonic() < deadline and not rows:
            if db.exists():
                con = sqlite3.connect(db)
                try:
                    rows = con.execute("SELECT count(*) FROM system").fetchone()[0]
                except sqlite3.OperationalError:
                    rows = 0
                finally:
                    con.close()
            time.sleep(0.2)
        assert rows >= 1
        with urllib.request.urlopen(url, context=unverified, timeout=10) as answer:
            assert answer.status == 200 and b"dygraph" in answer.read().lower()
        with urllib.request.urlopen(url + "server-log/", context=unverified, timeout=10) as answer:
            assert b"collector.db" in answer.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    # The server went with it: the port is free again.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
