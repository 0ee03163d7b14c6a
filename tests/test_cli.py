"""A plain `pip install` of the egg (no extras) gives working commands."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT

from slapos_collect_recipe.cli import COMMANDS


@pytest.fixture(scope="module")
def plain_install(tmp_path_factory) -> Path:
    """A fresh venv with `pip install <a copy of the checkout>`, nothing else."""
    base = tmp_path_factory.mktemp("plain-install")
    source = base / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info", "build", "__pycache__",
                                                                "var", ".pytest_cache"))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    proc = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-c", str(ROOT / "constraints.txt"),
                           str(source)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return venv / "bin"


@pytest.mark.slow
def test_every_command_helps_without_a_traceback(plain_install: Path) -> None:
    for command in [[str(plain_install / "slapmonitor"), "--help"],
                    [str(plain_install / "slapos-collect"), "--help"],
                    *([str(plain_install / "slapos-collect"), name, "--help"] for name in COMMANDS)]:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd="/")
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (command, proc.stderr)
        assert proc.stdout.startswith("usage:"), command


@pytest.mark.slow
def test_serve_and_collect_from_a_plain_install(plain_install: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    collect = subprocess.run([str(plain_install / "slapos-collect"), "collect", "--data-dir", str(data)],
                             capture_output=True, text=True, timeout=120)
    assert collect.returncode == 0 and collect.stderr == "", collect.stderr
    server = subprocess.Popen([str(plain_install / "slapmonitor"), "--data-dir", str(data), "--host", "127.0.0.1",
                               "--port", "0", "--secret", "s" * 32, "--no-tls"],
                              stderr=subprocess.PIPE, text=True)
    try:
        line = server.stderr.readline()
        port = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
        assert port, line
        base = f"http://127.0.0.1:{port.group(1)}/"
        with urllib.request.urlopen(base, timeout=10) as answer:
            assert answer.read() == b"OK"
        with urllib.request.urlopen(f"{base}{'s' * 32}/metrics", timeout=10) as answer:
            assert b"node_load1" in answer.read()
        with urllib.request.urlopen(f"{base}{'s' * 32}/assets/dygraph.js", timeout=10) as answer:
            assert answer.status == 200
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        assert "Traceback" not in server.stderr.read()
        server.stderr.close()
