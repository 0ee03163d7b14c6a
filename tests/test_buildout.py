"""A test node: the real ``buildout -c software.cfg``, then the instance profile.

The release is built once into a temp dir, as slapgrid does (a buildout.cfg
extending software.cfg); each partition is a folder whose buildout.cfg extends
the rendered instance.cfg, with the partition's parameters given locally
(no master: tests/test_slapos_master.py has one).
"""

from __future__ import annotations

import configparser
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from slapos_collect_recipe.store import Store

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BUILDOUT = Path(sys.executable).parent / "buildout"
LOGROTATE = "/usr/sbin/logrotate"


def buildout(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BUILDOUT), "-c", "buildout.cfg", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def software(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("software")
    (path / "buildout.cfg").write_text(f"[buildout]\nextends = {ROOT / 'software.cfg'}\n")
    proc = buildout(path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return path


def deploy(software: Path, part: Path, parameters: dict | None = None) -> subprocess.CompletedProcess:
    """Run the instance profile in ``part`` as slapgrid would, parameters given locally."""
    part.mkdir(parents=True, exist_ok=True)
    params = json.dumps(parameters or {})
    (part / "buildout.cfg").write_text(f"""\
[buildout]
extends = {software / 'instance.cfg'}
parts -= publish
parts += published

[slap-connection]
computer-id = COMP-TEST
partition-id = {part.name}
server-url =
key-file =
cert-file =

[slap-configuration]
parameters = {params}
ipv4 = 127.0.0.1
ipv6 = ::1

# What publish would send to the master, in a file.
[published]
recipe = slapos.recipe.template
output = ${{buildout:directory}}/published.json
inline = {{"monitor-base-url": "${{slapos-collect:monitor-base-url}}",
  "monitor-url": "${{slapos-collect:monitor-url}}",
  "monitor-dashboard-url": "${{slapos-collect:monitor-dashboard-url}}",
  "monitor-metrics-url": "${{slapos-collect:monitor-metrics-url}}"}}
""")
    return buildout(part)


def cron_command(line: str) -> str:
    """The command of a crontab line ``m h dom mon dow command``."""
    return line.split(None, 5)[5]


def test_software_release_builds(software: Path) -> None:
    for script in ("slapos-collect", "slapmonitor"):
        path = software / "bin" / script
        assert os.access(path, os.X_OK)
    proc = subprocess.run([str(software / "bin" / "slapos-collect"), "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and "slapos-collect" in proc.stdout
    profile = (software / "instance.cfg").read_text()
    assert f"slapos-collect-binary = {software / 'bin' / 'slapos-collect'}" in profile
    assert "logrotate-binary = /usr/sbin/logrotate" in profile
    assert "$${" not in profile and "${slap-connection:partition-id}" in profile


def test_instance_with_parameters(software: Path, tmp_path: Path) -> None:
    part = tmp_path / "slappart0"
    proc = deploy(software, part, {"keep-days": 5, "collect-frequency": 2, "benchmarks": True})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    etc = part / "etc"
    published = json.loads((part / "published.json").read_text())
    secret = (etc / "slapmonitor.secret").read_text().strip()
    port = int((etc / "slapmonitor.port").read_text())
    assert published["monitor-base-url"] == f"https://[::1]:{port}/"
    assert published["monitor-url"] == f"https://[::1]:{port}/{secret}/server-log/"
    assert published["monitor-dashboard-url"] == f"https://[::1]:{port}/{secret}/"
    assert published["monitor-metrics-url"] == f"https://[::1]:{port}/{secret}/metrics"

    cp = configparser.ConfigParser(interpolation=None)
    cp.read(etc / "slapos-collect.cfg")
    section = cp["slapos-collect"]
    assert section["keep-days"] == "5"
    assert section["partitions"].strip() == f"slappart0={part}"  # users are shared on a test node
    assert section["data-dir"] == str(part / "srv" / "collect")
    assert cp["monitor"]["host"] == "::1 127.0.0.1" and cp["monitor"]["port"] == str(port)

    cron_d = etc / "cron.d"
    assert sorted(p.name for p in cron_d.iterdir()) == ["logrotate", "slapos-collect", "slapos-collect-bench"]
    collect_line = (cron_d / "slapos-collect").read_text().strip()
    assert collect_line.startswith("*/2 * * * * ")
    bench_line = (cron_d / "slapos-collect-bench").read_text().strip()
    assert bench_line.endswith(f"bench -c {etc / 'slapos-collect.cfg'} all")
    for service in ("slapmonitor", "crond"):
        text = (etc / "service" / service).read_text()
        assert text.startswith("#!/bin/sh\n") and str(software / "bin") in text

    # The cron entry's command, for real: rows for this partition in the database.
    sleeper = subprocess.Popen(["sleep", "60"], cwd=part)
    try:
        run = subprocess.run(cron_command(collect_line), shell=True, cwd=part, capture_output=True, text=True,
                             timeout=120)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert run.returncode == 0, run.stderr
    with Store(part / "srv" / "collect" / "collector.db", readonly=True) as store:
        assert store.latest_stamp("system") is not None
        rows = store.latest_rows("user")
    assert any(row["partition"] == "slappart0" and int(row["pid"]) == sleeper.pid for row in rows)
    assert (part / "var" / "log" / "slapos-collect.log").stat().st_size > 0
    # The bench entry's command too (a few seconds of CPU): results in the database.
    bench = subprocess.run(cron_command(bench_line), shell=True, cwd=part, capture_output=True, text=True,
                           timeout=300)
    assert bench.returncode == 0, bench.stderr
    with Store(part / "srv" / "collect" / "collector.db", readonly=True) as store:
        assert store.benchmark_latest_runs()

    # The logrotate entry's command: a dry run, then a forced rotation.
    logrotate_line = (cron_d / "logrotate").read_text().strip()
    command = shlex.split(cron_command(logrotate_line))
    assert command[0] == LOGROTATE
    dry = subprocess.run([*command[:1], "-d", *command[1:]], capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "slapos-collect.log" in dry.stderr + dry.stdout
    monitor_log = part / "var" / "log" / "slapmonitor.log"
    monitor_log.write_text("a line\n")
    forced = subprocess.run([*command[:1], "-f", *command[1:]], capture_output=True, text=True, timeout=60)
    assert forced.returncode == 0, forced.stderr
    assert (part / "var" / "log" / "slapos-collect.log.1").exists()
    assert (part / "var" / "log" / "slapmonitor.log.1").read_text() == "a line\n"
    assert monitor_log.read_text() == ""  # copytruncate: the server keeps its file
    assert (part / "var" / "logrotate.status").exists()

    # update twice: the secret, the port, the URLs and the data stay.
    for _ in range(2):
        again = buildout(part)
        assert again.returncode == 0, again.stdout + again.stderr
        assert (etc / "slapmonitor.secret").read_text().strip() == secret
        assert json.loads((part / "published.json").read_text()) == published
    with Store(part / "srv" / "collect" / "collector.db", readonly=True) as store:
        assert store.latest_stamp("system") is not None

    # A changed parameter reinstalls the part: the secret and data still stay.
    changed = deploy(software, part, {"keep-days": 6})
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert (etc / "slapmonitor.secret").read_text().strip() == secret
    assert not (cron_d / "slapos-collect-bench").exists()
    assert (part / "srv" / "collect" / "collector.db").exists()


def test_two_instances_without_parameters(software: Path, tmp_path: Path) -> None:
    urls = []
    for name in ("slappart1", "slappart2"):
        part = tmp_path / name
        proc = deploy(software, part)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        urls.append(json.loads((part / "published.json").read_text())["monitor-base-url"])
        cp = configparser.ConfigParser(interpolation=None)
        cp.read(part / "etc" / "slapos-collect.cfg")
        assert cp["slapos-collect"]["keep-days"] == "3"
        assert (part / "etc" / "cron.d" / "slapos-collect").read_text().startswith("* * * * * ")
        assert not (part / "etc" / "cron.d" / "slapos-collect-bench").exists()
    assert urls[0] != urls[1]


@pytest.mark.parametrize("parameters, words", [
    ({"keep-days": 0}, "keep-days: 0 is less than the minimum of 1"),
    ({"colect": "node"}, "'colect' was unexpected"),
])
def test_invalid_parameter_fails_readably(software: Path, tmp_path: Path, parameters: dict, words: str) -> None:
    part = tmp_path / "slappart5"
    proc = deploy(software, part, parameters)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "Error: Invalid parameters: " in output and words in output
    assert "Traceback" not in output
    assert not (part / "etc" / "slapos-collect.cfg").exists()
