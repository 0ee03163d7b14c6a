"""Requested from a SlapOS master: slapos.core's local master, as an ordinary user.

ci/setup-slapos-master (run by this module's set-up) creates the user
and its venv; ci/slapos_master.py, run as that user, starts the master,
supplies software.cfg, requests two instances with parameters and prints what
they published. The partitions' own supervisord then runs their slapmonitor
and cron daemon, which runs the collector: the tests fetch the published URLs.
"""

from __future__ import annotations

import configparser
import json
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TEST_USER = os.environ.get("SLAPOS_TEST_USER", "slapcollect")
PREFIX = Path(os.environ.get("SLAPOS_TEST_PREFIX", "/opt/slapos-collect-test"))
PYTHON = PREFIX / "venv" / "bin" / "python"
REQUESTS = {
    "collect-a": {"keep-days": 4},
    "collect-b": {"benchmarks": True, "keep-days": 2, "collect-frequency": 1},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def as_user(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", TEST_USER, "--", *args], capture_output=True, text=True,
                          timeout=timeout, cwd="/")


def fetch(url: str) -> tuple[int, str]:
    """GET ``url`` over TLS (slapmonitor's certificate is self-signed)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, context=context, timeout=30) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


@pytest.fixture(scope="module")
def master():
    if os.geteuid() != 0:
        pytest.skip("a local SlapOS master needs an ordinary user, which only root can create here")
    setup = subprocess.run(["bash", str(ROOT / "ci" / "setup-slapos-master")], capture_output=True, text=True,
                           timeout=1200)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    user = pwd.getpwnam(TEST_USER)
    # Short: the master's Unix sockets live under it (108 characters at most).
    base = Path(tempfile.mkdtemp(prefix="scm-", dir="/tmp"))
    for name in ("software.cfg",):
        shutil.copy(ROOT / name, base / name)
    shutil.copy(ROOT / "ci" / "slapos_master.py", base / "slapos_master.py")
    (base / "b").mkdir()
    for path in [base, *base.iterdir()]:
        os.chown(path, user.pw_uid, user.pw_gid)
    port = str(free_port())
    driver = [str(PYTHON), str(base / "slapos_master.py")]
    try:
        up = as_user(*driver, "up", str(base / "b"), port, str(base / "software.cfg"), json.dumps(REQUESTS),
                     timeout=900)
        assert up.returncode == 0, up.stderr[-5000:]
        published = json.loads(up.stdout.strip().splitlines()[-1])
        yield {"base": base / "b", "published": published,
               "run": lambda *args: as_user(*driver, args[0], str(base / "b"), port, str(base / "software.cfg"),
                                            *args[1:], timeout=600)}
    finally:
        down = as_user(*driver, "down", str(base / "b"), port, timeout=300)
        if down.returncode != 0:
            # A failed start can leave supervisord running: stop it by its pid.
            for pid_file in (base / "b").rglob("supervisord.pid"):
                try:
                    os.kill(int(pid_file.read_text().strip()), 15)
                except (OSError, ValueError):
                    pass
            time.sleep(2)
        shutil.rmtree(base, ignore_errors=True)


def partition_dir(master, reference: str) -> Path:
    return master["base"] / "inst" / master["published"][reference]["partition"]


def test_two_instances_publish_their_urls(master) -> None:
    published = {ref: master["published"][ref]["published"] for ref in REQUESTS}
    ports = set()
    for ref, urls in published.items():
        assert set(urls) >= {"monitor-base-url", "monitor-url", "monitor-dashboard-url", "monitor-metrics-url"}
        base = urls["monitor-base-url"]
        assert base.startswith("https://[::1]:") and base.endswith("/")
        ports.add(base)
        secret = (partition_dir(master, ref) / "etc" / "slapmonitor.secret").read_text().strip()
        assert urls["monitor-url"] == f"{base}{secret}/server-log/"
        assert urls["monitor-dashboard-url"] == f"{base}{secret}/"
        assert urls["monitor-metrics-url"] == f"{base}{secret}/metrics"
    assert len(ports) == 2  # the partitions share ::1 and 127.0.0.1, not a port

    # The parameters reached each partition.
    for ref, parameters in REQUESTS.items():
        part = partition_dir(master, ref)
        cp = configparser.ConfigParser(interpolation=None)
        cp.read(part / "etc" / "slapos-collect.cfg")
        assert cp["slapos-collect"]["keep-days"] == str(parameters["keep-days"])
        # One user for all partitions here: this partition is told apart by its folder.
        assert cp["slapos-collect"]["partitions"].strip() == f"{part.name}={part}"
        bench = part / "etc" / "cron.d" / "slapos-collect-bench"
        assert bench.exists() == bool(parameters.get("benchmarks"))


def test_monitor_base_url_answers_ok(master) -> None:
    for ref in REQUESTS:
        status, body = fetch(master["published"][ref]["published"]["monitor-base-url"])
        assert (status, body.strip()) == (200, "OK")


def test_monitor_url_lists_what_the_partition_cron_collected(master) -> None:
    urls = master["published"]["collect-a"]["published"]
    part = partition_dir(master, "collect-a")
    cron_log = part / "var" / "log" / "cron" / "slapos-collect.log"
    # The partition's cron daemon runs the collector at the top of each minute.
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and " end: exit 0" not in (cron_log.read_text() if cron_log.exists() else ""):
        time.sleep(1)
    assert " end: exit 0" in cron_log.read_text()
    status, listing = fetch(urls["monitor-url"])
    assert status == 200
    assert 'href="collector.db"' in listing and ".csv" in listing
    status, _ = fetch(urls["monitor-dashboard-url"])
    assert status == 200
    status, metrics = fetch(urls["monitor-metrics-url"])
    assert status == 200 and metrics


def test_a_secret_does_not_open_another_partition(master) -> None:
    a = master["published"]["collect-a"]["published"]
    b = master["published"]["collect-b"]["published"]
    secret_a = a["monitor-url"][len(a["monitor-base-url"]):].split("/")[0]
    for path in ("server-log/", "", "metrics"):
        status, body = fetch(f"{b['monitor-base-url']}{secret_a}/{path}")
        assert status == 404, (path, status)
        assert "collector.db" not in body
    status, _ = fetch(b["monitor-url"])
    assert status == 200


def test_logrotate_entry_as_the_partition_user(master) -> None:
    part = partition_dir(master, "collect-b")
    line = (part / "etc" / "cron.d" / "logrotate").read_text().strip()
    command = line.split(None, 5)[5].split()
    proc = as_user(command[0], "-f", *command[1:], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "error" not in proc.stderr.lower()
    assert (part / "var" / "logrotate.status").exists()
    assert (part / "var" / "log" / "slapmonitor.log.1").exists()  # it had a line: "listening on"


def test_invalid_parameters_fail_the_instance_readably(master) -> None:
    proc = master["run"]("request-invalid", "collect-bad", json.dumps({"keep-days": 0, "colour": "red"}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["failed"]
    message = result["message"]
    assert "Error: Invalid parameters: " in message
    assert "keep-days: 0 is less than the minimum of 1" in message
    assert "'colour' was unexpected" in message
    assert "Traceback" not in message
    # The other instances are untouched.
    status, body = fetch(master["published"]["collect-a"]["published"]["monitor-base-url"])
    assert (status, body.strip()) == (200, "OK")
