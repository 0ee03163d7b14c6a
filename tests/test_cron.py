"""The partition cron daemon: the real ``slapos-collect cron`` process on real folders.

Most tests use ``--seconds`` (a sixth time field, the seconds) so that a
schedule comes round in seconds; one test runs a standard per-minute line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import SCRIPTS, run_cli

from slapos_collect_recipe.cron import Entry, next_time, parse_crontab


def test_parse_crontab() -> None:
    text = """\
# a comment
MAILTO=""
PATH=/usr/bin:/bin

*/5 * * * * /opt/bin/collect -c 'a b.cfg'
@hourly echo hourly
@reboot echo boot
61 * * * * echo bad minute
* * * *
@sometimes echo no
0 0 31 2 * echo never
"""
    entries, problems = parse_crontab("slapos-collect", text)
    assert [(e.schedule, e.command) for e in entries] == [
        ("*/5 * * * *", "/opt/bin/collect -c 'a b.cfg'"),
        ("@hourly", "echo hourly"),
        ("@reboot", "echo boot"),
    ]
    assert entries[0].env == {"MAILTO": "", "PATH": "/usr/bin:/bin"}
    assert entries[0].line == 5
    assert problems == [
        "slapos-collect line 8: bad schedule '61 * * * *'",
        "slapos-collect line 9: needs 5 time fields and a command",
        "slapos-collect line 10: unknown schedule '@sometimes'",
        "slapos-collect line 11: schedule '0 0 31 2 *' never comes",
    ]
    entries, problems = parse_crontab("f", "* * * * * */2 echo fast\n", seconds=True)
    assert entries[0].schedule == "* * * * * */2" and not problems


def test_next_time() -> None:
    at = datetime(2026, 3, 1, 10, 0, 0, 5000)
    assert next_time(Entry("f", 1, "* * * * *", "x"), at) == datetime(2026, 3, 1, 10, 1)
    assert next_time(Entry("f", 1, "7 2 * * *", "x"), at) == datetime(2026, 3, 2, 2, 7)
    assert next_time(Entry("f", 1, "@reboot", "x"), at) is None


class Cron:
    """A running daemon on ``tmp_path``."""

    def __init__(self, tmp_path: Path, *extra: str) -> None:
        self.cron_d = tmp_path / "cron.d"
        self.cron_d.mkdir(exist_ok=True)
        self.logs = tmp_path / "log"
        self.pid_file = tmp_path / "crond.pid"
        self.work = tmp_path / "work"
        self.work.mkdir(exist_ok=True)
        self.stderr = tmp_path / "crond.stderr"
        self.args = ["cron", "--cron-d", str(self.cron_d), "--log-dir", str(self.logs), "--pid-file",
                     str(self.pid_file), "--cwd", str(self.work), "--poll", "0.2", "--grace", "2", *extra]
        self.process: subprocess.Popen | None = None

    def start(self) -> Cron:
        self.process = subprocess.Popen([str(SCRIPTS / "slapos-collect"), *self.args],
                                        stdout=subprocess.DEVNULL, stderr=open(self.stderr, "wb"))
        wait_for(lambda: self.pid_file.exists(), "the pid file")
        return self

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text() if path.exists() else ""


def wait_for(condition, what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def cron(tmp_path: Path):
    daemons: list[Cron] = []

    def make(*extra: str) -> Cron:
        daemon = Cron(tmp_path, *extra)
        daemons.append(daemon)
        return daemon

    yield make
    for daemon in daemons:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


def test_runs_entries_and_logs_their_output(cron) -> None:
    daemon = cron("--seconds")
    (daemon.cron_d / "hello").write_text("GREETING=hi there\n* * * * * * echo \"$GREETING\" from $(pwd); echo oops >&2\n")
    daemon.start()
    wait_for(lambda: daemon.log("hello").count(" end: exit 0") >= 2, "two runs of hello")
    assert daemon.stop() == 0
    text = daemon.log("hello")
    assert f"hi there from {daemon.work}\noops\n" in text
    assert " start: echo \"$GREETING\"" in text
    assert not daemon.pid_file.exists()


def test_an_entry_never_runs_twice_at_once(cron) -> None:
    daemon = cron("--seconds")
    # Due every second, takes 2.5 s: runs that fall due meanwhile are skipped.
    (daemon.cron_d / "slow").write_text(
        "* * * * * * mkdir running.d || echo OVERLAP; sleep 2.5; rmdir running.d; echo finished\n")
    daemon.start()
    wait_for(lambda: daemon.log("slow").count("finished") >= 2, "two slow runs")
    daemon.stop()
    text = daemon.log("slow")
    assert "\nOVERLAP\n" not in text
    assert "skipped: the previous run is still going" in text
    lines = [line for line in text.splitlines() if " start: " in line or " end: " in line]
    kinds = ["start" if " start: " in line else "end" for line in lines]
    assert kinds[: len(kinds) // 2 * 2] == ["start", "end"] * (len(kinds) // 2)


def test_rereads_the_folder_when_it_changes(cron) -> None:
    daemon = cron("--seconds")
    (daemon.cron_d / "first").write_text("* * * * * * echo first\n")
    daemon.start()
    wait_for(lambda: "first" in daemon.log("first"), "first")
    (daemon.cron_d / "second").write_text("* * * * * * echo second\n")
    wait_for(lambda: "second\n" in daemon.log("second"), "the added entry")
    (daemon.cron_d / "first").unlink()
    # Once the daemon has seen the removal, let a run started before end, then count.
    wait_for(lambda: "0 new, 1 removed" in daemon.stderr.read_text(), "the removal seen")
    wait_for(lambda: daemon.log("first").count(" start: ") == daemon.log("first").count(" end: "), "first to end")
    count = daemon.log("first").count("first\n")
    wait_for(lambda: daemon.log("second").count("second\n") >= 4, "more runs of second")
    assert daemon.log("first").count("first\n") == count
    # Editor leftovers and hidden files are ignored, bad lines are skipped and said.
    (daemon.cron_d / ".hidden").write_text("* * * * * * echo hidden > hidden.txt\n")
    (daemon.cron_d / "third~").write_text("* * * * * * echo backup > backup.txt\n")
    (daemon.cron_d / "broken").write_text("99 * * * * * echo never\n* * * * * * echo fine\n")
    wait_for(lambda: "fine\n" in daemon.log("broken"), "the good line of broken")
    daemon.stop()
    assert not (daemon.work / "hidden.txt").exists() and not (daemon.work / "backup.txt").exists()
    assert "broken line 1: bad schedule '99 * * * * *'" in daemon.stderr.read_text()


def test_sigterm_stops_running_entries_and_exits_cleanly(cron) -> None:
    daemon = cron("--seconds")
    (daemon.cron_d / "long").write_text("* * * * * * echo $$ > long.pid; exec sleep 300\n")
    daemon.start()
    wait_for(lambda: (daemon.work / "long.pid").exists() and (daemon.work / "long.pid").read_text().strip(),
             "the long entry")
    child = int((daemon.work / "long.pid").read_text())
    assert daemon.stop() == 0
    assert not daemon.pid_file.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    assert "end: exit -15" in daemon.log("long")
    assert "Traceback" not in daemon.stderr.read_text()


def test_reboot_entries_run_once(cron) -> None:
    daemon = cron()
    (daemon.cron_d / "boot").write_text("@reboot echo booted\n")
    daemon.start()
    wait_for(lambda: "booted" in daemon.log("boot"), "the @reboot entry")
    time.sleep(1)
    daemon.stop()
    assert daemon.log("boot").count("\nbooted\n") == 1


def test_one_daemon_per_pid_file(cron) -> None:
    first = cron().start()
    second = run_cli(*first.args, timeout=60)
    assert second.returncode == 2
    assert second.stderr.strip().startswith("slapos-collect cron: error: another cron daemon holds")
    assert len(second.stderr.strip().splitlines()) == 1
    assert first.stop() == 0


@pytest.mark.parametrize("args, words", [
    (["--cron-d", "/nonexistent/cron.d"], "cron folder /nonexistent/cron.d does not exist"),
    (["--cron-d", "/", "--cwd", "/nonexistent"], "--cwd /nonexistent is not a directory"),
    (["--cron-d", "/", "--pid-file", "/nonexistent/x.pid"], "its folder does not exist"),
])
def test_bad_input_is_one_line(args: list[str], words: str) -> None:
    proc = run_cli("cron", *args, timeout=60)
    assert proc.returncode == 2
    assert words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_standard_minute_line(cron) -> None:
    """A plain ``* * * * *`` line runs at the next minute, as cron does."""
    daemon = cron()
    (daemon.cron_d / "minute").write_text("* * * * * date +%S\n")
    daemon.start()
    wait_for(lambda: " end: exit 0" in daemon.log("minute"), "the per-minute entry", timeout=90)
    daemon.stop()
    output = [line for line in daemon.log("minute").splitlines() if "start" not in line and "end" not in line]
    assert output and output[0].isdigit()  # date's seconds: the command ran, its output logged
